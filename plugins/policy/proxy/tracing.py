"""Spans of proxied HTTP requests through the OpenTelemetry SDK: OTLP over HTTP (which Jaeger
takes natively) or Zipkin JSON v2. A request's W3C `traceparent` makes the span a child of
the caller's; the SDK exports in batches from its own thread, never on the proxy's loop.
Imported only when `tracing.enabled` (the SDK costs memory the proxy otherwise saves)."""

from __future__ import annotations

from dataclasses import dataclass

EXPORTERS = ("otlp", "zipkin")
DEFAULT_ENDPOINTS = {"otlp": "http://localhost:4318/v1/traces", "zipkin": "http://localhost:9411/api/v2/spans"}


@dataclass(frozen=True)
class TracingSettings:
    exporter: str
    endpoint: str

    @classmethod
    def from_snapshot(cls, doc: dict | None) -> TracingSettings | None:
        if not doc or not doc.get("enabled"):
            return None
        exporter = doc.get("exporter", "otlp")
        return cls(exporter, doc.get("endpoint") or DEFAULT_ENDPOINTS[exporter])


class Tracer:
    def __init__(self, settings: TracingSettings, node: str):
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        if settings.exporter == "zipkin":
            from opentelemetry.exporter.zipkin.json import ZipkinExporter

            exporter = ZipkinExporter(endpoint=settings.endpoint)
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter(endpoint=settings.endpoint)
        self.settings = settings
        self.provider = TracerProvider(resource=Resource.create({"service.name": "pylium-l7proxy",
                                                                 "host.name": node}))
        self.provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=200))
        self.tracer = self.provider.get_tracer("pylium.l7proxy")
        self.propagator = TraceContextTextMapPropagator()

    def http_span(self, headers: dict[str, str], ingress: bool, method: str, url: str, code: int, verdict: str,
                  start_ns: int, end_ns: int, source: str, destination: str) -> None:
        from opentelemetry.trace import SpanKind, Status, StatusCode

        span = self.tracer.start_span(
            f"HTTP {method}", context=self.propagator.extract(carrier=headers),
            kind=SpanKind.SERVER if ingress else SpanKind.CLIENT, start_time=start_ns,
            attributes={"http.request.method": method, "url.full": url, "http.response.status_code": code,
                        "pylium.verdict": verdict, "source.address": source, "destination.address": destination})
        if code >= 500 or verdict == "ERROR":
            span.set_status(Status(StatusCode.ERROR))
        span.end(end_time=end_ns)

    def shutdown(self) -> None:
        self.provider.shutdown()

"""Configuration keys owned by the observability plugin (Cilium's Helm names under `hubble`)."""

from __future__ import annotations

from pydantic import Field, field_validator

from pylium.core.api_for_plugins import Section

HUBBLE_METRICS = ("drop", "flow", "policy", "httpV2", "dns")


class EndpointDropsSettings(Section):
    enabled: bool = Field(False, description="Count drops per endpoint in pylium_endpoint_drop_count_total "
                                             "(labels endpoint, reason, direction).")
    maxEndpoints: int = Field(100, ge=1, description="Cardinality cap: at most this many endpoints get their own "
                                                     "series; drops of further endpoints count as endpoint=\"other\".")


class HubbleMetricsSettings(Section):
    enabled: list[str] = Field(default_factory=lambda: list(HUBBLE_METRICS),
                               description="Hubble metrics to serve on the agent's metrics port: drop "
                                           "(hubble_drop_total), flow (hubble_flows_processed_total), policy "
                                           "(hubble_policy_verdicts_total), httpV2 (hubble_http_requests_total, "
                                           "hubble_http_request_duration_seconds), dns (hubble_dns_queries_total, "
                                           "hubble_dns_responses_total). "
                                           "hubble_lost_events_total is always served.")
    endpointDrops: EndpointDropsSettings = Field(default_factory=EndpointDropsSettings)

    @field_validator("enabled")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        bad = [m for m in v if m not in HUBBLE_METRICS]
        if bad:
            raise ValueError(f"unknown Hubble metric {', '.join(bad)} (known: {', '.join(HUBBLE_METRICS)})")
        return v


class HubbleSettings(Section):
    enabled: bool = Field(True, description="Turn datapath events into flows (observer, `pylium observe`, the "
                                            "`flow` bus topic, Hubble metrics).")
    eventBufferCapacity: int = Field(4095, description="Flows the observer keeps for `pylium observe` "
                                                       "(2^n - 1, at most 65535).")
    eventQueueSize: int = Field(16384, ge=1, description="Datapath events waiting to be decoded; beyond it "
                                                          "events are lost (counted as OBSERVER_EVENTS_QUEUE).")
    metrics: HubbleMetricsSettings = Field(default_factory=HubbleMetricsSettings)
    serviceMapMaxEdges: int = Field(10000, ge=1, description="Edges the service map keeps (workload pairs by "
                                                             "port and protocol); further ones are not counted.")

    @field_validator("eventBufferCapacity")
    @classmethod
    def _capacity(cls, v: int) -> int:
        if v < 1 or v > 65535 or (v + 1) & v:
            raise ValueError("must be 2^n - 1 and at most 65535, for example 4095")
        return v


class ObservabilityConfig(Section):
    hubble: HubbleSettings = Field(default_factory=HubbleSettings)

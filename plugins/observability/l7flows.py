"""Flows of type L7 from what the L7 proxy publishes (bus topic `l7`), with Hubble's fields
and summaries: a request flow from client to server, a response flow back (is_reply, the
latency since the request), the W3C trace id in `trace_context`."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime, timezone

from pylium.core.api_for_plugins import consts
from pylium.plugins.observability.flow import (DNS, HTTP, IP, TCP, UDP, CiliumEventType, Endpoint, Flow, HTTPHeader,
                                               Layer4, Layer7, TraceContext, TraceParent)

RCODES = {1: "Format Error", 2: "Server Failure", 3: "Non-Existent Domain", 4: "Not Implemented", 5: "Refused"}


def rfc3339(ns: int) -> str:
    return datetime.fromtimestamp(ns // 1_000_000_000, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S") + \
        f".{ns % 1_000_000_000:09d}Z"


def summary(kind: str, http: HTTP, latency_ns: int) -> str:
    """Hubble's: `HTTP/1.1 GET http://host/path`, `HTTP/1.1 403 0ms (GET http://host/path)`."""
    if kind == "REQUEST":
        return f"{http.protocol} {http.method} {http.url}"
    return f"{http.protocol} {http.code} {latency_ns // 1_000_000}ms ({http.method} {http.url})"


def dns_summary(kind: str, dns: DNS) -> str:
    """Hubble's: `DNS Query x. A`, `DNS Answer "1.2.3.4" TTL: 30 (Proxy x. A)`."""
    qtypes = ",".join(dns.qtypes)
    if kind == "REQUEST":
        return f"DNS Query {dns.query} {qtypes}"
    if dns.rcode:
        return f"DNS Answer RCode: {RCODES.get(dns.rcode, dns.rcode)} TTL: {dns.ttl} (Proxy {dns.query} {qtypes})"
    return f'DNS Answer "{",".join(dns.ips)}" TTL: {dns.ttl} (Proxy {dns.query} {qtypes})'


def l7_flow(record, endpoint: Callable[[int, str, int], Endpoint | None]) -> Flow:
    """`record`: an events.L7Record; `endpoint(ep_id, ip, identity)` names an end."""
    client = (record.source_ip, record.source_port, record.source_identity)
    server = (record.destination_ip, record.destination_port, record.destination_identity)
    reply = record.kind == "RESPONSE"
    src, dst = (server, client) if reply else (client, server)
    ingress = record.direction == "INGRESS"
    local_is_src = ingress == reply  # ingress: the local endpoint serves; egress: it asks
    src_ep = endpoint(record.endpoint if local_is_src else 0, src[0], src[2])
    dst_ep = endpoint(0 if local_is_src else record.endpoint, dst[0], dst[2])
    h = record.http
    http = HTTP(code=h.code, method=h.method, url=h.url, protocol=h.protocol,
                headers=tuple(HTTPHeader(key=x.key, value=x.value) for x in h.headers)) if h is not None else None
    d = record.dns
    dns = DNS(query=d.query, ips=tuple(d.ips), ttl=d.ttl, cnames=tuple(d.cnames),
              observation_source=d.observation_source, rcode=d.rcode, qtypes=tuple(d.qtypes),
              rrtypes=tuple(d.rrtypes)) if d is not None else None
    # DNS over UDP or TCP: the DNS proxy's records come from either; port 53 over TCP is rare
    l4 = Layer4(TCP=TCP(source_port=src[1], destination_port=dst[1])) if record.proxy == "http" or \
        record.transport == "TCP" else Layer4(UDP=UDP(source_port=src[1], destination_port=dst[1]))
    return Flow(
        time=rfc3339(record.time), uuid=str(uuid.uuid4()), verdict=record.verdict,
        IP=IP(source=src[0], destination=dst[0], ipVersion="IPv6" if ":" in src[0] else "IPv4"),
        l4=l4,
        source=src_ep, destination=dst_ep, Type="L7", node_name=record.node,
        event_type=CiliumEventType(type=consts.MSG_L7), traffic_direction=record.direction, is_reply=reply,
        l7=Layer7(type=record.kind, latency_ns=record.latency_ns, http=http, dns=dns),
        trace_context=TraceContext(parent=TraceParent(trace_id=record.trace_id)) if record.trace_id else None,
        Summary=summary(record.kind, http, record.latency_ns) if http is not None else
        dns_summary(record.kind, dns) if dns is not None else "")

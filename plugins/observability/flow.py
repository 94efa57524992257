"""Flows as Hubble shapes them (flow.proto field names, protojson spelling), and the records
of the flow stream: a flow or a lost-events notice, each with node name and time.

Unset fields are left out of JSON, as protojson does. Structs are frozen, untracked by the
garbage collector (no cycles) and shared where they repeat (endpoints)."""

from __future__ import annotations

import msgspec

from pylium.core.api_for_plugins import Event

_OPTS = {"frozen": True, "omit_defaults": True, "forbid_unknown_fields": True, "gc": False}


class TCPFlags(msgspec.Struct, **_OPTS):
    FIN: bool = False
    SYN: bool = False
    RST: bool = False
    PSH: bool = False
    ACK: bool = False
    URG: bool = False
    ECE: bool = False
    CWR: bool = False
    NS: bool = False


class TCP(msgspec.Struct, **_OPTS):
    source_port: int = 0
    destination_port: int = 0
    flags: TCPFlags | None = None


class UDP(msgspec.Struct, **_OPTS):
    source_port: int = 0
    destination_port: int = 0


class ICMP(msgspec.Struct, **_OPTS):
    type: int = 0
    code: int = 0


class Layer4(msgspec.Struct, **_OPTS):
    TCP: TCP | None = None
    UDP: UDP | None = None
    ICMPv4: ICMP | None = None
    ICMPv6: ICMP | None = None


class IP(msgspec.Struct, **_OPTS):
    source: str = ""
    destination: str = ""
    ipVersion: str = "IP_NOT_USED"  # IPv4 | IPv6


class Ethernet(msgspec.Struct, **_OPTS):
    source: str = ""
    destination: str = ""


class Workload(msgspec.Struct, **_OPTS):
    name: str = ""
    kind: str = ""


class Endpoint(msgspec.Struct, **_OPTS):
    ID: int = 0  # endpoint id on its node (0: not a local endpoint)
    identity: int = 0
    cluster_name: str = ""
    namespace: str = ""
    labels: tuple[str, ...] = ()  # "source:key=value"
    pod_name: str = ""
    workloads: tuple[Workload, ...] = ()


class CiliumEventType(msgspec.Struct, **_OPTS):
    type: int = 0  # monitor message type: 1 drop, 4 trace, 5 policy verdict
    sub_type: int = 0  # drop reason or observation point


class Interface(msgspec.Struct, **_OPTS):
    index: int = 0
    name: str = ""


class File(msgspec.Struct, **_OPTS):
    name: str = ""
    line: int = 0


class Policy(msgspec.Struct, **_OPTS):
    name: str = ""
    namespace: str = ""
    labels: tuple[str, ...] = ()
    revision: int = 0
    kind: str = ""


class HTTPHeader(msgspec.Struct, **_OPTS):
    key: str = ""
    value: str = ""


class HTTP(msgspec.Struct, **_OPTS):
    code: int = 0
    method: str = ""
    url: str = ""
    protocol: str = ""
    headers: tuple[HTTPHeader, ...] = ()


class DNS(msgspec.Struct, **_OPTS):
    query: str = ""
    ips: tuple[str, ...] = ()
    ttl: int = 0
    cnames: tuple[str, ...] = ()
    observation_source: str = ""
    rcode: int = 0
    qtypes: tuple[str, ...] = ()
    rrtypes: tuple[str, ...] = ()


class Layer7(msgspec.Struct, **_OPTS):
    type: str = "UNKNOWN_L7_TYPE"  # REQUEST | RESPONSE
    latency_ns: int = 0
    dns: DNS | None = None
    http: HTTP | None = None


class TraceParent(msgspec.Struct, **_OPTS):
    trace_id: str = ""


class TraceContext(msgspec.Struct, **_OPTS):
    parent: TraceParent | None = None


class Flow(Event, frozen=True, omit_defaults=True, gc=False):
    """One observed packet (or aggregated connection report), as Hubble's Flow."""

    time: str  # RFC 3339, nanoseconds
    uuid: str
    verdict: str  # FORWARDED, DROPPED, AUDIT, REDIRECTED, ERROR, TRACED, TRANSLATED
    drop_reason: int = 0  # deprecated in Hubble: drop_reason_desc
    ethernet: Ethernet | None = None
    IP: IP | None = None
    l4: Layer4 | None = None
    source: Endpoint | None = None
    destination: Endpoint | None = None
    Type: str = "UNKNOWN_TYPE"  # L3_L4 | L7 | SOCK
    node_name: str = ""
    event_type: CiliumEventType | None = None
    traffic_direction: str = "TRAFFIC_DIRECTION_UNKNOWN"  # INGRESS | EGRESS
    policy_match_type: int = 0
    trace_observation_point: str = "UNKNOWN_POINT"
    trace_reason: str = "TRACE_REASON_UNKNOWN"
    drop_reason_desc: str = "DROP_REASON_UNKNOWN"
    is_reply: bool | None = None  # absent: unknown
    interface: Interface | None = None
    file: File | None = None
    ingress_allowed_by: tuple[Policy, ...] = ()
    egress_allowed_by: tuple[Policy, ...] = ()
    ingress_denied_by: tuple[Policy, ...] = ()
    egress_denied_by: tuple[Policy, ...] = ()
    l7: Layer7 | None = None
    trace_context: TraceContext | None = None
    Summary: str = ""


class LostEvents(Event, frozen=True, omit_defaults=True):
    """Events that never became flows, with where they were lost (Hubble's LostEvent)."""

    source: str  # PERF_EVENT_RING_BUFFER | OBSERVER_EVENTS_QUEUE | HUBBLE_RING_BUFFER
    num_events_lost: int
    cpu: int | None = None


class FlowBatch(Event, frozen=True):
    """Flows in the order they were observed, many to a message: the `flow` stream for a
    subscriber that takes it in bulk (one message per pass over the ring, up to 512 flows)."""

    flows: tuple[Flow, ...]


class FlowRecord(msgspec.Struct, frozen=True, omit_defaults=True, gc=False):
    """One line of `pylium observe -o json` (Hubble's GetFlowsResponse)."""

    node_name: str
    time: str
    flow: Flow | None = None
    lost_events: LostEvents | None = None

"""The bus vocabulary: the wire envelope and every event type, as typed, frozen models.

Wire format (ZeroMQ multipart, UTF-8 JSON)::

    [topic, header, payload]

``topic`` is the dotted lowercase event type (``plugin.health``), so subscribers filter by
prefix. ``header`` is a :class:`Header`. ``payload`` is the event's model as JSON.

Two kinds of events:

- **stream** events happen once (``agent.ready``, ``flow``); a late subscriber does not see
  earlier ones.
- **state** events carry a whole keyed object and its revision (``header.key``,
  ``header.rev``). When someone subscribes, the publisher that owns a state family re-sends
  the current object of every key (``header.replay = true``), then ``<family>.synced``.
  Apply a state event only if its revision is newer than the one you hold; a replay may
  repeat an object you already have.

Loss detection: ``header.seq`` counts, from 1, the messages one publisher sent on one topic.
A jump means messages were lost (a slow subscriber's queue overflowed). Replayed messages
repeat the current ``seq`` and are not counted.

This module is the shared vocabulary: plugins never import each other, so every event type
they exchange is declared here (third-party plugins add theirs with ``declare.event_type``).
``docs/events.md`` is generated from it.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import msgspec

SCHEMA_VERSION = 1
TOPIC_RE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$")
SYNCED = "synced"


class Header(msgspec.Struct, frozen=True, omit_defaults=True, forbid_unknown_fields=True):
    """Second frame of every message."""

    v: int  # schema version of the envelope: 1
    type: str  # the event type, equal to the topic frame
    source: str  # publishing plugin ("core" for the agent itself)
    node: str  # node name of the publishing agent
    seq: int  # per-publisher, per-topic sequence number, from 1
    time: int  # publication time, nanoseconds since the Unix epoch
    key: str | None = None  # state events: the object's key
    rev: int | None = None  # state events: the object's revision
    replay: bool = False  # true when re-sent for a new subscriber


class Event(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Base of every payload model."""

    topic: ClassVar[str]


@dataclass(frozen=True)
class EventType:
    topic: str
    model: type[Event]
    kind: Literal["stream", "state"]
    family: str | None = None  # state events: the family whose owner replays it
    key: str | None = None  # state events: the payload field holding the key
    deletes: bool = False  # state events: this topic removes the key
    owner: str = "core"  # which plugin publishes it (documentation)

    @property
    def doc(self) -> str:
        return inspect.cleandoc(self.model.__doc__ or "")


class Registry:
    """Known event types; publishers validate against it, subscribers decode with it."""

    def __init__(self) -> None:
        self.types: dict[str, EventType] = {}
        self._decoders: dict[str, msgspec.json.Decoder] = {}

    def add(self, et: EventType) -> None:
        if not TOPIC_RE.match(et.topic) or et.topic.endswith("." + SYNCED):
            raise ValueError(f"event topic {et.topic!r} must be dotted lowercase and not end in .{SYNCED}")
        if et.topic in self.types and self.types[et.topic] != et:
            raise ValueError(f"event topic {et.topic!r} is already registered by {self.types[et.topic].owner}")
        if et.kind == "state" and (not et.family or not et.key or et.key not in et.model.__struct_fields__):
            raise ValueError(f"state event {et.topic!r} needs a family and a key field of {et.model.__name__}")
        self.types[et.topic] = et
        self._decoders[et.topic] = msgspec.json.Decoder(et.model)

    def copy(self) -> Registry:
        other = Registry()
        other.types = dict(self.types)
        other._decoders = dict(self._decoders)
        return other

    def families(self) -> set[str]:
        return {et.family for et in self.types.values() if et.family}

    def lookup(self, topic: str) -> EventType | None:
        et = self.types.get(topic)
        if et is None and topic.endswith("." + SYNCED) and topic[: -len(SYNCED) - 1] in self.families():
            return SYNCED_TYPE
        return et

    def decode(self, topic: str, payload: bytes | memoryview) -> Event:
        et = self.lookup(topic)
        if et is None:
            raise UnknownTopic(topic)
        decoder = self._decoders.get(et.topic) or _SYNCED_DECODER
        return decoder.decode(payload)


class UnknownTopic(Exception):
    pass


VOCABULARY = Registry()


def stream(topic: str, owner: str = "core"):
    def register(model: type[Event]) -> type[Event]:
        model.topic = topic
        VOCABULARY.add(EventType(topic, model, "stream", owner=owner))
        return model

    return register


def state(topic: str, *, family: str, key: str, deletes: bool = False, owner: str = "core"):
    def register(model: type[Event]) -> type[Event]:
        model.topic = topic
        VOCABULARY.add(EventType(topic, model, "state", family=family, key=key, deletes=deletes, owner=owner))
        return model

    return register


# ============================================================================================
# Markers
# ============================================================================================


class Synced(Event):
    """Sent as ``<family>.synced`` after the replay of a state family to a new subscriber:
    everything that existed when you subscribed has now been sent to you."""

    family: str  # the state family, e.g. "plugin.health"
    count: int  # how many objects the replay carried


SYNCED_TYPE = EventType("<family>.synced", Synced, "stream")
_SYNCED_DECODER = msgspec.json.Decoder(Synced)


# ============================================================================================
# Agent
# ============================================================================================


@stream("agent.ready")
class AgentReady(Event):
    """The agent finished starting every plugin and is serving."""

    node: str
    version: str
    plugins: list[str]  # enabled plugins in start order


@stream("agent.stopping")
class AgentStopping(Event):
    """The agent begins to stop its plugins (SIGTERM, failure or request)."""

    node: str
    reason: str


@state("plugin.health", family="plugin.health", key="plugin")
class PluginHealth(Event):
    """A plugin's health changed (STARTING, OK, DEGRADED or STOPPED), with the reason."""

    plugin: str
    health: Literal["STARTING", "OK", "DEGRADED", "STOPPED"]
    message: str


# ============================================================================================
# Endpoints
# ============================================================================================


class EndpointAddress(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    ip: str
    family: Literal["ipv4", "ipv6"]
    cidr: str  # the address with its block's prefix length
    gateway: str


class _EndpointEvent(Event):
    id: int  # endpoint id, unique on its node
    container_id: str
    ifname: str  # interface inside the container
    netns: str
    state: str  # Cilium's endpoint states: regenerating, ready, disconnecting, ...
    identity: int  # security identity (reserved:init = 5 until labels are known)
    labels: list[str]  # "source:key=value"
    addresses: list[EndpointAddress]
    host_ifname: str  # host side of the veth
    host_ifindex: int
    mac: str
    host_mac: str
    namespace: str = ""  # the pod's namespace (K8S_POD_NAMESPACE), when known
    pod_name: str = ""  # the pod's name (K8S_POD_NAME), when known


@state("endpoint.created", family="endpoint", key="id")
class EndpointCreated(_EndpointEvent):
    """An endpoint was created and is fully programmed: it can send and receive."""


@state("endpoint.updated", family="endpoint", key="id")
class EndpointUpdated(_EndpointEvent):
    """An endpoint changed: labels, identity or state."""


@state("endpoint.deleted", family="endpoint", key="id", deletes=True)
class EndpointDeleted(_EndpointEvent):
    """An endpoint was removed (CNI DEL, garbage collection, or its namespace vanished)."""


# ============================================================================================
# Nodes
# ============================================================================================


@state("node.changed", family="node", key="name")
class NodeChanged(Event):
    """A node of the cluster joined or changed (this node too, with `local: true`): its
    addresses, pod CIDRs and the annotations its plugins publish (e.g. an encryption key)."""

    name: str
    cluster: str
    local: bool
    ipv4: str  # the node's address for its peers (tunnel endpoint, direct routes, health)
    ipv6: str
    pod_cidrs: list[str]
    health_ipv4: str
    boot_id: str
    annotations: dict[str, str]


@state("node.deleted", family="node", key="name", deletes=True)
class NodeDeleted(Event):
    """A node left the cluster: its lease in the cluster store ran out, or it was removed."""

    name: str
    cluster: str


@state("connectivity.tunnel", family="connectivity.tunnel", key="node", owner="connectivity")
class TunnelDevice(Event):
    """This node's tunnel device (routingMode tunnel), where packets from other nodes arrive:
    plugins that handle traffic from outside the node attach to it too (the load balancer, for
    replies of backends on other nodes)."""

    node: str
    device: str
    ifindex: int
    protocol: Literal["vxlan", "geneve"]
    port: int


# ============================================================================================
# IPAM
# ============================================================================================


@stream("ipam.pool.exhausted", owner="ipam")
class IpamPoolExhausted(Event):
    """An allocation failed: a pool has no free address of a family left on this node."""

    pool: str
    family: Literal["ipv4", "ipv6"]
    cidrs: list[str]  # the pool's CIDRs
    blocks: list[str]  # this node's blocks of the pool
    used: int
    total: int


@state("policy.changed", family="policy", key="node", owner="policy")
class PolicyChanged(Event):
    """The policy in force on a node changed: its revision, and the name of every rule by the
    id datapath records carry (flows' ingress_allowed_by, egress_denied_by ...)."""

    node: str
    revision: int
    rules: dict[str, str]  # rule id -> "Kind/namespace/name"


class HttpHeader(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    key: str
    value: str


class HttpInfo(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    code: int = 0  # responses: the status
    method: str = ""
    url: str = ""
    protocol: str = ""  # HTTP/1.1
    headers: list[HttpHeader] = []


class DnsInfo(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    query: str = ""  # the name asked for, with its final dot
    ips: list[str] = []  # responses: A and AAAA answers
    ttl: int = 0  # responses: the smallest TTL of those answers
    cnames: list[str] = []
    rcode: int = 0
    qtypes: list[str] = []  # A, AAAA ...
    rrtypes: list[str] = []  # the answer's record types
    observation_source: str = "proxy"


@stream("l7", owner="policy")
class L7Record(Event):
    """One request or response an L7 proxy handled (published by the proxy process while an
    agent is there to take it): the connection's ends with their identities, the verdict
    (FORWARDED, DROPPED, ERROR), the HTTP or DNS fields, the W3C trace id of a `traceparent`
    header and the ids of the rules that decided. Flows of type L7 are made of these."""

    node: str
    kind: Literal["REQUEST", "RESPONSE"]
    verdict: Literal["FORWARDED", "DROPPED", "ERROR"]
    time: int  # nanoseconds since the Unix epoch
    proxy: Literal["http", "dns"]
    direction: Literal["INGRESS", "EGRESS"]
    endpoint: int  # the local endpoint whose policy applies
    source_ip: str
    source_port: int
    source_identity: int
    destination_ip: str
    destination_port: int
    destination_identity: int
    latency_ns: int = 0  # responses: since the request
    transport: Literal["TCP", "UDP"] = "TCP"
    http: HttpInfo | None = None
    dns: DnsInfo | None = None
    trace_id: str = ""
    rule_ids: list[int] = []


# ============================================================================================
# Services (load balancing)
# ============================================================================================


class ServiceBackend(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    address: str
    port: int
    state: Literal["active", "terminating", "terminating-not-serving", "quarantined"]


@state("service.changed", family="service", key="frontend", owner="lb")
class ServiceChanged(Event):
    """A frontend (address:port/protocol; address 0.0.0.0 for a NodePort) as the datapath now
    serves it: its id, type, service and backends with their states."""

    frontend: str
    id: int
    type: Literal["ClusterIP", "NodePort", "ExternalIPs", "LoadBalancer"]
    service: str  # namespace/name
    backends: list[ServiceBackend]


@state("service.deleted", family="service", key="frontend", deletes=True, owner="lb")
class ServiceDeleted(Event):
    """A frontend is no longer served."""

    frontend: str
    service: str


# ============================================================================================
# Encoding helpers
# ============================================================================================

_encoder = msgspec.json.Encoder()
_header_decoder = msgspec.json.Decoder(Header)


def encode(obj: Any) -> bytes:
    return _encoder.encode(obj)


def decode_header(raw: bytes | memoryview) -> Header:
    return _header_decoder.decode(raw)


def to_builtins(event: Event) -> dict[str, Any]:
    return msgspec.to_builtins(event)

"""From services and their endpoint slices to what the datapath serves: frontends (address,
port, protocol) with their backends and states. Pure logic; the writer puts it in maps."""

from __future__ import annotations

import hashlib
import socket
from dataclasses import dataclass, field

import msgspec

from pylium.plugins.lb.maps import PROTOCOL_NAMES, PROTOCOLS
from pylium.plugins.lb.model import (SERVICE_NAME_LABEL, EndpointSlice, ModelError, Service, ServicePort,
                                     target_port)


def backend_key(address: str, port: int, protocol: str) -> int:
    """A backend's identity (address, port, protocol) as one int: the writer keeps one per
    backend, and an int costs half a tuple and holds no string."""
    return int.from_bytes(socket.inet_aton(address), "big") << 24 | port << 8 | PROTOCOLS[protocol]


def frontend_key(address: str, port: int, protocol: str) -> int:
    """A frontend's identity, as backend_key (address "" for NodePort: 0.0.0.0). One int per
    frontend where a tuple of three would cost ~0.15 KiB with its strings."""
    return backend_key(address or "0.0.0.0", port, protocol)


def key_parts(key: int) -> tuple[str, int, str]:
    """(address, port, protocol) of a frontend_key; address "" for 0.0.0.0."""
    address = socket.inet_ntoa((key >> 24).to_bytes(4, "big"))
    return "" if address == "0.0.0.0" else address, key >> 8 & 0xFFFF, PROTOCOL_NAMES.get(key & 0xFF, "TCP")


def key_label(key: int) -> str:
    address, port, protocol = key_parts(key)
    return f"{address or '0.0.0.0'}:{port}/{protocol}"


class Backend(msgspec.Struct, array_like=True, order=True, omit_defaults=True):
    """Ordered by address first."""

    address: str
    port: int
    protocol: str
    state: str = "active"  # active, terminating, terminating-not-serving, quarantined
    node: str = ""

    @property
    def key(self) -> int:
        """backend_key(): what the writer's tables key on (computed: kept, it cost 9 bytes of
        every packed backend)."""
        return backend_key(self.address, self.port, self.protocol)


class Frontend(msgspec.Struct, array_like=True, omit_defaults=True):
    """Kept packed (`pack`/`unpack`) once written, and compressed by the writer: a frontend
    with four backends is ~0.1 KiB of bytes instead of ~1 KiB of objects."""

    address: str  # "" for NodePort: any address of the node's devices
    port: int
    protocol: str
    type: str  # ClusterIP, NodePort, ExternalIPs, LoadBalancer
    service: tuple[str, str]
    port_name: str
    backends: tuple[Backend, ...]  # for clients in the cluster (internalTrafficPolicy)
    external_backends: tuple[Backend, ...] | None = None  # for clients outside, when different
    affinity_timeout: int = 0
    external_local: bool = False

    @property
    def key(self) -> int:
        return frontend_key(self.address, self.port, self.protocol)

    @property
    def external(self) -> bool:
        return self.type != "ClusterIP"

    def label(self) -> str:
        return f"{self.address or '0.0.0.0'}:{self.port}/{self.protocol}"

    def pack(self) -> bytes:
        return _ENCODER.encode(self)

    @staticmethod
    def unpack(packed: bytes) -> Frontend:
        return _DECODER.decode(packed)


_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(Frontend)


@dataclass
class Problem:
    """Why (part of) a service is not served: the object, its file and the field."""

    kind: str
    key: tuple[str, str]
    file: str
    error: ModelError
    entry: object = None  # the manifest entry found bad (reported once)
    kept: object = None  # the entry in force instead: the last good version, if any

    def __str__(self) -> str:
        return f"{self.file}: {self.kind} {self.key[0]}/{self.key[1]}: {self.error}"


@dataclass
class Catalog:
    """What the load balancer needs to know of the services and slices in force (their
    manifest entries are the manifests index's own, or a Problem's `kept`)."""

    # service -> its slices' keys: the key itself for one slice (most services), else a sorted
    # tuple of keys (a tuple for each would cost 1 MiB per 20,000 services)
    slices_of: dict[tuple[str, str], tuple] = field(default_factory=dict)
    local: set[tuple[str, str]] = field(default_factory=set)  # services with a Local traffic policy
    node_ports: dict[tuple[str, str], set[int]] = field(default_factory=dict)  # the ones services name

    def put_service(self, key: tuple[str, str], service: Service) -> None:
        if service.internal_local or service.external_local:
            self.local.add(key)
        if any(p.node_port for p in service.ports):
            self.node_ports[key] = {p.node_port for p in service.ports if p.node_port}

    def drop_service(self, key: tuple[str, str], entry=None) -> tuple[str, str]:
        self.local.discard(key)
        self.node_ports.pop(key, None)
        return key

    def slice_keys(self, service: tuple[str, str]) -> tuple[tuple[str, str], ...]:
        keys = self.slices_of.get(service, ())
        return (keys,) if keys and isinstance(keys[0], str) else keys

    def put_slice(self, key: tuple[str, str], slice_: EndpointSlice, service: tuple[str, str] | None = None) -> None:
        """`service`: the service's key as the caller holds it (one tuple for all its tables)."""
        service = service or (slice_.namespace, slice_.service)
        self._set_slices(service, {*self.slice_keys(service), key})

    def drop_slice(self, key: tuple[str, str], entry) -> tuple[str, str]:
        """`entry`: the slice's manifest entry in force. Returns the service the slice
        belonged to (named in its label)."""
        labels = (entry.doc.get("metadata") or {}).get("labels") or {}
        service = (key[0], labels[SERVICE_NAME_LABEL])
        self._set_slices(service, set(self.slice_keys(service)) - {key})
        return service

    def _set_slices(self, service: tuple[str, str], keys: set) -> None:
        if not keys:
            self.slices_of.pop(service, None)
        else:
            self.slices_of[service] = next(iter(keys)) if len(keys) == 1 else tuple(sorted(keys))


def node_port_for(service: Service, port: ServicePort, taken: set[int], port_range: tuple[int, int]) -> int:
    """A NodePort for a port that has none written: derived from the service's name, so every
    node picks the same one, and the next free one on a collision."""
    low, high = port_range
    span = high - low + 1
    start = int.from_bytes(hashlib.sha256(f"{service.namespace}/{service.name}/{port.port}/{port.protocol}"
                                          .encode()).digest()[:4], "big") % span
    for i in range(span):
        candidate = low + (start + i) % span
        if candidate not in taken:
            return candidate
    raise ModelError("spec.ports", f"no free NodePort left in {low}-{high}")


def backends_of(service: Service, port: ServicePort, slices: list[EndpointSlice]) -> tuple[Backend, ...]:
    number = target_port(port, slices)
    if number is None:
        if not any(s.ports for s in slices):  # slices without ports: no port to reach yet
            return ()
        i = service.ports.index(port)
        raise ModelError(f"spec.ports[{i}].targetPort", f"no port named {port.target_port!r} in the "
                                                        f"service's EndpointSlices")
    seen: dict[str, Backend] = {}
    for s in slices:
        for e in s.endpoints:
            b = Backend(e.address, number, port.protocol, e.state, e.node_name)
            if e.address not in seen or _rank(b.state) < _rank(seen[e.address].state):
                seen[e.address] = b
    return tuple(sorted(seen.values()))


def _rank(state: str) -> int:
    return ("active", "terminating", "terminating-not-serving", "quarantined").index(state)


def frontends(service: Service, slices: list[EndpointSlice], is_local, node_ports: set[int],
              port_range: tuple[int, int]) -> list[Frontend]:
    """The frontends of one service. `is_local(backend)`: the backend runs on this node.
    Raises ModelError for what only shows with the slices (an unknown targetPort name)."""
    out = []
    if service.type == "ExternalName" or (not service.cluster_ips and service.type == "ClusterIP"):
        return out  # headless or ExternalName: nothing to balance
    for port in service.ports:
        every = backends_of(service, port, slices)
        local = tuple(b for b in every if is_local(b))
        internal = local if service.internal_local else every
        external = local if service.external_local else every
        common = dict(service=service.key, port_name=port.name, affinity_timeout=service.affinity_timeout,
                      external_local=service.external_local)
        for ip in service.cluster_ips:
            out.append(Frontend(ip, port.port, port.protocol, "ClusterIP", backends=internal, **common))
        exposed = [(ip, "ExternalIPs") for ip in service.external_ips] + [(ip, "LoadBalancer") for ip in service.lb_ips]
        if service.type in ("NodePort", "LoadBalancer"):
            node_port = port.node_port or node_port_for(service, port, node_ports, port_range)
            node_ports.add(node_port)
            out.append(Frontend("", node_port, port.protocol, "NodePort", backends=internal,
                                external_backends=external if external != internal else None, **common))
        for ip, kind in exposed:
            out.append(Frontend(ip, port.port, port.protocol, kind, backends=internal,
                                external_backends=external if external != internal else None, **common))
    return out

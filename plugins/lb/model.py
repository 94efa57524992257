"""Kubernetes Service and EndpointSlice objects, as the load balancer needs them.

Parsing checks what the datapath relies on and names the field of a bad value
(`spec.ports[1].port: 70000 is not a port (1-65535)`); an object that fails stays out, all
of it: the caller keeps its previous version in force."""

from __future__ import annotations

import ipaddress
import re
import reprlib
import socket
import sys
import msgspec

from pylium.plugins.lb.maps import PROTOCOLS

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
PORT_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName")
DEFAULT_AFFINITY_TIMEOUT = 10800  # 3 h, as Kubernetes


class ModelError(ValueError):
    """A field with a bad value: `path` is where, in the object."""

    def __init__(self, path: str, message: str):
        super().__init__(f"{path}: {message}")
        self.path = path


class ServicePort(msgspec.Struct, frozen=True, array_like=True):
    name: str
    protocol: str
    port: int
    target_port: int | str  # a number or the name of a port
    node_port: int = 0


class Service(msgspec.Struct, frozen=True, array_like=True):
    namespace: str
    name: str
    type: str = "ClusterIP"
    cluster_ips: tuple[str, ...] = ()  # IPv4 only here; empty: headless or ExternalName
    ports: tuple[ServicePort, ...] = ()
    external_ips: tuple[str, ...] = ()
    lb_ips: tuple[str, ...] = ()
    affinity_timeout: int = 0  # seconds; 0: no session affinity
    external_local: bool = False  # externalTrafficPolicy: Local
    internal_local: bool = False  # internalTrafficPolicy: Local

    @property
    def key(self) -> tuple[str, str]:
        return self.namespace, self.name


class Endpoint(msgspec.Struct, array_like=True):
    address: str
    ready: bool = True
    serving: bool = True
    terminating: bool = False
    node_name: str = ""

    @property
    def state(self) -> str:
        """Backend state from the conditions, as Cilium derives it."""
        if self.ready and not self.terminating:
            return "active"
        if self.terminating:
            return "terminating" if self.serving else "terminating-not-serving"
        return "quarantined"


class EndpointSlice(msgspec.Struct, frozen=True, array_like=True):
    namespace: str
    name: str
    service: str
    ports: tuple[tuple[str, str, int], ...] = ()  # (name, protocol, port)
    endpoints: tuple[Endpoint, ...] = ()


# Parsed objects wait packed while a change is computed: thousands of them as objects at once,
# freed between what the load balancer keeps, would leave the heap fragmented (~1 KiB per service)
_PACK = msgspec.msgpack.Encoder()
_UNPACK = {Service: msgspec.msgpack.Decoder(Service), EndpointSlice: msgspec.msgpack.Decoder(EndpointSlice)}


def pack(obj: Service | EndpointSlice) -> bytes:
    return _PACK.encode(obj)


def unpack(kind: type, packed: bytes) -> Service | EndpointSlice:
    return _UNPACK[kind].decode(packed)


_show = reprlib.repr  # a value in a message: shortened however large or deeply nested it is


def _mapping(value, path: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ModelError(path, f"must be a mapping, not {type(value).__name__}")
    return value


def _list(value, path: str) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ModelError(path, f"must be a list, not {type(value).__name__}")
    return value


def _port(value, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ModelError(path, f"{_show(value)} is not a port (1-65535)")
    return value


def _protocol(value, path: str) -> str:
    value = "TCP" if value is None else value
    if not isinstance(value, str) or value not in PROTOCOLS:
        raise ModelError(path, f"{_show(value)} is not a protocol (TCP, UDP, SCTP)")
    return value


def _ip(value, path: str) -> tuple[int, str]:
    """(4 or 6, the address in its canonical form)."""
    if not isinstance(value, str):  # ipaddress would take a number (True: 0.0.0.1)
        raise ModelError(path, f"{_show(value)} is not an IP address")
    try:
        socket.inet_pton(socket.AF_INET, value)  # the common case, without ipaddress' cost
        return 4, value
    except (OSError, ValueError):  # ValueError: a NUL in the text
        pass
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        raise ModelError(path, f"{_show(value)} is not an IP address") from None
    return address.version, str(address)


def _v4(values: list, path: str) -> tuple[str, ...]:
    """IPv4 addresses of a list (IPv6 ones are checked, then left to a later version)."""
    return _v4_at([(f"{path}[{i}]", v) for i, v in enumerate(values)])


def _v4_at(items: list[tuple[str, object]]) -> tuple[str, ...]:
    """The IPv4 ones of (path, address) pairs, each address checked."""
    return tuple(a for path, v in items for version, a in [_ip(v, path)] if version == 4)


def _target_port(value, path: str) -> int | str:
    """targetPort: a port number (or its digits as a string) or the name of a port."""
    if isinstance(value, str) and not (value.isascii() and value.isdigit()):  # "²".isdigit() too
        if not PORT_NAME.fullmatch(value) or len(value) > 15:
            raise ModelError(path, f"{_show(value)} is neither a port nor a port name")
        return value
    if isinstance(value, str) and len(value) <= 5:  # longer: no port, and int() may refuse it
        value = int(value)
    return _port(value, path)


def _bool(value, default: bool, path: str) -> bool:
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ModelError(path, f"{_show(value)} is not true or false")
    return value


def _meta(doc: dict) -> tuple[str, str]:
    """(namespace, name); the namespace interned: the catalog keeps one per slice."""
    meta = _mapping(doc.get("metadata"), "metadata")
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise ModelError("metadata.name", "required")
    namespace = meta.get("namespace") or "default"
    if not isinstance(namespace, str):
        raise ModelError("metadata.namespace", f"{_show(namespace)} is not a namespace name")
    return sys.intern(namespace), name


def parse_service(doc: dict, node_port_range: tuple[int, int]) -> Service:
    namespace, name = _meta(doc)
    spec = _mapping(doc.get("spec"), "spec")
    kind = spec.get("type") or "ClusterIP"
    if kind not in SERVICE_TYPES:
        raise ModelError("spec.type", f"{_show(kind)} is not one of {', '.join(SERVICE_TYPES)}")
    ips = _list(spec.get("clusterIPs"), "spec.clusterIPs") or (
        [spec["clusterIP"]] if spec.get("clusterIP") not in (None, "") else [])
    if ips in (["None"], []):
        cluster_ips = ()
    elif spec.get("clusterIPs"):
        cluster_ips = _v4(ips, "spec.clusterIPs")
    else:
        version, ip = _ip(ips[0], "spec.clusterIP")
        cluster_ips = (ip,) if version == 4 else ()
    if kind == "ExternalName":
        return Service(namespace, name, kind)
    ports, seen, names = [], set(), set()
    raw_ports = _list(spec.get("ports"), "spec.ports")
    for i, p in enumerate(raw_ports):
        path = f"spec.ports[{i}]"
        p = _mapping(p, path)
        pname = p.get("name") or ""
        if len(raw_ports) > 1 and not pname:
            raise ModelError(f"{path}.name", "required when a service has more than one port")
        if pname and (not isinstance(pname, str) or not PORT_NAME.fullmatch(pname)):
            raise ModelError(f"{path}.name", f"{_show(pname)} is not a port name (lower-case letters, digits, '-')")
        if pname in names:
            raise ModelError(f"{path}.name", f"duplicate port name {_show(pname)}")
        names.add(pname)
        proto = _protocol(p.get("protocol"), f"{path}.protocol")
        number = _port(p.get("port"), f"{path}.port")
        if (number, proto) in seen:
            raise ModelError(f"{path}.port", f"duplicate port {number}/{proto}")
        seen.add((number, proto))
        target = _target_port(p.get("targetPort", number), f"{path}.targetPort")
        node_port = 0
        if p.get("nodePort") is not None:
            if kind not in ("NodePort", "LoadBalancer"):
                raise ModelError(f"{path}.nodePort", f"only for types NodePort and LoadBalancer, not {kind}")
            node_port = _port(p["nodePort"], f"{path}.nodePort")
            low, high = node_port_range
            if not low <= node_port <= high:
                raise ModelError(f"{path}.nodePort", f"{node_port} is outside nodePort.range {low}-{high}")
        ports.append(ServicePort(pname, proto, number, target, node_port))
    affinity = spec.get("sessionAffinity") or "None"
    if affinity not in ("None", "ClientIP"):
        raise ModelError("spec.sessionAffinity", f"{_show(affinity)} is not None or ClientIP")
    timeout = 0
    if affinity == "ClientIP":
        cfg = _mapping(_mapping(spec.get("sessionAffinityConfig"), "spec.sessionAffinityConfig").get("clientIP"),
                       "spec.sessionAffinityConfig.clientIP")
        timeout = cfg.get("timeoutSeconds", DEFAULT_AFFINITY_TIMEOUT)
        if isinstance(timeout, bool) or not isinstance(timeout, int) or not 1 <= timeout <= 86400:
            raise ModelError("spec.sessionAffinityConfig.clientIP.timeoutSeconds", f"{_show(timeout)} is not 1-86400")
    policies = {}
    for key in ("externalTrafficPolicy", "internalTrafficPolicy"):
        value = spec.get(key) or "Cluster"
        if value not in ("Cluster", "Local"):
            raise ModelError(f"spec.{key}", f"{_show(value)} is not Cluster or Local")
        policies[key] = value == "Local"
    status = _mapping(doc.get("status"), "status")
    ingress = _list(_mapping(status.get("loadBalancer"), "status.loadBalancer").get("ingress"),
                    "status.loadBalancer.ingress")
    lb_ips = [(f"status.loadBalancer.ingress[{i}].ip", _mapping(g, f"status.loadBalancer.ingress[{i}]").get("ip"))
              for i, g in enumerate(ingress)]
    return Service(namespace, name, kind, cluster_ips, tuple(ports),
                   _v4(_list(spec.get("externalIPs"), "spec.externalIPs"), "spec.externalIPs"),
                   _v4_at([(at, ip) for at, ip in lb_ips if ip]) if kind == "LoadBalancer" else (),
                   timeout, policies["externalTrafficPolicy"], policies["internalTrafficPolicy"])


def parse_endpoint_slice(doc: dict) -> EndpointSlice | None:
    """None for slices of other address types (IPv6, FQDN): not served by this version."""
    namespace, name = _meta(doc)
    labels = _mapping(_mapping(doc.get("metadata"), "metadata").get("labels"), "metadata.labels")
    service = labels.get(SERVICE_NAME_LABEL)
    if not isinstance(service, str) or not service:
        raise ModelError(f"metadata.labels[{SERVICE_NAME_LABEL}]", "required: the service this slice belongs to")
    family = doc.get("addressType")
    if family not in ("IPv4", "IPv6", "FQDN"):
        raise ModelError("addressType", f"{_show(family)} is not IPv4, IPv6 or FQDN")
    ports, seen = [], set()
    for i, p in enumerate(_list(doc.get("ports"), "ports")):
        p = _mapping(p, f"ports[{i}]")
        pname = p.get("name") or ""
        if not isinstance(pname, str):
            raise ModelError(f"ports[{i}].name", f"{_show(pname)} is not a port name")
        proto = _protocol(p.get("protocol"), f"ports[{i}].protocol")
        if (pname, proto) in seen:
            raise ModelError(f"ports[{i}].name", f"duplicate port name {_show(pname)}")
        seen.add((pname, proto))
        ports.append((pname, proto, _port(p.get("port"), f"ports[{i}].port")))
    endpoints = []
    for i, e in enumerate(_list(doc.get("endpoints"), "endpoints")):
        path = f"endpoints[{i}]"
        e = _mapping(e, path)
        addresses = _list(e.get("addresses"), f"{path}.addresses")
        if not addresses:
            raise ModelError(f"{path}.addresses", "required: at least one address")
        cond = _mapping(e.get("conditions"), f"{path}.conditions")
        ready = _bool(cond.get("ready"), True, f"{path}.conditions.ready")
        serving = _bool(cond.get("serving"), ready, f"{path}.conditions.serving")
        terminating = _bool(cond.get("terminating"), False, f"{path}.conditions.terminating")
        node = e.get("nodeName") or ""
        if not isinstance(node, str):
            raise ModelError(f"{path}.nodeName", f"{_show(node)} is not a node name")
        for j, a in enumerate(addresses if family != "FQDN" else ()):
            version, ip = _ip(a, f"{path}.addresses[{j}]")
            if version != (4 if family == "IPv4" else 6):
                raise ModelError(f"{path}.addresses[{j}]", f"{_show(a)} is not an {family} address")
            endpoints.append(Endpoint(ip, ready, serving, terminating, node))
    if family != "IPv4":
        return None
    return EndpointSlice(namespace, name, service, tuple(ports), tuple(endpoints))


def target_port(port: ServicePort, slices: list[EndpointSlice]) -> int | None:
    """The backends' port for a service port: the slices' port of the same name (Kubernetes
    resolves named target ports into it), else the numeric targetPort, else the slices' port
    named like targetPort. None: a named targetPort no slice names."""
    names = [(n, proto, num) for s in slices for n, proto, num in s.ports if proto == port.protocol]
    for n, _, num in names:
        if n == port.name:
            return num
    if isinstance(port.target_port, int):
        return port.target_port
    for n, _, num in names:
        if n == port.target_port:
            return num
    return None

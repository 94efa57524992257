"""The policy language, parsed: Cilium's CiliumNetworkPolicy / CiliumClusterwideNetworkPolicy
(`cilium.io/v2`) and Kubernetes NetworkPolicy (`networking.k8s.io/v1`) become one model of
rules. Parsing validates everything first: a bad document raises PolicyError naming the field
path, and nothing of it is used.

Labels are "source:key" -> value, as endpoints carry them (k8s:app=web, reserved:host).
A selector key without a source matches any source (Cilium's `any:`).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import ipaddress
import re
import reprlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, NoReturn

from pylium.plugins.policy import l7

NAMESPACE_LABEL = "k8s:io.kubernetes.pod.namespace"
NAMESPACE_LABELS_PREFIX = "k8s:io.cilium.k8s.namespace.labels."
POLICY_NAME_LABEL = "io.cilium.k8s.policy.name"

ENTITIES = ("all", "world", "world-ipv4", "world-ipv6", "cluster", "cluster-mesh", "host", "init", "ingress",
            "unmanaged", "remote-node", "health", "none", "kube-apiserver")
PROTOCOLS = ("TCP", "UDP", "SCTP", "ANY")


class PolicyError(ValueError):
    """A document that cannot be used: `path` names the field (spec.ingress[0].toPorts[0].ports[0].port)."""

    def __init__(self, path: str, message: str, origin: str = ""):
        self.path, self.message, self.origin = path, message, origin
        where = f"{origin}: " if origin else ""
        super().__init__(f"{where}{path}: {message}" if path else f"{where}{message}")


@dataclass(frozen=True)
class Requirement:
    key: str  # "k8s:app", "app" (any source), "reserved:host"
    operator: str  # In, NotIn, Exists, DoesNotExist
    values: tuple[str, ...] = ()


@dataclass(frozen=True)
class Selector:
    """matchLabels become In requirements with one value. No requirement selects everything."""

    requirements: tuple[Requirement, ...] = ()


@dataclass(frozen=True)
class CidrSet:
    cidr: str  # normalised network, e.g. "10.0.0.0/8"
    excepts: tuple[str, ...] = ()


@dataclass(frozen=True)
class PortRange:
    port: int  # 0: any port
    end_port: int = 0  # 0: just `port`
    protocol: str = "ANY"  # TCP, UDP, SCTP, ANY
    http: tuple[l7.HttpRule, ...] | None = None  # L7: requests the proxy lets through (None: no L7 rules)
    dns: tuple[l7.DnsRule, ...] | None = None  # L7: names the DNS proxy lets pods look up (None: no L7 rules)


@dataclass(frozen=True)
class Icmp:
    family: int  # 4 or 6
    type: int


@dataclass(frozen=True)
class PeerRule:
    """One element of ingress/egress/ingressDeny/egressDeny. L3 peers are alternatives (any
    matches); ports and icmps restrict them. `l3` False (no peer field given at all) means
    every peer. An element with neither peers nor ports nor icmps allows nothing."""

    l3: bool = False
    endpoints: tuple[Selector, ...] = ()  # fromEndpoints / toEndpoints / NetworkPolicy pod+namespace selectors
    cidrs: tuple[CidrSet, ...] = ()  # fromCIDR / fromCIDRSet / ipBlock
    entities: tuple[str, ...] = ()
    ports: tuple[PortRange, ...] = ()  # empty: any port (unless icmps are given)
    icmps: tuple[Icmp, ...] = ()
    empty: bool = False  # `{}`: selects nothing (Cilium's way to write default deny)
    fqdns: tuple[l7.DnsRule, ...] = ()  # toFQDNs: addresses pods looked up under these names


@dataclass(frozen=True)
class Rule:
    subject: Selector  # endpointSelector / podSelector, namespace-scoped already
    ingress: tuple[PeerRule, ...] = ()
    ingress_deny: tuple[PeerRule, ...] = ()
    egress: tuple[PeerRule, ...] = ()
    egress_deny: tuple[PeerRule, ...] = ()
    # whether the rule puts the direction into default deny (Cilium: a rule with an ingress
    # section does, unless enableDefaultDeny.ingress is false; NetworkPolicy: policyTypes)
    default_deny_ingress: bool = False
    default_deny_egress: bool = False
    description: str = ""


@dataclass(frozen=True)
class Policy:
    kind: str  # CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy, NetworkPolicy
    name: str
    namespace: str  # "" for cluster-wide
    rules: tuple[Rule, ...]
    origin: str = ""  # file or "import"
    audit: bool = False  # annotation policy.pylium.io/audit-mode: "true"
    labels: tuple[str, ...] = field(default_factory=tuple)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.kind, self.namespace, self.name)

    @property
    def display_name(self) -> str:
        return f"{self.namespace}/{self.name}" if self.namespace else self.name


# ---------------------------------------------------------------------------------------------
# Parsing. Every helper takes the value and its path; a bad value raises PolicyError there.
# A field set to null is treated as absent, as Kubernetes' JSON decoding does.

CNP, CCNP, KNP = "CiliumNetworkPolicy", "CiliumClusterwideNetworkPolicy", "NetworkPolicy"
API_VERSIONS = {CNP: "cilium.io/v2", CCNP: "cilium.io/v2", KNP: "networking.k8s.io/v1"}
AUDIT_ANNOTATION = "policy.pylium.io/audit-mode"
OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")
MAX_PORTS = 40
ICMP_TYPES = {
    4: {"EchoReply": 0, "DestinationUnreachable": 3, "Redirect": 5, "EchoRequest": 8, "TimeExceeded": 11},
    6: {"DestinationUnreachable": 1, "PacketTooBig": 2, "TimeExceeded": 3, "EchoRequest": 128, "EchoReply": 129,
        "NeighborSolicitation": 135, "NeighborAdvertisement": 136},
}
ICMP_FAMILIES = {"IPv4": 4, "IPv6": 6}

_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_NAMED_PORT = re.compile(r"[a-z][-a-z0-9]{0,14}")
_NAMESPACE_KEY = NAMESPACE_LABEL.removeprefix("k8s:")
_NAMESPACE_LABELS_KEY = NAMESPACE_LABELS_PREFIX.removeprefix("k8s:")
_PEERS = ("Endpoints", "CIDR", "CIDRSet", "Entities")  # after "from" / "to"
_L7_FIELDS = {"listener": "listener is not supported", "serverNames": "serverNames is not supported",
              "terminatingTLS": "terminatingTLS is not supported", "originatingTLS": "originatingTLS is not supported"}
_L7_UNSUPPORTED = {"kafka": "kafka rules are not supported", "l7proto": "l7proto rules are not supported",
                   "l7": "l7proto rules are not supported"}


def parse_policy(doc: dict, origin: str = "") -> Policy:
    """One CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy or NetworkPolicy document."""
    try:
        return _policy(doc, origin)
    except PolicyError as e:
        raise PolicyError(e.path, e.message, origin) from None


def parse_documents(docs: list[dict], origin: str = "") -> list[Policy]:
    """The policies of a manifest, all or nothing. Empty documents and other kinds (Namespace,
    Deployment...) are skipped; a `List` is refused rather than skipped, so its policies are not
    silently lost. Errors name the document number in their origin."""
    policies = []
    for number, doc in enumerate(docs, 1):
        kind = doc.get("kind") if isinstance(doc, dict) else None
        if doc is None or (isinstance(kind, str) and kind not in API_VERSIONS and not kind.endswith("List")):
            continue
        where = f"{origin} (document {number})" if origin else f"document {number}"
        if isinstance(kind, str) and kind.endswith("List"):
            raise PolicyError("kind", f"kind {_quote(kind)} is not supported: write each policy as a document", where)
        try:
            policies.append(parse_policy(doc, origin))
        except PolicyError as e:
            raise PolicyError(e.path, e.message, where) from None
    return policies


def _policy(doc: Any, origin: str) -> Policy:
    doc = _expect(doc, dict, "a mapping (a policy document)", "")
    kind = _choice(doc.get("kind"), "kind", tuple(API_VERSIONS), "kind")
    if doc.get("apiVersion") != API_VERSIONS[kind]:
        _fail("apiVersion", f"{kind} needs apiVersion {API_VERSIONS[kind]}, got {_quote(doc.get('apiVersion'))}")
    top = ("apiVersion", "kind", "metadata", "spec", "status") + (("specs",) if kind != KNP else ())
    _fields(doc, "", top)
    meta = _expect(_required(doc, "metadata", ""), dict, "a mapping", "metadata")
    name, namespace = _name(meta), _namespace(meta, kind)
    if kind == KNP:
        rules, labels = (_k8s_rule(doc, namespace),), ()
    else:
        rules, labels = _cilium_rules(doc, namespace)
    return Policy(kind, name, namespace, rules, origin, _audit(meta), labels)


def _name(meta: dict) -> str:
    name = _text(_required(meta, "name", "metadata"), "metadata.name")
    if len(name) > 253 or not _NAME.fullmatch(name):
        _fail("metadata.name", f"name {_quote(name)} is not a DNS-1123 name (lowercase letters, digits, '-', '.')")
    return name


def _namespace(meta: dict, kind: str) -> str:
    namespace = meta.get("namespace")
    if kind == CCNP:
        if namespace is not None:
            _fail("metadata.namespace", f"a {CCNP} has no namespace, got {_quote(namespace)}")
        return ""
    if namespace is None:
        return "default"
    if not isinstance(namespace, str) or len(namespace) > 63 or "." in namespace or not _NAME.fullmatch(namespace):
        _fail("metadata.namespace", f"namespace {_quote(namespace)} is not a DNS-1123 label")
    return namespace


def _audit(meta: dict) -> bool:
    annotations = _expect(_opt(meta, "annotations", {}), dict, "a mapping", "metadata.annotations")
    mode = annotations.get(AUDIT_ANNOTATION, "false")
    if mode not in ("true", "false"):
        _fail("metadata.annotations", f'{AUDIT_ANNOTATION} must be "true" or "false", got {_quote(mode)}')
    return mode == "true"


# --- Cilium rules ------------------------------------------------------------------------------

def _cilium_rules(doc: dict, namespace: str) -> tuple[tuple[Rule, ...], tuple[str, ...]]:
    specs = ([("spec", doc["spec"])] if doc.get("spec") is not None else []) + _elements(doc, "specs", "")
    if not specs:
        _fail("spec", "spec or specs is required")
    parsed = [_cilium_rule(spec, path, namespace) for path, spec in specs]
    labels = dict.fromkeys(label for _, rule_labels in parsed for label in rule_labels)  # ordered, no repeats
    return tuple(rule for rule, _ in parsed), tuple(labels)


def _cilium_rule(value: Any, path: str, namespace: str) -> tuple[Rule, list[str]]:
    known = ("endpointSelector", "ingress", "ingressDeny", "egress", "egressDeny", "labels", "enableDefaultDeny",
             "description", "log")
    doc = _fields(value, path, known, {"nodeSelector": "nodeSelector (host policies) is not supported"})
    subject = _requirements(_required(doc, "endpointSelector", path), _join(path, "endpointSelector"))
    if namespace:
        subject.append(_in_namespace(namespace))
    enable = _fields(_opt(doc, "enableDefaultDeny", {}), _join(path, "enableDefaultDeny"), ("ingress", "egress"))
    default_deny = {}
    for direction in ("ingress", "egress"):
        # Cilium: a rule with a section for a direction puts it in default deny unless told not to
        switch = _expect(_opt(enable, direction, True), bool, "true or false",
                         _join(path, f"enableDefaultDeny.{direction}"))
        default_deny[direction] = switch and (doc.get(direction) is not None or doc.get(direction + "Deny") is not None)
    if doc.get("log") is not None:
        log = _fields(doc["log"], _join(path, "log"), ("value",))
        _text(_opt(log, "value", ""), _join(path, "log.value"))

    def section(key: str, side: str) -> tuple[PeerRule, ...]:
        return tuple(_cilium_peer(item, at, side, key.endswith("Deny"), namespace)
                     for at, item in _elements(doc, key, path))

    rule = Rule(_selector(subject), ingress=section("ingress", "from"), ingress_deny=section("ingressDeny", "from"),
                egress=section("egress", "to"), egress_deny=section("egressDeny", "to"),
                default_deny_ingress=default_deny["ingress"], default_deny_egress=default_deny["egress"],
                description=_text(_opt(doc, "description", ""), _join(path, "description")))
    return rule, [_rule_label(item, at) for at, item in _elements(doc, "labels", path)]


def _rule_label(value: Any, path: str) -> str:
    doc = _fields(value, path, ("key", "value", "source"))
    key = _text(_required(doc, "key", path), _join(path, "key"))
    label_value = _text(_opt(doc, "value", ""), _join(path, "value"))
    source = _text(_opt(doc, "source", "unspec"), _join(path, "source"))
    return f"{source}:{key}={label_value}"


def _cilium_peer(value: Any, path: str, side: str, deny: bool, namespace: str) -> PeerRule:
    """One element of ingress/ingressDeny (side "from") or egress/egressDeny (side "to")."""
    peers = [side + name for name in _PEERS]
    unsupported = {f"{side}{name}": f"{side}{name} is not supported" for name in ("Requires", "Groups", "Nodes")}
    if side == "to":
        unsupported["toServices"] = "toServices is not supported yet"
    if not deny:
        unsupported["authentication"] = "authentication is not supported"
    fqdns = side == "to" and not deny
    doc = _fields(value, path, peers + ["toPorts", "icmps"] + (["toFQDNs"] if fqdns else []), unsupported)
    present = [key for key in peers if doc.get(key) is not None]
    names = ()
    if fqdns and doc.get("toFQDNs") is not None:
        if present:
            _fail(_join(path, "toFQDNs"), f"toFQDNs cannot be combined with {present[0]} in one element")
        names = tuple(_dns_rule(item, at) for at, item in _elements(doc, "toFQDNs", path))
        present = ["toFQDNs"]
    port_rules, icmp_rules = _elements(doc, "toPorts", path), _elements(doc, "icmps", path)
    if port_rules and icmp_rules:  # as in Cilium: the two cannot share an element
        _fail(_join(path, "icmps"), "icmps cannot be combined with toPorts: write them in separate elements")
    endpoints = tuple(_peer_selector(item, at, namespace) for at, item in _elements(doc, peers[0], path))
    cidrs = tuple(CidrSet(str(_network(item, at))) for at, item in _elements(doc, peers[1], path))
    cidrs += tuple(_cidr_set(item, at, ("cidrGroupRef", "cidrGroupSelector"))
                   for at, item in _elements(doc, peers[2], path))
    entities = tuple(_choice(item, at, ENTITIES, "entity") for at, item in _elements(doc, peers[3], path))
    ports = _cilium_ports(port_rules, deny, side)
    icmps = tuple(icmp for at, item in icmp_rules for icmp in _icmps(item, at))
    if not (present or port_rules or icmp_rules):
        return PeerRule(empty=True)
    return PeerRule(l3=bool(present), endpoints=endpoints, cidrs=cidrs, entities=entities, ports=ports, icmps=icmps,
                    fqdns=names)


def _peer_selector(value: Any, path: str, namespace: str) -> Selector:
    requirements = _requirements(value, path)
    # a peer selector that names a namespace itself may reach beyond the policy's namespace
    if namespace and not any(r.key == NAMESPACE_LABEL for r in requirements):
        requirements.append(_in_namespace(namespace))
    return _selector(requirements)


def _cilium_ports(port_rules: list[tuple[str, Any]], deny: bool, side: str) -> tuple[PortRange, ...]:
    ranges, any_port = [], False
    for at, item in port_rules:
        # deny rules have ports only: anything else there is an unknown field
        doc = _fields(item, at, ("ports",) if deny else ("ports", "rules"), {} if deny else _L7_FIELDS)
        ports = _elements(doc, "ports", at)
        if len(ports) > MAX_PORTS:
            _fail(_join(at, "ports"), f"at most {MAX_PORTS} ports are allowed, got {len(ports)}")
        any_port = any_port or not ports
        port_ranges = [_port_range(port, port_at, "ANY", PROTOCOLS) for port_at, port in ports]
        if doc.get("rules") is not None:
            http, dns = _l7_rules(doc["rules"], _join(at, "rules"), port_ranges, side)
            port_ranges = [dataclasses.replace(p, http=http, dns=dns) for p in port_ranges]
        ranges += port_ranges
    return () if any_port else tuple(ranges)


def _l7_rules(value: Any, path: str, ports: list[PortRange], side: str) -> tuple[tuple | None, tuple | None]:
    """The HTTP and DNS rules of a port rule (None: none; `rules: {}` leaves the port rule
    plain L4)."""
    doc = _fields(value, path, ("http", "dns"), _L7_UNSUPPORTED)
    http, dns = _elements(doc, "http", path), _elements(doc, "dns", path)
    http_rules = tuple(_http_rule(item, at) for at, item in http)
    dns_rules = tuple(_dns_rule(item, at) for at, item in dns)
    if not (http or dns):
        return None, None
    if http and dns:
        _fail(path, "http and dns rules cannot share a port rule: write them in separate toPorts elements")
    if dns and side == "from":
        _fail(_join(path, "dns"), "DNS rules apply to egress only")
    if not ports or any(not p.port or p.end_port for p in ports):
        _fail(path, "L7 rules need ports, each a single port (no port 0, no endPort)")
    other = next((p for p in ports if p.protocol not in ("TCP", "ANY")), None)
    if http and other is not None:
        _fail(_join(path, "http"), f"HTTP rules need TCP, but port {other.port} is {other.protocol}")
    other = next((p for p in ports if p.protocol not in ("TCP", "UDP", "ANY")), None)
    if dns and other is not None:
        _fail(_join(path, "dns"), f"DNS rules need UDP or TCP, but port {other.port} is {other.protocol}")
    return (http_rules or None), (dns_rules or None)


def _l7_value(make: Callable, path: str, *args) -> Any:
    try:
        return make(*args)
    except ValueError as e:
        _fail(path, str(e))


def _http_rule(value: Any, path: str) -> l7.HttpRule:
    doc = _fields(value, path, ("method", "path", "host", "headers", "headerMatches"))
    regexes = {key: _l7_value(l7.full_match, _join(path, key), _expect(doc[key], str, "a string", _join(path, key)),
                              key)
               for key in ("method", "path", "host") if doc.get(key) not in (None, "")}  # "": any
    headers = tuple(_l7_value(l7.header, at, _expect(item, str, "a string", at))
                    for at, item in _elements(doc, "headers", path))
    matches = []
    for at, item in _elements(doc, "headerMatches", path):
        m = _fields(item, at, ("name", "value", "mismatch"), {"secret": "secret is not supported"})
        matches.append(_l7_value(l7.header_match, at, _expect(_required(m, "name", at), str, "a string",
                                                               _join(at, "name")),
                                 _expect(_opt(m, "value", ""), str, "a string", _join(at, "value")),
                                 _expect(_opt(m, "mismatch", ""), str, "a string", _join(at, "mismatch"))))
    return l7.HttpRule(**regexes, headers=headers, header_matches=tuple(matches),
                       spec=json.dumps(doc, sort_keys=True))


def _dns_rule(value: Any, path: str) -> l7.DnsRule:
    doc = _fields(value, path, ("matchName", "matchPattern"))
    name, pattern = doc.get("matchName"), doc.get("matchPattern")
    if (name is None) == (pattern is None):
        _fail(path, "needs exactly one of matchName and matchPattern")
    if name is not None:
        return _l7_value(l7.match_name, _join(path, "matchName"), _expect(name, str, "a string",
                                                                         _join(path, "matchName")))
    return _l7_value(l7.match_pattern, _join(path, "matchPattern"), _expect(pattern, str, "a string",
                                                                           _join(path, "matchPattern")))


def _icmps(value: Any, path: str) -> list[Icmp]:
    doc = _fields(value, path, ("fields",))
    return [_icmp(item, at) for at, item in _elements(doc, "fields", path)]


def _icmp(value: Any, path: str) -> Icmp:
    doc = _fields(value, path, ("family", "type"))
    family = ICMP_FAMILIES[_choice(_opt(doc, "family", "IPv4"), _join(path, "family"), tuple(ICMP_FAMILIES),
                                   "family")]
    kind, at = _required(doc, "type", path), _join(path, "type")
    if isinstance(kind, str):
        return Icmp(family, ICMP_TYPES[family][_choice(kind, at, tuple(ICMP_TYPES[family]), f"IPv{family} type")])
    return Icmp(family, _number(kind, at, 255, "ICMP type"))


# --- Kubernetes NetworkPolicy ------------------------------------------------------------------

def _k8s_rule(doc: dict, namespace: str) -> Rule:
    spec = _fields(_required(doc, "spec", ""), "spec", ("podSelector", "policyTypes", "ingress", "egress"))
    subject = _requirements(_required(spec, "podSelector", "spec"), "spec.podSelector", _pod_key)
    ingress = tuple(_k8s_peer_rule(item, at, "from", namespace) for at, item in _elements(spec, "ingress", "spec"))
    egress = tuple(_k8s_peer_rule(item, at, "to", namespace) for at, item in _elements(spec, "egress", "spec"))
    types = [_choice(item, at, ("Ingress", "Egress"), "policy type")
             for at, item in _elements(spec, "policyTypes", "spec")]
    if not types:  # Kubernetes' defaulting: always Ingress, Egress when there are egress rules
        types = ["Ingress"] + (["Egress"] if egress else [])
    # rules of a direction missing from policyTypes have no effect, as in Kubernetes
    return Rule(_selector(subject + [_in_namespace(namespace)]),
                ingress=ingress if "Ingress" in types else (), egress=egress if "Egress" in types else (),
                default_deny_ingress="Ingress" in types, default_deny_egress="Egress" in types)


def _k8s_peer_rule(value: Any, path: str, side: str, namespace: str) -> PeerRule:
    doc = _fields(value, path, (side, "ports"))
    peers = [_k8s_peer(item, at, namespace) for at, item in _elements(doc, side, path)]
    ports = tuple(_port_range(item, at, "TCP", ("TCP", "UDP", "SCTP")) for at, item in _elements(doc, "ports", path))
    return PeerRule(l3=bool(peers),  # no peers: every peer
                    endpoints=tuple(p for p in peers if isinstance(p, Selector)),
                    cidrs=tuple(p for p in peers if isinstance(p, CidrSet)), ports=ports)


def _k8s_peer(value: Any, path: str, namespace: str) -> Selector | CidrSet:
    doc = _fields(value, path, ("podSelector", "namespaceSelector", "ipBlock"))
    pods, namespaces = doc.get("podSelector"), doc.get("namespaceSelector")
    if doc.get("ipBlock") is not None:
        if pods is not None or namespaces is not None:
            _fail(_join(path, "ipBlock"), "ipBlock cannot be combined with podSelector or namespaceSelector")
        return _cidr_set(doc["ipBlock"], _join(path, "ipBlock"))
    if pods is None and namespaces is None:
        _fail(path, "a peer needs podSelector, namespaceSelector or ipBlock")
    requirements = [] if pods is None else _requirements(pods, _join(path, "podSelector"), _pod_key)
    if namespaces is None:
        return _selector(requirements + [_in_namespace(namespace)])
    requirements += _requirements(namespaces, _join(path, "namespaceSelector"), _namespace_key)
    # pods only (reserved identities have no namespace), in any namespace the selector matches
    return _selector(requirements + [Requirement(NAMESPACE_LABEL, "Exists")])


# --- selectors and labels ----------------------------------------------------------------------

def _label_key(key: str, default_source: str = "") -> str:
    """`any:app` -> `app` (no source: any source); the namespace labels endpoints carry with the
    k8s source get it, so that namespace scoping can recognise them."""
    source, _, name = key.partition(":") if ":" in key else ("", "", key)
    source = "" if source == "any" else source
    if not source and (name == _NAMESPACE_KEY or name.startswith(_NAMESPACE_LABELS_KEY)):
        source = "k8s"
    source = source or default_source
    return f"{source}:{name}" if source else name


_pod_key = partial(_label_key, default_source="k8s")  # Kubernetes pod labels: the k8s source


def _namespace_key(key: str) -> str:
    """A namespace's label as its pods carry it."""
    return NAMESPACE_LABELS_PREFIX + key


def _requirements(value: Any, path: str, rename: Callable[[str], str] = _label_key) -> list[Requirement]:
    doc = _fields(value, path, ("matchLabels", "matchExpressions"))
    labels_at = _join(path, "matchLabels")
    requirements = [Requirement(_key(key, _join(labels_at, _segment(key)), rename), "In",
                                (_text(item, _join(labels_at, _segment(key))),))
                    for key, item in _expect(_opt(doc, "matchLabels", {}), dict, "a mapping", labels_at).items()]
    return requirements + [_expression(item, at, rename) for at, item in _elements(doc, "matchExpressions", path)]


def _expression(value: Any, path: str, rename: Callable[[str], str]) -> Requirement:
    doc = _fields(value, path, ("key", "operator", "values"))
    key = _key(_required(doc, "key", path), _join(path, "key"), rename)
    operator = _choice(doc.get("operator"), _join(path, "operator"), OPERATORS, "operator")
    values = tuple(sorted({_text(item, at) for at, item in _elements(doc, "values", path)}))
    if operator in ("In", "NotIn") and not values:
        _fail(_join(path, "values"), f"operator {operator} needs at least one value")
    if operator in ("Exists", "DoesNotExist") and values:
        _fail(_join(path, "values"), f"operator {operator} takes no values, got {_quote(list(values))}")
    return Requirement(key, operator, values)


def _key(value: Any, path: str, rename: Callable[[str], str]) -> str:
    key = _text(value, path)
    if not key.rpartition(":")[2]:
        _fail(path, f"label key {_quote(key)} is empty")
    return rename(key)


def _selector(requirements: Iterable[Requirement]) -> Selector:
    """Canonical: sorted without repeats, so equal selectors compare and hash equal."""
    return Selector(tuple(sorted(set(requirements), key=lambda r: (r.key, r.operator, r.values))))


def _in_namespace(namespace: str) -> Requirement:
    return Requirement(NAMESPACE_LABEL, "In", (namespace,))


# --- addresses and ports -----------------------------------------------------------------------

def _network(value: Any, path: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    if isinstance(value, str):
        try:
            return ipaddress.ip_network(value, strict=False)  # a bare address is a host prefix
        except ValueError:
            pass
    _fail(path, f"{_quote(value)} is not a CIDR prefix or an IP address")


def _cidr_set(value: Any, path: str, unsupported: Iterable[str] = ()) -> CidrSet:
    doc = _fields(value, path, ("cidr", "except"), {name: f"{name} is not supported" for name in unsupported})
    cidr = _network(_required(doc, "cidr", path), _join(path, "cidr"))
    excepts = []
    for at, item in _elements(doc, "except", path):
        network = _network(item, at)
        if network.version != cidr.version or not network.subnet_of(cidr):
            _fail(at, f"except {_quote(item)} is not inside cidr {cidr}")
        excepts.append(str(network))
    return CidrSet(str(cidr), tuple(excepts))


def _port_range(value: Any, path: str, default_protocol: str, protocols: tuple[str, ...]) -> PortRange:
    doc = _fields(value, path, ("port", "endPort", "protocol"))
    port = _port(_opt(doc, "port", 0), _join(path, "port"))  # no port: every port
    end_port = _number(_opt(doc, "endPort", 0), _join(path, "endPort"), 65535, "endPort")
    if end_port and not port:
        _fail(_join(path, "endPort"), f"endPort {end_port} needs a port")
    if end_port and end_port < port:
        _fail(_join(path, "endPort"), f"endPort {end_port} is below port {port}")
    protocol = _opt(doc, "protocol", default_protocol)
    protocol = _choice(protocol.upper() if isinstance(protocol, str) else protocol, _join(path, "protocol"),
                       protocols, "protocol")
    return PortRange(port, end_port if end_port > port else 0, protocol)  # endPort == port: just the port


def _port(value: Any, path: str) -> int:
    if isinstance(value, str) and _NAMED_PORT.fullmatch(value):
        _fail(path, f"named port {_quote(value)} is not supported yet: use a number")
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 5:
        value = int(value)
    return _number(value, path, 65535, "port")


def _number(value: Any, path: str, highest: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= highest:
        _fail(path, f"{what} {_quote(value)} is not a number from 0 to {highest}")
    return value


# --- generic checks ----------------------------------------------------------------------------

def _fail(path: str, message: str) -> NoReturn:
    raise PolicyError(path, message)


def _quote(value: Any) -> str:
    if isinstance(value, str):
        return l7.quote(value)
    text = reprlib.repr(value)  # a few levels of it, however deep the value is nested
    return text if len(text) <= 60 else text[:57] + "..."


def _segment(key: Any) -> str:
    """A document's key as a part of a path: as written, unless that would break the line."""
    text = str(key)
    return text if text.isprintable() else json.dumps(text)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _expect(value: Any, kind: type, what: str, path: str) -> Any:
    if not isinstance(value, kind):
        _fail(path, f"must be {what}, got {_quote(value)}")
    return value


def _text(value: Any, path: str) -> str:
    return _expect(value, str, "a string", path)


def _opt(doc: dict, key: str, default: Any) -> Any:
    value = doc.get(key)
    return default if value is None else value


def _required(doc: dict, key: str, path: str) -> Any:
    if doc.get(key) is None:
        _fail(_join(path, key), f"{key} is required")
    return doc[key]


def _choice(value: Any, path: str, allowed: tuple[str, ...], what: str) -> str:
    if not isinstance(value, str) or value not in allowed:
        _fail(path, f"{what} {_quote(value)} is not one of {', '.join(allowed)}")
    return value


def _fields(value: Any, path: str, known: Iterable[str], unsupported: dict[str, str] | None = None) -> dict:
    """A mapping whose keys are all known: the first unknown or unsupported field is an error."""
    doc, known = _expect(value, dict, "a mapping", path), list(known)
    for key in doc:
        if unsupported and key in unsupported:
            _fail(_join(path, _segment(key)), unsupported[key])
        if key not in known:
            guess = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean {guess[0]}?)" if guess else ""
            _fail(_join(path, _segment(key)), f"unknown field {_quote(key)}{hint}")
    return doc


def _elements(doc: dict, key: str, path: str) -> list[tuple[str, Any]]:
    """An optional list field's items with their paths; a missing field has none."""
    where = _join(path, key)
    return [(f"{where}[{i}]", item) for i, item in enumerate(_expect(_opt(doc, key, []), list, "a list", where))]

"""Flow filters with Hubble's semantics (FlowFilter in flow.proto, `hubble observe` flags).

A flow passes when it matches any filter of the allow list (or the list is empty) and none of
the deny list. Within one filter every field that is set must match, and a field matches when
any of its values does. `FilterBuilder` turns command-line flags, in the order given, into the
two lists exactly as the hubble CLI does: a two-sided flag (`--pod`, `--ip`, `--port` ...)
makes a source-side and a destination-side filter, and `--not` sends the next flag to the
deny list."""

from __future__ import annotations

import ipaddress
import re
from functools import lru_cache
from typing import Callable
from urllib.parse import urlsplit

import msgspec

from pylium.core.api_for_plugins import DROP_REASONS, MESSAGE_TYPES, OBSERVATION_POINTS
from pylium.plugins.observability.flow import Endpoint, Flow

EVENT_TYPES = {name: number for number, name in MESSAGE_TYPES.items()}
TRACE_SUBTYPES = {name: n for n, (name, _) in OBSERVATION_POINTS.items()}
VERDICTS = ("FORWARDED", "DROPPED", "AUDIT", "REDIRECTED", "ERROR", "TRACED", "TRANSLATED")
DROP_REASON_NAMES = {name for name, _ in DROP_REASONS.values()}
PROTOCOLS = ("tcp", "udp", "icmp", "icmpv4", "icmpv6")
LABEL_SOURCES = {"k8s", "reserved", "container", "unspec", "any", "cni", "cilium", "kvstore"}


class EventTypeFilter(msgspec.Struct, frozen=True, omit_defaults=True):
    type: int
    match_sub_type: bool = False
    sub_type: int = 0


class FlowFilter(msgspec.Struct, omit_defaults=True, forbid_unknown_fields=True):
    """Hubble's FlowFilter fields that pylium flows can match."""

    uuid: list[str] = []
    source_ip: list[str] = []  # address or CIDR
    destination_ip: list[str] = []
    source_pod: list[str] = []  # "namespace/name-prefix" or "namespace/"
    destination_pod: list[str] = []
    source_label: list[str] = []  # selectors: "k8s:app=x", "app", "reserved:world", "app!=x", "!app"
    destination_label: list[str] = []
    source_identity: list[int] = []
    destination_identity: list[int] = []
    source_port: list[str] = []
    destination_port: list[str] = []
    protocol: list[str] = []
    verdict: list[str] = []
    event_type: list[EventTypeFilter] = []
    drop_reason_desc: list[str] = []
    traffic_direction: list[str] = []
    reply: list[bool] = []
    node_name: list[str] = []
    ip_version: list[str] = []  # IPv4 | IPv6
    http_status_code: list[str] = []  # "200", or "4+" for every 4xx
    http_method: list[str] = []
    http_path: list[str] = []  # regular expressions, matched anywhere in the URL's path
    dns_query: list[str] = []  # regular expressions, matched anywhere in the query name


class FilterError(ValueError):
    pass


# ---- matching ---------------------------------------------------------------------------


@lru_cache(maxsize=4096)
def _address(text: str):
    return ipaddress.ip_address(text)


def _ip_matcher(values: list[str]) -> Callable[[str], bool]:
    nets = []
    for v in values:
        try:
            nets.append(ipaddress.ip_network(v, strict=False))
        except ValueError:
            raise FilterError(f"{v!r} is not an IP address or CIDR") from None
    return lambda ip: bool(ip) and any(_address(ip) in n for n in nets)


def _pod_matcher(values: list[str]) -> Callable[[Endpoint | None], bool]:
    wanted = []
    for v in values:
        ns, sep, name = v.partition("/")
        wanted.append((ns, name) if sep else ("default", ns))
    return lambda ep: ep is not None and bool(ep.pod_name) and any(
        ep.namespace == ns and ep.pod_name.startswith(name) for ns, name in wanted)


def _split_label(label: str) -> tuple[str, str, str]:
    """'k8s:app=x' -> ('k8s', 'app', 'x'); a source prefix is optional."""
    key, _, value = label.partition("=")
    source, sep, rest = key.partition(":")
    if sep and source in LABEL_SOURCES:
        return source, rest, value
    return "", key, value


def _selector(text: str) -> Callable[[tuple[str, ...]], bool]:
    """A comma-separated label selector: every term must hold."""
    terms = []
    for term in filter(None, (t.strip() for t in text.split(","))):
        negate = term.startswith("!")
        if negate:
            term = term[1:]
        if "!=" in term:
            key, value = term.split("!=", 1)
            op = "!="
        elif "=" in term:
            key, value = term.split("=", 1)
            op = "=="
        else:
            key, value, op = term, "", "exists"
        source, key, _ = _split_label(key)
        if not key:
            raise FilterError(f"label selector {text!r}: empty key")
        terms.append((negate, op, source, key, value))

    def has(labels, source, key, value, op):
        for label in labels:
            s, k, v = _split_label(label)
            if k == key and (not source or s == source or source == "any"):
                if op == "exists" or (op == "==" and v == value):
                    return True
        return False

    def match(labels: tuple[str, ...]) -> bool:
        for negate, op, source, key, value in terms:
            if op == "!=":
                ok = not has(labels, source, key, value, "==")
            else:
                ok = has(labels, source, key, value, op)
            if ok == negate:
                return False
        return True

    return match


def _ports(flow: Flow) -> tuple[int | None, int | None]:
    l4 = flow.l4
    if l4 is None:
        return None, None
    x = l4.TCP or l4.UDP
    return (x.source_port, x.destination_port) if x is not None else (None, None)


def _protocol(flow: Flow) -> str:
    l4 = flow.l4
    if l4 is None:
        return ""
    return "tcp" if l4.TCP else "udp" if l4.UDP else "icmpv4" if l4.ICMPv4 else "icmpv6" if l4.ICMPv6 else ""


def compile_filter(f: FlowFilter) -> Callable[[Flow], bool]:
    """One filter as a predicate: every set field must match."""
    checks: list[Callable[[Flow], bool]] = []
    if f.uuid:
        ids = set(f.uuid)
        checks.append(lambda fl: fl.uuid in ids)
    for side, values in (("source", f.source_ip), ("destination", f.destination_ip)):
        if values:
            m = _ip_matcher(values)
            checks.append(lambda fl, m=m, side=side: fl.IP is not None and m(getattr(fl.IP, side)))
    for side, values in (("source", f.source_pod), ("destination", f.destination_pod)):
        if values:
            m = _pod_matcher(values)
            checks.append(lambda fl, m=m, side=side: m(getattr(fl, side)))
    for side, values in (("source", f.source_label), ("destination", f.destination_label)):
        if values:
            sels = [_selector(v) for v in values]
            checks.append(lambda fl, sels=sels, side=side: getattr(fl, side) is not None and any(
                s(getattr(fl, side).labels) for s in sels))
    for side, values in (("source", f.source_identity), ("destination", f.destination_identity)):
        if values:
            ids = set(values)
            checks.append(lambda fl, ids=ids, side=side: getattr(fl, side) is not None
                          and getattr(fl, side).identity in ids)
    for index, values in ((0, f.source_port), (1, f.destination_port)):
        if values:
            try:
                ports = {int(p) for p in values}
            except ValueError:
                raise FilterError(f"port {values!r} is not a number") from None
            checks.append(lambda fl, ports=ports, index=index: _ports(fl)[index] in ports)
    if f.protocol:
        protos = set()
        for p in f.protocol:
            p = p.lower()
            if p not in PROTOCOLS:
                raise FilterError(f"unknown protocol {p!r} (known: {', '.join(PROTOCOLS)})")
            protos |= {"icmpv4", "icmpv6"} if p == "icmp" else {p}
        checks.append(lambda fl: _protocol(fl) in protos)
    if f.verdict:
        verdicts = {v.upper() for v in f.verdict}
        if verdicts - set(VERDICTS):
            raise FilterError(f"unknown verdict {', '.join(verdicts - set(VERDICTS))} (known: {', '.join(VERDICTS)})")
        checks.append(lambda fl: fl.verdict in verdicts)
    if f.event_type:
        types = list(f.event_type)
        checks.append(lambda fl: fl.event_type is not None and any(
            t.type == fl.event_type.type and (not t.match_sub_type or t.sub_type == fl.event_type.sub_type)
            for t in types))
    if f.drop_reason_desc:
        reasons = {r.upper() for r in f.drop_reason_desc}
        if reasons - DROP_REASON_NAMES:
            raise FilterError(f"unknown drop reason {', '.join(sorted(reasons - DROP_REASON_NAMES))} "
                              "(for example POLICY_DENIED, STALE_OR_UNROUTABLE_IP)")
        checks.append(lambda fl: fl.verdict == "DROPPED" and fl.drop_reason_desc in reasons)
    if f.traffic_direction:
        dirs = {d.upper() for d in f.traffic_direction}
        if dirs - {"INGRESS", "EGRESS"}:
            raise FilterError(f"traffic direction must be ingress or egress, not {', '.join(dirs)}")
        checks.append(lambda fl: fl.traffic_direction in dirs)
    if f.reply:
        replies = set(f.reply)
        checks.append(lambda fl: fl.is_reply in replies)
    if f.node_name:
        nodes = set(f.node_name)
        checks.append(lambda fl: fl.node_name in nodes)
    if f.ip_version:
        versions = {"IPv6" if "6" in v else "IPv4" for v in f.ip_version}
        checks.append(lambda fl: fl.IP is not None and fl.IP.ipVersion in versions)
    checks.extend(_http_checks(f))
    return lambda flow: all(c(flow) for c in checks)


def _http(flow: Flow):
    return flow.l7.http if flow.l7 is not None else None


def _http_checks(f: FlowFilter) -> list[Callable[[Flow], bool]]:
    checks = []
    if f.http_status_code:
        exact, prefixes = set(), []
        for code in f.http_status_code:
            if re.fullmatch(r"[1-5]\d\d", code):
                exact.add(int(code))
            elif re.fullmatch(r"[1-5](\d\+|\+)", code):
                prefixes.append(code[:-1])
            else:
                raise FilterError(f"HTTP status {code!r}: give a code (404) or a class (4+, 40+)")
        checks.append(lambda fl: _http(fl) is not None and _http(fl).code > 0 and (
            _http(fl).code in exact or any(str(_http(fl).code).startswith(p) for p in prefixes)))
    if f.http_method:
        methods = {m.upper() for m in f.http_method}
        checks.append(lambda fl: _http(fl) is not None and _http(fl).method in methods)
    if f.http_path:
        try:
            paths = [re.compile(p) for p in f.http_path]
        except re.error as e:
            raise FilterError(f"HTTP path {e.pattern!r} is not a regular expression: {e}") from None
        checks.append(lambda fl: _http(fl) is not None and any(
            p.search(urlsplit(_http(fl).url).path) for p in paths))
    if f.dns_query:
        try:
            names = [re.compile(q) for q in f.dns_query]
        except re.error as e:
            raise FilterError(f"DNS query {e.pattern!r} is not a regular expression: {e}") from None
        checks.append(lambda fl: fl.l7 is not None and fl.l7.dns is not None and any(
            q.search(fl.l7.dns.query) for q in names))
    return checks


def compile_lists(allow: list[FlowFilter], deny: list[FlowFilter]) -> Callable[[Flow], bool]:
    """The predicate of an allow list and a deny list. Raises FilterError on bad values."""
    allowed = [compile_filter(f) for f in allow]
    denied = [compile_filter(f) for f in deny]

    def match(flow: Flow) -> bool:
        if allowed and not any(p(flow) for p in allowed):
            return False
        return not any(p(flow) for p in denied)

    return match


# ---- building from command-line flags -----------------------------------------------------

# flag -> (field on the source-side filter, field on the destination-side filter, how to parse)
TWO_SIDED = {"pod": ("source_pod", "destination_pod"), "namespace": ("source_pod", "destination_pod"),
             "ip": ("source_ip", "destination_ip"), "label": ("source_label", "destination_label"),
             "port": ("source_port", "destination_port"), "identity": ("source_identity", "destination_identity")}
ONE_SIDED = {"from-pod": "source_pod", "to-pod": "destination_pod", "from-namespace": "source_pod",
             "to-namespace": "destination_pod", "from-ip": "source_ip", "to-ip": "destination_ip",
             "from-label": "source_label", "to-label": "destination_label", "from-port": "source_port",
             "to-port": "destination_port", "from-identity": "source_identity", "to-identity": "destination_identity",
             "protocol": "protocol", "verdict": "verdict", "drop-reason-desc": "drop_reason_desc",
             "traffic-direction": "traffic_direction", "node-name": "node_name", "uuid": "uuid",
             "type": "event_type", "http-status": "http_status_code", "http-method": "http_method",
             "http-path": "http_path", "dns-query": "dns_query"}


def _value(flag: str, value: str):
    if flag in ("namespace", "from-namespace", "to-namespace"):
        return value.rstrip("/") + "/"
    if flag.endswith("identity"):
        try:
            return int(value)
        except ValueError:
            raise FilterError(f"--{flag} {value!r}: an identity is a number") from None
    if flag == "type":
        return parse_type(value)
    return value


def parse_type(text: str) -> EventTypeFilter:
    """`drop`, `trace`, `trace:to-endpoint`, `policy-verdict`, `l7`."""
    name, _, sub = text.partition(":")
    if name not in EVENT_TYPES:
        raise FilterError(f"--type {text!r}: unknown event type (known: {', '.join(EVENT_TYPES)})")
    if not sub:
        return EventTypeFilter(type=EVENT_TYPES[name])
    if name != "trace" or sub not in TRACE_SUBTYPES:
        raise FilterError(f"--type {text!r}: unknown subtype (trace subtypes: {', '.join(TRACE_SUBTYPES)})")
    return EventTypeFilter(type=EVENT_TYPES[name], match_sub_type=True, sub_type=TRACE_SUBTYPES[sub])


class _Tracker:
    def __init__(self) -> None:
        self.left: dict | None = None
        self.right: dict | None = None

    def add(self, side: str, field: str, value) -> None:
        target = getattr(self, side)
        if target is None:
            target = {}
            setattr(self, side, target)
        target.setdefault(field, []).append(value)

    def filters(self) -> list[FlowFilter]:
        sides = [s for s in (self.left, self.right) if s is not None]
        if len(sides) == 2 and sides[0] == sides[1]:
            sides = sides[:1]
        return [msgspec.convert(s, FlowFilter) for s in sides]


class FilterBuilder:
    """Feed flags in command-line order; `lists()` gives (allow, deny)."""

    def __init__(self) -> None:
        self._allow, self._deny = _Tracker(), _Tracker()
        self._negate = False

    def add(self, flag: str, value: str | None = None) -> None:
        if flag == "not":
            self._negate = True
            return
        tracker = self._deny if self._negate else self._allow
        self._negate = False
        v = _value(flag, value)
        if flag in TWO_SIDED:
            left, right = TWO_SIDED[flag]
            tracker.add("left", left, v)
            tracker.add("right", right, v)
        else:
            field = ONE_SIDED[flag]
            tracker.add("left", field, v)
            tracker.add("right", field, v)

    def lists(self) -> tuple[list[FlowFilter], list[FlowFilter]]:
        return self._allow.filters(), self._deny.filters()

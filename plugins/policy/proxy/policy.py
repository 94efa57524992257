"""What the L7 proxy process knows of policy: the agent writes a snapshot (`l7_policy.json` in
the policy plugin's state directory) of every endpoint whose policy has L7 rules, and the
proxy decides requests from it, also while the agent is away. `decide_http` reads the entries
the way the BPF stage does (longest match for the peer, longest for any peer), so the proxy
and the datapath agree on which rules apply."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from pylium.plugins.policy import l7
from pylium.plugins.policy.resolve import EndpointPolicy, Entry, Key

POLICY_FILE = "l7_policy.json"
PID_FILE = "l7proxy.pid"  # the proxy writes it; the agent's supervisor reads it (without importing the proxy)
DEFAULT_DENY_MESSAGE = "Access denied"


def http_rule(spec: str) -> l7.HttpRule:
    """An HTTP rule from its written form (validated by the agent already)."""
    from pylium.plugins.policy.model import _http_rule

    return _http_rule(json.loads(spec), "http")


def snapshot(endpoints: dict[int, tuple[list[str], int, EndpointPolicy]], ports: dict[str, int],
             deny_message: str, settings: dict | None = None) -> dict:
    """The file's content: endpoints (id -> addresses, identity, entries) with L7 rules, the
    proxy ports, and the proxies' settings (`dnsRejectRcode`, `dnsMaxDelay` seconds, `tracing`)."""
    out = {}
    for ep_id, (ips, identity, policy) in endpoints.items():
        if not policy.l7:
            continue
        out[str(ep_id)] = {"ips": ips, "identity": identity, "entries": [
            [k.egress, k.identity, k.proto, k.port, k.prefixlen, e.deny,
             None if e.http is None else [r.spec for r in e.http], e.rule_ids,
             None if e.dns is None else [r.text for r in e.dns]]
            for k, e in policy.entries.items()]}
    return {"ports": ports, "denyMessage": deny_message, "endpoints": out, **(settings or {})}


class _Endpoint(msgspec.Struct):
    ips: list[str]
    identity: int
    # [egress, identity, proto, port, prefixlen, deny, HTTP rule specs, rule ids, DNS patterns]
    entries: list[tuple[int, int, int, int, int, bool, list[str] | None, list[int], list[str] | None]]


class _Snapshot(msgspec.Struct):
    """The file as `snapshot` writes it: decoding checks every field's type, naming a bad one."""

    ports: dict[str, int]
    endpoints: dict[int, _Endpoint]
    denyMessage: str = DEFAULT_DENY_MESSAGE
    dnsRejectRcode: int = 5
    dnsMaxDelay: float = 0.1
    tracing: dict[str, Any] | None = None


@dataclass
class Local:
    ep_id: int
    identity: int
    policy: EndpointPolicy


@dataclass
class L7Policy:
    ports: dict[str, int] = field(default_factory=dict)
    deny_message: str = DEFAULT_DENY_MESSAGE
    by_ip: dict[str, Local] = field(default_factory=dict)
    dns_reject_rcode: int = 5  # REFUSED
    dns_max_delay: float = 0.1
    tracing: dict | None = None  # tracing.enabled, exporter, endpoint

    @classmethod
    def load(cls, path: Path) -> L7Policy:
        """Raises ValueError (msgspec's naming the field, `$.endpoints[...].entries[0][3]`) for a
        file not of `snapshot`'s shape."""
        try:
            doc = msgspec.json.decode(path.read_bytes(), type=_Snapshot)
        except RecursionError:
            raise ValueError("nested too deeply") from None
        rules: dict[str, l7.HttpRule] = {}
        policy = cls(doc.ports, doc.denyMessage, dns_reject_rcode=doc.dnsRejectRcode, dns_max_delay=doc.dnsMaxDelay,
                     tracing=doc.tracing)
        for ep_id, ep in doc.endpoints.items():
            entries = {}
            for i, (egress, identity, proto, port, prefixlen, deny, http, rule_ids, names) in enumerate(ep.entries):
                try:
                    parsed = None if http is None else tuple(rules.setdefault(s, http_rule(s)) for s in http)
                    patterns = None if names is None else tuple(l7.match_pattern(n) for n in names)
                except (ValueError, RecursionError) as e:  # rules the agent validated: only a format change
                    raise ValueError(f"endpoints.{ep_id}.entries[{i}]: {e}") from None
                entries[Key(egress, identity, proto, port, prefixlen)] = Entry(deny=deny, rule_ids=rule_ids,
                                                                              http=parsed, dns=patterns)
            local = Local(ep_id, ep.identity, EndpointPolicy(entries=entries))
            for ip in ep.ips:
                policy.by_ip[ip] = local
        return policy

    def decide_http(self, local_ip: str, direction: int, peer: int, port: int, method: str, path: str,
                    host: str, headers: dict[str, str]) -> tuple[bool, list[int]]:
        """(allowed, ids of the rules that decided) for one request of `peer` (egress: the
        server's identity; ingress: the client's) to or from the endpoint at `local_ip`."""
        local = self.by_ip.get(local_ip)
        if local is None:
            return False, []  # not (or no longer) an endpoint with L7 rules: nothing is allowed
        allowed, rules = local.policy.decide_http(direction, peer, port, method, path, host, headers)
        return bool(allowed), rules


    def decide_dns(self, local_ip: str, server: int, proto: int, port: int, name: str) -> tuple[bool, list[int]]:
        """(allowed, deciding rule ids) for a query of the endpoint at `local_ip` to a server of
        identity `server`."""
        local = self.by_ip.get(local_ip)
        if local is None:
            return False, []
        allowed, rules = local.policy.decide_dns(server, proto, port, name)
        return bool(allowed), rules


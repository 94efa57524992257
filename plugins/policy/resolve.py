"""From policies to what an endpoint's maps hold: for each direction, whether unmatched
traffic is denied, and entries keyed like the BPF trie (peer identity, protocol, port block)
with allow/deny, audit and the ids of the rules that decided. `decide()` answers for one
packet the way the BPF program reads these entries; `pylium policy trace` uses it."""

from __future__ import annotations

import dataclasses
import ipaddress
import socket
import struct
from dataclasses import dataclass, field

from pylium.core.api_for_plugins import DropReason
from pylium.plugins.policy import maps
from pylium.plugins.policy.identity import ID_HOST, ID_WORLD, Identity
from pylium.plugins.policy.l7 import DnsRule, HttpRule, match_pattern
from pylium.plugins.policy.model import NAMESPACE_LABEL, CidrSet, PeerRule, Policy, PortRange, Selector

PROTOCOLS = {"TCP": (6,), "UDP": (17,), "SCTP": (132,), "ANY": (6, 17, 132)}
_KEY = struct.Struct("=IHBBIBB")  # struct policy_key up to the port (host order), then the port (network)
_ENTRY = struct.Struct("<BB2sII")  # struct policy_entry (the proxy port in network order)
MATCH_L3_ONLY, MATCH_L3_L4, MATCH_L4_ONLY, MATCH_ALL = 1, 2, 3, 4
INGRESS, EGRESS = 0, 1
DIRECTIONS = ("ingress", "egress")
ENTITY_IDS = {"host": {1}, "init": {5}, "ingress": {8}, "unmanaged": {3}, "remote-node": {6}, "health": {4},
              "kube-apiserver": {7}, "none": set()}
ALLOW_LOCALHOST_RULE = 1  # rule id of the implicit "local host may reach its pods" entry
ANY_NAME = match_pattern("*")


def selector_matches(selector: Selector, labels: dict[str, str]) -> bool:
    for req in selector.requirements:
        if ":" in req.key:
            present = req.key in labels
            value = labels.get(req.key)
        else:  # no source: any source
            found = [v for k, v in labels.items() if k.split(":", 1)[-1] == req.key]
            present, value = bool(found), (found[0] if found else None)
        if req.operator == "In" and not (present and value in req.values):
            return False
        if req.operator == "NotIn" and present and value in req.values:
            return False
        if req.operator == "Exists" and not present:
            return False
        if req.operator == "DoesNotExist" and present:
            return False
    return True


@dataclass(frozen=True)
class Key:
    egress: int
    identity: int  # 0: any peer
    proto: int  # 0 with prefix 64: any protocol
    port: int  # host order; ICMP: the type << 8 (the first byte on the wire, as the BPF stage reads it)
    prefixlen: int

    def covers(self, other: Key) -> bool:
        """Does this (shorter) prefix contain `other` (same direction and identity)?"""
        if (self.egress, self.identity) != (other.egress, other.identity) or self.prefixlen > other.prefixlen:
            return False
        if self.prefixlen <= maps.PREFIX_ANY_PROTO:
            return True
        if self.proto != other.proto:
            return False
        bits = self.prefixlen - 80
        return bits <= 0 or (self.port >> (16 - bits)) == (other.port >> (16 - bits))

    def packed(self, ep_id: int) -> bytes:
        """struct policy_key as bytes (batch writes build no ctypes object per entry)."""
        proto = self.proto if self.prefixlen > maps.PREFIX_ANY_PROTO else 0
        return _KEY.pack(self.prefixlen, ep_id, self.egress, 0, self.identity, proto, 0) + self.port.to_bytes(2, "big")

    def bpf(self, ep_id: int) -> maps.PolicyKey:
        return maps.PolicyKey.from_buffer_copy(self.packed(ep_id))

    @classmethod
    def from_bpf(cls, key: maps.PolicyKey) -> Key:
        return cls(key.egress, key.identity, key.proto, socket.ntohs(key.port), key.prefixlen)


@dataclass
class Entry:
    deny: bool = False
    audit: bool = False
    match: int = MATCH_ALL
    rule_ids: list[int] = field(default_factory=list)
    http: tuple[HttpRule, ...] | None = None  # L7: the requests allowed, checked by the proxy (None: no L7)
    dns: tuple[DnsRule, ...] | None = None  # L7: the names pods may look up, checked by the DNS proxy
    proxy_port: int = 0  # where the datapath sends the connections (with `http` or `dns`)

    def packed(self) -> bytes:
        rules = (self.rule_ids + [0, 0])[:2]
        return _ENTRY.pack((maps.F_DENY if self.deny else 0) | (maps.F_AUDIT if self.audit else 0), self.match,
                           self.proxy_port.to_bytes(2, "big"), *rules)

    def add_l7(self, http: tuple[HttpRule, ...] | None, dns: tuple[DnsRule, ...] | None, proxy_port: int) -> None:
        """Merge another allow of the same key: L7 rules add up; an allow without L7 rules allows
        every request (the connection still goes through the proxy, so it is seen)."""
        if self.http is not None or http is not None:
            self.http = tuple(dict.fromkeys((self.http or (HttpRule(),)) + (http or (HttpRule(),))))
        elif self.dns is not None or dns is not None:
            self.dns = tuple(dict.fromkeys((self.dns or (ANY_NAME,)) + (dns or (ANY_NAME,))))
        else:
            return
        self.proxy_port = self.proxy_port or proxy_port

    def bpf(self) -> maps.PolicyEntry:
        return maps.PolicyEntry.from_buffer_copy(self.packed())


@dataclass
class EndpointPolicy:
    enforce: list[bool] = field(default_factory=lambda: [False, False])
    audit: list[bool] = field(default_factory=lambda: [False, False])
    audit_default: list[bool] = field(default_factory=lambda: [False, False])
    entries: dict[Key, Entry] = field(default_factory=dict)
    selected_by: list[list[int]] = field(default_factory=lambda: [[], []])  # rule ids per direction
    default_by: list[list[int]] = field(default_factory=lambda: [[], []])  # rules putting it in default deny
    l7: bool = False  # some entry sends connections to an L7 proxy

    @property
    def open(self) -> bool:
        """Nothing to enforce or report in either direction (the stage does nothing)."""
        return not (any(self.enforce) or self.entries)  # (audit only matters where something is denied)

    def flags(self, direction: int) -> int:
        return ((maps.ENFORCE if self.enforce[direction] else 0) | (maps.AUDIT if self.audit[direction] else 0)
                | (maps.AUDIT_DEFAULT if self.audit_default[direction] else 0))

    def _longest(self, direction: int, identity: int, proto: int, port: int) -> tuple[Key, Entry] | None:
        probe = Key(direction, identity, proto, port, maps.PREFIX_FULL)
        best = None
        for key, entry in self.entries.items():
            if key.covers(probe) and (best is None or key.prefixlen > best[0].prefixlen):
                best = (key, entry)
        return best

    def decide(self, direction: int, peer: int, proto: int, port: int) -> tuple[str, Entry | None, int]:
        """(verdict, deciding entry, drop reason) as the BPF stage decides a new connection:
        a deny from either lookup wins, then an allow, then the direction's default."""
        found = [x for x in (self._longest(direction, peer, proto, port), self._longest(direction, 0, proto, port))
                 if x is not None]
        denies = [e for _, e in found if e.deny]
        deny = next((e for e in denies if not e.audit), denies[0] if denies else None)  # enforced first
        if deny is not None:
            return ("audit" if deny.audit or self.audit[direction] else "denied", deny, DropReason.POLICY_DENY)
        if found:
            return "allowed", found[0][1], 0
        if self.enforce[direction]:
            audited = self.audit[direction] or self.audit_default[direction]
            return ("audit" if audited else "denied", None, DropReason.POLICY)
        return "allowed", None, 0  # not enforced


    def decide_http(self, direction: int, peer: int, port: int, method: str, path: str, host: str,
                    headers: dict[str, str]) -> tuple[bool | None, list[int]]:
        """An HTTP request on a TCP connection the datapath redirects to the proxy: (allowed,
        deciding rule ids), reading the entries the way the BPF stage picks them (the longest
        for the peer, the longest for any peer); None when no L7 rule applies."""
        found = [e for _, e in filter(None, (self._longest(direction, peer, 6, port),
                                              self._longest(direction, 0, 6, port)))]
        if not any(e.http is not None for e in found) or any(e.deny for e in found):
            return None, []
        return self._first_allowing(found, lambda e: any(r.allows(method, path, host, headers) for r in e.http or ()))

    def decide_dns(self, peer: int, proto: int, port: int, name: str) -> tuple[bool | None, list[int]]:
        """A DNS query of this endpoint to server `peer`: (allowed, deciding rule ids), as
        decide_http."""
        found = [e for _, e in filter(None, (self._longest(1, peer, proto, port), self._longest(1, 0, proto, port)))]
        if not any(e.dns is not None for e in found) or any(e.deny for e in found):
            return None, []
        return self._first_allowing(found, lambda e: any(r.allows(name) for r in e.dns or ()))

    @staticmethod
    def _first_allowing(found: list[Entry], allows) -> tuple[bool, list[int]]:
        for entry in found:
            if (entry.http is None and entry.dns is None) or allows(entry):
                return True, entry.rule_ids
        return False, [i for e in found for i in e.rule_ids]


class Resolver:
    """Policies + known identities -> EndpointPolicy for an endpoint's labels."""

    def __init__(self, policies: list[Policy], identities: dict[int, Identity], policy_ids: dict[tuple, int],
                 mode: str = "default", audit: bool = False, allow_localhost: bool = True,
                 proxy_ports: dict[str, int] | None = None):
        self.policies = policies
        self.proxy_ports = proxy_ports or {}  # listener ("http-ingress", "http-egress") -> port
        self.identities = identities
        self.policy_ids = policy_ids
        self.mode = mode
        self.audit = audit
        self.allow_localhost = allow_localhost
        self._selector_cache: dict[Selector, frozenset[int]] = {}
        # rules by one label their subject requires (an index: most endpoints are selected by few)
        self._by_label: dict[tuple[str, str], list[int]] = {}
        self._unindexed: list[int] = []
        self._rules = [(policy, rule) for policy in policies for rule in policy.rules]
        for n, (_, rule) in enumerate(self._rules):
            required = [r for r in rule.subject.requirements if r.operator == "In"]
            required.sort(key=lambda r: r.key == NAMESPACE_LABEL)  # the namespace narrows least
            if not required:
                self._unindexed.append(n)
            for value in required[0].values if required else ():
                self._by_label.setdefault((required[0].key, value), []).append(n)

    # ---- peers ----------------------------------------------------------------------------

    def _selected(self, selector: Selector) -> frozenset[int]:
        hit = self._selector_cache.get(selector)
        if hit is None:
            hit = self._selector_cache[selector] = frozenset(
                n for n, ident in self.identities.items()
                if "reserved:world" not in ident.labels and selector_matches(selector, ident.labels))
        return hit

    def _entity(self, name: str) -> set[int] | None:
        if name == "all":
            return None
        if name.startswith("world"):
            return {n for n, i in self.identities.items() if "reserved:world" in i.labels}
        if name in ("cluster", "cluster-mesh"):
            return {n for n, i in self.identities.items() if "reserved:world" not in i.labels}
        return set(ENTITY_IDS.get(name, set()))

    def _cidr(self, cidr: CidrSet) -> set[int]:
        out = {n for n, i in self.identities.items()
               if f"cidr:{cidr.cidr}" in i.labels and not any(f"cidr:{x}" in i.labels for x in cidr.excepts)}
        if ipaddress.ip_network(cidr.cidr).prefixlen == 0:
            out.add(ID_WORLD)
        return out

    def peers(self, rule: PeerRule) -> set[int] | None:
        """Peer identities of a rule element; None: any peer."""
        if not rule.l3:
            return None
        out: set[int] = set()
        for selector in rule.endpoints:
            out |= self._selected(selector)
        for cidr in rule.cidrs:
            out |= self._cidr(cidr)
        for name in rule.fqdns:  # addresses looked up under the name (identities labelled fqdn:<selector>)
            label = f"fqdn:{name.text}"
            out |= {n for n, i in self.identities.items() if label in i.labels}
        for entity in rule.entities:
            ids = self._entity(entity)
            if ids is None:
                return None
            out |= ids
        return out

    # ---- entries --------------------------------------------------------------------------

    @staticmethod
    def _l4_keys(direction: int, identity: int, rule: PeerRule) -> list[tuple[Key, PortRange | None]]:
        """The trie keys of a rule element, each with the port rule it comes from."""
        if not rule.ports and not rule.icmps:
            return [(Key(direction, identity, 0, 0, maps.PREFIX_ANY_PROTO), None)]
        keys = []
        for pr in rule.ports:
            keys.extend((key, pr) for key in _port_keys(direction, identity, pr))
        for icmp in rule.icmps:
            keys.append((Key(direction, identity, 1 if icmp.family == 4 else 58, icmp.type << 8, 88), None))
        return keys

    def endpoint(self, labels: dict[str, str], endpoint_audit: bool = False) -> EndpointPolicy:
        result = EndpointPolicy()
        if self.mode == "never":
            return result
        allows: dict[Key, Entry] = {}
        denies: dict[Key, Entry] = {}
        default_deny_rules: list[list[bool]] = [[], []]  # per direction: audit flag of each rule enabling it
        for policy, rule in self._selecting(labels):
            pid = self.policy_ids[policy.key]
            for direction, allow_list, deny_list, default in (
                    (INGRESS, rule.ingress, rule.ingress_deny, rule.default_deny_ingress),
                    (EGRESS, rule.egress, rule.egress_deny, rule.default_deny_egress)):
                if allow_list or deny_list or default:
                    if pid not in result.selected_by[direction]:
                        result.selected_by[direction].append(pid)
                if default:
                    default_deny_rules[direction].append(policy.audit)
                    if pid not in result.default_by[direction]:
                        result.default_by[direction].append(pid)
                for element in allow_list:
                    self._add(allows, direction, element, pid, deny=False, audit=policy.audit)
                for element in deny_list:
                    self._add(denies, direction, element, pid, deny=True, audit=policy.audit)
        for direction in (INGRESS, EGRESS):
            result.enforce[direction] = self.mode == "always" or bool(default_deny_rules[direction])
            result.audit[direction] = self.audit or endpoint_audit
            result.audit_default[direction] = bool(default_deny_rules[direction]) and all(default_deny_rules[direction])
        if self.allow_localhost and result.enforce[INGRESS]:
            allows.setdefault(Key(INGRESS, ID_HOST, 0, 0, maps.PREFIX_ANY_PROTO),
                              Entry(match=MATCH_L3_ONLY, rule_ids=[ALLOW_LOCALHOST_RULE]))
        # The trie returns the longest match only: a deny covering an allow of the same peer
        # key replaces it, and an audited deny covered by an enforced one is enforced.
        for key, entry in denies.items():
            if entry.audit and any(not d.audit and (k.covers(key) or k.covers(dataclasses.replace(key, identity=0)))
                                   for k, d in denies.items()):
                entry.audit = False
        for key, entry in allows.items():
            covering = [d for k, d in denies.items() if k.covers(key)]
            result.entries[key] = min(covering, key=lambda d: d.audit) if covering else entry
        result.entries.update(denies)
        result.l7 = any(e.proxy_port for e in result.entries.values())
        return result

    def _selecting(self, labels: dict[str, str]):
        """(policy, rule) pairs whose subject selects these labels, in policy order."""
        candidates = set(self._unindexed)
        for full, value in labels.items():
            for key in (full, full.split(":", 1)[-1]):
                candidates.update(self._by_label.get((key, value), ()))
        for n in sorted(candidates):
            policy, rule = self._rules[n]
            if selector_matches(rule.subject, labels):
                yield policy, rule

    def _add(self, into: dict[Key, Entry], direction: int, element: PeerRule, pid: int, *, deny: bool,
             audit: bool) -> None:
        if element.empty:
            return
        peers = self.peers(element)
        for identity in sorted(peers) if peers is not None else [0]:
            for key, pr in self._l4_keys(direction, identity, element):
                http = pr.http if pr is not None and not deny else None
                dns = pr.dns if pr is not None and not deny else None
                if (http is not None and key.proto != 6) or (dns is not None and key.proto not in (6, 17)):
                    continue  # L7 rules allow only what their proxy speaks on the port
                listener = f"http-{DIRECTIONS[direction]}" if http is not None else "dns-egress" if dns else ""
                proxy_port = self.proxy_ports.get(listener, 0)
                entry = into.get(key)
                if entry is None:
                    l4 = key.prefixlen > maps.PREFIX_ANY_PROTO
                    match = (MATCH_L3_L4 if l4 else MATCH_L3_ONLY) if identity else (MATCH_L4_ONLY if l4 else MATCH_ALL)
                    into[key] = Entry(deny=deny, audit=audit, match=match, rule_ids=[pid], http=http, dns=dns,
                                      proxy_port=proxy_port)
                else:
                    entry.audit = entry.audit and audit  # audited only if every deciding rule is
                    if pid not in entry.rule_ids:
                        entry.rule_ids.append(pid)
                    if not deny:
                        entry.add_l7(http, dns, proxy_port or self.proxy_ports.get(
                            f"http-{DIRECTIONS[direction]}" if entry.http is not None else "dns-egress", 0))


def _port_keys(direction: int, identity: int, pr: PortRange) -> list[Key]:
    keys = []
    for proto in PROTOCOLS[pr.protocol]:
        if pr.port == 0:
            keys.append(Key(direction, identity, proto, 0, maps.PREFIX_ANY_PORT))
            continue
        for port, bits in maps.port_prefixes(pr.port, pr.end_port or pr.port):
            keys.append(Key(direction, identity, proto, port, 80 + bits))
    return keys


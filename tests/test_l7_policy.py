"""The L7 proxy's pure parts: policies with HTTP rules resolved to entries that carry a proxy
port, the snapshot the proxy reads deciding requests as the datapath picks entries, proxy
ports kept across restarts, the identity mark."""

from __future__ import annotations

import json
import socket

import pytest
import yaml

from pylium.plugins.policy.identity import Identity
from pylium.plugins.policy.model import parse_policy
from pylium.plugins.policy.proxy.http import MARK_EGRESS_PROXY, MARK_INGRESS_PROXY, identity_mark
from pylium.plugins.policy.proxy.policy import L7Policy, snapshot
from pylium.plugins.policy.proxy.supervisor import allocate_ports
from pylium.plugins.policy.resolve import INGRESS, Key, Resolver

PORTS = {"http-ingress": 15001, "http-egress": 15002, "dns-egress": 15003}
IDS = {300: Identity(300, {"k8s:class": "deathstar", "k8s:org": "empire",
                           "k8s:io.kubernetes.pod.namespace": "default"}, "cluster_local"),
       301: Identity(301, {"k8s:class": "tiefighter", "k8s:org": "empire",
                           "k8s:io.kubernetes.pod.namespace": "default"}, "cluster_local"),
       302: Identity(302, {"k8s:class": "xwing", "k8s:org": "alliance",
                           "k8s:io.kubernetes.pod.namespace": "default"}, "cluster_local")}


def policy(ingress: list) -> object:
    return parse_policy(yaml.safe_load(json.dumps({
        "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy", "metadata": {"name": "p"},
        "spec": {"endpointSelector": {"matchLabels": {"class": "deathstar"}}, "ingress": ingress}})))


def resolve(*policies):
    resolver = Resolver(list(policies), IDS, {p.key: 10 + n for n, p in enumerate(policies)}, proxy_ports=PORTS)
    return resolver.endpoint(IDS[300].labels)


def l7(port: int, *rules) -> dict:
    return {"ports": [{"port": str(port), "protocol": "TCP"}], "rules": {"http": list(rules)}}


def test_entries_with_http_rules_carry_the_ingress_proxy_port():
    ep = resolve(policy([{"fromEndpoints": [{"matchLabels": {"org": "empire"}}],
                          "toPorts": [l7(80, {"method": "POST", "path": "/v1/request-landing"})]}]))
    entry = ep.entries[Key(INGRESS, 301, 6, 80, 96)]
    assert entry.proxy_port == PORTS["http-ingress"] and len(entry.http) == 1
    assert entry.packed()[2:4] == PORTS["http-ingress"].to_bytes(2, "big"), "network order, as the BPF reads it"
    assert Key(INGRESS, 302, 6, 80, 96) not in ep.entries


def test_an_l4_allow_of_the_same_port_allows_every_request_but_still_redirects():
    l4_only = policy([{"fromEndpoints": [{"matchLabels": {"class": "tiefighter"}}],
                       "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}]}])
    with_l7 = policy([{"fromEndpoints": [{"matchLabels": {"org": "empire"}}],
                       "toPorts": [l7(80, {"method": "GET"})]}])
    ep = resolve(with_l7, l4_only)
    entry = ep.entries[Key(INGRESS, 301, 6, 80, 96)]
    assert entry.proxy_port and any(r.allows("DELETE", "/", "h", {}) for r in entry.http)
    assert not any(r.allows("DELETE", "/", "h", {}) for r in ep.entries[Key(INGRESS, 300, 6, 80, 96)].http)


def test_the_snapshot_decides_requests_like_cilium(tmp_path):
    ep = resolve(policy([{"fromEndpoints": [{"matchLabels": {"org": "empire"}}],
                          "toPorts": [l7(80, {"method": "POST", "path": "/v1/request-landing"},
                                         {"path": "/public", "headers": ["X-Token: a b"]})]}]))
    path = tmp_path / "l7.json"
    path.write_text(json.dumps(snapshot({7: (["10.0.0.7"], 300, ep)}, PORTS, "Go away")))
    p = L7Policy.load(path)
    assert p.deny_message == "Go away" and p.ports == PORTS

    def allowed(peer, method, url, headers=None):
        return p.decide_http("10.0.0.7", INGRESS, peer, 80, method, url, "h", headers or {})[0]

    assert allowed(301, "POST", "/v1/request-landing")
    assert not allowed(301, "PUT", "/v1/exhaust-port")
    assert not allowed(301, "POST", "/v1/request-landing/x"), "full match"
    assert allowed(301, "GET", "/public", {"x-token": "a b"}) and not allowed(301, "GET", "/public", {"x-token": "a"})
    assert not allowed(302, "POST", "/v1/request-landing"), "no entry for the alliance"
    assert not p.decide_http("10.9.9.9", INGRESS, 301, 80, "POST", "/v1/request-landing", "h", {})[0]


def test_proxy_ports_come_from_the_range_and_survive_a_restart(tmp_path):
    first = allocate_ports(tmp_path, 12000, 12100)
    assert set(first) == {"http-ingress", "http-egress", "dns-egress"}
    assert all(12000 <= p <= 12100 for p in first.values()) and len(set(first.values())) == 3
    assert allocate_ports(tmp_path, 12000, 12100) == first
    state = json.loads((tmp_path / "proxy_ports_state.json").read_text())
    assert {(x["type"], x["ingress"]) for x in state} == {("http", True), ("http", False), ("dns", False)}
    # a port outside a new range is replaced
    assert all(13000 <= p <= 13010 for p in allocate_ports(tmp_path, 13000, 13010).values())


def test_a_busy_port_is_skipped(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        port = busy.getsockname()[1]
        with pytest.raises(RuntimeError, match="no free proxy port"):
            allocate_ports(tmp_path, port, port)


def test_the_identity_mark_is_ciliums():
    assert identity_mark(MARK_INGRESS_PROXY, 0) == 0x0A00
    assert identity_mark(MARK_EGRESS_PROXY, 0x123456) == (0x3456 << 16) | 0x0B00 | 0x12


def test_dns_rules_resolve_to_the_dns_proxy_on_udp_and_tcp_only(tmp_path):
    doc = {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy", "metadata": {"name": "d"},
           "spec": {"endpointSelector": {"matchLabels": {"class": "deathstar"}},
                    "egress": [{"toEndpoints": [{"matchLabels": {"class": "xwing"}}],
                                "toPorts": [{"ports": [{"port": "53", "protocol": "ANY"}],
                                             "rules": {"dns": [{"matchPattern": "*.example.com"}]}}]}]}}
    p = parse_policy(doc)
    ep = Resolver([p], IDS, {p.key: 10}, proxy_ports=PORTS).endpoint(IDS[300].labels)
    protos = sorted(k.proto for k in ep.entries if k.identity == 302)
    assert protos == [6, 17], "SCTP on a DNS port is not allowed: the proxy does not speak it"
    assert all(e.proxy_port == PORTS["dns-egress"] for k, e in ep.entries.items() if k.identity == 302)
    assert ep.decide_dns(302, 17, 53, "a.example.com.") == (True, [10])
    assert ep.decide_dns(302, 17, 53, "a.b.example.com.") == (False, [10])
    assert ep.decide_dns(301, 17, 53, "a.example.com.") == (None, []), "no DNS rule for that server"
    path = tmp_path / "l7.json"
    path.write_text(json.dumps(snapshot({7: (["10.0.0.7"], 300, ep)}, PORTS, "x")))
    assert L7Policy.load(path).decide_dns("10.0.0.7", 302, 6, 53, "WWW.example.com") == (True, [10])


def test_the_fqdn_cache_expires_keeps_a_minimum_ttl_and_survives_a_restart(tmp_path):
    from pylium.plugins.policy.fqdn import FqdnCache
    from pylium.plugins.policy.l7 import match_name, match_pattern

    cache = FqdnCache(tmp_path, min_ttl=60)
    assert cache.observe(3, "Example.com", ["192.0.2.1"], 30, now=1000.0)
    assert not cache.observe(3, "example.com.", ["192.0.2.1"], 30, now=1010.0), "same addresses: nothing new"
    assert cache.observe(3, "www.example.com", ["192.0.2.1", "192.0.2.2"], 5, now=1010.0)
    row = next(r for r in FqdnCache(tmp_path).lookups.values() if r.name == "example.com.")
    assert (row.ttl, row.expires) == (60, 1070.0), "30 s raised to minTtl, from the last lookup; read back"
    names = cache.addresses()
    assert names == {"192.0.2.1": {"example.com.", "www.example.com."}, "192.0.2.2": {"www.example.com."}}
    selectors = [match_name("example.com"), match_pattern("*.example.com")]
    assert cache.labels_of(names["192.0.2.2"], selectors) == {"fqdn:*.example.com": "", "reserved:world": ""}
    assert cache.labels_of({"other.org."}, selectors) == {}
    assert not cache.expire(now=1069.0) and cache.expire(now=1070.0)
    assert cache.addresses() == {}

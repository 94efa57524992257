"""The resolver's semantics without a kernel: the entries it writes, read back the way the BPF
stage reads them (decide()), on the cases where a longest-prefix trie could go wrong."""

from __future__ import annotations

from hypothesis import given, strategies as st

from pylium.plugins.policy.identity import Identity, cidr_labels
from pylium.plugins.policy.maps import port_prefixes
from pylium.plugins.policy.model import parse_documents
from pylium.plugins.policy.resolve import EGRESS, INGRESS, Resolver

NS = "k8s:io.kubernetes.pod.namespace"
WEB = {"k8s:app": "web", NS: "default"}
CLIENT = {"k8s:app": "client", NS: "default"}
IDENTITIES = {1: Identity(1, {"reserved:host": ""}, "reserved"), 2: Identity(2, {"reserved:world": ""}, "reserved"),
              256: Identity(256, WEB, "cluster_local"), 257: Identity(257, CLIENT, "cluster_local"),
              1 << 24: Identity(1 << 24, cidr_labels("192.0.2.0/24"), "node_local")}


def resolver(*specs: dict, audit_policies: tuple[str, ...] = (), mode: str = "default") -> Resolver:
    docs = []
    for i, spec in enumerate(specs):
        name = f"p{i}"
        meta = {"name": name, "namespace": "default"}
        if name in audit_policies:
            meta["annotations"] = {"policy.pylium.io/audit-mode": "true"}
        docs.append({"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy", "metadata": meta, "spec": spec})
    policies = parse_documents(docs)
    return Resolver(policies, IDENTITIES, {p.key: n + 2 for n, p in enumerate(policies)}, mode)


WEB_SELECTOR = {"matchLabels": {"app": "web"}}
FROM_CLIENT = {"fromEndpoints": [{"matchLabels": {"app": "client"}}]}


@given(st.integers(0, 65535), st.integers(0, 65535))
def test_port_blocks_cover_exactly_the_range(a, b):
    first, last = min(a, b), max(a, b)
    covered = set()
    for port, bits in port_prefixes(first, last):
        size = 1 << (16 - bits)
        assert port % size == 0, "a block starts on its own boundary"
        block = set(range(port, port + size))
        assert not covered & block
        covered |= block
    assert covered == set(range(first, last + 1))


def test_a_deny_of_all_ports_beats_a_more_specific_allow():
    r = resolver({"endpointSelector": WEB_SELECTOR, "ingress": [{**FROM_CLIENT, "toPorts": [{"ports": [{"port": "80"}]}]}],
                  "ingressDeny": [FROM_CLIENT]})
    policy = r.endpoint(WEB)
    assert policy.decide(INGRESS, 257, 6, 80)[0::2] == ("denied", 181)


def test_an_allow_inside_a_port_range_deny_of_any_peer_is_denied_and_outside_allowed():
    r = resolver({"endpointSelector": WEB_SELECTOR, "ingress": [{**FROM_CLIENT}],
                  "ingressDeny": [{"fromEntities": ["all"], "toPorts": [{"ports": [{"port": "8000", "endPort": 8099,
                                                                                    "protocol": "TCP"}]}]}]})
    policy = r.endpoint(WEB)
    assert policy.decide(INGRESS, 257, 6, 8050)[0::2] == ("denied", 181)
    assert policy.decide(INGRESS, 257, 6, 8100)[0] == "allowed"
    assert policy.decide(INGRESS, 257, 17, 8050)[0] == "allowed", "the deny is TCP only"


def test_an_audited_deny_does_not_hide_an_enforced_one():
    r = resolver({"endpointSelector": WEB_SELECTOR, "ingressDeny": [FROM_CLIENT]},
                 {"endpointSelector": WEB_SELECTOR, "ingressDeny": [{"fromEntities": ["all"]}],
                  "ingress": [{"fromEntities": ["all"]}]},
                 audit_policies=("p0",))
    verdict, entry, reason = r.endpoint(WEB).decide(INGRESS, 257, 6, 80)
    assert (verdict, reason) == ("denied", 181) and not entry.audit


def test_default_deny_names_the_policies_and_the_host_still_gets_in():
    r = resolver({"endpointSelector": WEB_SELECTOR, "ingress": [FROM_CLIENT]})
    policy = r.endpoint(WEB)
    assert policy.enforce == [True, False] and policy.default_by[INGRESS] == [2]
    assert policy.decide(INGRESS, 2, 6, 80)[0::2] == ("denied", 133)
    assert policy.decide(INGRESS, 1, 6, 80)[0] == "allowed"  # allowLocalhost
    assert policy.decide(EGRESS, 2, 6, 80)[0] == "allowed"  # egress not enforced


def test_cidr_rules_select_cidr_identities_inside_and_world_only_for_zero_length():
    r = resolver({"endpointSelector": WEB_SELECTOR, "egress": [{"toCIDR": ["192.0.0.0/16"]}]})
    policy = r.endpoint(WEB)
    assert policy.decide(EGRESS, 1 << 24, 17, 53)[0] == "allowed"
    assert policy.decide(EGRESS, 2, 17, 53)[0] == "denied", "world is not inside 192.0.0.0/16"
    r = resolver({"endpointSelector": WEB_SELECTOR, "egress": [{"toCIDRSet": [{"cidr": "0.0.0.0/0",
                                                                               "except": ["192.0.2.0/24"]}]}]})
    policy = r.endpoint(WEB)
    assert policy.decide(EGRESS, 2, 17, 53)[0] == "allowed"
    assert policy.decide(EGRESS, 1 << 24, 17, 53)[0] == "denied", "inside the except"


def test_modes_never_and_always():
    never = resolver({"endpointSelector": WEB_SELECTOR, "ingress": [FROM_CLIENT]}, mode="never").endpoint(WEB)
    assert never.open and never.decide(INGRESS, 2, 6, 80)[0] == "allowed"
    always = resolver(mode="always").endpoint(CLIENT)
    assert always.enforce == [True, True] and always.decide(EGRESS, 256, 6, 80)[0] == "denied"

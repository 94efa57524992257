"""Policy documents parsed into the model: Cilium and Kubernetes semantics, and every bad field
refused with its exact path."""

from __future__ import annotations

import copy

import pytest
import yaml
from hypothesis import given, settings, strategies as st

from pylium.plugins.policy.model import (
    NAMESPACE_LABEL, CidrSet, Icmp, PeerRule, Policy, PolicyError, PortRange, Requirement, Rule, Selector,
    parse_documents, parse_policy,
)

RULE1 = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: rule1
spec:
  description: L3-L4 policy to restrict deathstar access to empire ships only
  endpointSelector:
    matchLabels:
      org: empire
      class: deathstar
  ingress:
  - fromEndpoints:
    - matchLabels:
        org: empire
    toPorts:
    - ports:
      - port: "80"
        protocol: TCP
"""


def rule1() -> dict:
    return yaml.safe_load(RULE1)


def in_ns(ns: str = "default") -> Requirement:
    return Requirement(NAMESPACE_LABEL, "In", (ns,))


def sel(*requirements: Requirement) -> Selector:
    return Selector(tuple(sorted(requirements, key=lambda r: (r.key, r.operator, r.values))))


def cnp(spec: dict, kind: str = "CiliumNetworkPolicy", **metadata) -> dict:
    return {"apiVersion": "cilium.io/v2", "kind": kind, "metadata": {"name": "p", **metadata}, "spec": spec}


def knp(spec: dict, namespace: str = "shop") -> dict:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "np", "namespace": namespace}, "spec": spec}


def error_of(doc: dict) -> PolicyError:
    with pytest.raises(PolicyError) as info:
        parse_policy(doc, "test.yaml")
    assert info.value.origin == "test.yaml"
    return info.value


# --- Cilium -------------------------------------------------------------------------------------

def test_star_wars_rule1_parses_to_the_exact_model():
    policy = parse_policy(rule1(), "rule1.yaml")
    assert policy == Policy(
        kind="CiliumNetworkPolicy", name="rule1", namespace="default", origin="rule1.yaml",
        rules=(Rule(
            subject=sel(Requirement("class", "In", ("deathstar",)), Requirement("org", "In", ("empire",)), in_ns()),
            ingress=(PeerRule(l3=True, endpoints=(sel(Requirement("org", "In", ("empire",)), in_ns()),),
                              ports=(PortRange(80, 0, "TCP"),)),),
            default_deny_ingress=True,
            description="L3-L4 policy to restrict deathstar access to empire ships only"),))
    assert policy.key == ("CiliumNetworkPolicy", "default", "rule1")
    assert hash(policy.rules[0].subject) == hash(sel(*policy.rules[0].subject.requirements))


def test_namespace_scopes_subject_and_peers_unless_a_peer_names_a_namespace():
    spec = {"endpointSelector": {},
            "egress": [{"toEndpoints": [
                {},
                {"matchLabels": {"io.kubernetes.pod.namespace": "kube-system", "k8s-app": "kube-dns"}},
                {"matchExpressions": [{"key": "any:io.kubernetes.pod.namespace", "operator": "Exists"}]},
                {"matchLabels": {"io.cilium.k8s.namespace.labels.team": "a"}},
            ]}]}
    rule = parse_policy(cnp(spec, namespace="shop")).rules[0]
    assert rule.subject == sel(in_ns("shop"))
    assert rule.egress[0].endpoints == (
        sel(in_ns("shop")),
        sel(Requirement("k8s-app", "In", ("kube-dns",)), in_ns("kube-system")),
        sel(Requirement(NAMESPACE_LABEL, "Exists")),
        sel(Requirement("k8s:io.cilium.k8s.namespace.labels.team", "In", ("a",)), in_ns("shop")),
    )
    assert rule.default_deny_egress and not rule.default_deny_ingress


def test_clusterwide_policy_is_not_scoped_and_has_no_namespace():
    spec = {"endpointSelector": {"matchLabels": {"any:app": "web", "k8s:tier": "front"}},
            "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "lb"}}]}]}
    policy = parse_policy(cnp(spec, kind="CiliumClusterwideNetworkPolicy"))
    assert policy.namespace == "" and policy.display_name == "p"
    assert policy.rules[0].subject == sel(Requirement("app", "In", ("web",)), Requirement("k8s:tier", "In", ("front",)))
    assert policy.rules[0].ingress[0].endpoints == (sel(Requirement("app", "In", ("lb",))),)
    assert error_of(cnp(spec, kind="CiliumClusterwideNetworkPolicy", namespace="x")).path == "metadata.namespace"


def test_peers_cidrs_entities_icmps_and_empty_elements():
    spec = {"endpointSelector": {},
            "ingress": [{}, {"fromEndpoints": []},
                        {"icmps": [{"fields": [{"type": 8}, {"family": "IPv6", "type": "EchoRequest"}]}]}],
            "egress": [{"toCIDR": ["10.1.2.3", "10.0.0.0/8"],
                        "toCIDRSet": [{"cidr": "192.168.0.0/16", "except": ["192.168.1.0/24"]}],
                        "toEntities": ["world"],
                        "toPorts": [{"ports": [{"port": 0, "protocol": "tcp"}, {"port": 8000, "endPort": 8080}]}]}],
            "egressDeny": [{"toPorts": [{"ports": [{"port": "53", "protocol": "UDP"}]}, {}]}],
            "enableDefaultDeny": {"egress": False}}
    rule = parse_policy(cnp(spec)).rules[0]
    assert rule.ingress == (PeerRule(empty=True), PeerRule(l3=True),
                            PeerRule(icmps=(Icmp(4, 8), Icmp(6, 128))))
    assert rule.egress == (PeerRule(l3=True, cidrs=(CidrSet("10.1.2.3/32"), CidrSet("10.0.0.0/8"),
                                                      CidrSet("192.168.0.0/16", ("192.168.1.0/24",))),
                                    entities=("world",),
                                    ports=(PortRange(0, 0, "TCP"), PortRange(8000, 8080, "ANY"))),)
    assert rule.egress_deny == (PeerRule(),)  # a toPorts element without ports: any port
    assert rule.default_deny_ingress and not rule.default_deny_egress


def test_specs_list_labels_and_audit_annotation():
    doc = cnp({"endpointSelector": {}}, annotations={"policy.pylium.io/audit-mode": "true"})
    del doc["spec"]
    doc["specs"] = [{"endpointSelector": {}, "labels": [{"key": "team", "value": "a", "source": "k8s"}]},
                    {"endpointSelector": {"matchLabels": {"app": "x"}}, "labels": [{"key": "tier"}]}]
    policy = parse_policy(doc)
    assert len(policy.rules) == 2 and policy.audit
    assert policy.labels == ("k8s:team=a", "unspec:tier=")
    assert policy.rules[1].default_deny_ingress is False  # no ingress section: no effect
    doc["metadata"]["annotations"]["policy.pylium.io/audit-mode"] = "yes"
    assert error_of(doc).path == "metadata.annotations"


BAD_CILIUM = [
    ({"ingress": [{"fromEndpoint": [{}]}]}, "spec.ingress[0].fromEndpoint", "unknown field"),
    ({"ingress": [{"toPorts": [{"ports": [{"port": "80x"}]}]}]}, "spec.ingress[0].toPorts[0].ports[0].port",
     'port "80x" is not a number from 0 to 65535'),
    ({"ingress": [{"toPorts": [{"ports": [{"port": "http"}]}]}]}, "spec.ingress[0].toPorts[0].ports[0].port",
     "named port"),
    ({"ingress": [{"toPorts": [{"ports": [{"port": 70000}]}]}]}, "spec.ingress[0].toPorts[0].ports[0].port",
     "70000"),
    ({"ingress": [{"toPorts": [{"ports": [{"port": "8080", "endPort": 80}]}]}]},
     "spec.ingress[0].toPorts[0].ports[0].endPort", "endPort 80 is below port 8080"),
    ({"ingress": [{"toPorts": [{"ports": [{"port": 80, "protocol": "ICMP"}]}]}]},
     "spec.ingress[0].toPorts[0].ports[0].protocol", "TCP, UDP, SCTP, ANY"),
    ({"ingress": [{"toPorts": [{"ports": [{"port": 80}] * 41}]}]}, "spec.ingress[0].toPorts[0].ports", "at most 40"),
    ({"ingressDeny": [{"toPorts": [{"rules": {}}]}]}, "spec.ingressDeny[0].toPorts[0].rules", "unknown field"),
    ({"ingress": [{"toPorts": [{"ports": [{"port": 80, "protocol": "TCP"}], "rules": {"http": [{"path": "/api/(x"}]}}]}]},
     "spec.ingress[0].toPorts[0].rules.http[0].path", '"/api/(x" is not a valid regular expression'),
    ({"ingress": [{"toPorts": [{"ports": [{"port": 80, "protocol": "UDP"}], "rules": {"http": [{}]}}]}]},
     "spec.ingress[0].toPorts[0].rules.http", "HTTP rules need TCP, but port 80 is UDP"),
    ({"ingress": [{"toPorts": [{"rules": {"http": [{"headerMatches": [{"name": "x", "secret": {}}]}]}}]}]},
     "spec.ingress[0].toPorts[0].rules.http[0].headerMatches[0].secret", "not supported"),
    ({"ingress": [{"toPorts": [{"rules": {"http": [{"headerMatches": [{"name": "x", "mismatch": "DROP"}]}]}}]}]},
     "spec.ingress[0].toPorts[0].rules.http[0].headerMatches[0]", "LOG, ADD, DELETE, REPLACE"),
    ({"egress": [{"toPorts": [{"ports": [{"port": 80}], "rules": {"http": [{}], "dns": [{"matchName": "a"}]}}]}]},
     "spec.egress[0].toPorts[0].rules", "cannot share a port rule"),
    ({"ingress": [{"toPorts": [{"ports": [{"port": 53}], "rules": {"dns": [{"matchName": "a"}]}}]}]},
     "spec.ingress[0].toPorts[0].rules.dns", "DNS rules apply to egress only"),
    ({"ingress": [{"toPorts": [{"rules": {"http": [{}]}}]}]}, "spec.ingress[0].toPorts[0].rules",
     "L7 rules need ports"),
    ({"ingress": [{"toPorts": [{"ports": [{"port": 80, "endPort": 90}], "rules": {"http": [{}]}}]}]},
     "spec.ingress[0].toPorts[0].rules", "no endPort"),
    ({"ingress": [{"toPorts": [{"rules": {"kafka": [{}]}}]}]}, "spec.ingress[0].toPorts[0].rules.kafka",
     "kafka rules are not supported"),
    ({"egress": [{"toPorts": [{"ports": [{"port": 53}], "rules": {"dns": [{"matchPattern": "a.**.example.com"}]}}]}]},
     "spec.egress[0].toPorts[0].rules.dns[0].matchPattern", '"**." is allowed only at the start'),
    ({"egress": [{"toPorts": [{"rules": {"dns": [{"matchName": "a.com", "matchPattern": "*"}]}}]}]},
     "spec.egress[0].toPorts[0].rules.dns[0]", "exactly one of matchName and matchPattern"),
    ({"egress": [{"toPorts": [{"ports": [{"port": 53, "protocol": "SCTP"}], "rules": {"dns": [{"matchName": "a"}]}}]}]},
     "spec.egress[0].toPorts[0].rules.dns", "DNS rules need UDP or TCP, but port 53 is SCTP"),
    ({"egress": [{"toFQDNs": [{"matchName": "bad name!"}]}]}, "spec.egress[0].toFQDNs[0].matchName",
     "is not a DNS name"),
    ({"egress": [{"toFQDNs": [{"matchPattern": "[a-z].com"}]}]}, "spec.egress[0].toFQDNs[0].matchPattern",
     "only letters, digits"),
    ({"endpointSelector": {"matchExpressions": [{"key": "app", "operator": "Equals", "values": ["x"]}]}},
     "spec.endpointSelector.matchExpressions[0].operator", "In, NotIn, Exists, DoesNotExist"),
    ({"endpointSelector": {"matchExpressions": [{"key": "app", "operator": "In"}]}},
     "spec.endpointSelector.matchExpressions[0].values", "at least one value"),
    ({"endpointSelector": {"matchExpressions": [{"key": "app", "operator": "Exists", "values": ["x"]}]}},
     "spec.endpointSelector.matchExpressions[0].values", "takes no values"),
    ({"endpointSelector": {"matchLabels": {"version": 2}}}, "spec.endpointSelector.matchLabels.version", "2"),
    ({"egress": [{"toEndpoints": [{}], "toFQDNs": [{"matchName": "example.com"}]}]}, "spec.egress[0].toFQDNs",
     "toFQDNs cannot be combined with toEndpoints"),
    ({"egress": [{"toCIDR": ["10.0.0.0/8", "10.0.0.300"]}]}, "spec.egress[0].toCIDR[1]", '"10.0.0.300"'),
    ({"egress": [{"toCIDRSet": [{"cidr": "10.0.0.0/8", "except": ["11.0.0.0/16"]}]}]},
     "spec.egress[0].toCIDRSet[0].except[0]", 'except "11.0.0.0/16" is not inside cidr 10.0.0.0/8'),
    ({"egress": [{"toCIDRSet": [{"cidrGroupRef": "g"}]}]}, "spec.egress[0].toCIDRSet[0].cidrGroupRef",
     "not supported"),
    ({"egress": [{"toEntities": ["world", "galaxy"]}]}, "spec.egress[0].toEntities[1]", '"galaxy" is not one of'),
    ({"egress": [{"toServices": [{}]}]}, "spec.egress[0].toServices", "not supported yet"),
    ({"ingress": [{"fromRequires": [{}]}]}, "spec.ingress[0].fromRequires", "not supported"),
    ({"ingress": [{"authentication": {"mode": "required"}}]}, "spec.ingress[0].authentication", "not supported"),
    ({"ingress": [{"icmps": [{"fields": [{"type": "Ping"}]}]}]}, "spec.ingress[0].icmps[0].fields[0].type",
     "EchoRequest"),
    ({"ingress": [{"toPorts": [{}], "icmps": [{"fields": [{"type": 8}]}]}]}, "spec.ingress[0].icmps", "toPorts"),
    ({"nodeSelector": {}}, "spec.nodeSelector", "nodeSelector (host policies) is not supported"),
    ({"enableDefaultDeny": {"ingress": "no"}}, "spec.enableDefaultDeny.ingress", "true or false"),
    ({"ingres": []}, "spec.ingres", "did you mean ingress?"),
]


@pytest.mark.parametrize(("change", "path", "message"), BAD_CILIUM, ids=[c[1] for c in BAD_CILIUM])
def test_bad_cilium_fields_are_refused_at_their_path(change, path, message):
    doc = cnp({"endpointSelector": {}, **change})
    error = error_of(doc)
    assert (error.path, message in error.message) == (path, True), error.message


def test_bad_documents_are_refused_at_their_path():
    assert error_of({**rule1(), "apiVersion": "cilium.io/v1"}).path == "apiVersion"
    assert "cilium.io/v2" in error_of({**rule1(), "apiVersion": "cilium.io/v1"}).message
    assert error_of({**rule1(), "kind": "CiliumPolicy"}).path == "kind"
    assert error_of({**rule1(), "metadata": {}}).path == "metadata.name"
    assert error_of({**rule1(), "metadata": {"name": "Rule_1"}}).path == "metadata.name"
    assert error_of({**rule1(), "spec": None}).path == "spec"
    no_subject = rule1()
    del no_subject["spec"]["endpointSelector"]
    assert error_of(no_subject).path == "spec.endpointSelector"
    in_specs = rule1()
    in_specs["specs"] = [{"endpointSelector": {}}, {"endpointSelector": {}, "egress": [{"toCIDR": ["x"]}]}]
    assert error_of(in_specs).path == "specs[1].egress[0].toCIDR[0]"


# --- Kubernetes NetworkPolicy ------------------------------------------------------------------

def test_network_policy_peers_translate_to_selectors_and_cidrs():
    spec = {"podSelector": {"matchLabels": {"app": "db"}},
            "ingress": [{"from": [
                {"podSelector": {"matchLabels": {"role": "api"}}},
                {"namespaceSelector": {"matchLabels": {"team": "ops"}}},
                {"namespaceSelector": {"matchLabels": {"team": "ops"}}, "podSelector": {"matchLabels": {"role": "x"}}},
                {"namespaceSelector": {}},
                {"ipBlock": {"cidr": "172.17.0.0/16", "except": ["172.17.1.0/24"]}},
            ], "ports": [{"port": 5432}, {"protocol": "UDP", "port": 32000, "endPort": 32768}]}]}
    policy = parse_policy(knp(spec))
    (rule,) = policy.rules
    ns_exists = Requirement(NAMESPACE_LABEL, "Exists")
    team = Requirement("k8s:io.cilium.k8s.namespace.labels.team", "In", ("ops",))
    assert rule.subject == sel(Requirement("k8s:app", "In", ("db",)), in_ns("shop"))
    assert rule.ingress == (PeerRule(
        l3=True,
        endpoints=(sel(Requirement("k8s:role", "In", ("api",)), in_ns("shop")),
                   sel(team, ns_exists),
                   sel(team, Requirement("k8s:role", "In", ("x",)), ns_exists),
                   sel(ns_exists)),
        cidrs=(CidrSet("172.17.0.0/16", ("172.17.1.0/24",)),),
        ports=(PortRange(5432, 0, "TCP"), PortRange(32000, 32768, "UDP"))),)
    assert (rule.default_deny_ingress, rule.default_deny_egress) == (True, False)
    assert policy.key == ("NetworkPolicy", "shop", "np")


def test_network_policy_types_defaults_and_empty_from():
    only_ingress = parse_policy(knp({"podSelector": {}})).rules[0]
    assert only_ingress.subject == sel(in_ns("shop"))
    assert only_ingress.ingress == ()  # Ingress by default, and no rule: default deny
    assert (only_ingress.default_deny_ingress, only_ingress.default_deny_egress) == (True, False)

    both = parse_policy(knp({"podSelector": {}, "ingress": [{}], "egress": [{"to": [], "ports": [{"port": 53}]}]}))
    rule = both.rules[0]
    assert rule.ingress == (PeerRule(),)  # `{}` allows every peer on every port
    assert rule.egress == (PeerRule(ports=(PortRange(53, 0, "TCP"),)),)
    assert rule.default_deny_ingress and rule.default_deny_egress

    egress_only = parse_policy(knp({"podSelector": {}, "policyTypes": ["Egress"], "ingress": [{}]})).rules[0]
    assert (egress_only.ingress, egress_only.default_deny_ingress, egress_only.default_deny_egress) == ((), False, True)


@pytest.mark.parametrize(("spec", "path"), [
    ({}, "spec.podSelector"),
    ({"podSelector": {}, "policyTypes": ["Ingress", "Sideways"]}, "spec.policyTypes[1]"),
    ({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]}]},
     "spec.ingress[0].from[0].ipBlock"),
    ({"podSelector": {}, "ingress": [{"from": [{}]}]}, "spec.ingress[0].from[0]"),
    ({"podSelector": {}, "egress": [{"ports": [{"port": "http"}]}]}, "spec.egress[0].ports[0].port"),
    ({"podSelector": {}, "egress": [{"ports": [{"port": 80, "protocol": "ANY"}]}]}, "spec.egress[0].ports[0].protocol"),
    ({"podSelector": {}, "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.0.0.0/4"]}}]}]},
     "spec.egress[0].to[0].ipBlock.except[0]"),
    ({"podSelector": {}, "ingress": [{"fromEndpoints": []}]}, "spec.ingress[0].fromEndpoints"),
])
def test_bad_network_policies_are_refused_at_their_path(spec, path):
    assert error_of(knp(spec)).path == path


# --- documents -----------------------------------------------------------------------------------

def test_parse_documents_skips_other_kinds_and_is_all_or_nothing():
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}
    good = knp({"podSelector": {}})
    assert parse_documents([namespace, None, rule1(), good], "m.yaml") == [
        parse_policy(rule1(), "m.yaml"), parse_policy(good, "m.yaml")]
    with pytest.raises(PolicyError) as info:
        parse_documents([rule1(), cnp({"endpointSelector": {}, "ingress": [{"fromEndpoint": []}]})], "m.yaml")
    assert info.value.path == "spec.ingress[0].fromEndpoint" and "m.yaml" in info.value.origin
    with pytest.raises(PolicyError, match="kind"):
        parse_policy(namespace)
    with pytest.raises(PolicyError, match="List"):
        parse_documents([{"apiVersion": "v1", "kind": "List", "items": [rule1()]}])


# --- robustness ----------------------------------------------------------------------------------

GARBAGE = st.recursive(
    st.none() | st.booleans() | st.integers(-2, 70000) | st.floats(allow_nan=True) | st.text(max_size=12)
    | st.sampled_from(["80", "TCP", "In", "world", "10.0.0.0/8", "IPv6", "EchoRequest", "k8s:app", "true"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["port", "endPort", "protocol", "matchLabels", "matchExpressions", "key", "operator",
                         "values", "cidr", "except", "fields", "type", "family", "ports", "rules"])
        | st.text(max_size=6),
        inner, max_size=3),
    max_leaves=12)


def _containers(node, found):
    if isinstance(node, (dict, list)):
        found.append(node)
        for child in (node.values() if isinstance(node, dict) else node):
            _containers(child, found)
    return found


@settings(max_examples=400, deadline=None)
@given(st.data(), GARBAGE)
def test_garbage_inside_a_valid_policy_parses_or_raises_policy_error(data, garbage):
    base = data.draw(st.sampled_from([rule1(), knp({"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}],
                                                                                     "ports": [{"port": 80}]}]})]))
    doc = copy.deepcopy(base)
    target = data.draw(st.sampled_from(_containers(doc, [])))
    if isinstance(target, dict):
        target[data.draw(st.sampled_from(sorted(target) + ["extra"]))] = garbage
    else:
        target.insert(data.draw(st.integers(0, len(target))), garbage)
    try:
        parse_policy(doc)
    except PolicyError:
        pass


def test_empty_l7_rules_leave_a_plain_port_rule():
    spec = {"endpointSelector": {}, "ingress": [{"toPorts": [{"ports": [{"port": 80, "protocol": "TCP"}],
                                                              "rules": {}}]}]}
    rule = parse_policy(cnp(spec)).rules[0]
    assert [(p.port, p.protocol) for p in rule.ingress[0].ports] == [(80, "TCP")]

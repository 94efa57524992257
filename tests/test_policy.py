"""Policy with real pods and packets: identities, Cilium and Kubernetes policies enforced in BPF,
drops with reasons and rule names, connection tracking, modes, audit, trace, the CLI."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from helpers import run_cli
from pylium.testing.lab import NODE_IP, OUTSIDE_IP
from test_datapath import ping, serve

PODS = textwrap.dedent("""
    apiVersion: v1
    kind: Pod
    metadata: {name: deathstar, namespace: default, labels: {org: empire, class: deathstar}}
    ---
    apiVersion: v1
    kind: Pod
    metadata: {name: tiefighter, namespace: default, labels: {org: empire, class: tiefighter}}
    ---
    apiVersion: v1
    kind: Pod
    metadata: {name: xwing, namespace: default, labels: {org: alliance, class: xwing}}
""")
RULE1 = textwrap.dedent("""
    apiVersion: cilium.io/v2
    kind: CiliumNetworkPolicy
    metadata: {name: rule1}
    spec:
      description: L3-L4 policy to restrict deathstar access to empire ships only
      endpointSelector:
        matchLabels: {org: empire, class: deathstar}
      ingress:
      - fromEndpoints:
        - matchLabels: {org: empire}
        toPorts:
        - ports:
          - {port: "80", protocol: TCP}
""")
CONNECT = textwrap.dedent("""
    import socket, sys
    kind, ip, port, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM)
    s.settimeout(timeout)
    try:
        if kind == "tcp":
            s.connect((ip, port)); s.sendall(b"hi"); s.recv(100)
        else:
            s.sendto(b"hi", (ip, port)); s.recvfrom(100)
        print("ok")
    except OSError:
        print("blocked")
""")


def reaches(lab, pod, ip: str, port: int, kind: str = "tcp", timeout: float = 1.0) -> bool:
    out = lab.exec(pod.netns, sys.executable, "-c", CONNECT, kind, ip, str(port), str(timeout)).stdout.strip()
    return out == "ok"


@pytest.fixture
def empire(lab):
    """deathstar, tiefighter and xwing in `default`, servers on deathstar :80 and :8080."""
    lab.manifests.joinpath("pods.yaml").write_text(PODS)

    def start(*extra: str, policies: str = ""):
        if policies:
            lab.manifests.joinpath("policies.yaml").write_text(policies)
        agent = lab.start_agent(*extra)
        pods = {name: lab.pod(name[:2], k8s_namespace="default", k8s_pod_name=name)
                for name in ("deathstar", "tiefighter", "xwing")}
        for port in (80, 8080):
            serve(lab, pods["deathstar"].netns, "tcp", pods["deathstar"].ip, port)
        return agent, pods

    yield lab, start
    for proc in getattr(lab, "servers", []):
        proc.kill()


def cli(lab, *args: str, ok: bool = True):
    out = run_cli(lab.dirs, *args)
    if ok:
        assert out.returncode == 0, out.stderr
    return out


def import_policy(lab, tmp_path, text: str, name: str = "p.yaml") -> int:
    f = tmp_path / name
    f.write_text(text)
    out = cli(lab, "policy", "import", str(f))
    revision = int(out.stdout.split("Revision:")[1])
    cli(lab, "policy", "wait", str(revision))
    return revision


def metric(lab, name: str, **labels) -> float:
    out = cli(lab, "metrics", "list", "-p", name, "-o", "json")
    rows = json.loads(out.stdout)
    return sum(r["value"] for r in rows if r["name"] == name and all(r["labels"].get(k) == v for k, v in labels.items()))


def test_star_wars_rule1_lets_the_empire_in_on_port_80_only(empire, tmp_path):
    lab, start = empire
    _, pods = start()
    death = pods["deathstar"]
    # no policy selects deathstar: everybody gets in
    assert reaches(lab, pods["xwing"], death.ip, 80)
    import_policy(lab, tmp_path, RULE1)
    before = metric(lab, "cilium_drop_count_total", reason="Policy denied", direction="INGRESS")
    assert reaches(lab, pods["tiefighter"], death.ip, 80)
    assert not reaches(lab, pods["xwing"], death.ip, 80)
    assert not reaches(lab, pods["tiefighter"], death.ip, 8080), "other ports are not allowed"
    assert metric(lab, "cilium_drop_count_total", reason="Policy denied", direction="INGRESS") > before
    # identities: one per label set, from 256
    identities = {ep["id"]: ep["identity"] for ep in json.loads(cli(lab, "endpoint", "list", "-o", "json").stdout)}
    assert len(set(identities.values())) == 3 and min(identities.values()) >= 256
    # the flows name the rules
    deadline = time.monotonic() + 10
    while True:
        flows = [json.loads(line)["flow"] for line in
                 cli(lab, "observe", "--all", "-o", "json", "--to-pod", "default/deathstar").stdout.splitlines()
                 if "flow" in json.loads(line)]
        drops = [f for f in flows if f["verdict"] == "DROPPED" and f["source"].get("pod_name") == "xwing"]
        allowed = [f for f in flows if f.get("event_type", {}).get("type") == 5
                   and f["source"].get("pod_name") == "tiefighter"]
        if (drops and allowed) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert drops and drops[0]["drop_reason_desc"] == "POLICY_DENIED" and drops[0]["traffic_direction"] == "INGRESS"
    # a default-deny drop names the policy that put deathstar's ingress into default deny
    assert [(p["kind"], p["name"]) for p in drops[0]["ingress_denied_by"]] == [("CiliumNetworkPolicy", "rule1")]
    assert allowed[0]["verdict"] == "FORWARDED" and allowed[0]["policy_match_type"] == 2  # L3-L4
    assert allowed[0]["ingress_allowed_by"] == [{"name": "rule1", "namespace": "default",
                                                  "kind": "CiliumNetworkPolicy",
                                                  "revision": allowed[0]["ingress_allowed_by"][0]["revision"]}]


HELD_FLOW = textwrap.dedent("""
    import socket, sys
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect((sys.argv[1], int(sys.argv[2])))
    s.settimeout(1)
    for _ in iter(sys.stdin.readline, ""):
        s.send(b"x")
        try:
            print(s.recv(100).decode(), flush=True)
        except socket.timeout:
            print("timeout", flush=True)
""")


def test_a_policy_stops_a_flow_the_fast_path_forwards(empire, tmp_path):
    """A flow between local pods goes by the fast path once established; a policy that denies
    it applies to its next packet all the same (the write makes a new generation)."""
    lab, start = empire
    _, pods = start()
    death, xwing = pods["deathstar"], pods["xwing"]
    serve(lab, death.netns, "udp", death.ip, 80)
    flow = subprocess.Popen(["ip", "netns", "exec", xwing.netns, sys.executable, "-c", HELD_FLOW, death.ip, "80"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    lab.servers.append(flow)

    def ask() -> str:
        flow.stdin.write("\n")
        flow.stdin.flush()
        return flow.stdout.readline().strip()

    for _ in range(5):  # one socket, one 5-tuple: remembered after its first millisecond
        assert ask() == xwing.ip
        time.sleep(0.01)
    remembered = lab.node("bpftool", "map", "dump", "pinned",
                          str(lab.bpf_root / lab.dirs.node / "core" / "fast_flows_v1"), "-j").stdout
    assert json.loads(remembered), "the flow went by the fast path"
    import_policy(lab, tmp_path, RULE1)  # deathstar admits only TCP 80 from the empire
    assert ask() == "timeout"


SEED = textwrap.dedent("""
    apiVersion: "cilium.io/v2"
    kind: CiliumNetworkPolicy
    metadata:
      name: "allow-frontend-to-backend"
    spec:
      endpointSelector:
        matchLabels:
          role: backend
      ingress:
      - fromEndpoints:
        - matchLabels:
            role: frontend
        toPorts:
        - ports:
          - port: "8080"
            protocol: TCP
""")
ROLES = textwrap.dedent("""
    apiVersion: v1
    kind: Pod
    metadata: {name: backend, labels: {role: backend}}
    ---
    apiVersion: v1
    kind: Pod
    metadata: {name: frontend, labels: {role: frontend}}
    ---
    apiVersion: v1
    kind: Pod
    metadata: {name: other, labels: {role: other}}
""")


def test_the_seed_policy_from_the_manifests_directory_and_a_bad_edit_keeps_it(lab, tmp_path):
    lab.manifests.joinpath("pods.yaml").write_text(ROLES)
    lab.manifests.joinpath("policy.yaml").write_text(SEED)
    lab.start_agent()
    backend, frontend, other = (lab.pod(n[:2], k8s_namespace="default", k8s_pod_name=n)
                                for n in ("backend", "frontend", "other"))
    for port in (8080, 9090):
        serve(lab, backend.netns, "tcp", backend.ip, port)
    assert reaches(lab, frontend, backend.ip, 8080)
    assert not reaches(lab, other, backend.ip, 8080)
    assert not reaches(lab, frontend, backend.ip, 9090)
    policies = json.loads(cli(lab, "policy", "get", "-o", "json").stdout)["policies"]
    assert [(p["name"], p["origin"]) for p in policies] == [("allow-frontend-to-backend", "directory")]
    # a broken edit of the file: the previous version stays in force
    lab.manifests.joinpath("policy.yaml").write_text(SEED.replace('"8080"', '"80x"'))
    time.sleep(2.5)  # the directory is scanned every second
    assert reaches(lab, frontend, backend.ip, 8080) and not reaches(lab, other, backend.ip, 8080)
    # the file goes: so does the policy (nothing selects backend any more)
    lab.manifests.joinpath("policy.yaml").unlink()
    deadline = time.monotonic() + 5
    while not reaches(lab, other, backend.ip, 8080) and time.monotonic() < deadline:
        time.sleep(0.3)
    assert reaches(lab, other, backend.ip, 8080)




BAD_EDITS = [  # (what, edit of rule1, the field path the error must name)
    ("unknown field", ("fromEndpoints", "fromEndpoint"), "spec.ingress[0].fromEndpoint"),
    ("bad port", ('"80"', '"80x"'), "spec.ingress[0].toPorts[0].ports[0].port"),
    ("endPort below port", ("protocol: TCP}", "protocol: TCP, endPort: 70}"),
     "spec.ingress[0].toPorts[0].ports[0].endPort"),
    ("bad operator", ("matchLabels: {org: empire, class: deathstar}",
                      "matchExpressions: [{key: org, operator: Is, values: [empire]}]"),
     "spec.endpointSelector.matchExpressions[0].operator"),
    ("toFQDNs with toEndpoints", ("  ingress:\n  - fromEndpoints:",
                                  "  egress:\n  - toFQDNs: [{matchName: x.io}]\n    toEndpoints:"),
     "spec.egress[0].toFQDNs"),
    ("apiVersion", ("cilium.io/v2", "cilium.io/v1"), "apiVersion"),
]


def test_a_bad_policy_is_rejected_whole_and_the_previous_stays(empire, tmp_path):
    lab, start = empire
    _, pods = start()
    revision = import_policy(lab, tmp_path, RULE1)
    for case, edit, path in BAD_EDITS:
        bad = RULE1.replace("rule1", "rule2").replace(*edit)
        assert bad != RULE1.replace("rule1", "rule2"), case
        # two documents, the first one good: nothing of the file is applied
        f = tmp_path / "bad.yaml"
        f.write_text(RULE1.replace("rule1", "rule0").replace('"80"', '"8080"') + "---\n" + bad)
        for out in (cli(lab, "policy", "validate", str(f), ok=False), cli(lab, "policy", "import", str(f), ok=False)):
            assert out.returncode != 0 and path in out.stderr, (case, out.stderr)
    data = json.loads(cli(lab, "policy", "get", "-o", "json").stdout)
    assert data["revision"] == revision and [p["name"] for p in data["policies"]] == ["rule1"]
    assert reaches(lab, pods["tiefighter"], pods["deathstar"].ip, 80)
    assert not reaches(lab, pods["tiefighter"], pods["deathstar"].ip, 8080)


def test_enforcement_mode_always_denies_unselected_endpoints_but_not_the_host(empire, tmp_path):
    lab, start = empire
    _, pods = start("--set", "policyEnforcementMode=always")
    assert not reaches(lab, pods["xwing"], pods["deathstar"].ip, 80)
    assert lab.exec(lab.node_ns, sys.executable, "-c", CONNECT, "tcp", pods["deathstar"].ip, "80", "1").stdout.strip() \
        == "ok", "the node itself reaches its pods (allowLocalhost: always)"
    eps = json.loads(cli(lab, "endpoint", "list", "-o", "json").stdout)
    assert {(e["policy_ingress"], e["policy_egress"]) for e in eps} == {("Enabled", "Enabled")}
    # the world entity: outside the cluster, not the pods
    import_policy(lab, tmp_path, EGRESS.replace("toCIDRSet:\n    - {cidr: 10.250.0.0/24, except: [EXCEPT]}",
                                                "toEntities: [world]"))
    assert ping(lab, pods["xwing"].netns, OUTSIDE_IP)
    assert not ping(lab, pods["xwing"].netns, pods["tiefighter"].ip, 1)


def test_enforcement_mode_never_ignores_policies(empire, tmp_path):
    lab, start = empire
    _, pods = start("--set", "policyEnforcement=never", policies=RULE1)  # the seed-era alias
    assert reaches(lab, pods["xwing"], pods["deathstar"].ip, 80)
    assert reaches(lab, pods["tiefighter"], pods["deathstar"].ip, 8080)
    eps = json.loads(cli(lab, "endpoint", "list", "-o", "json").stdout)
    assert {(e["policy_ingress"], e["policy_egress"]) for e in eps} == {("Disabled", "Disabled")}


DENY_ALLIANCE = textwrap.dedent("""
    apiVersion: cilium.io/v2
    kind: CiliumClusterwideNetworkPolicy
    metadata: {name: no-rebels}
    spec:
      endpointSelector: {}
      ingressDeny:
      - fromEndpoints:
        - matchLabels: {k8s:org: alliance}
""")
ALLOW_ALL = textwrap.dedent("""
    apiVersion: cilium.io/v2
    kind: CiliumNetworkPolicy
    metadata: {name: open-deathstar}
    spec:
      endpointSelector:
        matchLabels: {class: deathstar}
      ingress:
      - fromEntities: [all]
""")


def test_deny_beats_allow_across_policy_kinds_and_names_the_rule(empire, tmp_path):
    lab, start = empire
    _, pods = start()
    import_policy(lab, tmp_path, ALLOW_ALL + "---\n" + DENY_ALLIANCE)
    assert reaches(lab, pods["tiefighter"], pods["deathstar"].ip, 8080)
    before = metric(lab, "cilium_drop_count_total", reason="Policy denied by denylist")
    assert not reaches(lab, pods["xwing"], pods["deathstar"].ip, 80)
    assert metric(lab, "cilium_drop_count_total", reason="Policy denied by denylist") > before
    drop = wait_flow(lab, lambda f: f["verdict"] == "DROPPED" and f["source"].get("pod_name") == "xwing",
                     "--to-pod", "default/deathstar")
    assert drop["drop_reason_desc"] == "POLICY_DENY"
    assert [(p["kind"], p["name"]) for p in drop["ingress_denied_by"]] == [("CiliumClusterwideNetworkPolicy",
                                                                             "no-rebels")]
    rows = json.loads(cli(lab, "bpf", "policy", "get", str(pods["deathstar"].endpoint["id"]), "-o", "json").stdout)
    assert any(r["action"] == "deny" and "k8s:org=alliance" in r["labels"] for r in rows)


def wait_flow(lab, predicate, *filters: str, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        lines = cli(lab, "observe", "--all", "-o", "json", *filters).stdout.splitlines()
        found = [f for f in (json.loads(line).get("flow") for line in lines) if f and predicate(f)]
        if found or time.monotonic() > deadline:
            assert found, "no such flow"
            return found[-1]
        time.sleep(0.2)


EGRESS = textwrap.dedent("""
    apiVersion: cilium.io/v2
    kind: CiliumNetworkPolicy
    metadata: {name: xwing-out}
    spec:
      endpointSelector:
        matchLabels: {org: alliance}
      egress:
      - toEntities: [host]
      - toCIDRSet:
        - {cidr: 10.250.0.0/24, except: [EXCEPT]}
""")


@pytest.mark.parametrize("excepted, outside_reachable", [("10.250.0.128/25", True), ("10.250.0.2/32", False)])
def test_egress_to_cidrs_with_except_and_entities_replies_pass(empire, tmp_path, excepted, outside_reachable):
    lab, start = empire
    _, pods = start()
    xwing = pods["xwing"]
    import_policy(lab, tmp_path, EGRESS.replace("EXCEPT", excepted))
    assert ping(lab, xwing.netns, NODE_IP), "host entity (and the replies come back: connection tracking)"
    assert ping(lab, xwing.netns, OUTSIDE_IP) is outside_reachable
    assert not reaches(lab, xwing, pods["deathstar"].ip, 80), "egress default deny: deathstar is not allowed"
    assert reaches(lab, pods["tiefighter"], pods["deathstar"].ip, 80), "tiefighter is under no policy"
    ct_rows = json.loads(cli(lab, "bpf", "ct", "list", "-o", "json").stdout)
    assert any(r["source"] == xwing.ip and r["destination"] == NODE_IP and r["protocol"] == "ICMP" for r in ct_rows)


def test_enable_default_deny_false_adds_no_default_deny(empire, tmp_path):
    lab, start = empire
    _, pods = start()
    import_policy(lab, tmp_path, RULE1.replace("  ingress:", "  enableDefaultDeny: {ingress: false}\n  ingress:"))
    assert reaches(lab, pods["xwing"], pods["deathstar"].ip, 80)
    assert reaches(lab, pods["xwing"], pods["deathstar"].ip, 8080)
    import_policy(lab, tmp_path, DENY_ALLIANCE, "deny.yaml")
    assert not reaches(lab, pods["xwing"], pods["deathstar"].ip, 80), "deny rules still apply"


def test_global_audit_mode_reports_instead_of_dropping(empire, tmp_path):
    lab, start = empire
    _, pods = start("--set", "policyAuditMode=true", policies=RULE1)
    death, xwing = pods["deathstar"], pods["xwing"]
    assert reaches(lab, xwing, death.ip, 80), "global audit: reported, not dropped"
    audit = wait_flow(lab, lambda f: f["verdict"] == "AUDIT" and f["source"].get("pod_name") == "xwing")
    assert audit["traffic_direction"] == "INGRESS"
    assert metric(lab, "hubble_policy_verdicts_total", action="audit") >= 1


def test_audit_per_endpoint_and_per_policy(empire, tmp_path):
    lab, start = empire
    _, pods = start(policies=RULE1)
    death, xwing = pods["deathstar"], pods["xwing"]
    assert not reaches(lab, xwing, death.ip, 80)
    out = cli(lab, "endpoint", "config", str(death.endpoint["id"]), "PolicyAuditMode=Enabled")
    assert "PolicyAuditMode=Enabled" in out.stdout
    time.sleep(0.2)
    assert reaches(lab, xwing, death.ip, 80)
    cli(lab, "endpoint", "config", str(death.endpoint["id"]), "PolicyAuditMode=Disabled")
    assert not reaches(lab, xwing, death.ip, 80)
    # a policy in audit mode (annotation): its denials and its default deny are reported only
    audited = DENY_ALLIANCE.replace("metadata: {name: no-rebels}",
                                    "metadata: {name: no-rebels, annotations: {policy.pylium.io/audit-mode: 'true'}}")
    import_policy(lab, tmp_path, audited)
    serve(lab, pods["tiefighter"].netns, "tcp", pods["tiefighter"].ip, 80)
    assert reaches(lab, xwing, pods["tiefighter"].ip, 80), "no-rebels is audited"
    audit = wait_flow(lab, lambda f: f["verdict"] == "AUDIT" and f["destination"].get("pod_name") == "tiefighter")
    assert [p["name"] for p in audit["ingress_denied_by"]] == ["no-rebels"]


KNP = textwrap.dedent("""
    apiVersion: networking.k8s.io/v1
    kind: NetworkPolicy
    metadata: {name: deathstar-knp, namespace: default}
    spec:
      podSelector:
        matchLabels: {class: deathstar}
      policyTypes: [Ingress]
      ingress:
      - from:
        - podSelector:
            matchLabels: {org: empire}
        ports:
        - {protocol: TCP, port: 8000, endPort: 8100}
""")


def test_kubernetes_network_policy_with_a_port_range(empire, tmp_path):
    lab, start = empire
    _, pods = start()
    death = pods["deathstar"]
    serve(lab, death.netns, "tcp", death.ip, 8100)
    import_policy(lab, tmp_path, KNP)
    assert reaches(lab, pods["tiefighter"], death.ip, 8080) and reaches(lab, pods["tiefighter"], death.ip, 8100)
    assert not reaches(lab, pods["tiefighter"], death.ip, 80), "outside the range"
    assert not reaches(lab, pods["xwing"], death.ip, 8080), "not selected by podSelector"
    rows = json.loads(cli(lab, "bpf", "policy", "get", str(death.endpoint["id"]), "-o", "json").stdout)
    assert {r["port"] for r in rows if r["identity"] != 1} == {"8000-8063/TCP", "8064-8095/TCP", "8096-8099/TCP",
                                                              "8100/TCP"}


TRACE_POLICIES = RULE1 + "---\n" + textwrap.dedent("""
    apiVersion: cilium.io/v2
    kind: CiliumNetworkPolicy
    metadata: {name: tiefighter-out}
    spec:
      endpointSelector:
        matchLabels: {class: tiefighter}
      egress:
      - toEndpoints:
        - matchLabels: {class: deathstar}
        toPorts:
        - ports: [{port: "8080", protocol: TCP}]
      - toEndpoints:
        - matchLabels: {class: deathstar}
        toPorts:
        - ports: [{port: "80", protocol: TCP}]
      egressDeny:
      - toEndpoints:
        - matchLabels: {class: deathstar}
        toPorts:
        - ports: [{port: "8080", protocol: TCP}]
""")


def test_policy_trace_agrees_with_real_traffic(empire, tmp_path):
    lab, start = empire
    _, pods = start()
    import_policy(lab, tmp_path, TRACE_POLICIES)
    serve(lab, pods["xwing"].netns, "tcp", pods["xwing"].ip, 80)
    cases = [("tiefighter", "deathstar", 80, "allowed", ["CiliumNetworkPolicy/default/tiefighter-out",
                                                          "CiliumNetworkPolicy/default/rule1"]),
             ("tiefighter", "deathstar", 8080, "denied", ["CiliumNetworkPolicy/default/tiefighter-out",  # deny
                                                          "CiliumNetworkPolicy/default/rule1"]),  # default deny
             ("xwing", "deathstar", 80, "denied", ["CiliumNetworkPolicy/default/rule1"]),  # its default deny
             ("tiefighter", "xwing", 80, "denied", ["CiliumNetworkPolicy/default/tiefighter-out"]),
             ("deathstar", "xwing", 80, "allowed", [])]  # nothing selects xwing, deathstar's egress is open
    for src, dst, port, verdict, rules in cases:
        out = cli(lab, "policy", "trace", "--src-endpoint", str(pods[src].endpoint["id"]), "--dst-endpoint",
                  str(pods[dst].endpoint["id"]), "--dport", f"{port}/TCP", "-o", "json", ok=False)
        answer = json.loads(out.stdout)
        assert answer["verdict"] == verdict and out.returncode == (1 if verdict == "denied" else 0), (src, dst, port)
        assert [r for step in answer["steps"] for r in step["rules"]] == rules, (src, dst, port, answer)
        assert reaches(lab, pods[src], pods[dst].ip, port) is (verdict == "allowed"), (src, dst, port)
    # by labels, before any such pod exists
    out = cli(lab, "policy", "trace", "-s", "org=empire", "-s", "class=tiefighter", "-d", "org=empire", "-d",
              "class=deathstar", "--dport", "80/TCP")
    assert "Final verdict: ALLOWED" in out.stdout and "CiliumNetworkPolicy/default/rule1" in out.stdout
    out = cli(lab, "policy", "trace", "-s", "org=alliance", "-d", "org=empire", "-d", "class=deathstar",
              "--dport", "80/TCP", ok=False)
    assert out.returncode == 1 and "Final verdict: DENIED" in out.stdout


def test_identities_maps_and_metrics_through_the_cli(empire, tmp_path):
    lab, start = empire
    agent, pods = start("--set", "prometheus.port=9962", policies=RULE1)
    identities = json.loads(cli(lab, "identity", "list", "-o", "json").stdout)
    by_id = {i["id"]: i for i in identities}
    assert by_id[1]["labels"] == ["reserved:host"] and by_id[2]["labels"] == ["reserved:world"]
    death = pods["deathstar"]
    got = json.loads(cli(lab, "identity", "get", str(death.endpoint["identity"]), "-o", "json").stdout)
    assert "k8s:class=deathstar" in got["labels"] and got["type"] == "cluster_local"
    assert cli(lab, "identity", "get", "99999", ok=False).returncode != 0
    assert "POLICY (ingress)" in cli(lab, "endpoint", "list").stdout
    eps = {e["id"]: e for e in json.loads(cli(lab, "endpoint", "list", "-o", "json").stdout)}
    assert (eps[death.endpoint["id"]]["policy_ingress"], eps[death.endpoint["id"]]["policy_egress"]) == \
        ("Enabled", "Disabled")
    rows = json.loads(cli(lab, "bpf", "policy", "get", str(death.endpoint["id"]), "-o", "json").stdout)
    assert {(r["direction"], r["port"], r["action"]) for r in rows} >= {("ingress", "80/TCP", "allow")}
    # the labels of an endpoint change: a new identity, and the policy follows
    cli(lab, "endpoint", "labels", str(pods["xwing"].endpoint["id"]), "-a", "k8s:org=empire")
    time.sleep(0.3)
    assert reaches(lab, pods["xwing"], death.ip, 80)
    assert not reaches(lab, pods["xwing"], death.ip, 8080)
    text = lab.node("curl", "-sf", "http://127.0.0.1:9962/metrics").stdout
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["cilium_policy"].samples[0].value == 1
    assert families["cilium_policy_max_revision"].samples[0].value >= 1
    changes = {tuple(sorted(s.labels.items())): s.value for s in families["cilium_policy_change"].samples}
    assert changes[(("operation", "update"), ("outcome", "success"), ("source", "directory"))] == 1
    kinds = {s.labels["type"]: s.value for s in families["cilium_identity"].samples}
    assert kinds["reserved"] == 8 and kinds["cluster_local"] >= 3
    assert {s.labels["direction"] for s in families["cilium_policy_l3_l4_denied"].samples} == {"INGRESS", "EGRESS"}
    pressure = {s.labels["map_name"]: s.value for s in families["cilium_bpf_map_pressure"].samples}
    assert 0 < pressure[f"policy_{death.endpoint['id']:05d}"] < 0.01


WIDE = textwrap.dedent("""
    apiVersion: cilium.io/v2
    kind: CiliumNetworkPolicy
    metadata: {name: wide}
    spec:
      endpointSelector:
        matchLabels: {class: deathstar}
      ingress:
      - fromEntities: [cluster]
        toPorts:
        - ports: [{port: "1", endPort: 65534, protocol: ANY}]
""")


@pytest.mark.parametrize("lockdown", [False, True])
def test_a_policy_that_does_not_fit_the_map(empire, tmp_path, lockdown):
    lab, start = empire
    agent, pods = start("--set", "bpf.policyMapMax=256", "--set", f"endpointLockdownOnMapOverflow={str(lockdown).lower()}",
                        policies=RULE1)
    death = pods["deathstar"]
    import_policy(lab, tmp_path, WIDE)
    overflow = [json.loads(line) for line in agent.log.splitlines() if "policy map overflow" in line]
    assert overflow and overflow[0]["endpoint"] == death.endpoint["id"] and overflow[0]["entries"] > 256
    eps = {e["id"]: e for e in lab.api.get("/v1/policy/endpoints")}
    assert "more than bpf.policyMapMax 256" in eps[death.endpoint["id"]]["overflow"]
    if lockdown:
        assert not reaches(lab, pods["tiefighter"], death.ip, 80), "locked down: nothing gets in"
    else:
        assert reaches(lab, pods["tiefighter"], death.ip, 80), "the previous policy stays"
        assert not reaches(lab, pods["tiefighter"], death.ip, 8080), "the previous policy stays"


ECHO = textwrap.dedent("""
    import socket, sys, threading
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(4)
    print("ready", flush=True)
    def echo(c):
        while data := c.recv(100):
            c.sendall(data)
    while True:
        threading.Thread(target=echo, args=(s.accept()[0],), daemon=True).start()
""")
TALK = textwrap.dedent("""
    import socket, sys
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2)
    for line in sys.stdin:
        try:
            s.sendall(line.encode()); print(s.recv(100).decode().strip() or "closed", flush=True)
        except OSError as e:
            print(type(e).__name__, flush=True)
""")
ECHO_FROM_EMPIRE = RULE1.replace("name: rule1", "name: echo").replace('port: "80"', 'port: "7000"')


def test_a_full_conntrack_map_keeps_traffic_and_policy(empire, tmp_path):
    """policy_ct (bpf.ctTcpMax + bpf.ctAnyMax entries) filled past its size: the agent warns
    naming the map and the keys, cilium_bpf_map_pressure shows it full, a connection open
    before goes on, new connections are decided by policy as before (allowed or denied)."""
    from pylium.core.datapath.maps import PinnedMap
    from pylium.core.datapath.structs import FlowKey
    from pylium.plugins.policy.maps import CtEntry, policy_maps

    lab, start = empire
    agent, pods = start("--set", "bpf.ctTcpMax=4096", "--set", "bpf.ctAnyMax=4096", "--set", "bpf.ctAnyTimeout=2s",
                        policies=RULE1 + "---\n" + ECHO_FROM_EMPIRE)
    death, tie = pods["deathstar"], pods["tiefighter"]
    server = subprocess.Popen(["ip", "netns", "exec", death.netns, sys.executable, "-c", ECHO, death.ip, "7000"],
                              stdout=subprocess.PIPE, text=True)
    assert server.stdout.readline().strip() == "ready"
    talk = subprocess.Popen(["ip", "netns", "exec", tie.netns, sys.executable, "-c", TALK, death.ip, "7000"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:

        def say(word: str) -> str:
            talk.stdin.write(word + "\n")
            talk.stdin.flush()
            return talk.stdout.readline().strip()

        assert say("before") == "before"
        [ct_spec] = [s for s in policy_maps(8192) if s.name == "policy_ct"]
        table = PinnedMap.open(ct_spec, lab.bpf_root / lab.dirs.node / "policy")
        now = time.monotonic_ns()
        for i in range(9000):  # connections nobody closes, all fresh: the LRU must evict to take them
            key = FlowKey(sport=i, dport=443, proto=6, family=2)
            key.saddr[:4], key.daddr[:4] = [10, 99, i >> 8, i & 255], [10, 98, 0, 1]
            table.put(key, CtEntry(last_seen=now))
        table.close()
        deadline = time.monotonic() + 10
        while "policy conntrack map nearly full" not in agent.log and time.monotonic() < deadline:
            time.sleep(0.2)
        warning = next(json.loads(line) for line in agent.log.splitlines() if "conntrack map nearly full" in line)
        assert (warning["map"], warning["max"]) == ("policy_ct", 8192) and warning["entries"] >= 0.9 * 8192
        assert "bpf.ctTcpMax" in warning["event"]
        assert metric(lab, "cilium_bpf_map_pressure", map_name="policy_ct") >= 0.9
        assert say("after") == "after", "the connection open before the map filled goes on"
        assert reaches(lab, tie, death.ip, 80), "a new allowed connection gets a place"
        assert not reaches(lab, pods["xwing"], death.ip, 80), "policy still decides: no entry, no free pass"
        assert not reaches(lab, tie, death.ip, 8080)
    finally:
        talk.kill()
        server.kill()
        talk.wait(5)
        server.wait(5)


def test_policy_is_enforced_while_the_agent_is_away_and_after_it_returns(empire, tmp_path):
    lab, start = empire
    agent, pods = start()
    import_policy(lab, tmp_path, RULE1)
    identities = {e["id"]: e["identity"] for e in lab.api.get("/v1/endpoints")}
    agent.proc.send_signal(signal.SIGKILL)
    agent.proc.wait(10)
    # the maps and programs are pinned: the kernel keeps enforcing
    assert reaches(lab, pods["tiefighter"], pods["deathstar"].ip, 80)
    assert not reaches(lab, pods["xwing"], pods["deathstar"].ip, 80)
    lab.start_agent()
    assert {e["id"]: e["identity"] for e in lab.api.get("/v1/endpoints")} == identities, "same labels, same identity"
    assert [p["name"] for p in json.loads(cli(lab, "policy", "get", "-o", "json").stdout)["policies"]] == ["rule1"]
    assert reaches(lab, pods["tiefighter"], pods["deathstar"].ip, 80)
    assert not reaches(lab, pods["xwing"], pods["deathstar"].ip, 80)
    cli(lab, "policy", "delete", "rule1")
    assert json.loads(cli(lab, "policy", "get", "-o", "json").stdout)["policies"] == []
    time.sleep(0.2)
    assert reaches(lab, pods["xwing"], pods["deathstar"].ip, 80)
    out = cli(lab, "policy", "delete", "rule1", ok=False)
    assert out.returncode != 0 and "no imported policy 'rule1'" in out.stderr


NAMESPACES = textwrap.dedent("""
    apiVersion: v1
    kind: Namespace
    metadata: {name: default, labels: {team: empire}}
    ---
    apiVersion: v1
    kind: Namespace
    metadata: {name: rebels, labels: {team: alliance}}
    ---
    apiVersion: v1
    kind: Pod
    metadata: {name: yoda, namespace: rebels, labels: {org: alliance}}
""")
FROM_EMPIRE_NAMESPACES = textwrap.dedent("""
    apiVersion: networking.k8s.io/v1
    kind: NetworkPolicy
    metadata: {name: from-empire-namespaces, namespace: default}
    spec:
      podSelector:
        matchLabels: {class: deathstar}
      ingress:
      - from:
        - namespaceSelector:
            matchLabels: {team: empire}
""")


def test_namespace_labels_from_namespace_manifests_select_peers(empire, tmp_path):
    lab, start = empire
    lab.manifests.joinpath("namespaces.yaml").write_text(NAMESPACES)
    _, pods = start()
    yoda = lab.pod("yo", k8s_namespace="rebels", k8s_pod_name="yoda")
    import_policy(lab, tmp_path, FROM_EMPIRE_NAMESPACES)
    assert reaches(lab, pods["xwing"], pods["deathstar"].ip, 80), "xwing lives in `default` (team=empire)"
    assert not reaches(lab, yoda, pods["deathstar"].ip, 80)


def test_connections_expire_and_are_collected(empire, tmp_path):
    lab, start = empire
    _, pods = start("--set", "bpf.ctAnyTimeout=2s", policies=RULE1)
    death = pods["deathstar"]
    serve(lab, death.netns, "udp", death.ip, 5353)
    assert not reaches(lab, pods["tiefighter"], death.ip, 5353, kind="udp"), "UDP is not in rule1"
    serve(lab, pods["tiefighter"].netns, "udp", pods["tiefighter"].ip, 5353)
    assert reaches(lab, death, pods["tiefighter"].ip, 5353, kind="udp"), "egress is open; the reply passes"

    def udp_entries():
        return [r for r in json.loads(cli(lab, "bpf", "ct", "list", "-o", "json").stdout) if r["protocol"] == "UDP"]

    assert udp_entries()
    deadline = time.monotonic() + 8
    while udp_entries() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not udp_entries(), "expired after bpf.ctAnyTimeout and removed"


PING_FROM_EMPIRE = textwrap.dedent("""
    apiVersion: cilium.io/v2
    kind: CiliumNetworkPolicy
    metadata: {name: ping-deathstar}
    spec:
      endpointSelector:
        matchLabels: {class: deathstar}
      ingress:
      - fromEndpoints:
        - matchLabels: {org: empire}
        icmps:
        - fields: [{type: EchoRequest, family: IPv4}]
      - fromCIDRSet:
        - {cidr: 10.250.0.0/24, except: [10.250.0.2/32]}
""")


def test_icmp_rules_and_cidr_peers_on_ingress(empire, tmp_path):
    lab, start = empire
    _, pods = start()
    death = pods["deathstar"]
    import_policy(lab, tmp_path, PING_FROM_EMPIRE)
    assert ping(lab, pods["tiefighter"].netns, death.ip)
    assert not ping(lab, pods["xwing"].netns, death.ip, 1)
    assert not reaches(lab, pods["tiefighter"], death.ip, 80), "only ICMP echo is allowed"
    lab.exec(lab.out_ns, "ip", "route", "add", "10.210.0.0/16", "via", NODE_IP)  # the outside routes to pods
    assert not ping(lab, lab.out_ns, death.ip, 1), "the outside address is in the except"
    import_policy(lab, tmp_path, PING_FROM_EMPIRE.replace(", except: [10.250.0.2/32]", ""))
    assert ping(lab, lab.out_ns, death.ip), "now it is in the CIDR"


def test_the_ipcache_keeps_the_higher_owner_and_brings_the_lower_back(lab, tmp_path):
    """A pod's address named as a CIDR peer: the endpoint's record (local) wins over the
    policy's (generated) while the pod lives; when it goes, the CIDR identity takes its place.
    After a restart every owner's records are back and nothing unowned is left; a CIDR peer
    no policy names any more leaves the ipcache."""
    from pylium.core.datapath.maps import PinnedMap
    from pylium.core.datapath.structs import CORE_MAPS, IpcacheInfo, IpcacheKey

    lab.start_agent()
    a, b = lab.pod("a"), lab.pod("b")
    to_b = EGRESS.replace("xwing-out", "to-b").replace("matchLabels: {org: alliance}", "{}").replace(
        "{cidr: 10.250.0.0/24, except: [EXCEPT]}", f"{{cidr: {b.ip}/32}}")
    import_policy(lab, tmp_path, to_b)

    def entry(ip: str) -> dict:
        rows = json.loads(cli(lab, "bpf", "ipcache", "list", "-o", "json").stdout)
        return next((r for r in rows if r["prefix"] == f"{ip}/32"), {})

    held = entry(b.ip)
    assert (held["owner"], held["source"], held["shadowed"]) == ("core/endpoints", "local", ["policy/cidr"])
    assert held["identity"] == b.endpoint["identity"] < 1 << 24
    assert "core/endpoints (policy/cidr)" in cli(lab, "bpf", "ipcache", "list").stdout
    lab.api.call("POST", "/v1/cni/del", {"container_id": b.endpoint["container_id"], "ifname": "eth0"})
    after = entry(b.ip)
    assert (after["owner"], after["shadowed"]) == ("policy/cidr", []) and after["identity"] >= 1 << 24, after
    before = {r["prefix"]: r["owner"] for r in json.loads(cli(lab, "bpf", "ipcache", "list", "-o", "json").stdout)}
    lab.agents[0].stop(signal.SIGKILL)
    spec = next(s for s in CORE_MAPS if s.name == "ipcache")  # a stale entry nobody owns, left while down
    table = PinnedMap.open(spec, lab.bpf_root / lab.dirs.node / "core")
    table.put(IpcacheKey.of("10.99.0.0/16"), IpcacheInfo(identity=300))
    table.close()
    lab.start_agent()
    rows = json.loads(cli(lab, "bpf", "ipcache", "list", "-o", "json").stdout)
    owners = {r["prefix"]: r["owner"] for r in rows}
    assert owners[f"{b.ip}/32"] == "policy/cidr" and owners[f"{a.ip}/32"] == "core/endpoints"
    assert "10.99.0.0/16" not in owners, "an entry no owner claimed again is removed"
    assert "restored" not in owners.values()
    assert owners == before, "every entry is back with the owner that wrote it"
    cli(lab, "policy", "delete", "to-b")
    assert entry(b.ip) == {}, "no policy names the CIDR peer any more: its record is released"

"""Several nodes on a real etcd: the node registry, pod CIDRs claimed cluster-wide, leases,
identities the same everywhere, and the cluster store's bad input and outages."""

from __future__ import annotations

import json
import signal
import textwrap
import time

import pytest


def _start_all(lab, *extra):
    for node in lab.nodes:
        node.start_agent(*extra, wait=False)
    for node in lab.nodes:
        node.agent.wait_ready(timeout=90)


def test_nodes_register_with_distinct_pod_cidrs_and_leave_with_their_lease(pylium_cluster):
    lab = pylium_cluster(3, lease_ttl="3s")
    _start_all(lab)  # all at the same moment: the CIDR claims race in etcd
    names = {n.name for n in lab.nodes}
    lists = [lab.wait_nodes(n, names) for n in lab.nodes]
    for node, rows in zip(lab.nodes, lists):
        assert rows[node.name]["source"] == "local"
        assert {r["source"] for name, r in rows.items() if name != node.name} == {"kvstore"}
        assert {name: r["ipv4"] for name, r in rows.items()} == {n.name: n.ip for n in lab.nodes}
    cidrs = {name: r["pod_cidrs"] for name, r in lists[0].items()}
    assert all(len(c) == 1 for c in cidrs.values()) and len({c[0] for c in cidrs.values()}) == 3, cidrs
    assert all(rows == lists[0] or {k: v["pod_cidrs"] for k, v in rows.items()} == cidrs for rows in lists)
    table = lab.nodes[0].cli("node", "list").stdout
    assert "Endpoint CIDR" in table and lab.nodes[1].name in table

    gone = lab.nodes[2]
    gone.agent.stop(signal.SIGKILL)
    killed = time.monotonic()
    for node in lab.nodes[:2]:
        lab.wait_nodes(node, names - {gone.name}, timeout=3 + 4)
    assert time.monotonic() - killed <= 3 + 2 + 2, "gone within the lease TTL + 2 s"

    gone.start_agent()  # back, with the block it claimed before
    rows = lab.wait_nodes(lab.nodes[0], names)
    assert rows[gone.name]["pod_cidrs"] == cidrs[gone.name]


def test_an_unreachable_etcd_at_start_is_named_and_exits_69(pylium_cluster):
    lab = pylium_cluster(1)
    lab.etcd.stop()
    node = lab.nodes[0]
    agent = node.start_agent("--set", "kvstore.connectTimeout=2s", wait=False)
    code = agent.proc.wait(60)
    assert code == 69, agent.log
    assert "kvstore: etcd unreachable: http://10.251.0.254:2379" in agent.log
    assert "kvstore.connectTimeout" in agent.log and "kvstore not reachable yet; retrying" in agent.log


def test_a_corrupt_node_record_is_logged_once_counted_and_ignored(pylium_cluster):
    lab = pylium_cluster(2)
    _start_all(lab)
    lab.wait_nodes(lab.nodes[0], {n.name for n in lab.nodes})
    key = f"cilium/state/nodes/v1/{lab.cluster}/bogus"
    lab.etcd.etcdctl("put", key, "{not json")
    lab.etcd.etcdctl("put", f"cilium/state/nodes/v1/{lab.cluster}/liar", json.dumps({"Name": "other", "Cluster": lab.cluster}))
    node = lab.nodes[0]
    lab.wait(lambda: node.agent.log.count("ignoring a node record that does not parse") >= 2, what="the log")
    time.sleep(0.5)
    assert node.agent.log.count(key) == 1, "logged once"
    assert set(lab.node_list(node)) == {n.name for n in lab.nodes}
    metrics = {(m["name"], m["labels"].get("kind")): m["value"] for m in node.api.get("/v1/metrics?pattern=bad_records")}
    assert metrics[("pylium_kvstore_bad_records_total", "nodes")] == 2
    status = node.api.get("/v1/status")
    assert status["kvstore"]["ok"] and "etcd: 1/1 connected" in status["kvstore"]["message"]


@pytest.mark.parametrize("nodes", [3])
def test_identities_are_the_same_on_every_node(pylium_cluster, nodes):
    lab = pylium_cluster(nodes)
    _start_all(lab)
    pods = {}
    for node in lab.nodes:  # the same labels on every node, one label set of its own each
        pods[node.name] = [node.pod("web", {"k8s:app": "web"}), node.pod(f"own{node.index}", {"k8s:app": f"own{node.index}"})]
    web = {p[0].endpoint["identity"] for p in pods.values()}
    assert len(web) == 1 and min(web) >= 256
    own = [p[1].endpoint["identity"] for p in pods.values()]
    assert len(set(own) | web) == nodes + 1
    for node in lab.nodes:
        def known(n=node):
            rows = {i["id"]: i["labels"] for i in json.loads(n.cli("identity", "list", "-o", "json").stdout)}
            return rows if all(i in rows for i in (*web, *own)) else None
        rows = lab.wait(known, what=f"identities on {node.name}")
        assert rows[next(iter(web))] == ["k8s:app=web"]


def test_every_pod_address_is_in_every_nodes_ipcache_with_its_node(pylium_cluster):
    lab = pylium_cluster(2, lease_ttl="3s")
    _start_all(lab)
    a, b = lab.nodes
    pa, pb = a.pod("pa", {"k8s:app": "a"}), b.pod("pb", {"k8s:app": "b"})

    def entry(node, ip):
        rows = {r["prefix"]: r for r in json.loads(node.cli("bpf", "ipcache", "list", "-o", "json").stdout)}
        return rows.get(f"{ip}/32")

    remote = lab.wait(lambda: entry(b, pa.ip), what="a's pod in b's ipcache")
    assert (remote["identity"], remote["owner"], remote["source"], remote["tunnel_endpoint"]) == \
           (pa.endpoint["identity"], "core/kvstore", "kvstore", a.ip)
    assert entry(a, pb.ip)["tunnel_endpoint"] == b.ip and entry(a, pa.ip)["owner"] == "core/endpoints"
    record = json.loads(lab.etcd.etcdctl("get", "--print-value-only", f"cilium/state/ip/v1/default/{pa.ip}"))
    assert record == {"IP": pa.ip, "HostIP": a.ip, "ID": pa.endpoint["identity"], "Key": 0,
                      "K8sNamespace": "", "K8sPodName": ""}
    a.api.call("POST", "/v1/cni/del", {"container_id": pa.endpoint["container_id"], "ifname": "eth0"})
    lab.wait(lambda: entry(b, pa.ip) is None, what="the deleted pod to leave b's ipcache")
    # a node that crashes: its pods leave the others' ipcache with its lease
    pb2 = b.pod("pb2", {"k8s:app": "b"})
    lab.wait(lambda: entry(a, pb2.ip), what="b's second pod on a")
    b.agent.stop(signal.SIGKILL)
    lab.wait(lambda: entry(a, pb2.ip) is None and entry(a, pb.ip) is None, timeout=3 + 5, what="b's pods to leave")


def _ping(ns_exec, ip, count=3):
    return ns_exec("ping", "-c", str(count), "-i", "0.2", "-W", "2", ip, check=False).returncode == 0


@pytest.mark.parametrize("mode", ["tunnel", "native"])
def test_pods_on_different_nodes_reach_each_other(pylium_cluster, mode):
    extra = ("--set", f"routingMode={mode}") if mode == "tunnel" else (
        "--set", "routingMode=native", "--set", "autoDirectNodeRoutes=true",
        "--set", "ipv4NativeRoutingCIDR=10.212.0.0/16")
    lab = pylium_cluster(2, extra=extra)
    _start_all(lab)
    a, b = lab.nodes
    pa, pb = a.pod("pa", {"k8s:app": "a"}), b.pod("pb", {"k8s:app": "b"})
    lab.wait(lambda: b.api.get("/v1/bpf/ipcache") and any(r["prefix"] == f"{pa.ip}/32" for r in b.api.get("/v1/bpf/ipcache")),
             what="a's pod known on b")
    lab.wait(lambda: any(r["prefix"] == f"{pb.ip}/32" for r in a.api.get("/v1/bpf/ipcache")), what="b's pod on a")
    exec_a = lambda *cmd, check=True: sh_ns(pa.netns, *cmd, check=check)  # noqa: E731
    assert _ping(exec_a, pb.ip), "pod to pod across nodes"
    assert _ping(exec_a, b.ip), "pod to the other node"
    assert _ping(lambda *cmd, check=True: a.exec(*cmd, check=check), pb.ip), "node to the other node's pod"
    mtu = sh_ns(pa.netns, "cat", "/sys/class/net/eth0/mtu").stdout.strip()
    assert mtu == ("1450" if mode == "tunnel" else "1500")


def sh_ns(ns, *cmd, check=True):
    from pylium.testing.lab import sh

    return sh("ip", "netns", "exec", ns, *cmd, check=check)


FRONT_BACK = textwrap.dedent("""
    apiVersion: v1
    kind: Pod
    metadata: {name: frontend, namespace: default, labels: {role: frontend}}
    ---
    apiVersion: v1
    kind: Pod
    metadata: {name: backend, namespace: default, labels: {role: backend}}
    ---
    apiVersion: v1
    kind: Pod
    metadata: {name: other, namespace: default, labels: {role: other}}
    ---
    apiVersion: cilium.io/v2
    kind: CiliumNetworkPolicy
    metadata: {name: allow-frontend-to-backend, namespace: default}
    spec:
      endpointSelector:
        matchLabels: {role: backend}
      ingress:
      - fromEndpoints:
        - matchLabels: {role: frontend}
        toPorts:
        - ports:
          - {port: "8080", protocol: TCP}
""")


def test_the_seeds_policy_holds_across_nodes(pylium_cluster):
    from test_datapath import serve
    from test_policy import reaches

    lab = pylium_cluster(3)
    lab.manifests.joinpath("app.yaml").write_text(FRONT_BACK)
    _start_all(lab)
    a, b, c = lab.nodes
    front = a.pod("frontend", k8s_namespace="default", k8s_pod_name="frontend")
    back = b.pod("backend", k8s_namespace="default", k8s_pod_name="backend")
    other = c.pod("other", k8s_namespace="default", k8s_pod_name="other")
    serve(lab, back.netns, "tcp", back.ip, 8080)
    lab.wait(lambda: reaches(lab, front, back.ip, 8080), timeout=10, what="frontend to reach backend:8080")
    assert not reaches(lab, other, back.ip, 8080)
    drops = []

    def dropped():
        out = b.cli("observe", "--all", "-o", "json", "--verdict", "DROPPED").stdout
        drops[:] = [f for f in (json.loads(line).get("flow") for line in out.splitlines()) if f]
        return [f for f in drops if f["source"].get("pod_name") == "other"]

    flow = lab.wait(dropped, what="the drop on b")[0]
    assert flow["drop_reason"] == 133 and flow["drop_reason_desc"] == "POLICY_DENIED"
    assert flow["traffic_direction"] == "INGRESS" and flow["node_name"] == b.name
    assert [p["name"] for p in flow["ingress_denied_by"]] == ["allow-frontend-to-backend"]
    assert flow["source"]["namespace"] == "default" and "k8s:role=other" in flow["source"]["labels"]
    assert flow["source"]["identity"] == other.endpoint["identity"]
    drop_metric = {(m["labels"].get("reason"), m["labels"].get("direction")): m["value"]
                   for m in b.api.get("/v1/metrics?pattern=cilium_drop_count_total")}
    assert drop_metric[("Policy denied", "INGRESS")] >= 1

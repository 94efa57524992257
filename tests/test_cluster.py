"""Several nodes on a real etcd: the node registry, pod CIDRs claimed cluster-wide, leases,
identities the same everywhere, and the cluster store's bad input and outages."""

from __future__ import annotations

import json
import signal
import sys
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

    tunnels = {r["prefix"]: r["tunnel_endpoint"]
               for r in json.loads(lab.nodes[0].cli("bpf", "tunnel", "list", "-o", "json").stdout)}
    assert tunnels == {cidrs[n.name][0]: n.ip for n in lab.nodes[1:]}, "the other nodes' pod CIDRs"
    gone = lab.nodes[2]
    gone.agent.stop(signal.SIGKILL)
    killed = time.monotonic()
    for node in lab.nodes[:2]:
        lab.wait_nodes(node, names - {gone.name}, timeout=3 + 4)
    assert time.monotonic() - killed <= 3 + 2 + 2, "gone within the lease TTL + 2 s"
    left = json.loads(lab.nodes[0].cli("bpf", "tunnel", "list", "-o", "json").stdout)
    assert [r["prefix"] for r in left] == [cidrs[lab.nodes[1].name][0]], "and from the tunnel map"
    assert "TUNNEL" in lab.nodes[0].cli("bpf", "tunnel", "list").stdout

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


# Prints "<vni> <inner source> <inner destination>" for each VXLAN packet seen on a device.
SNIFF = textwrap.dedent("""
    import socket, struct, sys
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
    s.bind((sys.argv[1], 0))
    s.settimeout(10)
    print("ready", flush=True)
    seen = 0
    while seen < int(sys.argv[2]):
        frame = s.recv(2048)
        if frame[12:14] != b"\\x08\\x00" or frame[23] != 17:
            continue
        ihl = (frame[14] & 15) * 4
        udp = 14 + ihl
        if struct.unpack("!H", frame[udp + 2:udp + 4])[0] != 8472:
            continue
        vni = int.from_bytes(frame[udp + 12:udp + 15], "big")
        inner = udp + 16 + 14
        print(vni, socket.inet_ntoa(frame[inner + 12:inner + 16]), socket.inet_ntoa(frame[inner + 16:inner + 20]),
              flush=True)
        seen += 1
""")


@pytest.mark.parametrize("mode", ["tunnel", "native"])
def test_every_pod_reaches_every_pod_and_node_across_nodes(pylium_cluster, mode):
    """3 nodes, 2 pods each: ping, TCP and UDP between every pair of pods on different nodes
    (the receiver sees the sender's own address), and each pod reaches the other nodes."""
    from test_datapath import ask, serve

    extra = ("--set", "routingMode=tunnel") if mode == "tunnel" else (
        "--set", "routingMode=native", "--set", "autoDirectNodeRoutes=true",
        "--set", "ipv4NativeRoutingCIDR=10.212.0.0/16")
    lab = pylium_cluster(3, extra=extra)
    _start_all(lab)
    pods = [(node, node.pod(f"p{i}", {"k8s:app": f"n{node.index}p{i}"})) for node in lab.nodes for i in range(2)]
    for _, pod in pods:
        serve(lab, pod.netns, "tcp", pod.ip, 8080)
        serve(lab, pod.netns, "udp", pod.ip, 5353)
    for node in lab.nodes:  # every node knows every other node's pods
        others = {f"{p.ip}/32" for n, p in pods if n is not node}
        lab.wait(lambda n=node, o=others: o <= {r["prefix"] for r in n.api.get("/v1/bpf/ipcache")},
                 what=f"the other pods on {node.name}")
    failures = []
    for src_node, src in pods:
        for dst_node, dst in pods:
            if src_node is dst_node:
                continue
            if lab.exec(src.netns, "ping", "-c", "1", "-W", "2", dst.ip, check=False).returncode != 0:
                failures.append(f"ping {src.name}@{src_node.index} -> {dst.name}@{dst_node.index}")
            for kind, port in (("tcp", 8080), ("udp", 5353)):
                seen = ask(lab, src.netns, kind, dst.ip, port)
                if seen != src.ip:
                    failures.append(f"{kind} {src.name}@{src_node.index} -> {dst.name}@{dst_node.index}: {seen!r}")
        for node in lab.nodes:
            if node is not src_node and lab.exec(src.netns, "ping", "-c", "1", "-W", "2", node.ip,
                                                 check=False).returncode != 0:
                failures.append(f"ping {src.name}@{src_node.index} -> node {node.index}")
    assert failures == []
    mtu = lab.exec(pods[0][1].netns, "cat", "/sys/class/net/eth0/mtu").stdout.strip()
    assert mtu == ("1450" if mode == "tunnel" else "1500"), "the tunnel's overhead comes off the pods' MTU"
    if mode == "tunnel":  # on the wire: VXLAN, with the sender's identity as the VNI
        import subprocess

        (_, a), (_, b) = pods[0], pods[2]
        port = f"{lab.prefix}n0"  # the sending node's port on the underlay bridge
        sniffer = subprocess.Popen(["ip", "netns", "exec", lab.underlay, sys.executable, "-c", SNIFF, port, "2"],
                                   stdout=subprocess.PIPE, text=True)
        assert sniffer.stdout.readline().strip() == "ready"
        lab.exec(a.netns, "ping", "-c", "2", "-i", "0.2", b.ip)
        lines = sniffer.communicate(timeout=20)[0].split("\n")
        assert f"{a.endpoint['identity']} {a.ip} {b.ip}" in lines, lines
    else:  # on the wire: the pods' own addresses, no encapsulation; routes via the other nodes
        routes = lab.nodes[0].exec("ip", "route", "show", "proto", "112").stdout
        assert all(f"via {n.ip}" in routes for n in lab.nodes[1:]), routes


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


NATIVE = ("--set", "routingMode=native", "--set", "autoDirectNodeRoutes=true",
          "--set", "ipv4NativeRoutingCIDR=10.212.0.0/16")


@pytest.mark.parametrize("routing", [(), NATIVE], ids=["tunnel", "native"])
def test_the_seeds_policy_holds_across_nodes(pylium_cluster, routing):
    from test_datapath import serve
    from test_policy import reaches

    lab = pylium_cluster(3, extra=routing)
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


def test_every_node_probes_every_other_node(pylium_cluster):
    lab = pylium_cluster(3, lease_ttl="30s", extra=("--set", "health.probeInterval=1s", "--set", "health.probeTimeout=1s"))
    _start_all(lab)
    a = lab.nodes[0]

    def report(expect):
        r = json.loads(a.cli("health", "status", "--probe", "-o", "json", check=False).stdout)
        return r if (r["reachable"], r["total"]) == expect else None

    r = lab.wait(lambda: report((3, 3)), what="3/3 reachable")
    by_name = {n["name"]: n for n in r["nodes"]}
    assert by_name[a.name]["local"] and all(n["icmp"]["ok"] and n["http"]["ok"] for n in r["nodes"])
    assert all(0 < n["http"]["latency"] < 1 for n in r["nodes"])
    assert "Cluster health: 3/3 reachable" in a.cli("status").stdout
    text = a.cli("health", "status").stdout
    assert "ICMP to stack:   OK, RTT=" in text and f"{a.name} (localhost):" in text
    lab.nodes[2].agent.stop(signal.SIGKILL)  # its address still answers ICMP; its agent does not
    r = lab.wait(lambda: report((2, 3)), what="2/3 reachable")
    down = {n["name"]: n for n in r["nodes"]}[lab.nodes[2].name]
    assert down["icmp"]["ok"] and not down["http"]["ok"] and down["status"] == "unreachable"
    assert a.cli("health", "status", check=False).returncode == 1
    metrics = {(m["name"], m["labels"].get("status")): m["value"]
               for m in a.api.get("/v1/metrics?pattern=cilium_(unreachable_nodes|node_health)")}
    assert metrics[("cilium_unreachable_nodes", None)] == 1
    assert metrics[("cilium_node_health_connectivity_status", "reachable")] == 2
    assert metrics[("cilium_node_health_connectivity_status", "unreachable")] == 1


def _pinging(lab, pod, ip, seconds: float, interval: float = 0.01):
    import subprocess

    count = int(seconds / interval)
    return subprocess.Popen(["ip", "netns", "exec", pod.netns, "ping", "-q", "-i", str(interval), "-c", str(count),
                             "-W", "1", ip], stdout=subprocess.PIPE, text=True)


def _losses(proc) -> tuple[int, int]:
    out = proc.communicate(timeout=120)[0]
    line = next(line for line in out.splitlines() if "packets transmitted" in line)
    sent, received = int(line.split()[0]), int(line.split(", ")[1].split()[0])
    return sent, received


def test_traffic_survives_an_agent_kill_and_an_etcd_outage(pylium_cluster):
    lab = pylium_cluster(2)
    _start_all(lab)
    a, b = lab.nodes
    pa, pb = a.pod("pa", {"k8s:app": "a"}), b.pod("pb", {"k8s:app": "b"})
    lab.wait(lambda: _ping(lambda *c, check=True: lab.exec(pa.netns, *c, check=check), pb.ip, 1), what="a first ping")

    # kill -9 the agent of b while a's pod pings b's pod every 10 ms, then start it again
    ping = _pinging(lab, pa, pb.ip, seconds=10)
    time.sleep(2)
    b.agent.stop(signal.SIGKILL)
    time.sleep(1)
    b.start_agent()
    sent, received = _losses(ping)
    assert sent == received, f"{sent - received} of {sent} pings lost across the agent's restart"

    # etcd away for 10 s: the datapath keeps forwarding, status says so, the agents reconnect
    ping = _pinging(lab, pa, pb.ip, seconds=14)
    time.sleep(1)
    lab.etcd.stop()
    down = lab.wait(lambda: (s := a.api.get("/v1/status"))["kvstore"]["ok"] is False and s, timeout=15,
                    what="a's status to show the outage")
    assert "0/1 connected" in down["kvstore"]["message"]
    assert "KVStore:        Failure" in a.cli("status", check=False).stdout
    time.sleep(max(0.0, 10 - 1))
    lab.etcd.start()
    sent, received = _losses(ping)
    assert sent == received, f"{sent - received} of {sent} pings lost during the etcd outage"
    lab.wait(lambda: a.api.get("/v1/status")["kvstore"]["ok"], timeout=20, what="a to reconnect")
    used = {p.endpoint["identity"] for p in (pa, pb)}
    fresh = a.pod("fresh", {"k8s:app": "fresh"})
    assert fresh.endpoint["identity"] not in used and fresh.endpoint["identity"] >= 256
    assert fresh.ip not in (pa.ip, pb.ip)
    lab.wait(lambda: any(r["prefix"] == f"{fresh.ip}/32" for r in b.api.get("/v1/bpf/ipcache")),
             what="the new pod known on b")
    assert set(lab.node_list(b)) == {a.name, b.name}, "no stale or duplicated nodes"


@pytest.mark.parametrize("socket_lb", [True, False], ids=["socket-lb", "per-packet"])
def test_services_reach_backends_on_other_nodes(pylium_cluster, socket_lb):
    """A ClusterIP whose only backend is on another node, from a pod and from the node; a
    NodePort on any node reaching it (SNAT to that node's address); eTP=Local only local."""
    from test_lb import VIP, connect, endpoint_slice, ready, serve_named, service, write

    lab = pylium_cluster(2, extra=("--set", f"socketLB.enabled={str(socket_lb).lower()}"))
    _start_all(lab)
    a, b = lab.nodes
    client, web = a.pod("client"), b.pod("web")
    serve_named(lab, web, "web")
    write(lab, "web.yaml",
          service("web", [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30080},
                          {"name": "dns", "port": 53, "targetPort": 8080, "protocol": "UDP"}], type="NodePort"),
          endpoint_slice("web-1", "web", [{"name": "http", "port": 8080}, {"name": "dns", "port": 8080,
                                                                           "protocol": "UDP"}],
                         [ready(web.ip, node=b.name)]),
          service("local", [{"port": 81, "targetPort": 8080, "nodePort": 30081}], ip="10.96.0.11", type="NodePort",
                  externalTrafficPolicy="Local"),
          endpoint_slice("local-1", "local", [{"port": 8080}], [ready(web.ip, node=b.name)]))
    for node in lab.nodes:
        lab.wait(lambda n=node: len([s for s in n.api.get("/v1/service")["services"] if s["backends"]]) >= 5,
                 what=f"the services on {node.name}")
    lab.wait(lambda: any(r["prefix"] == f"{web.ip}/32" for r in a.api.get("/v1/bpf/ipcache")), what="web on a")
    for line in connect(lab, client.netns, "tcp", VIP, 80, count=3):
        assert line == ["web", client.ip, f"{VIP}:80"], line  # from a pod on another node
    for line in connect(lab, client.netns, "udp", VIP, 53, count=2):
        assert line[0] == "web" and line[1] == client.ip, line
    if socket_lb:  # the node's own sockets are translated too
        out = a.exec(sys.executable, "-c", _client_script(), "tcp", VIP, "80", "2").stdout.split("\n")
        assert [line.split()[:2] for line in out if line] == [["web", a.ip]] * 2, out
    outside = lab.underlay  # clients beyond the nodes: the underlay's own address
    for node in lab.nodes:  # a, whose backend is on b, and b itself: SNAT to the node's address
        for line in connect(lab, outside, "tcp", node.ip, 30080, count=2):
            assert line == ["web", node.ip, f"{node.ip}:30080"], (node.name, line)
    assert connect(lab, outside, "tcp", a.ip, 30081)[0][0] == "ERR", "eTP=Local: no backend on a"
    assert connect(lab, outside, "tcp", b.ip, 30081)[0][:2] == ["web", "10.251.0.254"], "the client's own address"


def _client_script() -> str:
    from test_lb import CLIENT

    return CLIENT


ENTITIES = textwrap.dedent("""
    apiVersion: v1
    kind: Pod
    metadata: {name: guarded, namespace: default, labels: {app: guarded}}
    ---
    apiVersion: cilium.io/v2
    kind: CiliumNetworkPolicy
    metadata: {name: nodes-only, namespace: default}
    spec:
      endpointSelector:
        matchLabels: {app: guarded}
      ingress:
      - fromEntities: [ENTITY]
""")


@pytest.mark.parametrize("entity", ["remote-node", "host"])
def test_remote_node_and_host_are_told_apart(pylium_cluster, entity):
    """The other node's host arrives as reserved:remote-node (6), this node's own as
    reserved:host (1): a policy admitting one entity admits only those packets."""
    lab = pylium_cluster(2, extra=("--set", "policy.allowLocalhost=policy"))
    lab.manifests.joinpath("guarded.yaml").write_text(ENTITIES.replace("ENTITY", entity))
    _start_all(lab)
    a, b = lab.nodes
    guarded = b.pod("guarded", k8s_namespace="default", k8s_pod_name="guarded")
    other = a.pod("other", {"k8s:app": "other"})
    lab.wait(lambda: any(r["prefix"] == f"{guarded.ip}/32" for r in a.api.get("/v1/bpf/ipcache")), what="a knows")

    def pings(run) -> bool:
        return run("ping", "-c", "1", "-W", "1", guarded.ip, check=False).returncode == 0

    from_remote_host = lab.wait(lambda: pings(a.exec) or None, timeout=5) if entity == "remote-node" else pings(a.exec)
    assert bool(from_remote_host) == (entity == "remote-node"), "a's host"
    assert pings(b.exec) == (entity == "host"), "b's own host"
    assert not pings(lambda *c, check=True: lab.exec(other.netns, *c, check=check)), "a pod is neither"


def test_geneve_without_kernel_support_stops_start_up_naming_it(pylium_cluster):
    lab = pylium_cluster(1, etcd_enabled=False)
    agent = lab.nodes[0].start_agent("--set", "tunnelProtocol=geneve", wait=False)
    assert agent.proc.wait(120) == 1
    assert "tunnelProtocol geneve: this kernel cannot create geneve devices (CONFIG_GENEVE is not enabled)" in \
           agent.log


def test_a_node_record_claiming_foreign_addresses_is_not_routed(pylium_cluster):
    lab = pylium_cluster(1)
    _start_all(lab)
    node = lab.nodes[0]
    rogue = {"Name": "rogue", "Cluster": lab.cluster, "IPAddresses": [{"Type": "InternalIP", "IP": "10.251.0.77"}],
             "IPv4AllocCIDR": ["0.0.0.0/0"]}
    lab.etcd.etcdctl("put", f"cilium/state/nodes/v1/{lab.cluster}/rogue", json.dumps(rogue))
    lab.wait(lambda: "rogue" in lab.node_list(node), what="the record read")
    status = lab.wait(lambda: "outside the cluster's pools" in (s := node.cli("status", check=False).stdout) and s,
                      what="the refusal in status")
    assert "pod CIDR 0.0.0.0/0" in status
    assert "proto 112" not in node.exec("ip", "route", "show", "default").stdout, "no route replaced"
    assert not any(r["prefix"] == "0.0.0.0/0" for r in node.api.get("/v1/bpf/ipcache"))

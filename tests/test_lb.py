"""Load balancing with real pods and packets: services from manifests, socket LB and the
per-packet path, NodePort and externalIPs from outside, algorithms, backend states, no
backend (reject/drop, reason 158), bad manifests, the CLI."""

from __future__ import annotations

import json
import sys
import textwrap
import time

import pytest

from helpers import replayed, run_cli
from pylium.testing.lab import NODE_IP, OUTSIDE_IP

VIP = "10.96.0.10"

# Each connection / datagram is answered with the server's name and the peer it saw;
# the client prints that and the address getpeername() shows it.
NAMED_SERVER = textwrap.dedent("""
    import socket, sys, threading
    name, ip, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    t.bind((ip, port)); t.listen(128)
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind((ip, port))
    def udp():
        while True:
            data, peer = u.recvfrom(100)
            u.sendto(f"{name} {peer[0]}".encode(), peer)
    threading.Thread(target=udp, daemon=True).start()
    def tcp(c, peer):
        try:
            while c.recv(100):
                c.sendall(f"{name} {peer[0]}".encode())
        except OSError:
            pass
        c.close()
    print("ready", flush=True)
    while True:
        threading.Thread(target=tcp, args=t.accept(), daemon=True).start()
""")
# A connection kept open: prints the first answer, then one answer per line on stdin.
LIVE = textwrap.dedent("""
    import socket, sys
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
    for _ in iter(sys.stdin.readline, ""):
        s.sendall(b"x"); print(s.recv(100).decode().split()[0], flush=True)
""")
# argv: kind ip port count [sport]: one line per connection: "<server> <peer seen> <getpeername>"
# or "ERR <errno name>"
CLIENT = textwrap.dedent("""
    import errno, socket, sys
    kind, ip, port, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    sport = int(sys.argv[5]) if len(sys.argv) > 5 else 0
    for i in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.settimeout(2)
        if sport:
            s.bind(("0.0.0.0", sport + i))
        try:
            if kind == "tcp":
                s.connect((ip, port)); s.sendall(b"hi"); answer = s.recv(100).decode()
                peer = s.getpeername()
            elif kind == "udp-connected":
                s.connect((ip, port)); s.send(b"hi"); answer = s.recv(100).decode(); peer = s.getpeername()
            else:
                s.sendto(b"hi", (ip, port)); answer, peer = s.recvfrom(100); answer = answer.decode()
            print(answer, f"{peer[0]}:{peer[1]}", flush=True)
        except OSError as e:
            print("ERR", errno.errorcode.get(e.errno, "timeout") if e.errno else "timeout", flush=True)
        s.close()
""")


def service(name: str, ports: list[dict], *, ip: str = VIP, namespace: str = "default", **spec) -> str:
    doc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": namespace},
           "spec": {"clusterIP": ip, "ports": ports, **spec}}
    return json.dumps(doc)


def endpoint_slice(name: str, service_name: str, ports: list[dict], endpoints: list[dict],
                   namespace: str = "default") -> str:
    doc = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
           "metadata": {"name": name, "namespace": namespace, "labels": {"kubernetes.io/service-name": service_name}},
           "ports": ports, "endpoints": endpoints}
    return json.dumps(doc)


def ready(ip: str, node: str | None = None, **conditions) -> dict:
    e = {"addresses": [ip], "conditions": {"ready": True, **conditions}}
    if node:
        e["nodeName"] = node
    return e


def write(lab, name: str, *docs: str) -> None:
    path = lab.manifests / name
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n---\n".join(docs) + "\n")
    tmp.rename(path)


def services(lab) -> list[dict]:
    return lab.api.get("/v1/service")["services"]


def wait_services(lab, predicate, timeout: float = 10.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        rows = services(lab)
        if predicate(rows) or time.monotonic() > deadline:
            assert predicate(rows), rows
            return rows
        time.sleep(0.05)


def connect(lab, pod_ns: str, kind: str, ip: str, port: int, count: int = 1, sport: int = 0) -> list[list[str]]:
    args = [sys.executable, "-c", CLIENT, kind, ip, str(port), str(count)] + ([str(sport)] if sport else [])
    out = lab.exec(pod_ns, *args, timeout=120).stdout
    return [line.split() for line in out.splitlines()]


def start_backends(lab, *agent_args: str, count: int = 3):
    """An agent with a client pod and `count` backend pods serving TCP and UDP on 8080."""
    lab.start_agent(*agent_args)
    client = lab.pod("client", k8s_namespace="default", k8s_pod_name="client")
    pods = [lab.pod(f"web{i}", k8s_namespace="default", k8s_pod_name=f"web{i}") for i in range(count)]
    for i, p in enumerate(pods):
        serve_named(lab, p, f"web{i}")
    return client, pods


@pytest.fixture
def backends(lab):
    return start_backends(lab, *getattr(lab, "lb_args", ()))


def serve_named(lab, pod, name: str, port: int = 8080):
    import subprocess

    proc = subprocess.Popen(["ip", "netns", "exec", pod.netns, sys.executable, "-c", NAMED_SERVER, name, "0.0.0.0",
                             str(port)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    lab.servers = getattr(lab, "servers", []) + [proc]
    return proc


def web_service(lab, pods, name: str = "web", **spec) -> None:
    write(lab, f"{name}.yaml",
          service(name, [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"},
                         {"name": "dns", "port": 53, "targetPort": 8080, "protocol": "UDP"}], **spec),
          endpoint_slice(f"{name}-1", name, [{"name": "http", "port": 8080, "protocol": "TCP"},
                                             {"name": "dns", "port": 8080, "protocol": "UDP"}],
                         [ready(p.ip) for p in pods]))
    wait_services(lab, lambda rows: any(r["service"] == f"default/{name}" and r["backends"] for r in rows))


def test_cluster_ip_through_socket_lb_tcp_and_udp(lab, backends):
    client, pods = backends
    web_service(lab, pods)
    names = {p.ip: f"web{i}" for i, p in enumerate(pods)}
    for kind, port in (("tcp", 80), ("udp-connected", 53), ("udp", 53)):
        lines = connect(lab, client.netns, kind, VIP, port, count=6)
        for server, seen, peer in lines:
            assert server in names.values()
            assert seen == client.ip  # the backend sees the pod
            assert peer == f"{VIP}:{port}"  # the client sees the service


@pytest.fixture
def per_packet(lab):
    lab.lb_args = ("--set", "socketLB.enabled=false")


def test_cluster_ip_through_the_per_packet_path(lab, per_packet, backends):
    client, pods = backends
    web_service(lab, pods)
    for kind, port in (("tcp", 80), ("udp-connected", 53), ("udp", 53)):
        lines = connect(lab, client.netns, kind, VIP, port, count=6)
        assert {line[0] for line in lines} <= {"web0", "web1", "web2"}, lines
        assert all(seen == client.ip and peer == f"{VIP}:{port}" for _, seen, peer in lines), lines
    # the translation is per packet: connection entries, no socket-LB reverse entries
    ct_entries = lab.node("bpftool", "map", "dump", "pinned", str(lab.bpf_root / lab.dirs.node / "lb" / "lb4_ct_v1"),
                          "-j").stdout
    assert len(json.loads(ct_entries)) >= 2
    # a held connection is translated packet by packet also past its first millisecond, when the
    # fast path would remember a flow: the fast path remembers no translated packet
    live = Live(lab, client, VIP, 80)
    answers = []
    for _ in range(5):
        answers.append(live.ask())
        time.sleep(0.01)
    assert len(set(answers)) == 1 and answers[0] in {"web0", "web1", "web2"}, answers
    remembered = lab.node("bpftool", "map", "dump", "pinned",
                          str(lab.bpf_root / lab.dirs.node / "core" / "fast_flows_v1"), "-j").stdout
    assert json.loads(remembered) == []


def test_hairpin_a_pod_reaches_itself_through_its_service(lab, per_packet, backends):
    client, pods = backends
    write(lab, "self.yaml", service("self", [{"port": 80, "targetPort": 8080}]),
          endpoint_slice("self-1", "self", [{"port": 8080}], [ready(pods[0].ip)]))
    wait_services(lab, lambda rows: any(r["service"] == "default/self" and r["backends"] for r in rows))
    [(server, seen, peer)] = connect(lab, pods[0].netns, "tcp", VIP, 80)
    assert server == "web0" and peer == f"{VIP}:80"
    assert seen == "169.254.42.1"  # the pod sees the service loopback address, as with Cilium


def test_node_port_external_and_load_balancer_ips_from_outside(lab, backends):
    client, pods = backends
    external, lb_ip = "10.250.9.9", "10.250.9.10"
    for ip in (external, lb_ip):
        lab.exec(lab.out_ns, "ip", "route", "add", f"{ip}/32", "via", NODE_IP)
    np = json.loads(service("np", [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30080},
                                   {"name": "dns", "port": 53, "targetPort": 8080, "nodePort": 30053,
                                    "protocol": "UDP"}], type="LoadBalancer", externalIPs=[external]))
    np["status"] = {"loadBalancer": {"ingress": [{"ip": lb_ip}]}}
    write(lab, "np.yaml", json.dumps(np),
          endpoint_slice("np-1", "np", [{"name": "http", "port": 8080}, {"name": "dns", "port": 8080,
                                                                           "protocol": "UDP"}],
                         [ready(p.ip) for p in pods]))
    rows = wait_services(lab, lambda rows: sum(r["service"] == "default/np" for r in rows) == 8)
    assert {r["type"] for r in rows} == {"ClusterIP", "NodePort", "ExternalIPs", "LoadBalancer"}
    for kind, ip, port in (("tcp", NODE_IP, 30080), ("udp", NODE_IP, 30053), ("tcp", external, 80),
                           ("udp-connected", external, 53), ("tcp", lb_ip, 80), ("udp", lb_ip, 53)):
        lines = connect(lab, lab.out_ns, kind, ip, port, count=4)
        for line in lines:
            assert line[0] != "ERR", (kind, ip, port, lines)
            server, seen, peer = line
            assert server.startswith("web")
            assert seen == NODE_IP  # loadBalancer.mode snat: the backend sees the node
            assert peer == f"{ip}:{port}"  # and the reply comes back from the address asked
    # the ClusterIP is not served to outside clients (bpf.lbExternalClusterIP is off, as Cilium's default)
    lab.exec(lab.out_ns, "ip", "route", "add", f"{VIP}/32", "via", NODE_IP)
    assert connect(lab, lab.out_ns, "tcp", VIP, 80)[0][0] == "ERR"


def test_external_traffic_policy_local_keeps_the_client_address_and_local_backends(lab, backends):
    client, pods = backends
    write(lab, "local.yaml",
          service("local", [{"port": 80, "targetPort": 8080, "nodePort": 30081}], type="NodePort",
                  externalTrafficPolicy="Local"),
          endpoint_slice("local-1", "local", [{"port": 8080}],
                         [ready(pods[0].ip, node=lab.dirs.node), ready(pods[1].ip, node="elsewhere")]))
    rows = wait_services(lab, lambda rows: any(r["type"] == "NodePort" for r in rows))
    node_port = next(r for r in rows if r["type"] == "NodePort")
    assert [b["address"] for b in node_port["external_backends"]] == [pods[0].ip]
    lines = connect(lab, lab.out_ns, "tcp", NODE_IP, 30081, count=10)
    assert all(line[:2] == ["web0", OUTSIDE_IP] for line in lines), lines  # no SNAT, only the local one
    # pods still reach both backends through the ClusterIP
    assert {line[0] for line in connect(lab, client.netns, "tcp", VIP, 80, count=30)} == {"web0", "web1"}


def spread(lines: list[list[str]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in lines:
        out[line[0]] = out.get(line[0], 0) + 1
    return out


@pytest.mark.parametrize("algorithm, mode", [("random", "socket"), ("random", "per-packet"),
                                             ("round_robin", "socket"), ("round_robin", "per-packet"),
                                             ("maglev", "socket")])  # a random slot of the table
def test_connections_spread_within_15_percent(lab, mode, algorithm):
    client, pods = start_backends(lab, "--set", f"loadBalancer.algorithm={algorithm}",
                                  "--set", f"socketLB.enabled={'true' if mode == 'socket' else 'false'}")
    web_service(lab, pods)
    counts = spread(connect(lab, client.netns, "tcp", VIP, 80, count=3000))
    assert set(counts) == {"web0", "web1", "web2"}, counts
    assert all(850 <= n <= 1150 for n in counts.values()), counts
    if algorithm == "round_robin":  # in turn, not by chance
        assert max(counts.values()) - min(counts.values()) <= 10, counts


def lb_map(lab, name: str, ct_max: int = 262144):
    from pylium.core.datapath.maps import PinnedMap
    from pylium.plugins.lb.maps import lb_maps

    spec = next(s for s in lb_maps(65536, 16381, ct_max) if s.name == name)
    return PinnedMap.open(spec, lab.bpf_root / lab.dirs.node / "lb")


def test_maglev_removing_one_of_ten_backends_moves_few_flows(lab):
    client, pods = start_backends(lab, "--set", "loadBalancer.algorithm=maglev", "--set", "socketLB.enabled=false",
                                  count=10)

    def assign(members) -> dict[int, str]:
        write(lab, "mg.yaml", service("mg", [{"port": 53, "targetPort": 8080, "protocol": "UDP"}]),
              endpoint_slice("mg-1", "mg", [{"port": 8080, "protocol": "UDP"}], [ready(p.ip) for p in members]))
        wait_services(lab, lambda rows: len(rows) == 1 and len(rows[0]["backends"]) == len(members))
        ct_map = lb_map(lab, "lb4_ct")
        for key in list(ct_map.keys()):  # forget established flows: every flow is chosen afresh
            ct_map.delete(key)
        lines = connect(lab, client.netns, "udp", VIP, 53, count=3000, sport=20000)
        assert all(line[0] != "ERR" for line in lines), lines
        return {i: line[0] for i, line in enumerate(lines)}

    before = assign(pods)
    assert len(set(before.values())) == 10
    again = assign(pods)
    assert again == before  # the same flows land on the same backends (hash, not chance)
    after = assign(pods[:4] + pods[5:])
    moved = sum(before[i] != after[i] for i in before)
    others = sum(before[i] != after[i] for i in before if before[i] != "web4")
    assert "web4" not in after.values()
    assert moved <= 0.12 * len(before), (moved, others, len(before))
    listing = json.loads(run_cli(lab.dirs, "bpf", "lb", "maglev", "list", "default/mg", "-o", "json").stdout)
    assert listing[0]["size"] == 16381 and len(listing[0]["slots"]) == 9
    assert all(1800 <= n <= 1841 for n in listing[0]["slots"].values())  # 16381 / 9, +-1 per fill round


def test_session_affinity_expires_after_its_timeout(lab):
    client, pods = start_backends(lab, "--set", "loadBalancer.algorithm=round_robin")
    web_service(lab, pods, sessionAffinity="ClientIP", sessionAffinityConfig={"clientIP": {"timeoutSeconds": 1}})
    [first] = spread(connect(lab, client.netns, "tcp", VIP, 80, count=10))
    time.sleep(1.5)  # round robin goes on to the next backend once the client is forgotten
    [second] = spread(connect(lab, client.netns, "tcp", VIP, 80, count=10))
    assert second != first


@pytest.mark.parametrize("mode", ["socket", "per-packet"])
@pytest.mark.parametrize("how", ["affinity", "source_hash"])
def test_session_affinity_and_source_hash_keep_a_client_on_one_backend(lab, how, mode):
    args = ["--set", f"socketLB.enabled={'true' if mode == 'socket' else 'false'}"]
    spec = {}
    if how == "source_hash":
        args += ["--set", "loadBalancer.algorithm=source_hash"]
    else:
        spec = {"sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}}
    client, pods = start_backends(lab, *args)
    other = lab.pod("other", k8s_namespace="default", k8s_pod_name="other")
    web_service(lab, pods, **spec)
    for pod in (client, other):
        chosen = spread(connect(lab, pod.netns, "tcp", VIP, 80, count=40))
        assert len(chosen) == 1, chosen


class Live:
    """A TCP connection through a service, held open; ask() sends on it and returns the
    backend's name."""

    def __init__(self, lab, pod, ip: str, port: int):
        import subprocess

        self.proc = subprocess.Popen(["ip", "netns", "exec", pod.netns, sys.executable, "-c", LIVE, ip, str(port)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        lab.servers = getattr(lab, "servers", []) + [self.proc]

    def ask(self) -> str:
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()


def slice_with(lab, pods, conditions: list[dict]) -> None:
    endpoints = [{"addresses": [p.ip], "conditions": c} for p, c in zip(pods, conditions)]
    write(lab, "web-slice.yaml", endpoint_slice("web-1", "web", [{"name": "http", "port": 8080}], endpoints))


ACTIVE = {"ready": True}
TERMINATING = {"ready": False, "serving": True, "terminating": True}
TERMINATING_NOT_SERVING = {"ready": False, "serving": False, "terminating": True}
QUARANTINED = {"ready": False, "serving": False, "terminating": False}


@pytest.mark.parametrize("mode", ["socket", "per-packet"])
def test_backend_states_with_a_live_connection_then_reject(lab, mode):
    from test_policy import wait_flow

    client, pods = start_backends(lab, "--set", f"socketLB.enabled={'true' if mode == 'socket' else 'false'}",
                                  count=2)
    write(lab, "web.yaml", service("web", [{"name": "http", "port": 80, "targetPort": 8080}]))
    slice_with(lab, pods, [ACTIVE, ACTIVE])
    wait_services(lab, lambda rows: rows and len(rows[0]["backends"]) == 2)
    live = Live(lab, client, VIP, 80)
    first = live.ask()
    held = int(first[-1])
    other = 1 - held
    states = [None, None]

    def change(held_state, other_state, expect):
        states[held], states[other] = held_state, other_state
        slice_with(lab, pods, states)
        wait_services(lab, lambda rows: [b["state"] for b in rows[0]["backends"]] == expect)

    # the live connection's backend starts terminating: new connections avoid it, the live one goes on
    change(TERMINATING, ACTIVE, [["terminating", "active"], ["active", "terminating"]][held])
    assert spread(connect(lab, client.netns, "tcp", VIP, 80, count=20)) == {f"web{other}": 20}
    assert live.ask() == first
    # nothing active: the terminating (still serving) backend takes new connections
    change(TERMINATING, QUARANTINED, [["terminating", "quarantined"], ["quarantined", "terminating"]][held])
    assert spread(connect(lab, client.netns, "tcp", VIP, 80, count=10)) == {first: 10}
    # nothing to offer: new connections are refused (reason 158), the live one still works
    change(TERMINATING_NOT_SERVING, QUARANTINED,
           [["terminating-not-serving", "quarantined"], ["quarantined", "terminating-not-serving"]][held])
    assert connect(lab, client.netns, "tcp", VIP, 80) == [["ERR", "ECONNREFUSED"]]
    assert live.ask() == first
    flow = wait_flow(lab, lambda f: f.get("drop_reason") == 158, "--type", "drop")
    assert flow["drop_reason_desc"] == "SERVICE_BACKEND_NOT_FOUND"
    assert flow["IP"]["destination"] == VIP and flow["IP"]["source"] == client.ip


def test_a_full_nat_map_keeps_live_connections_and_takes_new_ones(lab):
    """lb4_ct (bpf.natMax) filled past its size with idle translations: a connection in use
    before goes on with its backend, new connections are translated, the pressure shows it."""
    from test_policy import metric

    from pylium.plugins.lb.maps import Lb4CtEntry, Lb4CtKey

    client, pods = start_backends(lab, "--set", "socketLB.enabled=false", "--set", "bpf.natMax=8192",
                                  "--set", "loadBalancer.algorithm=maglev", count=2)
    web_service(lab, pods)
    wait_services(lab, lambda rows: rows and all(len(r["backends"]) == 2 for r in rows))
    live = Live(lab, client, VIP, 80)
    first = live.ask()
    assert first in ("web0", "web1")
    table = lb_map(lab, "lb4_ct", ct_max=8192)
    for i in range(9000):  # idle translations nobody ends: the LRU must make room
        key = Lb4CtKey(sport=i, dport=80, proto=6)
        key.saddr[:], key.daddr[:] = [10, 99, i >> 8, i & 255], [10, 96, 0, 10]
        table.put(key, Lb4CtEntry(last_seen=time.monotonic_ns(), backend_id=1))
    table.close()
    assert metric(lab, "cilium_bpf_map_pressure", map_name="lb4_ct") >= 0.9
    assert live.ask() == first, "the connection in use keeps its backend"
    assert set(spread(connect(lab, client.netns, "tcp", VIP, 80, count=40))) == {"web0", "web1"}
    assert live.ask() == first


def test_no_backend_with_drop_response_times_out(lab):
    from test_policy import metric, wait_flow

    client, pods = start_backends(lab, "--set", "serviceNoBackendResponse=drop", count=1)
    write(lab, "web.yaml", service("web", [{"name": "http", "port": 80, "targetPort": 8080}]))
    wait_services(lab, lambda rows: len(rows) == 1)
    assert connect(lab, client.netns, "tcp", VIP, 80) == [["ERR", "timeout"]]
    wait_flow(lab, lambda f: f.get("drop_reason") == 158 and f["IP"]["destination"] == VIP, "--type", "drop")
    assert metric(lab, "cilium_drop_count_total", reason="Service backend not found", direction="EGRESS") >= 1


BAD = [
    ("port out of range", service("web", [{"port": 70000, "targetPort": 8080}]), "spec.ports[0].port"),
    ("duplicate port", service("web", [{"name": "a", "port": 80}, {"name": "b", "port": 80}]), "spec.ports[1].port"),
    ("unknown targetPort name", service("web", [{"name": "web", "port": 80, "targetPort": "nope"}]),
     "spec.ports[0].targetPort"),
    ("malformed EndpointSlice", endpoint_slice("web-1", "web", [{"name": "http", "port": 8080}],
                                               [{"addresses": ["10.210.999.1"]}]), "endpoints[0].addresses[0]"),
    ("EndpointSlice without its service label",
     json.dumps({"kind": "EndpointSlice", "addressType": "IPv4", "metadata": {"name": "web-1"}, "endpoints": []}),
     "metadata.labels[kubernetes.io/service-name]"),
]


@pytest.mark.parametrize("what, doc, field", BAD, ids=[b[0] for b in BAD])
def test_a_bad_manifest_is_reported_with_file_and_field_and_the_previous_state_stays(lab, backends, what, doc, field):
    client, pods = backends
    write(lab, "web.yaml", service("web", [{"name": "http", "port": 80, "targetPort": 8080}]))
    write(lab, "web-slice.yaml", endpoint_slice("web-1", "web", [{"name": "http", "port": 8080}],
                                                [ready(p.ip) for p in pods[:2]]))
    before = wait_services(lab, lambda rows: rows and len(rows[0]["backends"]) == 2)
    target = "web-slice.yaml" if "EndpointSlice" in what else "web.yaml"
    write(lab, target, doc)
    deadline = time.monotonic() + 10
    while not (answer := lab.api.get("/v1/service"))["problems"] and time.monotonic() < deadline:
        time.sleep(0.05)
    [problem] = answer["problems"]
    assert str(lab.manifests / target) in problem and field in problem, problem
    assert answer["services"] == before  # still served as before
    assert {line[0] for line in connect(lab, client.netns, "tcp", VIP, 80, count=10)} <= {"web0", "web1"}
    err = run_cli(lab.dirs, "service", "list").stderr
    assert field in err
    log = lab.agents[0].log
    assert "service manifest not loaded" in log and field in log


def test_listings_and_their_json(lab, backends):
    client, pods = backends
    write(lab, "np.yaml",
          service("np", [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30080}], type="NodePort"),
          endpoint_slice("np-1", "np", [{"name": "http", "port": 8080}],
                         [ready(pods[0].ip), {"addresses": [pods[1].ip], "conditions": TERMINATING}]))
    rows = wait_services(lab, lambda rows: len(rows) == 2)
    table = run_cli(lab.dirs, "service", "list").stdout
    assert f"{VIP}:80/TCP" in table and "0.0.0.0:30080/TCP" in table and "NodePort" in table
    assert f"{pods[1].ip}:8080 (terminating)" in table
    listed = json.loads(run_cli(lab.dirs, "service", "list", "-o", "json").stdout)
    assert listed == rows and {r["type"] for r in listed} == {"ClusterIP", "NodePort"}
    ids = {r["frontend"]: r["id"] for r in listed}
    bpf = json.loads(run_cli(lab.dirs, "bpf", "lb", "list", "-o", "json").stdout)
    master = next(r for r in bpf if r["frontend"] == f"{VIP}:80/TCP" and r["slot"] == 0)
    assert master["count"] == 1 and master["terminating"] == 1 and master["rev_nat_index"] == ids[f"{VIP}:80/TCP"]
    assert {r["backend"] for r in bpf if r["frontend"] == f"{VIP}:80/TCP" and r["slot"]} == {
        f"{pods[0].ip}:8080", f"{pods[1].ip}:8080"}
    nodeport = next(r for r in bpf if r["frontend"] == "0.0.0.0:30080/TCP" and r["slot"] == 0)
    assert set(nodeport["flags"]) == {"external", "nodeport"}
    backends_listed = json.loads(run_cli(lab.dirs, "bpf", "lb", "list", "--backends", "-o", "json").stdout)
    assert {(b["address"], b["state"]) for b in backends_listed} == {(f"{pods[0].ip}:8080", "active"),
                                                                     (f"{pods[1].ip}:8080", "terminating")}
    revnat = json.loads(run_cli(lab.dirs, "bpf", "lb", "list", "--revnat", "-o", "json").stdout)
    assert {r["address"] for r in revnat} == {f"{VIP}:80", "0.0.0.0:30080"}
    missing = run_cli(lab.dirs, "bpf", "lb", "maglev", "list", "nope/nope")
    assert missing.returncode != 0 and "no such service" in missing.stderr
    status = run_cli(lab.dirs, "status").stdout
    assert "KubeProxyReplacement" in status and "Socket LB: Enabled" in status
    # event subscribers get every frontend replayed, then service.synced; a removal follows live
    sub, seen = replayed(lab.dirs.run_dir, "service.")
    assert {k: v["id"] for k, v in seen.items()} == ids
    assert seen[f"{VIP}:80/TCP"]["backends"] == [{"address": pods[0].ip, "port": 8080, "state": "active"},
                                                 {"address": pods[1].ip, "port": 8080, "state": "terminating"}]
    (lab.manifests / "np.yaml").unlink()
    assert sub.poll(5000)
    topic, header, payload = sub.recv_multipart()
    assert topic == b"service.deleted" and json.loads(payload)["service"] == "default/np"
    sub.close()


def test_services_that_do_not_fit_the_maps_are_refused_whole(lab):
    from test_policy import metric

    client, pods = start_backends(lab, "--set", "bpf.lbMapMax=256", count=2)
    write(lab, "web.yaml", service("web", [{"name": "http", "port": 80, "targetPort": 8080}]),
          endpoint_slice("web-1", "web", [{"name": "http", "port": 8080}], [ready(p.ip) for p in pods]))
    wait_services(lab, lambda rows: len(rows) == 1)
    # 100 more services with 2 backends each need 300 entries: none of them is programmed
    many = [service(f"s{i}", [{"port": 80, "targetPort": 8080}], ip=f"10.96.1.{i}") for i in range(100)]
    many += [endpoint_slice(f"s{i}-1", f"s{i}", [{"port": 8080}], [ready(p.ip) for p in pods]) for i in range(100)]
    write(lab, "many.yaml", *many)
    deadline = time.monotonic() + 10
    while "services not programmed" not in lab.agents[0].log and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "more than bpf.lbMapMax (256)" in lab.agents[0].log
    assert [r["service"] for r in services(lab)] == ["default/web"]
    entries = json.loads(run_cli(lab.dirs, "bpf", "lb", "list", "-o", "json").stdout)
    assert {r["frontend"] for r in entries} == {f"{VIP}:80/TCP"}  # not one half-programmed service
    assert metric(lab, "cilium_bpf_map_pressure", map_name="lb4_services") == 1.0
    assert {line[0] for line in connect(lab, client.netns, "tcp", VIP, 80, count=5)} <= {"web0", "web1"}


def socket_programs() -> list[int]:
    from pylium.core.datapath import libbpf
    from pylium.core.datapath.datapath import Datapath
    from pylium.plugins.lb.plugin import cgroup2_root

    return [pid for pid, name in Datapath.cgroup_programs(cgroup2_root(), libbpf.CGROUP_INET4_CONNECT)
            if name == "sock4_connect"]


def test_two_nodes_on_one_kernel_each_translate_only_their_own_sockets(lab, tmp_path):
    from pylium.testing.lab import Lab

    other = Lab(tmp_path / "second")
    try:
        answers = {}
        for node in (lab, other):
            client, pods = start_backends(node, count=1)
            web_service(node, pods)
            answers[node.id] = (client, pods[0])
        for node in (lab, other):
            client, backend = answers[node.id]
            # web0 of each node answers with the address it saw: its own node's client
            assert {tuple(line[:2]) for line in connect(node, client.netns, "tcp", VIP, 80, count=5)} == {
                ("web0", client.ip)}
    finally:
        other.close()


def test_socket_lb_outlives_the_agent_and_leaves_nothing_behind(lab, tmp_path):
    import signal

    before = socket_programs()
    client, pods = start_backends(lab, count=1)
    web_service(lab, pods)
    attached = socket_programs()
    assert len(attached) == len(before) + 1
    agent = lab.agents[0]
    agent.proc.send_signal(signal.SIGKILL)
    agent.proc.wait(10)
    assert connect(lab, client.netns, "tcp", VIP, 80)[0][:2] == ["web0", client.ip]  # no agent, still served
    lab.start_agent()
    again = socket_programs()
    assert len(again) == len(attached) and again != attached  # the same link, the new program swapped in
    assert connect(lab, client.netns, "tcp", VIP, 80)[0][:2] == ["web0", client.ip]
    assert not list(lb_map(lab, "lb4_ct").keys())  # by the socket hooks all along: nothing per packet
    lab.close()
    assert socket_programs() == before  # the node's BPF directory gone: its hooks are gone too


def test_no_backend_for_a_client_outside_is_rejected_too(lab, backends):
    from test_policy import wait_flow

    write(lab, "np.yaml", service("np", [{"port": 80, "targetPort": 8080, "nodePort": 30080}], type="NodePort"))
    wait_services(lab, lambda rows: len(rows) == 2)
    assert connect(lab, lab.out_ns, "tcp", NODE_IP, 30080) == [["ERR", "ECONNREFUSED"]]
    flow = wait_flow(lab, lambda f: f.get("drop_reason") == 158 and f["IP"]["source"] == OUTSIDE_IP,
                     "--type", "drop")
    assert flow["traffic_direction"] == "INGRESS"


def test_without_kube_proxy_replacement_only_cluster_ips_per_packet(lab):
    client, pods = start_backends(lab, "--set", "kubeProxyReplacement=false", count=1)
    write(lab, "np.yaml", service("np", [{"port": 80, "targetPort": 8080, "nodePort": 30080}], type="NodePort"),
          endpoint_slice("np-1", "np", [{"port": 8080}], [ready(pods[0].ip)]))
    rows = wait_services(lab, lambda rows: len(rows) == 1)
    assert rows[0]["type"] == "ClusterIP"
    assert connect(lab, client.netns, "tcp", VIP, 80)[0][:2] == ["web0", client.ip]
    assert connect(lab, lab.out_ns, "tcp", NODE_IP, 30080)[0][0] == "ERR"
    assert "KubeProxyReplacement:" in (status := run_cli(lab.dirs, "status").stdout)
    assert "Socket LB: Disabled" in status
    assert len(list(lb_map(lab, "lb4_ct").keys())) >= 2  # translated per packet


def test_backends_beyond_the_node_per_packet_and_from_outside(lab, per_packet, backends):
    """The backend is the outside namespace: pods reach it through the ClusterIP (the reply is
    translated back at to-container), outside clients through a NodePort (the request is
    routed back out, the reply translated on the device)."""
    client, pods = backends
    outside = type(pods[0])("outside", lab.out_ns, {"addresses": [{"family": "ipv4", "ip": OUTSIDE_IP}]})
    serve_named(lab, outside, "outside")
    write(lab, "far.yaml",
          service("far", [{"port": 80, "targetPort": 8080, "nodePort": 30090}], type="NodePort"),
          endpoint_slice("far-1", "far", [{"port": 8080}], [ready(OUTSIDE_IP, node="elsewhere")]))
    wait_services(lab, lambda rows: len(rows) == 2)
    for line in connect(lab, client.netns, "tcp", VIP, 80, count=3):
        assert line[0] == "outside" and line[2] == f"{VIP}:80", line  # masqueraded on the way out
    for line in connect(lab, lab.out_ns, "tcp", NODE_IP, 30090, count=3):
        assert line == ["outside", NODE_IP, f"{NODE_IP}:30090"], line

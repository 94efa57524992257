"""Real pods, real packets: pod networking through the BPF datapath, restart survival, and
endpoint bookkeeping. Every test builds its own node, pods and outside in namespaces."""

from __future__ import annotations

import ctypes as ct
import json
import re
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import zmq

from helpers import replayed, run_cli, write_plugin_dist
from pylium.testing.lab import NODE_IP, OUTSIDE_IP

# A server that answers each TCP connection / UDP datagram with the peer address it saw.
SERVER = textwrap.dedent("""
    import socket, sys
    kind, ip, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((ip, port))
    if kind == "tcp":
        s.listen(16)
    print("ready", flush=True)
    while True:
        if kind == "tcp":
            c, peer = s.accept()
            c.recv(100)
            c.sendall(peer[0].encode())
            c.close()
        else:
            data, peer = s.recvfrom(100)
            s.sendto(peer[0].encode(), peer)
""")
CLIENT = textwrap.dedent("""
    import socket, sys
    kind, ip, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM)
    s.settimeout(5)
    if kind == "tcp":
        s.connect((ip, port)); s.sendall(b"hi"); print(s.recv(100).decode())
    else:
        s.sendto(b"hi", (ip, port)); print(s.recvfrom(100)[0].decode())
""")


def serve(lab, ns: str, kind: str, ip: str, port: int) -> subprocess.Popen:
    proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", SERVER, kind, ip, str(port)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    lab.servers = getattr(lab, "servers", []) + [proc]
    return proc


def ask(lab, ns: str, kind: str, ip: str, port: int) -> str:
    return lab.exec(ns, sys.executable, "-c", CLIENT, kind, ip, str(port)).stdout.strip()


def ping(lab, ns: str, ip: str, count: int = 2) -> bool:
    return lab.exec(ns, "ping", "-c", str(count), "-i", "0.2", "-W", "1", ip, check=False).returncode == 0


@pytest.fixture
def two_pods(lab):
    lab.start_agent()
    a, b = lab.pod("a"), lab.pod("b")
    yield lab, a, b
    for proc in getattr(lab, "servers", []):
        proc.kill()


def test_pods_talk_to_each_other_the_host_and_the_outside(two_pods):
    lab, a, b = two_pods
    assert a.ip != b.ip and a.ip.startswith("10.210.0.") and b.ip.startswith("10.210.0.")
    assert ping(lab, a.netns, b.ip) and ping(lab, b.netns, a.ip)
    # pod to pod: TCP and UDP, and the receiver sees the sender's own address
    serve(lab, b.netns, "tcp", b.ip, 8080)
    serve(lab, b.netns, "udp", b.ip, 5353)
    assert ask(lab, a.netns, "tcp", b.ip, 8080) == a.ip
    assert ask(lab, a.netns, "udp", b.ip, 5353) == a.ip
    # pod to host: the gateway and the node's own address
    gateway = a.endpoint["addresses"][0]["gateway"]
    assert ping(lab, a.netns, gateway) and ping(lab, a.netns, NODE_IP)
    # host to pod
    assert lab.node("ping", "-c", "2", "-i", "0.2", "-W", "1", a.ip, check=False).returncode == 0
    # pod to outside: masqueraded to the node's address
    serve(lab, lab.out_ns, "tcp", OUTSIDE_IP, 9090)
    serve(lab, lab.out_ns, "udp", OUTSIDE_IP, 9191)
    assert ask(lab, a.netns, "tcp", OUTSIDE_IP, 9090) == NODE_IP
    assert ask(lab, b.netns, "udp", OUTSIDE_IP, 9191) == NODE_IP
    assert ping(lab, a.netns, OUTSIDE_IP)


def test_local_delivery_is_bpf_not_iptables(two_pods):
    lab, a, b = two_pods
    rules = lab.node("iptables-save").stdout + lab.node("ip6tables-save").stdout
    assert a.ip not in rules and b.ip not in rules and "lxc" not in rules
    masq = [line for line in rules.splitlines() if "MASQUERADE" in line]
    assert masq == ["-A PYLIUM-MASQ-" + masq[0].split("PYLIUM-MASQ-")[1].split()[0] + " -s 10.210.0.0/24 -j MASQUERADE"]
    # the current dispatchers are attached (tcx) to the host side of both pods
    for pod in (a, b):
        dp = lab.api.get(f"/v1/endpoints/{pod.endpoint['id']}")["datapath"]
        for attach in ("from-container", "to-container"):
            assert dp["programs"][attach] == [dp["dispatchers"][attach]]
    # pod-to-pod TTL shows one routed hop done in BPF: the host's forwarding is switched off
    lab.node("sysctl", "-w", "net.ipv4.ip_forward=0")  # the host's stack could not forward now
    assert ping(lab, a.netns, b.ip)
    assert "ttl=63" in lab.exec(a.netns, "ping", "-c", "1", "-W", "1", b.ip).stdout


def _metric(lab, reason: int, direction: int) -> int:
    from pylium.core.datapath.maps import PinnedMap
    from pylium.core.datapath.structs import CORE_MAPS, metrics_index

    spec = next(s for s in CORE_MAPS if s.name == "metrics")
    m = PinnedMap.open(spec, lab.bpf_root / lab.dirs.node / "core")
    try:
        per_cpu = m.get(ct.c_uint32(metrics_index(reason, direction)))
        return sum(v.count for v in per_cpu)
    finally:
        m.close()


def test_unroutable_pod_address_is_a_counted_drop(two_pods):
    lab, a, b = two_pods
    before = _metric(lab, 151, 2)
    assert not ping(lab, a.netns, "10.210.0.250", count=3)
    assert _metric(lab, 151, 2) - before >= 3
    # a spoofed source address is dropped too (Invalid source ip)
    before = _metric(lab, 132, 2)
    lab.exec(a.netns, "ip", "addr", "add", "10.210.0.251/32", "dev", "eth0")
    lab.exec(a.netns, "ping", "-c", "2", "-W", "1", "-I", "10.210.0.251", b.ip, check=False)
    assert _metric(lab, 132, 2) - before >= 2


def test_kill_9_does_not_disturb_traffic_and_endpoints_come_back(two_pods):
    lab, a, b = two_pods
    agent = lab.agents[0]
    before = {e["id"]: e for e in lab.api.get("/v1/endpoints")}
    old_ids = lab.api.get(f"/v1/endpoints/{a.endpoint['id']}")["datapath"]["programs"]
    pinger = subprocess.Popen(["ip", "netns", "exec", a.netns, "ping", "-i", "0.01", "-c", "800", "-W", "1", b.ip],
                              stdout=subprocess.PIPE, text=True)
    time.sleep(1.5)
    agent.proc.send_signal(signal.SIGKILL)
    agent.proc.wait(10)
    time.sleep(2)  # the agent is gone; packets keep flowing through pinned maps and programs
    lab.start_agent()  # restart: recompile, swap slots, replace filters (hitless)
    out, _ = pinger.communicate(timeout=60)
    summary = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    assert summary and summary.group(1) == summary.group(2) == "800", out[-300:]
    after = {e["id"]: e for e in lab.api.get("/v1/endpoints")}
    assert {i: [x["ip"] for x in e["addresses"]] for i, e in after.items()} == \
           {i: [x["ip"] for x in e["addresses"]] for i, e in before.items()}
    assert all(e["state"] == "ready" for e in after.values())
    new = lab.api.get(f"/v1/endpoints/{a.endpoint['id']}")["datapath"]
    assert new["programs"] == {k: [v] for k, v in new["dispatchers"].items()}  # replaced, not added
    assert new["programs"] != old_ids
    assert ping(lab, a.netns, b.ip)


def test_restart_removes_endpoints_whose_namespace_is_gone(two_pods):
    lab, a, b = two_pods
    lab.agents[0].stop()
    lab.exec(a.netns, "true")
    subprocess.run(["ip", "netns", "del", a.netns], check=True)
    lab.namespaces.remove(a.netns)
    time.sleep(0.5)
    lab.start_agent()
    eps = lab.api.get("/v1/endpoints")
    assert [e["container_id"] for e in eps] == [b.endpoint["container_id"]]
    assert a.endpoint["host_ifname"] not in lab.node_links()
    allocs = lab.api.get("/v1/ipam?all=true")["allocations"]
    assert [x["owner"]["container_id"] for x in allocs] == [b.endpoint["container_id"]]
    bpf = lab.api.get("/v1/bpf/endpoints")
    assert [r["ip"] for r in bpf] == [b.ip]


def test_endpoint_labels_from_cni_args_pods_and_the_cli(lab):
    (lab.manifests / "pods.yaml").write_text(textwrap.dedent("""
        apiVersion: v1
        kind: Namespace
        metadata: {name: shop, labels: {team: red}}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: web-1, namespace: shop, labels: {app: web, tier: front}}
    """))
    lab.start_agent()
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.connect(f"ipc://{lab.dirs.run_dir}/bus.sock")
    sub.subscribe(b"endpoint.")
    pod = lab.pod("web", k8s_namespace="shop", k8s_pod_name="web-1", labels={"cni:owner": "me"})
    assert set(pod.endpoint["labels"]) == {"k8s:app=web", "k8s:tier=front", "k8s:io.kubernetes.pod.namespace=shop",
                                           "k8s:io.cilium.k8s.namespace.labels.team=red", "cni:owner=me"}
    # the Pod's labels change: the endpoint follows (the directory is watched)
    (lab.manifests / "pods.yaml").write_text((lab.manifests / "pods.yaml").read_text().replace("tier: front",
                                                                                              "tier: back"))
    deadline = time.monotonic() + 10
    while "k8s:tier=back" not in lab.api.get(f"/v1/endpoints/{pod.endpoint['id']}")["labels"]:
        assert time.monotonic() < deadline, "labels did not follow the manifest"
        time.sleep(0.2)
    r = run_cli(lab.dirs, "endpoint", "labels", str(pod.endpoint["id"]), "--add", "color=blue", "-d", "cni:owner",
                "-o", "json")
    assert r.returncode == 0, r.stderr
    labels = json.loads(r.stdout)
    assert "unspec:color=blue" in labels and "cni:owner=me" not in labels
    topics = set()
    while sub.poll(2000):
        topic, header, payload = sub.recv_multipart()
        topics.add(topic.decode())
        if {"endpoint.created", "endpoint.updated"} <= topics:
            break
    assert {"endpoint.created", "endpoint.updated"} <= topics


def test_endpoint_and_bpf_listings(two_pods):
    lab, a, b = two_pods
    eps = json.loads(run_cli(lab.dirs, "endpoint", "list", "-o", "json").stdout)
    assert sorted(e["addresses"][0]["ip"] for e in eps) == sorted([a.ip, b.ip])
    table = run_cli(lab.dirs, "endpoint", "list").stdout
    assert "ENDPOINT" in table and a.ip in table and "ready" in table
    got = json.loads(run_cli(lab.dirs, "endpoint", "get", str(a.endpoint["id"])).stdout)
    assert got["host_ifname"] == a.endpoint["host_ifname"]
    r = run_cli(lab.dirs, "endpoint", "get", "999")
    assert r.returncode == 1 and "endpoint 999 does not exist" in r.stderr
    bpf_eps = json.loads(run_cli(lab.dirs, "bpf", "endpoint", "list", "-o", "json").stdout)
    assert {r["ip"]: r["endpoint"] for r in bpf_eps} == {a.ip: a.endpoint["id"], b.ip: b.endpoint["id"]}
    ipcache = json.loads(run_cli(lab.dirs, "bpf", "ipcache", "list", "-o", "json").stdout)
    entries = {r["prefix"]: r["identity"] for r in ipcache}
    assert entries[f"{a.ip}/32"] == 5 and entries["10.210.0.1/32"] == 1  # init; the gateway is host
    assert "IP PREFIX/ADDRESS" in run_cli(lab.dirs, "bpf", "ipcache", "list").stdout


def test_pinned_map_with_a_different_layout_is_replaced(lab):
    from pylium.core.datapath import libbpf

    pins = lab.bpf_root / lab.dirs.node / "core"
    pins.mkdir(parents=True)
    fd = libbpf.map_create(libbpf.MAP_HASH, "endpoints", 20, 8, 16)  # value size 8, not 28
    libbpf.obj_pin(fd, str(pins / "endpoints_v1"))
    agent = lab.start_agent()
    assert "pinned map differs from its declaration; replacing it" in agent.log
    assert "value size 8 != 28" in agent.log
    a, b = lab.pod("a"), lab.pod("b")
    assert ping(lab, a.netns, b.ip)


BAD_STAGE = """
#include "pylium_lib.h"

int bad_stage(struct __sk_buff *skb) {
    void *data = (void *)(long)skb->data;
    struct ethhdr *eth = data;
    return eth->h_proto;  /* no bounds check: the verifier must refuse this */
}
"""


def test_verifier_failure_names_plugin_program_and_log(lab, tmp_path):
    c_file = tmp_path / "bad.c"
    c_file.write_text(BAD_STAGE)
    site = tmp_path / "site"
    write_plugin_dist(site, "badstage", "0.1", "badstage", f"""
        from pylium.core.hookspecs import hookimpl

        @hookimpl
        def pylium_declare(declare):
            declare.bpf_stage("from-container", 3, {str(c_file)!r}, "bad_stage")
    """, {"badstage": "badstage"})
    agent = lab.start_agent(env={"PYTHONPATH": str(site)}, wait=False)
    assert agent.proc.wait(120) == 1
    log = agent.log
    assert "datapath: badstage:" in log and "program bad_stage rejected" in log
    assert "invalid access to packet" in log  # the verifier's own words, from its log


@pytest.mark.parametrize("plugin", ["python", "c"])
def test_cni_del_while_the_agent_is_down_is_queued(two_pods, plugin):
    lab, a, b = two_pods
    if plugin == "c":
        lab.install_c_plugin()
    lab.agents[0].stop()
    r = lab.cni("DEL", {"CNI_CONTAINERID": b.endpoint["container_id"], "CNI_IFNAME": "eth0", "CNI_NETNS": ""},
                lab.conf())
    assert r.returncode == 0, r.stdout
    assert list((lab.dirs.run_dir / "cni-del-queue").glob("*.json"))
    r = lab.cni("ADD", {"CNI_CONTAINERID": "x", "CNI_IFNAME": "eth0", "CNI_NETNS": "/var/run/netns/" + a.netns},
                lab.conf())
    assert r.returncode == 1 and json.loads(r.stdout)["code"] == 11  # try again later
    lab.start_agent()
    assert [e["container_id"] for e in lab.api.get("/v1/endpoints")] == [a.endpoint["container_id"]]
    assert not list((lab.dirs.run_dir / "cni-del-queue").glob("*.json"))
    assert b.endpoint["host_ifname"] not in lab.node_links()


def test_endpoints_are_replayed_on_the_bus(two_pods):
    """A late subscriber gets every endpoint (state replay), then endpoint.synced."""
    lab, a, b = two_pods
    sub, seen = replayed(lab.dirs.run_dir, "endpoint.")
    sub.close()
    assert {p["addresses"][0]["ip"] for p in seen.values()} == {a.ip, b.ip}


def test_dual_stack_pods(lab):
    lab.start_agent("--set", "ipv6.enabled=true",
                    "--set", "ipam.operator.clusterPoolIPv6PodCIDRList={fd00:210::/104}")
    a, b = lab.pod("a"), lab.pod("b")
    b6 = next(x["ip"] for x in b.endpoint["addresses"] if x["family"] == "ipv6")
    a6 = next(x["ip"] for x in a.endpoint["addresses"] if x["family"] == "ipv6")
    assert b6.startswith("fd00:210::")
    r = lab.exec(a.netns, "ping", "-6", "-c", "2", "-i", "0.2", "-W", "1", b6, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ttl=63" in r.stdout or "hlim=63" in r.stdout  # one routed hop, in BPF
    gateway6 = next(x["gateway"] for x in a.endpoint["addresses"] if x["family"] == "ipv6")
    assert lab.exec(a.netns, "ping", "-6", "-c", "1", "-W", "1", gateway6, check=False).returncode == 0
    assert lab.node("ping", "-6", "-c", "1", "-W", "1", a6, check=False).returncode == 0
    assert ping(lab, a.netns, b.ip)

"""Load balancing with real pods and packets: services from manifests, socket LB and the
per-packet path, NodePort and externalIPs from outside, algorithms, backend states, no
backend (reject/drop, reason 158), bad manifests, the CLI."""

from __future__ import annotations

import json
import sys
import textwrap
import time

import pytest

from helpers import run_cli
from lab import NODE_IP, OUTSIDE_IP
from test_datapath import serve

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
    print("ready", flush=True)
    while True:
        c, peer = t.accept()
        try:
            c.recv(100)
            c.sendall(f"{name} {peer[0]}".encode())
        except OSError:
            pass
        c.close()
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


@pytest.fixture
def backends(lab):
    """An agent with a client pod and three backend pods serving TCP and UDP on 8080."""
    lab.start_agent(*getattr(lab, "lb_args", ()))
    client = lab.pod("client", k8s_namespace="default", k8s_pod_name="client")
    pods = [lab.pod(f"web{i}", k8s_namespace="default", k8s_pod_name=f"web{i}") for i in range(3)]
    for i, p in enumerate(pods):
        serve_named(lab, p, f"web{i}")
    return client, pods


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

#!/usr/bin/env python3
"""Pod-to-pod TCP request/response across two nodes, through pylium, against the same path
without BPF in the same run.

--mode tunnel: pylium's VXLAN against two namespaces joined by a plain kernel VXLAN tunnel over
the same underlay. --mode native: pylium's native routing against pod namespaces behind plain
routed veths on two plain router namespaces, over the same underlay. Client and server pinned
to CPU 0; rounds alternate; medians and the median of the per-round ratios.

    .venv/bin/python bench/cluster_rr.py --mode tunnel [--rounds 7] [--seconds 3]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))
from _lab import exec_in, rrprobe, sh  # noqa: E402
from datapath_rr import alternate  # noqa: E402

from pylium.testing.cluster import ClusterLab  # noqa: E402

TARGETS = {"tunnel": 0.90, "native": 0.93}


def plain_vxlan(lab: ClusterLab) -> tuple[str, str, str]:
    """Two namespaces on the underlay joined by a kernel VXLAN device each: (client ns,
    server ns, server address)."""
    names = []
    for i, (underlay_ip, overlay_ip, peer) in enumerate((("10.251.0.101", "10.213.0.1", "10.251.0.102"),
                                                         ("10.251.0.102", "10.213.0.2", "10.251.0.101"))):
        ns = _on_underlay(lab, f"vx{i}", underlay_ip)
        sh("ip", "-n", ns, "link", "add", "vx0", "type", "vxlan", "id", "42", "remote", peer, "dstport", "4789",
           "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "vx0", "mtu", "1450", "up")
        sh("ip", "-n", ns, "addr", "add", f"{overlay_ip}/24", "dev", "vx0")
        names.append(ns)
    return names[0], names[1], "10.213.0.2"


def plain_routed(lab: ClusterLab) -> tuple[str, str, str]:
    """A pod namespace behind a plain veth on each of two plain router namespaces, routed over
    the underlay: (client ns, server ns, server address)."""
    pods = []
    for i, (underlay_ip, peer_ip, net, peer_net) in enumerate(
            (("10.251.0.111", "10.251.0.112", "10.214.0", "10.214.1"),
             ("10.251.0.112", "10.251.0.111", "10.214.1", "10.214.0"))):
        router = _on_underlay(lab, f"rt{i}", underlay_ip)
        exec_in(router, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        pod = lab.netns(f"rp{i}")
        sh("ip", "link", "add", "v0", "netns", router, "type", "veth", "peer", "name", "eth0", "netns", pod)
        sh("ip", "-n", router, "addr", "add", f"{net}.1/24", "dev", "v0")
        sh("ip", "-n", router, "link", "set", "v0", "up")
        sh("ip", "-n", router, "route", "add", f"{peer_net}.0/24", "via", peer_ip)
        sh("ip", "-n", pod, "addr", "add", f"{net}.2/24", "dev", "eth0")
        for dev in ("eth0", "lo"):
            sh("ip", "-n", pod, "link", "set", dev, "up")
        sh("ip", "-n", pod, "route", "add", "default", "via", f"{net}.1")
        pods.append(pod)
    return pods[0], pods[1], "10.214.1.2"


def _on_underlay(lab: ClusterLab, name: str, ip: str) -> str:
    ns = lab.netns(name)
    port = f"{lab.prefix}{name}"
    sh("ip", "link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", port, "netns", lab.underlay)
    sh("ip", "-n", lab.underlay, "link", "set", port, "master", "br0", "up")
    sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
    for dev in ("eth0", "lo"):
        sh("ip", "-n", ns, "link", "set", dev, "up")
    return ns


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=sorted(TARGETS), default="tunnel")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=3)
    args = parser.parse_args()
    probe = rrprobe()
    routing = ("--set", "routingMode=tunnel") if args.mode == "tunnel" else (
        "--set", "routingMode=native", "--set", "autoDirectNodeRoutes=true",
        "--set", "ipv4NativeRoutingCIDR=10.212.0.0/16")
    lab = ClusterLab(Path(tempfile.mkdtemp(prefix="pylium-bench-")), 2, extra=routing)
    servers = []
    try:
        for node in lab.nodes:
            node.start_agent(wait=False)
        for node in lab.nodes:
            node.agent.wait_ready(120)
        a, b = lab.nodes[0].pod("a"), lab.nodes[1].pod("b")
        lab.wait(lambda: any(r["prefix"] == f"{b.ip}/32" for r in lab.nodes[0].api.get("/v1/bpf/ipcache")),
                 timeout=20, what="b's pod on a's node")
        base_client, base_server, base_ip = plain_vxlan(lab) if args.mode == "tunnel" else plain_routed(lab)
        for client_ns in (a.netns, base_client):  # CRR must not run out of ports
            exec_in(client_ns, "sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1", "net.ipv4.ip_local_port_range=1024 65000")
        duration = str(args.rounds * args.seconds * 4 + 120)
        servers = [subprocess.Popen(["ip", "netns", "exec", ns, "taskset", "-c", "0", probe, "srv", ip, "8080",
                                     duration]) for ns, ip in ((b.netns, b.ip), (base_server, base_ip))]
        time.sleep(0.5)
        results = alternate(probe, (a.netns, b.ip), (base_client, base_ip), args.rounds, args.seconds)
    finally:
        for s in servers:
            s.kill()
        lab.close()
    baseline = "plain vxlan" if args.mode == "tunnel" else "plain routed"
    target = TARGETS[args.mode]
    print(f"{args.mode}: pinned to CPU 0, {args.rounds} alternating rounds of {args.seconds:g}s, medians")
    ok = True
    for mode in ("rr", "crr"):
        ours, base, ratio = results[mode]
        ok &= ratio >= target
        print(f"TCP_{mode.upper():3}: pylium {ours:9,.0f}/s  {baseline} {base:9,.0f}/s  ratio {ratio:.3f} "
              f"(target >= {target})")
    print("PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()

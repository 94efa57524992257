#!/usr/bin/env python3
"""Pod-to-pod TCP request/response across two nodes, through pylium, against the same path
without BPF in the same run.

--mode tunnel: pylium's VXLAN against two namespaces joined by a plain kernel VXLAN tunnel over
the same underlay (the target's baseline), and against the same topology as pylium's without
BPF (pods behind veths on two router namespaces joined by a plain VXLAN tunnel), which tells
the datapath's own cost from the extra veth hop of a pod. --mode native: pylium's native
routing against pod namespaces behind plain routed veths on two plain router namespaces, over
the same underlay. Client and server pinned to CPU 0; rounds alternate; medians and the
median of the per-round ratios.

    .venv/bin/python bench/cluster_rr.py --mode tunnel [--rounds 7] [--seconds 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
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


def plain_routed(lab: ClusterLab, vxlan: bool = False) -> tuple[str, str, str]:
    """A pod namespace behind a plain veth on each of two plain router namespaces, routed over
    the underlay (or, with `vxlan`, through a plain VXLAN tunnel between the routers):
    (client ns, server ns, server address)."""
    pods = []
    tag, first, mtu = ("vr", 121, "1450") if vxlan else ("rt", 111, "1500")
    for i, (net, peer_net) in enumerate((("10.214.0", "10.214.1"), ("10.214.1", "10.214.0"))):
        underlay_ip, peer_ip = f"10.251.0.{first + i}", f"10.251.0.{first + 1 - i}"
        router = _on_underlay(lab, f"{tag}{i}", underlay_ip)
        exec_in(router, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        via = peer_ip
        if vxlan:
            sh("ip", "-n", router, "link", "add", "vx0", "type", "vxlan", "id", "43", "remote", peer_ip,
               "dstport", "4789", "dev", "eth0")
            sh("ip", "-n", router, "link", "set", "vx0", "mtu", mtu, "up")
            sh("ip", "-n", router, "addr", "add", f"10.216.0.{i + 1}/24", "dev", "vx0")
            via = f"10.216.0.{2 - i}"
        pod = lab.netns(f"{tag}p{i}")
        sh("ip", "link", "add", "v0", "netns", router, "type", "veth", "peer", "name", "eth0", "netns", pod)
        sh("ip", "-n", router, "addr", "add", f"{net}.1/24", "dev", "v0")
        sh("ip", "-n", router, "link", "set", "v0", "up")
        sh("ip", "-n", router, "route", "add", f"{peer_net}.0/24", "via", via)
        sh("ip", "-n", pod, "addr", "add", f"{net}.2/24", "dev", "eth0")
        sh("ip", "-n", pod, "link", "set", "eth0", "mtu", mtu, "up")
        sh("ip", "-n", pod, "link", "set", "lo", "up")
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
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra agent configuration, e.g. bpf.events.trace.enabled=false")
    args = parser.parse_args()
    probe = rrprobe()
    routing = ("--set", "routingMode=tunnel") if args.mode == "tunnel" else (
        "--set", "routingMode=native", "--set", "autoDirectNodeRoutes=true",
        "--set", "ipv4NativeRoutingCIDR=10.212.0.0/16")
    routing += tuple(arg for kv in args.set for arg in ("--set", kv))
    workdir = Path(tempfile.mkdtemp(prefix="pylium-bench-"))
    lab = ClusterLab(workdir, 2, extra=routing)
    servers = []
    try:
        for node in lab.nodes:
            node.start_agent(wait=False)
        for node in lab.nodes:
            node.agent.wait_ready(120)
        a, b = lab.nodes[0].pod("a"), lab.nodes[1].pod("b")
        lab.wait(lambda: any(r["prefix"] == f"{b.ip}/32" for r in lab.nodes[0].api.get("/v1/bpf/ipcache")),
                 timeout=20, what="b's pod on a's node")
        baselines = {"plain vxlan": plain_vxlan(lab), "routed pods over plain vxlan": plain_routed(lab, vxlan=True)} \
            if args.mode == "tunnel" else {"plain routed": plain_routed(lab)}
        for client_ns in (a.netns, *(c for c, _, _ in baselines.values())):  # CRR must not run out of ports
            exec_in(client_ns, "sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1", "net.ipv4.ip_local_port_range=1024 65000")
        duration = str(args.rounds * args.seconds * 4 * len(baselines) + 120)
        ends = [(b.netns, b.ip), *((server, ip) for _, server, ip in baselines.values())]
        servers = [subprocess.Popen(["ip", "netns", "exec", ns, "taskset", "-c", "0", probe, "srv", ip, "8080",
                                     duration]) for ns, ip in ends]
        time.sleep(0.5)
        results = {name: alternate(probe, (a.netns, b.ip), (client, ip), args.rounds, args.seconds)
                   for name, (client, _, ip) in baselines.items()}
    finally:
        for s in servers:
            s.kill()
        lab.close()
        shutil.rmtree(workdir, ignore_errors=True)
    target = TARGETS[args.mode]
    print(f"{args.mode}: pinned to CPU 0, {args.rounds} alternating rounds of {args.seconds:g}s, medians")
    ok = True
    for i, (baseline, measured) in enumerate(results.items()):
        for mode in ("rr", "crr"):
            ours, base, ratio = measured[mode]
            ok &= i > 0 or ratio >= target  # the target is against the first baseline
            print(f"TCP_{mode.upper():3}: pylium {ours:9,.0f}/s  {baseline} {base:9,.0f}/s  ratio {ratio:.3f}"
                  + (f" (target >= {target})" if i == 0 else ""))
    print("PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()

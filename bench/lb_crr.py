#!/usr/bin/env python3
"""Connect/request/close rate from a pod to a ClusterIP service, with 1 and with 10,000
services installed, against direct pod-to-pod and against kube-proxy-style iptables rules
(10,000 services, the decoys' rules before the target's, as in perf-anchors) with the
iptables-nft and iptables-legacy backends. Client and server pinned to CPU 0. Each round
measures every configuration once; medians of the per-round ratios are printed.

    .venv/bin/python bench/lb_crr.py [--rounds 5] [--seconds 3] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from _lab import add_pod, exec_in, node_with_agent, rrprobe, sh  # noqa: E402
from _services import decoys, kube_proxy_rules, service_docs, write_manifest  # noqa: E402

VIP = "10.96.0.10"
SERVICES = 10_000
TARGETS = {"1 service": 0.95, "direct pod-to-pod": 0.93, "iptables-nft": 3.0, "iptables-legacy": 1.8}


def crr(probe: str, ns: str, ip: str, port: int, seconds: float) -> float:
    r = exec_in(ns, "taskset", "-c", "0", probe, "crr", ip, str(port), str(seconds), timeout=seconds + 60)
    return float(r.stdout.strip())


def wait_frontends(client, count: int, timeout: float = 120) -> float:
    started = time.monotonic()
    while len(client.get("/v1/service")["services"]) != count:
        if time.monotonic() - started > timeout:
            raise SystemExit(f"the agent did not reach {count} frontends")
        time.sleep(0.2)
    return time.monotonic() - started


def iptables_pair(netns, backend: str, probe: str, duration: str, servers: list) -> str:
    """A client and a server namespace on a plain veth, kube-proxy rules in the client's."""
    cli, srv = netns(f"{backend}-c"), netns(f"{backend}-s")
    dev = backend[:3]
    sh("ip", "link", "add", f"{dev}c", "netns", cli, "type", "veth", "peer", "name", f"{dev}s", "netns", srv)
    for ns, d, ip in ((cli, f"{dev}c", "10.244.0.1"), (srv, f"{dev}s", "10.244.0.2")):
        sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", d)
        sh("ip", "-n", ns, "link", "set", d, "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
    sh("ip", "-n", cli, "route", "add", "10.96.0.0/12", "dev", f"{dev}c")
    rules = kube_proxy_rules(SERVICES - 1, (VIP, 80, "10.244.0.2", 8080))
    exec_in(cli, f"iptables-{backend}-restore", input=rules)
    exec_in(cli, "sysctl", "-w", "net.netfilter.nf_conntrack_tcp_timeout_time_wait=5")
    servers.append(subprocess.Popen(["ip", "netns", "exec", srv, "taskset", "-c", "0", probe, "srv", "10.244.0.2",
                                     "8080", duration]))
    return cli


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    probe = rrprobe()
    duration = str(args.rounds * (args.seconds * 6 + 30) + 300)
    servers: list[subprocess.Popen] = []
    with node_with_agent(*(x for kv in args.set for x in ("--set", kv))) as (node, client, netns, _, run_dir):
        manifests = run_dir.parent / "manifests"
        manifests.mkdir(exist_ok=True)
        a, b = netns("a"), netns("b")
        add_pod(client, a)
        b_ip = add_pod(client, b)
        pairs = {backend: iptables_pair(netns, backend, probe, duration, servers) for backend in ("nft", "legacy")}
        for ns in (a, *pairs.values()):  # as in perf-anchors: CRR must not run out of ports
            exec_in(ns, "sysctl", "-w", "net.ipv4.tcp_tw_reuse=1", "net.ipv4.ip_local_port_range=1024 65000")
        servers.append(subprocess.Popen(["ip", "netns", "exec", b, "taskset", "-c", "0", probe, "srv", b_ip, "8080",
                                         duration]))
        write_manifest(manifests / "target.yaml", service_docs("target", VIP, [b_ip]))
        wait_frontends(client, 1)
        decoy_docs = decoys(SERVICES - 1)
        rows: dict[str, list[float]] = {k: [] for k in ("10k services", "1 service", "direct pod-to-pod",
                                                        "iptables-nft", "iptables-legacy")}
        try:
            time.sleep(0.5)
            for _ in range(args.rounds):
                (manifests / "decoys.json").unlink(missing_ok=True)
                wait_frontends(client, 1)
                rows["1 service"].append(crr(probe, a, VIP, 80, args.seconds))
                rows["direct pod-to-pod"].append(crr(probe, a, b_ip, 8080, args.seconds))
                write_manifest(manifests / "decoys.yaml", decoy_docs)
                wait_frontends(client, SERVICES)
                rows["10k services"].append(crr(probe, a, VIP, 80, args.seconds))
                rows["iptables-nft"].append(crr(probe, pairs["nft"], VIP, 80, args.seconds))
                rows["iptables-legacy"].append(crr(probe, pairs["legacy"], VIP, 80, args.seconds))
        finally:
            for s in servers:
                s.kill()
    print(f"TCP_CRR to a ClusterIP, pinned to CPU 0, {args.rounds} rounds of {args.seconds:g}s, medians")
    ok = True
    ours = rows["10k services"]
    print(f"  pylium, {SERVICES:,} services: {statistics.median(ours):9,.0f}/s")
    for name, target in TARGETS.items():
        ratio = statistics.median(x / y for x, y in zip(ours, rows[name]))
        ok &= ratio >= target
        print(f"  vs {name:18}: {statistics.median(rows[name]):9,.0f}/s  ratio {ratio:.3f} (target >= {target})")
    print("PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()

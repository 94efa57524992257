#!/usr/bin/env python3
"""Pod-to-pod TCP request/response through pylium's datapath against a plain veth pair.

TCP_RR: one connection, 1-byte ping-pong. TCP_CRR: connect, 1 byte each way, close. Client
and server are pinned to one CPU (cross-CPU numbers on this VM measure wake-up latency, not
the datapath). Rounds alternate pylium and baseline; medians and the median of the per-round
ratios are printed.

    .venv/bin/python bench/datapath_rr.py [--rounds 7] [--seconds 3] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
import os

sys.path.insert(0, os.path.dirname(__file__))
from _lab import add_pod, exec_in, node_with_agent, rrprobe, sh  # noqa: E402


def measure(probe: str, client_ns: str, server_ip: str, mode: str, seconds: float) -> float:
    r = exec_in(client_ns, "taskset", "-c", "0", probe, mode, server_ip, "8080", str(seconds), timeout=seconds + 60)
    return float(r.stdout.strip())


def alternate(probe: str, first: tuple[str, str], second: tuple[str, str], rounds: int,
              seconds: float) -> dict[str, tuple[float, float, float]]:
    """For TCP_RR and TCP_CRR: rounds alternating between two (client netns, server address)
    pairs; the medians of each and the median of the per-round ratios first/second."""
    results = {}
    for mode in ("rr", "crr"):
        a, b, ratios = [], [], []
        for _ in range(rounds):
            a.append(measure(probe, *first, mode, seconds))
            b.append(measure(probe, *second, mode, seconds))
            ratios.append(a[-1] / b[-1])
        results[mode] = (statistics.median(a), statistics.median(b), statistics.median(ratios))
    return results


def report(results: dict[str, tuple[float, float, float]], first: str, second: str, rr_target: float) -> None:
    """Print what alternate() measured and exit 1 when TCP_RR misses its target ratio."""
    for mode, (a, b, ratio) in results.items():
        print(f"TCP_{mode.upper():3}: {first} {a:9,.0f}/s  {second} {b:9,.0f}/s  ratio {ratio:.3f}")
    ok = results["rr"][2] >= rr_target
    print(f"target RR >= {rr_target}: {'PASS' if ok else 'FAIL'}")
    sys.exit(0 if ok else 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=3)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="Agent configuration, as pylium-agent --set (repeatable).")
    args = parser.parse_args()
    probe = rrprobe()
    with node_with_agent(*(x for kv in args.set for x in ("--set", kv))) as (node, client, netns, _, _):
        a, b = netns("a"), netns("b")
        add_pod(client, a)
        b_ip = add_pod(client, b)
        base_a, base_b = netns("base-a"), netns("base-b")
        sh("ip", "link", "add", "pbv0", "netns", base_a, "type", "veth", "peer", "name", "pbv1", "netns", base_b)
        for ns, dev, ip in ((base_a, "pbv0", "10.212.0.1"), (base_b, "pbv1", "10.212.0.2")):
            sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        for client_ns in (a, base_a):  # as in perf-anchors: CRR must not run out of ports
            exec_in(client_ns, "sysctl", "-w", "net.ipv4.tcp_tw_reuse=1", "net.ipv4.ip_local_port_range=1024 65000")
        duration = str(args.rounds * args.seconds * 4 + 120)
        servers = [subprocess.Popen(["ip", "netns", "exec", ns, "taskset", "-c", "0", probe, "srv", ip, "8080",
                                     duration]) for ns, ip in ((b, b_ip), (base_b, "10.212.0.2"))]
        time.sleep(0.5)  # let the servers listen
        try:
            results = alternate(probe, (a, b_ip), (base_a, "10.212.0.2"), args.rounds, args.seconds)
        finally:
            for s in servers:
                s.kill()
    print(f"pinned to CPU 0, {args.rounds} alternating rounds of {args.seconds:g}s, medians")
    ok = True
    for mode, target in (("rr", 0.93), ("crr", 0.93)):
        ours, base, ratio = results[mode]
        ok &= ratio >= target
        print(f"TCP_{mode.upper():3}: pylium {ours:9,.0f}/s  plain veth {base:9,.0f}/s  ratio {ratio:.3f} "
              f"(target >= {target})")
    print("PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()

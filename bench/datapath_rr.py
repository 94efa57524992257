#!/usr/bin/env python3
"""Pod-to-pod TCP request/response through pylium's datapath against a plain veth pair.

TCP_RR: one connection, 1-byte ping-pong. TCP_CRR: connect, 1 byte each way, close. Client
and server are pinned to one CPU (cross-CPU numbers on this VM measure wake-up latency, not
the datapath). Each round runs pylium, the baseline and the floor in turn; medians and the
median of the per-round ratios are printed.

The floor, measured the same way against the same plain pair: the least any datapath of veth
pairs and tc programs can cost here. Two "pods" with veths into a "host" namespace whose tc
ingress programs do nothing but bpf_redirect_peer() to the other pod (static neighbours, no
lookup, no policy, no trace). pylium's ratio cannot pass the floor's.

    .venv/bin/python bench/datapath_rr.py [--rounds 15] [--seconds 1] [--set KEY=VALUE ...]

Short rounds in alternating order: this VM's speed drifts by 10-30% over seconds (no steal
reported), so setups measured close together compare best.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import os

sys.path.insert(0, os.path.dirname(__file__))
from _lab import add_pod, exec_in, node_with_agent, rrprobe, sh  # noqa: E402


FLOOR_PROGRAM = """
#include <uapi/linux/bpf.h>
int redirect(struct __sk_buff *skb) { return bpf_redirect_peer(PEER, 0); }
"""
# bcc in the host namespace; tcx attached this way stays after the loader exits, until the
# device goes with its namespace.
FLOOR_LOADER = """
import sys
from bcc import BPF
program, pairs = sys.argv[1], sys.argv[2:]
for source, peer in zip(pairs[::2], pairs[1::2]):
    b = BPF(text=program, cflags=[f"-DPEER={peer}"])
    BPF.attach_func(b.load_func("redirect", BPF.SCHED_CLS), int(source), 46)  # BPF_TCX_INGRESS
"""


def floor_pods(netns) -> tuple[str, str, str]:
    """Two pods on the floor datapath: (client netns, server netns, server address)."""
    host, pods = netns("floor-h"), {"10.213.0.1": netns("floor-a"), "10.213.0.2": netns("floor-b")}
    link = lambda ns, dev: json.loads(sh("ip", "-n", ns, "-j", "link", "show", "dev", dev).stdout)[0]  # noqa: E731
    for i, (ip, ns) in enumerate(pods.items()):
        sh("ip", "link", "add", f"flr{i}", "netns", host, "type", "veth", "peer", "name", "eth0", "netns", ns)
        sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
        for where, dev in ((ns, "eth0"), (ns, "lo"), (host, f"flr{i}")):
            sh("ip", "-n", where, "link", "set", dev, "up")
    (a_ip, a), (b_ip, b) = pods.items()
    sh("ip", "-n", a, "neigh", "add", b_ip, "lladdr", link(b, "eth0")["address"], "dev", "eth0")
    sh("ip", "-n", b, "neigh", "add", a_ip, "lladdr", link(a, "eth0")["address"], "dev", "eth0")
    index = [str(link(host, f"flr{i}")["ifindex"]) for i in (0, 1)]
    exec_in(host, sys.executable, "-c", FLOOR_LOADER, FLOOR_PROGRAM, index[0], index[1], index[1], index[0])
    return a, b, b_ip


def measure(probe: str, client_ns: str, server_ip: str, mode: str, seconds: float) -> float:
    r = exec_in(client_ns, "taskset", "-c", "0", probe, mode, server_ip, "8080", str(seconds), timeout=seconds + 60)
    return float(r.stdout.strip())


def in_turn(probe: str, setups: dict[str, tuple[str, str]], rounds: int, seconds: float) -> dict:
    """For TCP_RR and TCP_CRR: each round measures every (client netns, server address) setup
    in turn. Returns {mode: {setup name: [rate of each round]}}."""
    results = {}
    for mode in ("rr", "crr"):
        runs = results[mode] = {name: [] for name in setups}
        for r in range(rounds):
            # every other round in reverse order: a drift of the machine's speed within a round
            # favours no setup
            for name in (list(setups) if r % 2 == 0 else list(setups)[::-1]):
                runs[name].append(measure(probe, *setups[name], mode, seconds))
    return results


def ratio(runs: dict[str, list[float]], a: str, b: str) -> float:
    """The median of the per-round ratios a/b."""
    return statistics.median(x / y for x, y in zip(runs[a], runs[b]))


def alternate(probe: str, first: tuple[str, str], second: tuple[str, str], rounds: int,
              seconds: float) -> dict[str, tuple[float, float, float]]:
    """Rounds alternating between two setups: the medians of each and the median of the
    per-round ratios first/second."""
    return {mode: (statistics.median(runs["first"]), statistics.median(runs["second"]), ratio(runs, "first", "second"))
            for mode, runs in in_turn(probe, {"first": first, "second": second}, rounds, seconds).items()}


def report(results: dict[str, tuple[float, float, float]], first: str, second: str, rr_target: float) -> None:
    """Print what alternate() measured and exit 1 when TCP_RR misses its target ratio."""
    for mode, (a, b, ratio) in results.items():
        print(f"TCP_{mode.upper():3}: {first} {a:9,.0f}/s  {second} {b:9,.0f}/s  ratio {ratio:.3f}")
    ok = results["rr"][2] >= rr_target
    print(f"target RR >= {rr_target}: {'PASS' if ok else 'FAIL'}")
    sys.exit(0 if ok else 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--seconds", type=float, default=1)
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
        floor_a, floor_b, floor_b_ip = floor_pods(netns)
        for client_ns in (a, base_a, floor_a):  # as in perf-anchors: CRR must not run out of ports
            exec_in(client_ns, "sysctl", "-w", "net.ipv4.tcp_tw_reuse=1", "net.ipv4.ip_local_port_range=1024 65000")
        duration = str(args.rounds * args.seconds * 8 + 120)
        servers = [subprocess.Popen(["ip", "netns", "exec", ns, "taskset", "-c", "0", probe, "srv", ip, "8080",
                                     duration]) for ns, ip in ((b, b_ip), (base_b, "10.212.0.2"),
                                                               (floor_b, floor_b_ip))]
        time.sleep(0.5)  # let the servers listen
        try:
            results = in_turn(probe, {"pylium": (a, b_ip), "plain": (base_a, "10.212.0.2"),
                                      "floor": (floor_a, floor_b_ip)}, args.rounds, args.seconds)
        finally:
            for s in servers:
                s.kill()
    print(f"pinned to CPU 0, {args.rounds} alternating rounds of {args.seconds:g}s, medians")
    ok = True
    for mode, target in (("rr", 0.95), ("crr", 0.95)):  # issue 20
        runs = results[mode]
        median = {name: statistics.median(v) for name, v in runs.items()}
        ok &= ratio(runs, "pylium", "plain") >= target
        print(f"TCP_{mode.upper():3}: pylium {median['pylium']:9,.0f}/s  plain veth {median['plain']:9,.0f}/s  "
              f"ratio {ratio(runs, 'pylium', 'plain'):.3f} (target >= {target})")
        print(f"         floor  {median['floor']:9,.0f}/s  ratio to plain {ratio(runs, 'floor', 'plain'):.3f} "
              f"(the best a veth + tc datapath does here); pylium to the floor {ratio(runs, 'pylium', 'floor'):.3f}")
    print("PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Datapath cost of tracing: pod-to-pod TCP request/response with bpf.monitorAggregation=medium
(the default) against the same datapath with trace events compiled out
(bpf.events.trace.enabled=false), two nodes side by side, rounds alternating.

Client and server pinned to CPU 0 as in datapath_rr.py; medians and the median of the
per-round ratios. Target: RR with medium >= 0.9x of tracing disabled.

    .venv/bin/python bench/monitor_overhead.py [--rounds 7] [--seconds 3]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from _lab import add_pod, exec_in, node_with_agent, rrprobe  # noqa: E402
from datapath_rr import alternate, report  # noqa: E402

SETTINGS = {"medium": ["--set", "bpf.monitorAggregation=medium"],
            "no tracing": ["--set", "bpf.events.trace.enabled=false"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=3)
    args = parser.parse_args()
    probe = rrprobe()
    with contextlib.ExitStack() as stack:
        pairs, servers = {}, []
        for name, extra in SETTINGS.items():
            _, client, netns, _, _ = stack.enter_context(node_with_agent(*extra))
            a, b = netns("a"), netns("b")
            add_pod(client, a)
            b_ip = add_pod(client, b)
            exec_in(a, "sysctl", "-w", "net.ipv4.tcp_tw_reuse=1", "net.ipv4.ip_local_port_range=1024 65000")
            servers.append(subprocess.Popen(["ip", "netns", "exec", b, "taskset", "-c", "0", probe, "srv", b_ip,
                                             "8080", str(args.rounds * args.seconds * 4 + 120)]))
            pairs[name] = (a, b_ip)
        stack.callback(lambda: [s.kill() for s in servers])
        time.sleep(0.5)
        results = alternate(probe, pairs["medium"], pairs["no tracing"], args.rounds, args.seconds)
    print(f"pinned to CPU 0, {args.rounds} alternating rounds of {args.seconds:g}s, medians")
    report(results, "aggregation medium", "tracing disabled", 0.9)


if __name__ == "__main__":
    main()

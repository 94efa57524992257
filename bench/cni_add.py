#!/usr/bin/env python3
"""CNI ADD latency including process start, 20 ADDs at once, and agent cold start to READY.

Each ADD is a fresh `pylium-cni` process, installed by `pylium install-cni` and started as a
runtime starts it (through nsenter into the node's namespace), timed from spawn to exit.
Baseline in the same run: Debian's `bridge` plugin with `host-local` IPAM doing the same 20
concurrent ADDs in the same kind of namespaces.

    .venv/bin/python bench/cni_add.py [--rounds 5] [--concurrency 20]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))
from _lab import VENV_BIN, node_with_agent, sh  # noqa: E402


def quantile(samples: list[float], q: float) -> float:
    return statistics.quantiles(samples, n=100)[int(q * 100) - 1] if len(samples) > 1 else samples[0]


def burst(node: str, plugin: str, conf: dict, netns_paths: list[str], command: str = "ADD") -> list[float]:
    procs = []
    for i, path in enumerate(netns_paths):
        env = {"PATH": os.environ["PATH"], "CNI_COMMAND": command, "CNI_CONTAINERID": f"bench-{i}",
               "CNI_IFNAME": "eth0", "CNI_NETNS": path, "CNI_PATH": "/usr/lib/cni"}
        start = time.perf_counter()
        p = subprocess.Popen(["nsenter", f"--net=/var/run/netns/{node}", plugin], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        p.stdin.write(json.dumps(conf).encode())
        p.stdin.close()
        procs.append((p, start))
    out = []
    for p, start in procs:
        p.wait()
        out.append(time.perf_counter() - start)
        if command == "ADD" and p.returncode != 0:
            raise SystemExit(f"{plugin} ADD failed: {p.stdout.read().decode()} {p.stderr.read().decode()}")
    return out


def run_rounds(node, netns, plugin, conf, rounds, concurrency, tag) -> list[float]:
    samples = []
    for r in range(rounds):
        paths = [f"/var/run/netns/{netns(f'{tag}{r}x{i}')}" for i in range(concurrency)]
        samples += burst(node, plugin, conf, paths)
        burst(node, plugin, conf, paths, "DEL")
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=20)
    args = parser.parse_args()
    host_local_dir = tempfile.mkdtemp(prefix="pylium-bench-hostlocal-")
    with node_with_agent() as (node, client, netns, first_start, run_dir):
        bin_dir = Path(host_local_dir) / "bin"  # the plugin as `pylium install-cni` installs it
        sh(str(VENV_BIN / "pylium"), "install-cni", "--conf-dir", str(bin_dir.parent / "net.d"), "--bin-dir",
           str(bin_dir), "--run-dir", str(run_dir), "--no-portmap")
        pylium_conf = {"cniVersion": "1.0.0", "name": "pylium", "type": "pylium-cni",
                       "socketPath": str(run_dir / "pylium.sock")}
        ours = run_rounds(node, netns, str(bin_dir / "pylium-cni"), pylium_conf, args.rounds, args.concurrency, "p")
        bridge_conf = {"cniVersion": "1.0.0", "name": "benchbr", "type": "bridge", "bridge": "pbbr0",
                       "isGateway": True, "ipam": {"type": "host-local", "subnet": "10.213.0.0/16",
                                                   "dataDir": host_local_dir}}
        base = run_rounds(node, netns, "/usr/lib/cni/bridge", bridge_conf, args.rounds, args.concurrency, "b")
    starts = [first_start]
    for _ in range(2):
        with node_with_agent() as (_, _, _, seconds, _):
            starts.append(seconds)
    sh("rm", "-rf", host_local_dir)
    p50, p99 = quantile(ours, 0.50) * 1000, quantile(ours, 0.99) * 1000
    b50, b99 = quantile(base, 0.50) * 1000, quantile(base, 0.99) * 1000
    print(f"{len(ours)} ADDs, {args.concurrency} at a time, including process start (milliseconds)")
    print(f"pylium-cni        : p50 {p50:6.1f}  p99 {p99:6.1f}")
    print(f"bridge+host-local : p50 {b50:6.1f}  p99 {b99:6.1f}   (pylium p50 {p50 / b50:.2f}x)")
    print(f"agent cold start to READY: {', '.join(f'{s:.2f}' for s in starts)} s (median {statistics.median(starts):.2f})")
    ok = p50 <= 150 and p99 <= 400 and statistics.median(starts) <= 15
    print("PASS" if ok else "FAIL", "(targets: p50 <= 150 ms, p99 <= 400 ms, cold start <= 15 s)")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""The load balancer's control plane: 10,000 services x 4 backends from the manifests
directory into the BPF maps (against iptables-restore of the same services as kube-proxy's
rules, nft and legacy, in the same run); one changed service until the datapath has it,
with the 10,000 installed; a maglev table for 100 backends.

    .venv/bin/python bench/lb_control.py [--changes 20]
"""

from __future__ import annotations

import argparse
import ctypes as ct
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from _lab import exec_in, node_with_agent  # noqa: E402
from _services import decoy_vip, decoys, kube_proxy_rules, lb_map, service_docs, write_manifest  # noqa: E402

from pylium.plugins.lb import maglev  # noqa: E402
from pylium.plugins.lb.maps import Lb4Key, pack_key, addr_str  # noqa: E402

SERVICES, BACKENDS = 10_000, 4
TARGETS = {"load": 2.0, "change": 0.050, "maglev": 0.050}


def restore_seconds(netns, backend: str) -> float:
    ns = netns(f"ipt-{backend}")
    rules = kube_proxy_rules(SERVICES - 1, ("10.96.0.10", 80, "10.244.0.2", 8080), backends_each=BACKENDS)
    started = time.monotonic()
    exec_in(ns, f"iptables-{backend}-restore", input=rules)
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--changes", type=int, default=20)
    args = parser.parse_args()
    docs = decoys(SERVICES, BACKENDS)
    with node_with_agent() as (node, client, netns, _, run_dir):
        manifests = run_dir.parent / "manifests"
        manifests.mkdir(exist_ok=True)
        revnat, services = lb_map(node, "lb4_reverse_nat"), lb_map(node, "lb4_services")
        last = Lb4Key.from_buffer_copy(pack_key(decoy_vip(SERVICES - 1), 80, 6, 0, 0))
        chunk = 1000
        staging = run_dir.parent / "staging"
        staging.mkdir()
        for i in range(0, len(docs), 2 * chunk):  # written beforehand, moved in at once
            write_manifest(staging / f"services-{i // (2 * chunk):02d}", docs[i:i + 2 * chunk])
        started = time.monotonic()
        for path in sorted(staging.iterdir()):
            path.rename(manifests / path.name)
        while services.get(last) is None:  # in the last file
            time.sleep(0.002)
        while revnat.count() < SERVICES:  # written after the services map
            time.sleep(0.002)
        load = time.monotonic() - started
        ipt = {backend: restore_seconds(netns, backend) for backend in ("nft", "legacy")}

        backends = lb_map(node, "lb4_backends")
        slot1 = Lb4Key.from_buffer_copy(pack_key("10.96.200.1", 80, 6, 1, 0))
        delays = []
        for n in range(args.changes + 1):
            backend = f"10.99.{n // 250}.{n % 250 + 1}"
            started = time.monotonic()
            write_manifest(manifests / "changed.yaml", service_docs("changed", "10.96.200.1", [backend]))
            while True:
                slot = services.get(slot1)
                found = slot is not None and backends.get(ct.c_uint32(slot.backend_id))
                if found and addr_str(found.address) == backend:
                    break
                time.sleep(0.0005)
            if n:  # the first one adds the service; the others change it
                delays.append(time.monotonic() - started)

    seed = maglev.seed_bytes(maglev.DEFAULT_SEED)
    names = [f"10.0.{i // 250}.{i % 250}:8080" for i in range(100)]
    timings = []
    for _ in range(10):
        started = time.perf_counter()
        maglev.table(names, 16381, seed)
        timings.append(time.perf_counter() - started)
    results = {"load": load, "change": max(delays), "maglev": statistics.median(timings)}
    print(f"{SERVICES:,} services x {BACKENDS} backends, manifests -> maps: {load:.2f} s "
          f"(iptables-nft-restore {ipt['nft']:.2f} s, ratio {ipt['nft'] / load:.1f}x; "
          f"iptables-legacy-restore {ipt['legacy']:.2f} s, ratio {ipt['legacy'] / load:.1f}x) (target <= 2 s)")
    print(f"one changed service -> datapath, {len(delays)} changes with {SERVICES:,} installed: median "
          f"{statistics.median(delays) * 1000:.1f} ms, max {max(delays) * 1000:.1f} ms (target <= 50 ms)")
    print(f"maglev table, 100 backends, M=16381: median {results['maglev'] * 1000:.1f} ms (target <= 50 ms)")
    ok = all(results[k] <= v for k, v in TARGETS.items())
    print("PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()

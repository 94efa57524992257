#!/usr/bin/env python3
"""The agent's resident memory: idle (the baseline), with 100 endpoints, then with 10,000 and
50,000 services x 4 backends from the manifests directory; the cost per service.

    .venv/bin/python bench/agent_memory.py [--pods 100] [--services 10000,50000] [--json]

Targets (issue 20): <= 100 MiB with 100 endpoints and 10,000 services, <= 120 MiB with 50,000."""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))
from _lab import add_pod, node_with_agent  # noqa: E402
from _services import decoys, lb_map, write_manifest  # noqa: E402

from pylium.core.datapath.maps import PinnedMap  # noqa: E402

TARGETS_MIB = {10_000: 100, 50_000: 120}


def rss_mib(pid: int) -> float:
    """VmRSS once it has settled (two readings 1 s apart within 0.2 MiB)."""
    def read() -> float:
        status = Path(f"/proc/{pid}/status").read_text()
        return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))) / 1024

    last = read()
    for _ in range(20):
        time.sleep(1)
        now = read()
        if abs(now - last) < 0.2:
            return now
        last = now
    return last


def load_services(revnat: PinnedMap, manifests: Path, count: int) -> float:
    """Replace the manifests with `count` services x 4 backends; seconds until the datapath has
    them all (read from the maps: a listing through the API would itself cost the agent memory)."""
    for old in manifests.glob("*.json"):
        old.unlink()
    docs = decoys(count, 4)
    chunk = 4000
    started = time.monotonic()
    for i in range(0, len(docs), chunk):
        write_manifest(manifests / f"services-{i // chunk:03d}", docs[i:i + chunk])
    del docs
    gc.collect()
    while revnat.count() != count:
        if time.monotonic() - started > 120:
            raise SystemExit(f"the agent did not program {count} services in 120 s ({revnat.count()} so far)")
        time.sleep(0.5)
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", type=int, default=100)
    parser.add_argument("--services", default="10000,50000", help="service counts, in increasing order")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    counts = [int(n) for n in args.services.split(",")]
    rows = []
    map_max = 1 << (max(counts) * 5).bit_length()  # room for the largest count (kernel memory, not the agent's)
    with node_with_agent("--set", f"bpf.lbMapMax={map_max}") as (node, client, netns, _, run_dir):
        pid = int((run_dir / "pylium-agent.lock").read_text())  # the agent writes its pid there
        revnat = lb_map(node, "lb4_reverse_nat", map_max)
        manifests = run_dir.parent / "manifests"
        manifests.mkdir(exist_ok=True)
        idle = rss_mib(pid)
        rows.append(("idle (baseline)", idle, ""))
        started = time.monotonic()
        for i in range(args.pods):
            add_pod(client, netns(f"p{i}"), {"app": f"app{i % 10}"})
        rows.append((f"{args.pods} endpoints", rss_mib(pid), f"{time.monotonic() - started:.1f} s"))
        for count in counts:
            seconds = load_services(revnat, manifests, count)
            rows.append((f"{args.pods} endpoints, {count:,} services x 4", rss_mib(pid), f"{seconds:.1f} s"))
        revnat.close()
    service_rows = rows[2:]
    per = None
    if len(service_rows) > 1:
        (_, low, _), (_, high, _) = service_rows[0], service_rows[-1]
        per = (high - low) * 1024 / (counts[-1] - counts[0])
    met = {count: rss <= TARGETS_MIB[count] for (_, rss, _), count in zip(service_rows, counts) if count in TARGETS_MIB}
    if args.json:
        print(json.dumps({"rows": [{"state": what, "rss_mib": round(rss, 1), "load": took} for what, rss, took in rows],
                          "per_service_kib": per and round(per, 2), "targets_met": met}))
    else:
        print(f"{'state':44} {'RSS MiB':>8} {'vs idle':>8}  load")
        for what, rss, took in rows:
            print(f"{what:44} {rss:8.1f} {rss / idle:7.2f}x  {took}")
        for (_, rss, _), count in zip(service_rows, counts):
            if count in TARGETS_MIB:
                print(f"{count:,} services: {rss:.1f} MiB (target <= {TARGETS_MIB[count]} MiB)")
        if per is not None:
            print(f"per service (x 4 backends), {counts[0]:,} -> {counts[-1]:,}: {per:.2f} KiB")
        print("PASS" if all(met.values()) else "FAIL")
    sys.exit(0 if all(met.values()) else 1)


if __name__ == "__main__":
    main()

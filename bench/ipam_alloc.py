#!/usr/bin/env python3
"""Durable IPAM allocations and releases per second through the bus, from one client and from
8 concurrent client processes. Baselines in the same run: the same clients calling an echo
method (the bus alone), and raw sqlite commits with synchronous=FULL (durability alone).

    .venv/bin/python bench/ipam_alloc.py [--count 3000]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sqlite3
import sys
import tempfile
import time

import zmq

sys.path.insert(0, os.path.dirname(__file__))
from _agent import bench_agent  # noqa: E402


def client(run_dir: str, method: str, tag: str, count: int, start, results) -> None:
    s = zmq.Context().socket(zmq.DEALER)
    s.connect(f"ipc://{run_dir}/rpc.sock")
    start.wait()
    t0 = time.perf_counter()
    for i in range(count):
        owner = f"{tag}-{i}"
        payload = ({"owner": {"container_id": owner}} if method == "ipam.allocate" else
                   {"container_id": owner} if method == "ipam.release" else {"text": owner})
        s.send_multipart([b"", b"1", method.encode(), json.dumps(payload).encode()])
        _, _, outcome, body = s.recv_multipart()
        if outcome != b"ok":
            raise SystemExit(f"{method} failed: {body!r}")
    results.put(time.perf_counter() - t0)


def rate(run_dir, method: str, clients: int, count: int, tag: str) -> float:
    start, results = mp.Event(), mp.Queue()
    procs = [mp.Process(target=client, args=(run_dir, method, f"{tag}{c}", count, start, results)) for c in range(clients)]
    for p in procs:
        p.start()
    time.sleep(0.3)
    t0 = time.perf_counter()
    start.set()
    for _ in procs:
        results.get()
    elapsed = time.perf_counter() - t0
    for p in procs:
        p.join()
    return clients * count / elapsed


def sqlite_full_commits(count: int) -> float:
    path = os.path.join(tempfile.mkdtemp(dir="/var/tmp"), "bench.db")
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE t (k TEXT PRIMARY KEY)")
    t0 = time.perf_counter()
    for i in range(count):
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO t VALUES (?)", (str(i),))
        db.execute("COMMIT")
    return count / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=3000, help="operations per single client")
    args = parser.parse_args()
    n8 = max(1, args.count // 8)
    state_dir_note = "state dir on /tmp (ext4), synchronous=FULL"
    with bench_agent("--set", "ipam.operator.clusterPoolIPv4PodCIDRList={10.120.0.0/16}",
                     "--set", "ipam.operator.clusterPoolIPv4MaskSize=16") as (_, run_dir):
        echo1 = rate(run_dir, "bench.echo", 1, args.count, "e")
        alloc1 = rate(run_dir, "ipam.allocate", 1, args.count, "one")
        rel1 = rate(run_dir, "ipam.release", 1, args.count, "one")
        echo8 = rate(run_dir, "bench.echo", 8, n8, "e8-")
        alloc8 = rate(run_dir, "ipam.allocate", 8, n8, "eight")
        rel8 = rate(run_dir, "ipam.release", 8, n8, "eight")
    commits = sqlite_full_commits(2000)
    print(f"durable IPAM operations per second ({state_dir_note})")
    print(f"raw sqlite commits (synchronous=FULL), 1 writer : {commits:8,.0f}/s")
    print(f"1 client : echo {echo1:7,.0f}/s  allocate {alloc1:7,.0f}/s ({alloc1 / echo1:.2f}x echo)  "
          f"release {rel1:7,.0f}/s ({rel1 / echo1:.2f}x echo)")
    print(f"8 clients: echo {echo8:7,.0f}/s  allocate {alloc8:7,.0f}/s ({alloc8 / echo8:.2f}x echo)  "
          f"release {rel8:7,.0f}/s ({rel8 / echo8:.2f}x echo)")
    ok = min(alloc1, rel1, alloc8, rel8) >= 1000
    print("PASS" if ok else "FAIL", "(target: >= 1,000/s allocations and releases, 1 and 8 clients)")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()

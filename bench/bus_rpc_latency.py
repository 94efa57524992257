#!/usr/bin/env python3
"""Request/reply round trip over ipc://: an outside client (plain pyzmq DEALER) calls a method
served by a plugin inside the agent, through the broker. Baseline in the same run: a raw
pyzmq DEALER->ROUTER echo over ipc between two processes, no broker, no JSON.

Every process is pinned to one CPU (--cpu, default 0): on this kind of VM a cross-CPU wake-up
costs ~125 us and would measure the hypervisor, not the bus (reference/perf-anchors.md).

    .venv/bin/python bench/bus_rpc_latency.py [--requests 20000] [--cpu 0 | --no-pin]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time

import zmq

sys.path.insert(0, os.path.dirname(__file__))
from _agent import bench_agent  # noqa: E402


def percentiles(samples: list[float]) -> dict[str, float]:
    q = statistics.quantiles(samples, n=100)
    return {"p50": q[49] * 1e6, "p90": q[89] * 1e6, "p99": q[98] * 1e6}


def round_trips(endpoint: str, n: int, method: bytes | None) -> list[float]:
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.connect(endpoint)
    payload = json.dumps({"text": "ping", "n": 1}).encode()
    out = []
    for i in range(n + 500):  # the first 500 warm up
        corr = i.to_bytes(8, "big")
        t0 = time.perf_counter()
        s.send_multipart([b"", corr, method, payload] if method else [b"", corr, payload])
        reply = s.recv_multipart()
        dt = time.perf_counter() - t0
        if method and reply[2] != b"ok":
            raise SystemExit(f"request failed: {reply}")
        if i >= 500:
            out.append(dt)
    s.close(0)
    return out


def raw_echo_server(endpoint: str, ready) -> None:
    s = zmq.Context().socket(zmq.ROUTER)
    s.bind(endpoint)
    ready.set()
    while True:
        s.send_multipart(s.recv_multipart())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--cpu", type=int, default=0, help="CPU to pin every process to")
    parser.add_argument("--no-pin", action="store_true", help="let the scheduler place processes")
    args = parser.parse_args()
    if not args.no_pin:
        os.sched_setaffinity(0, {args.cpu})  # inherited by the echo server, the agent and the client
    with tempfile.TemporaryDirectory(prefix="pylium-bench-") as where:
        endpoint = f"ipc://{where}/echo.sock"
        ready = mp.Event()
        server = mp.Process(target=raw_echo_server, args=(endpoint, ready), daemon=True)
        server.start()
        ready.wait()
        raw = percentiles(round_trips(endpoint, args.requests, None))
        server.terminate()
        server.join()
    with bench_agent() as (client, run_dir):
        ours = percentiles(round_trips(f"ipc://{run_dir}/rpc.sock", args.requests, b"bench.echo"))
    placement = "unpinned" if args.no_pin else f"all pinned to CPU {args.cpu}"
    print(f"{args.requests} sequential requests, microseconds ({placement})")
    print(f"raw DEALER->ROUTER echo over ipc   : p50 {raw['p50']:7.1f}  p90 {raw['p90']:7.1f}  p99 {raw['p99']:7.1f}")
    print(f"pylium broker -> plugin -> broker  : p50 {ours['p50']:7.1f}  p90 {ours['p90']:7.1f}  p99 {ours['p99']:7.1f}"
          f"   (p50 {ours['p50'] / raw['p50']:.1f}x raw)")
    ok = ours["p50"] <= 200 and ours["p99"] <= 1000
    print("PASS" if ok else "FAIL", "(target: p50 <= 200 us, p99 <= 1 ms)")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()

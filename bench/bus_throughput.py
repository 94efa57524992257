#!/usr/bin/env python3
"""Bus throughput: events from an in-process publisher through the proxy to one outside ipc://
subscriber that decodes them (msgspec), against raw pyzmq PUB->SUB with the same frames (no
envelope, no proxy, no decoding) measured in the same run.

    .venv/bin/python bench/bus_throughput.py [--seconds 10] [--rate 100000]
"""

from __future__ import annotations

import argparse
import msgspec
import multiprocessing as mp
import os
import sys
import tempfile
import time

import zmq

sys.path.insert(0, os.path.dirname(__file__))
from _agent import bench_agent  # noqa: E402


def subscriber(endpoint: str, ready, results, decode: bool, prefix: bytes) -> None:
    """Counts (and decodes) messages until 'done' or 3 s of silence; reports rate and loss."""
    s = zmq.Context().socket(zmq.SUB)
    s.setsockopt(zmq.RCVHWM, 1_000_000)
    s.connect(endpoint)
    s.subscribe(prefix)
    ready.set()
    n = lost = 0
    last_seq = None
    first = last = None
    decoder = msgspec.json.Decoder()
    recv = s.recv
    while s.poll(3000):
        topic, header, payload = recv(), recv(), recv()  # the envelope is always three frames
        if topic.endswith(b"done"):
            break
        now = time.perf_counter()
        first = first or now
        last = now
        n += 1
        if decode:
            h = decoder.decode(header)
            decoder.decode(payload)
            if last_seq is not None and h["seq"] != last_seq + 1:
                lost += h["seq"] - last_seq - 1
            last_seq = h["seq"]
    results.put({"received": n, "lost": lost, "seconds": (last - first) if n > 1 else 0})


def raw_publisher(endpoint: str, frames: list[bytes], seconds: float) -> None:
    p = zmq.Context().socket(zmq.PUB)
    p.setsockopt(zmq.SNDHWM, 1_000_000)
    p.bind(endpoint)
    time.sleep(0.5)
    end = time.monotonic() + seconds
    topic, header, payload = frames
    send, more = p.send, zmq.SNDMORE
    while time.monotonic() < end:
        for _ in range(1000):
            send(topic, more)
            send(header, more)
            send(payload)
    time.sleep(0.2)
    p.send_multipart([b"raw.done", b"", b""])
    time.sleep(0.5)


def run_subscriber(endpoint, decode, prefix):
    ready, results = mp.Event(), mp.Queue()
    proc = mp.Process(target=subscriber, args=(endpoint, ready, results, decode, prefix))
    proc.start()
    ready.wait()
    time.sleep(0.5)
    return proc, results


def raw_baseline(frames: list[bytes], seconds: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="pylium-bench-") as where:
        endpoint = f"ipc://{where}/raw.sock"
        pub = mp.Process(target=raw_publisher, args=(endpoint, frames, seconds))
        pub.start()
        time.sleep(0.2)
        sub, results = run_subscriber(endpoint, False, b"")
        r = results.get()
        pub.join()
        sub.join()
    return r


def pylium_run(client, run_dir, rate: int, seconds: float) -> dict:
    sub, results = run_subscriber(f"ipc://{run_dir}/bus.sock", True, b"bench.")
    client.call("POST", "/v1/benchpub/run", {"rate": rate, "seconds": seconds})
    r = results.get()
    sub.join()
    status = client.get("/v1/benchpub/status")
    r.update(sent=status["sent"], dropped_at_publisher=status["dropped"], publish_seconds=status["elapsed"])
    return r


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rate", type=int, default=100_000)
    args = parser.parse_args()
    with bench_agent() as (client, run_dir):
        # capture one real message to size the raw baseline identically
        s = zmq.Context.instance().socket(zmq.SUB)
        s.connect(f"ipc://{run_dir}/bus.sock")
        s.subscribe(b"bench.flow")
        time.sleep(0.3)
        client.call("POST", "/v1/benchpub/run", {"rate": 1000, "seconds": 0.05})
        frames = s.recv_multipart()
        s.close(0)
        time.sleep(0.5)
        sizes = [len(f) for f in frames]
        raw = raw_baseline(frames, min(args.seconds, 5))
        raw_rate = raw["received"] / raw["seconds"]
        peak = pylium_run(client, run_dir, 0, min(args.seconds, 5))
        peak_rate = peak["received"] / peak["seconds"]
        sustained = pylium_run(client, run_dir, args.rate, args.seconds)
    got_rate = sustained["received"] / sustained["seconds"] if sustained["seconds"] else 0
    lost = sustained["lost"] + sustained["sent"] - sustained["received"]
    print(f"frame sizes (topic, header, payload): {sizes} bytes")
    print(f"raw pyzmq PUB->SUB, no envelope/proxy/decoding : {raw_rate:12,.0f} msg/s")
    print(f"pylium peak, proxy + outside decoding subscriber: {peak_rate:12,.0f} ev/s "
          f"(lost {peak['lost']}, ratio to raw {peak_rate / raw_rate:.2f}x)")
    print(f"pylium sustained: published {sustained['sent']:,} at {args.rate:,}/s in {sustained['publish_seconds']:.2f}s; "
          f"subscriber received {sustained['received']:,} over {sustained['seconds']:.2f}s ({got_rate:,.0f} ev/s, "
          f"ratio to raw {got_rate / raw_rate:.2f}x), lost {lost}, dropped at publisher "
          f"{sustained['dropped_at_publisher']}")
    # every event of the schedule arrived, and the subscriber kept pace with it
    ok = (lost == 0 and sustained["sent"] == int(args.rate * args.seconds)
          and sustained["seconds"] <= args.seconds * 1.01)
    print("PASS" if ok else "FAIL", f"(target: >= {args.rate:,}/s for {args.seconds:g}s with no loss)")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()

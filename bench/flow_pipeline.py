#!/usr/bin/env python3
"""Flow pipeline: datapath events from the kernel ring into decoded flows, the observer ring
and the bus, with zero loss.

Pod a sends paced 1-byte UDP datagrams to pod b with bpf.monitorAggregation=none: each one is
two events (from-endpoint, to-endpoint). A separate process subscribes to the bus topic
`batch.flow` (flows many to a message; `--topic flow` for one message per flow) and counts the
flows that arrive. Loss is read from the agent (kernel ring and observer queue) and by
comparing what was sent, decoded and delivered on the bus.

  1. the target: 100,000 events/s for 10 s, no event lost anywhere (issue 20; it was 50,000);
  2. the rate is raised until events are lost: the highest loss-free rate is reported;
  3. baseline, same run: the agent with hubble.enabled=false and a bare consumer in this
     process that only drains the pinned ring (libbpf) and counts; the same ramp. The ratio
     is pylium's loss-free rate over the bare consumer's.

    .venv/bin/python bench/flow_pipeline.py [--seconds 10] [--rate 100000] [--topic batch.flow]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import select
import subprocess
import sys
import threading
import time
from pathlib import Path

import msgspec

sys.path.insert(0, os.path.dirname(__file__))
from _lab import add_pod, exec_in, node_with_agent, rrprobe  # noqa: E402

RAMP = (50_000, 55_000, 60_000, 65_000, 70_000, 75_000, 80_000, 85_000, 90_000, 95_000, 100_000, 125_000, 150_000,
        175_000, 200_000, 250_000, 300_000, 400_000, 500_000)


class Batch(msgspec.Struct):
    """A batch.flow payload, its flows parsed only as far as counting them."""

    flows: list[msgspec.Raw]


def bus_counter(endpoint: str, topic: str, count, ready) -> None:
    import zmq

    batch = msgspec.json.Decoder(Batch).decode
    s = zmq.Context().socket(zmq.SUB)
    s.setsockopt(zmq.RCVHWM, 2_000_000)
    s.setsockopt(zmq.RCVTIMEO, 50)  # idle: publish the count (a poll per message cost 0.16 cores)
    s.connect(endpoint)
    s.subscribe(topic.encode())
    ready.set()
    n = 0
    recv = s.recv_multipart
    while True:
        try:
            frames = recv()
        except zmq.Again:
            count.value = n
            continue
        if frames[0] == b"batch.flow":
            n += len(batch(frames[2]).flows)
            count.value = n
        elif frames[0] == b"flow":
            n += 1
            if not n & 255:
                count.value = n


class BareReader:
    """The baseline: drain the agent's pinned events ring and count, nothing else."""

    def __init__(self, pin: Path):
        from pylium.core.datapath import libbpf
        from pylium.core.datapath.ringbuf import RingReader

        self.fd = libbpf.obj_get(str(pin))
        self.reader = RingReader(self.fd)
        self.count = 0
        self.stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        while not self.stop:
            poller.poll(100)
            self.count += len(self.reader.drain())

    def close(self) -> None:
        self.stop = True
        self.thread.join()
        self.reader.close()
        os.close(self.fd)


def kernel_lost(pin_dir: Path) -> int:
    import ctypes as ct

    from pylium.core.datapath.maps import PinnedMap
    from pylium.core.datapath.structs import CORE_MAPS

    m = PinnedMap.open(next(s for s in CORE_MAPS if s.name == "events_lost"), pin_dir)
    try:
        return sum(m.get(ct.c_uint32(0)))
    finally:
        m.close()


def run(client, probe, a, b_ip, rate: int, seconds: float, seen, lost, delivered=lambda: 0) -> dict:
    """Send `rate` events a second for `seconds`; count what was processed, lost and delivered."""
    seen0, lost0, delivered0 = seen(), lost(), delivered()
    out = exec_in(a, probe, "udp", b_ip, "9", str(seconds), str(rate // 2), timeout=seconds + 60)
    sent = int(float(out.stdout.strip()) * seconds) * 2
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # let the pipeline drain
        before = seen(), delivered()
        time.sleep(0.3)
        if (seen(), delivered()) == before:
            break
    return {"offered": sent, "seen": seen() - seen0, "lost": lost() - lost0, "bus": delivered() - delivered0,
            "rate": rate}


def ramp(client, probe, a, b_ip, seen, lost, seconds: float, delivered=None) -> tuple[int, list]:
    """Raise the rate until an event is lost (or, with `delivered`, not seen by the subscriber)."""
    best, rows = 0, []
    for rate in RAMP:
        r = run(client, probe, a, b_ip, rate, seconds, seen, lost, delivered or (lambda: 0))
        rows.append(r)
        if r["lost"] or r["seen"] < r["offered"] or (delivered and r["bus"] < r["offered"]):
            break
        best = rate
    return best, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rate", type=int, default=100_000)
    parser.add_argument("--ramp-seconds", type=float, default=5)
    parser.add_argument("--topic", default="batch.flow", choices=("batch.flow", "flow"),
                        help="what the outside subscriber takes: flows many to a message, or one each")
    args = parser.parse_args()
    probe = rrprobe()
    results = {}
    for mode in ("pylium", "bare"):
        extra = ["--set", "bpf.monitorAggregation=none"]
        if mode == "bare":
            extra += ["--set", "hubble.enabled=false"]
        with node_with_agent(*extra) as (node, client, netns, _, run_dir):
            tag = node[2:8]
            pin_dir = Path(f"/sys/fs/bpf/pylium-bench-{tag}/bench-{tag}/core")
            a, b = netns("a"), netns("b")
            add_pod(client, a)
            b_ip = add_pod(client, b)
            sink = subprocess.Popen(["ip", "netns", "exec", b, sys.executable, "-c",
                                     f"import socket,time; s=socket.socket(2,2); s.bind(('{b_ip}',9)); time.sleep(3600)"])
            try:
                if mode == "pylium":
                    count, ready = mp.Value("q", 0), mp.Event()
                    sub = mp.Process(target=bus_counter, daemon=True,
                                     args=(f"ipc://{run_dir}/bus.sock", args.topic, count, ready))
                    sub.start()
                    ready.wait(10)
                    time.sleep(0.5)
                    obs = lambda: client.get("/v1/observer")  # noqa: E731
                    seen = lambda: obs()["seen_flows"]  # noqa: E731
                    lost = lambda: sum(obs()["lost_events"].values())  # noqa: E731
                    delivered = lambda: count.value  # noqa: E731
                    target = run(client, probe, a, b_ip, args.rate, args.seconds, seen, lost, delivered)
                    best, rows = ramp(client, probe, a, b_ip, seen, lost, args.ramp_seconds, delivered)
                    sub.terminate()
                    results[mode] = (target, best, rows)
                else:
                    bare = BareReader(pin_dir / "events_v2")
                    best, rows = ramp(client, probe, a, b_ip, lambda: bare.count, lambda: kernel_lost(pin_dir),
                                      args.ramp_seconds)
                    bare.close()
                    results[mode] = (None, best, rows)
            finally:
                sink.kill()
    target, best, rows = results["pylium"]
    _, bare_best, bare_rows = results["bare"]
    ok = target["lost"] == 0 and target["seen"] >= target["offered"] and target["bus"] >= target["offered"]
    print(f"target: {args.rate:,} events/s for {args.seconds:g} s: offered {target['offered']:,}, decoded "
          f"{target['seen']:,}, on the bus {target['bus']:,}, lost {target['lost']:,} -> {'PASS' if ok else 'FAIL'}")
    for name, rs in (("pylium", rows), ("bare ring reader", bare_rows)):
        for r in rs:
            print(f"  {name:17} {r['rate']:>8,}/s for {args.ramp_seconds:g} s: offered {r['offered']:>9,} "
                  f"processed {r['seen']:>9,} lost {r['lost']:>8,}"
                  + (f" on the bus {r['bus']:>9,}" if name == "pylium" else ""))
    at_least = lambda rate: f">= {rate:,}/s (the top of the ramp)" if rate == RAMP[-1] else f"{rate:,}/s"  # noqa
    print(f"the subscriber took topic {args.topic}")
    print(f"highest loss-free rate: pylium {at_least(best)}, bare reader {at_least(bare_best)}, "
          f"ratio {best / bare_best if bare_best else 0:.2f}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()

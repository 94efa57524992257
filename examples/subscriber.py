#!/usr/bin/env python3
"""Follow a pylium agent's event bus with nothing but pyzmq and json (no pylium import).

    python3 examples/subscriber.py [--run-dir /var/run/pylium] [TOPIC-PREFIX ...]

Prints one line per event, keeps the current state of every keyed object (state events are
applied only when their revision is newer), reports when a state family is complete
("synced"), and detects lost messages from per-publisher, per-topic sequence gaps.
"""

import argparse
import json
import sys

import zmq


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", default="/var/run/pylium")
    parser.add_argument("--count", type=int, default=0, help="stop after this many events")
    parser.add_argument("prefixes", nargs="*", default=[""])
    args = parser.parse_args()

    sock = zmq.Context().socket(zmq.SUB)
    sock.connect(f"ipc://{args.run_dir}/bus.sock")
    for prefix in args.prefixes:
        sock.subscribe(prefix.encode())

    state = {}  # (topic family, key) -> (revision, payload)
    last_seq = {}  # (node, source, topic) -> last sequence number seen
    seen = 0
    while not args.count or seen < args.count:
        topic_frame, header_frame, payload_frame = sock.recv_multipart()
        topic = topic_frame.decode()
        header = json.loads(header_frame)
        payload = json.loads(payload_frame)
        seen += 1

        if not header.get("replay"):
            stream = (header["node"], header["source"], topic)
            previous = last_seq.get(stream)
            if previous is not None and header["seq"] > previous + 1:
                print(f"!! lost {header['seq'] - previous - 1} {topic} events from {header['source']}", file=sys.stderr)
            last_seq[stream] = header["seq"]

        if topic.endswith(".synced"):
            print(f"{topic}: {payload['count']} objects replayed, now live")
        elif "key" in header:
            family = topic.rsplit(".", 1)[0] if topic.endswith((".created", ".updated", ".deleted")) else topic
            held = state.get((family, header["key"]))
            if held is None or header["rev"] > held[0]:
                state[(family, header["key"])] = (header["rev"], payload)
                tag = "replay" if header.get("replay") else "update"
                print(f"{topic} [{tag}] {header['key']} rev {header['rev']}: {json.dumps(payload)}")
        else:
            print(f"{topic} from {header['source']}@{header['node']} #{header['seq']}: {json.dumps(payload)}")
        sys.stdout.flush()


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Datapath cost of policy: pod-to-pod TCP request/response to a server whose ingress policy
has 16,384 entries (one of them allows the client), against a server on the same node that
no policy selects. Rounds alternate; client and server pinned to CPU 0 as in datapath_rr.py.

TCP_RR (one connection: after its first packet the connection table answers) and TCP_CRR (a
policy lookup for every connection). Target: RR >= 0.93x of no policy.

    .venv/bin/python bench/policy_rr.py [--rounds 7] [--seconds 3] [--entries 16384]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from _lab import add_pod, exec_in, node_with_agent, rrprobe  # noqa: E402
from datapath_rr import alternate, report  # noqa: E402


def add(client, netns: str, app: str) -> str:
    return add_pod(client, netns, {"k8s:app": app, "k8s:io.kubernetes.pod.namespace": "default"})


def big_policy(entries: int) -> dict:
    """Allows the client on 8080 and other single ports (odd ones: no merging), `entries` with
    the entry that lets the node itself in (policy.allowLocalhost)."""
    ports = [8080] + [10001 + 2 * i for i in range(entries - 2)]
    return {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
            "metadata": {"name": "big", "namespace": "default"},
            "spec": {"endpointSelector": {"matchLabels": {"app": "server-policy"}},
                     "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "client"}}],
                                  "toPorts": [{"ports": [{"port": str(p), "protocol": "TCP"} for p in ports[i:i + 40]]}
                                              for i in range(0, len(ports), 40)]}]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=3)
    parser.add_argument("--entries", type=int, default=16384)
    args = parser.parse_args()
    probe = rrprobe()
    with node_with_agent() as (_, client, netns, _, _):
        pairs, servers = {}, []
        for name, app in (("policy", "server-policy"), ("no policy", "server-open")):
            c, s = netns(f"c{len(pairs)}"), netns(f"s{len(pairs)}")
            add(client, c, "client")
            s_ip = add(client, s, app)
            exec_in(c, "sysctl", "-w", "net.ipv4.tcp_tw_reuse=1", "net.ipv4.ip_local_port_range=1024 65000")
            servers.append(subprocess.Popen(["ip", "netns", "exec", s, "taskset", "-c", "0", probe, "srv", s_ip, "8080",
                                             str(args.rounds * args.seconds * 4 + 120)]))
            pairs[name] = (c, s_ip)
        revision = client.call("POST", "/v1/policy", {"documents": [big_policy(args.entries)]})["revision"]
        client.call("GET", f"/v1/policy/wait?revision={revision}")
        written = max(e["entries"] for e in client.get("/v1/policy/endpoints"))
        if written != args.entries:
            raise SystemExit(f"the server's policy has {written} entries, not {args.entries}")
        time.sleep(0.5)
        try:
            results = alternate(probe, pairs["policy"], pairs["no policy"], args.rounds, args.seconds)
        finally:
            for proc in servers:
                proc.kill()
    print(f"server policy entries: {written}; pinned to CPU 0, {args.rounds} alternating rounds "
          f"of {args.seconds:g}s, medians")
    report(results, f"{args.entries}-entry policy", "no policy", 0.93)


if __name__ == "__main__":
    main()

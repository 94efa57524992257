#!/usr/bin/env python3
"""Policy at scale: 1,000 policies over 500 identities and 200 endpoints.

  1. import: `POST /v1/policy` of 1,000 CiliumNetworkPolicies until every endpoint's maps are
     written (the call returns after regeneration; `policy wait` confirms). Target <= 2 s.
  2. a new endpoint under that policy set: CNI ADD until it returns (its identity and policy
     are written before it can send), half of them with a new label set (a new identity).
     Target <= 600 ms. Baseline, same run: ADDs before any policy existed.
  3. a 16,384-entry policy map written with one batch update, against one update per entry
     (the baseline, same run, same entries). Target <= 100 ms.

Endpoints carry `app=a<i>` and `group=g<i % 50>`; 300 more identities (pods of other nodes)
are allocated through the cluster store. Policy i selects app=a<i % 200> and allows ingress
from group g<i % 50> on TCP 8000-8010 and from group g<(i+1) % 50> on UDP 53.

    .venv/bin/python bench/policy_scale.py [--endpoints 200] [--policies 1000] [--identities 500]
"""

from __future__ import annotations

import argparse
import ctypes as ct
import os
import statistics
import sys
import time

import anyio

sys.path.insert(0, os.path.dirname(__file__))
from _lab import add_pod, node_with_agent  # noqa: E402


def policy(i: int, endpoints: int) -> dict:
    return {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
            "metadata": {"name": f"p{i}", "namespace": "default"},
            "spec": {"endpointSelector": {"matchLabels": {"app": f"a{i % endpoints}"}},
                     "ingress": [
                         {"fromEndpoints": [{"matchLabels": {"group": f"g{i % 50}"}}],
                          "toPorts": [{"ports": [{"port": "8000", "endPort": 8010, "protocol": "TCP"}]}]},
                         {"fromEndpoints": [{"matchLabels": {"group": f"g{(i + 1) % 50}"}}],
                          "toPorts": [{"ports": [{"port": "53", "protocol": "UDP"}]}]}]}}


def add(client, netns, i: int) -> float:
    started = time.perf_counter()
    add_pod(client, netns, {"k8s:app": f"a{i}", "k8s:group": f"g{i % 50}", "k8s:io.kubernetes.pod.namespace": "default"})
    return time.perf_counter() - started


async def remote_identities(store_path, count: int) -> None:
    """Pods of other nodes: their identities allocated through the cluster store, as another
    node's agent would."""
    from pylium.core.state.store import LocalStore
    from pylium.plugins.policy.identity import IdentityAllocator, LabelFilter

    store = LocalStore(store_path)
    allocator = IdentityAllocator(store, LabelFilter(), "10.99.0.1")  # another node's address
    for i in range(count):
        await allocator.allocate({"k8s:app": f"remote{i}", "k8s:group": f"g{i % 50}",
                                  "k8s:io.kubernetes.pod.namespace": "default"})
    await store.close()


def batch_write() -> tuple[float, float]:
    """Seconds to write 16,384 policy entries: one batch update, and one update each."""
    from pylium.core.datapath import libbpf
    from pylium.core.datapath.maps import PinnedMap
    from pylium.plugins.policy import maps
    from pylium.plugins.policy.resolve import Entry, Key

    entries = {Key(0, 256 + i // 64, 6, 1024 + i % 64 * 2, 96): Entry(match=2, rule_ids=[7]) for i in range(16384)}
    results = []
    for one_by_one in (False, True):  # a fresh, unpinned map each time
        fd = libbpf.map_create(libbpf.MAP_LPM_TRIE, "bench", ct.sizeof(maps.PolicyKey), ct.sizeof(maps.PolicyEntry),
                               maps.RULES_MAX_ENTRIES, libbpf.F_NO_PREALLOC)
        m = PinnedMap(maps.POLICY_RULES, "", fd)
        started = time.perf_counter()
        if one_by_one:
            for key, entry in entries.items():
                m.put(key.bpf(1), entry.bpf())
        else:  # as the plugin writes them
            m.put_many(b"".join(k.packed(1) for k in entries), b"".join(e.packed() for e in entries.values()))
        results.append(time.perf_counter() - started)
        os.close(fd)
    return results[0], results[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--endpoints", type=int, default=200)
    parser.add_argument("--policies", type=int, default=1000)
    parser.add_argument("--identities", type=int, default=500)
    args = parser.parse_args()
    # the local store tells its own process of changes only: the other node's identities are
    # in it before the agent starts, as after a restart
    seed = lambda state: anyio.run(remote_identities, state / "store" / "local.db",  # noqa: E731
                                   args.identities - args.endpoints)
    with node_with_agent(prepare=seed) as (_, client, netns, _, run_dir):
        baseline = [add(client, netns(f"e{i}"), i) for i in range(args.endpoints)]
        deadline = time.monotonic() + 30
        while len(known := [i for i in client.get("/v1/identity") if 256 <= i["id"] < 1 << 24]) < args.identities:
            if time.monotonic() > deadline:
                raise SystemExit(f"the agent knows {len(known)} identities, not {args.identities}")
            time.sleep(0.2)
        docs = [policy(i, args.endpoints) for i in range(args.policies)]
        started = time.perf_counter()
        revision = client.call("POST", "/v1/policy", {"documents": docs, "origin": "bench"})["revision"]
        client.call("GET", f"/v1/policy/wait?revision={revision}")
        imported = time.perf_counter() - started
        entries = sum(e["entries"] for e in client.get("/v1/policy/endpoints"))
        # half with the labels of existing pods (a deployment scaling up), half with new ones (a new
        # identity: the other endpoints' policies follow in the background)
        under_policy = [add(client, netns(f"n{i}"), i if i % 2 else args.endpoints + i) for i in range(10)]
    batch, single = batch_write()
    print(f"{args.policies} policies, {len(known)} identities, {args.endpoints} endpoints, {entries} map entries")
    print(f"import to maps written: {imported * 1000:8.0f} ms  (target <= 2000 ms: "
          f"{'PASS' if imported <= 2 else 'FAIL'})")
    p50, base50 = statistics.median(under_policy), statistics.median(baseline)
    print(f"CNI ADD under the policy set: p50 {p50 * 1000:.0f} ms, max {max(under_policy) * 1000:.0f} ms; before any "
          f"policy p50 {base50 * 1000:.0f} ms; ratio {p50 / base50:.2f}  (target max <= 600 ms: "
          f"{'PASS' if max(under_policy) <= 0.6 else 'FAIL'})")
    print(f"16,384 entries: batch {batch * 1000:.1f} ms, one update each {single * 1000:.1f} ms, ratio "
          f"{batch / single:.2f}  (target <= 100 ms: {'PASS' if batch <= 0.1 else 'FAIL'})")
    ok = imported <= 2 and max(under_policy) <= 0.6 and batch <= 0.1
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()

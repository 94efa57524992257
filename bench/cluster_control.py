#!/usr/bin/env python3
"""The multi-node control plane on a real etcd.

1. Identity allocation: 3 processes (as 3 nodes, each its own etcd connection) allocate the
   same 1,000 distinct label sets at once; all numbers distinct, every process the same
   numbers, the time until all are done. Baseline in the same run: 1,000 plain etcd puts from
   one process (what the store costs without transactions).
2. A new pod on node A enforceable by policy on node B: from its CNI ADD returning to its
   first allowed connection to a server on B whose policy admits only its labels.
3. Node join and leave seen by every peer: from an agent being ready (join) or killed
   (leave, with kvstore.leaseTTL 5s) to every other node's `node list` showing it.

    .venv/bin/python bench/cluster_control.py [--identities 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import anyio

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))

from pylium.testing.cluster import ClusterLab  # noqa: E402
from pylium.testing.etcd import Etcd  # noqa: E402

CONNECT = textwrap.dedent("""
    import socket, sys, time
    ip, deadline = sys.argv[1], time.monotonic() + 10
    while time.monotonic() < deadline:
        s = socket.socket(); s.settimeout(0.05)
        try:
            s.connect((ip, 8080)); print("ok"); break
        except OSError:
            time.sleep(0.005)
        finally:
            s.close()
""")


async def allocate(endpoint: str, node: int, count: int, start_at: float) -> dict:
    from pylium.core.state.etcd import EtcdStore
    from pylium.plugins.policy.identity import IdentityAllocator, LabelFilter

    store = EtcdStore([endpoint], 60)
    await store.connect(time.monotonic() + 10)
    allocator = IdentityAllocator(store, LabelFilter(), f"10.0.0.{node + 1}")
    numbers: dict[str, int] = {}
    async with anyio.create_task_group() as tg:
        tg.start_soon(allocator.run)
        await allocator.mirror.synced.wait()
        await anyio.sleep(max(0.0, start_at - time.time()))
        started = time.monotonic()
        limiter = anyio.CapacityLimiter(64)  # requests in flight per node

        async def one(i: int) -> None:
            async with limiter:
                numbers[f"set{i}"] = (await allocator.allocate({"k8s:app": f"a{i}", "k8s:tier": f"t{i % 7}"})).id

        async with anyio.create_task_group() as inner:
            for i in range(count):
                inner.start_soon(one, i)
        elapsed = time.monotonic() - started
        tg.cancel_scope.cancel()
    await store.close()
    return {"numbers": numbers, "seconds": elapsed}


async def raw_puts(endpoint: str, count: int) -> float:
    from pylium.core.state.etcd import EtcdStore

    store = EtcdStore([endpoint], 60)
    await store.connect(time.monotonic() + 10)
    started = time.monotonic()
    limiter = anyio.CapacityLimiter(64)

    async def one(i: int) -> None:
        async with limiter:
            await store.put(f"bench/raw/{i}", {"n": i})

    async with anyio.create_task_group() as tg:
        for i in range(count):
            tg.start_soon(one, i)
    elapsed = time.monotonic() - started
    await store.close()
    return elapsed


def identities(count: int) -> bool:
    etcd = Etcd().start()
    try:
        start_at = time.time() + 2
        workers = [subprocess.Popen([sys.executable, __file__, "--worker", etcd.endpoint, str(n), str(count),
                                     str(start_at)], stdout=subprocess.PIPE, text=True) for n in range(3)]
        results = [json.loads(w.communicate(timeout=120)[0]) for w in workers]
        raw = anyio.run(raw_puts, etcd.endpoint, count)
    finally:
        etcd.close()
    same = all(r["numbers"] == results[0]["numbers"] for r in results)
    distinct = len(set(results[0]["numbers"].values())) == count
    slowest = max(r["seconds"] for r in results)
    ok = same and distinct and slowest <= 5
    print(f"identities: {count} label sets from 3 nodes at once: {slowest:.2f} s (target <= 5 s), "
          f"distinct {distinct}, the same on every node {same}; {count} plain etcd puts {raw:.2f} s "
          f"(ratio {slowest / raw:.1f}): {'PASS' if ok else 'FAIL'}")
    return ok


def cluster() -> bool:
    from test_cluster import FRONT_BACK  # the seed's frontend/backend policy

    workdir = Path(tempfile.mkdtemp(prefix="pylium-bench-"))
    lab = ClusterLab(workdir, 3, lease_ttl="5s")
    server = None
    try:
        lab.manifests.joinpath("app.yaml").write_text(FRONT_BACK)
        for node in lab.nodes[:2]:
            node.start_agent(wait=False)
        for node in lab.nodes[:2]:
            node.agent.wait_ready(120)
        a, b, c = lab.nodes
        back = b.pod("backend", k8s_namespace="default", k8s_pod_name="backend")
        server = subprocess.Popen(["ip", "netns", "exec", back.netns, sys.executable, "-c",
                                   "import socket; s = socket.socket(); s.bind(('0.0.0.0', 8080)); s.listen(64)\n"
                                   "while True: s.accept()[0].close()"])
        time.sleep(0.3)
        delays = []
        for i in range(5):
            name = f"frontend{i}"
            lab.manifests.joinpath(f"{name}.yaml").write_text(FRONT_BACK.split("---")[0].replace(
                "name: frontend", f"name: {name}"))
            time.sleep(0.5)  # the Pod's labels reach the agent
            front = a.pod(name, k8s_namespace="default", k8s_pod_name=name)
            added = time.monotonic()
            out = lab.exec(front.netns, sys.executable, "-c", CONNECT, back.ip).stdout
            delays.append(time.monotonic() - added if "ok" in out else float("inf"))
        enforce_ok = max(delays) <= 1
        print(f"new pod on A enforceable on B after its ADD: median {sorted(delays)[2] * 1e3:.0f} ms, "
              f"max {max(delays) * 1e3:.0f} ms over 5 pods (target <= 1000 ms): {'PASS' if enforce_ok else 'FAIL'}")

        joined = c.start_agent()
        ready = time.monotonic()
        for node in (a, b):
            lab.wait_nodes(node, {n.name for n in lab.nodes}, timeout=10)
        join = time.monotonic() - ready
        joined.stop(signal.SIGKILL)
        killed = time.monotonic()
        for node in (a, b):
            lab.wait_nodes(node, {a.name, b.name}, timeout=20)
        leave = time.monotonic() - killed
        nodes_ok = join <= 2 and leave <= 5 + 2
        print(f"node join seen by every peer {join:.2f} s (target <= 2 s); leave {leave:.2f} s with a 5 s lease "
              f"(target <= 7 s): {'PASS' if nodes_ok else 'FAIL'}")
        return enforce_ok and nodes_ok
    finally:
        if server is not None:
            server.kill()
        lab.close()
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    if sys.argv[1:2] == ["--worker"]:
        endpoint, node, count, start_at = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
        print(json.dumps(anyio.run(allocate, endpoint, node, count, start_at)))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--identities", type=int, default=1000)
    args = parser.parse_args()
    ok = identities(args.identities)
    ok &= cluster()
    print("PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()

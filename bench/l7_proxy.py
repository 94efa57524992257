#!/usr/bin/env python3
"""Cost of the L7 proxies: the same client against the same server, once through pylium's
proxy (a policy with L7 rules on the server, or on the client's DNS) and once direct (a
server no policy selects), on one node, in the same run.

HTTP: keep-alive GETs from 1 and 32 concurrent connections; requests/s and p50/p99 latency,
and the latency the proxy adds (target: p99 added <= 2 ms at 1 connection). DNS: A queries
over UDP from 1 and 32 concurrent clients; queries/s and p50/p99 (Cilium's DNS proxy measured
p50 2.9 ms and p99 117 ms under load).

    .venv/bin/python bench/l7_proxy.py [--seconds 5] [--only http|dns]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
import time

sys.path.insert(0, os.path.dirname(__file__))
from _lab import add_pod, exec_in, node_with_agent  # noqa: E402

NS = {"k8s:io.kubernetes.pod.namespace": "default"}

# A lean HTTP/1.1 keep-alive server (asyncio): the same for both paths, so the difference is the proxy.
HTTP_SERVER = textwrap.dedent("""
    import asyncio, sys
    BODY = b"HTTP/1.1 200 OK\\r\\ncontent-length: 2\\r\\n\\r\\nok"
    async def serve(reader, writer):
        try:
            while True:
                head = await reader.readuntil(b"\\r\\n\\r\\n")
                writer.write(BODY)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
    async def main():
        server = await asyncio.start_server(serve, sys.argv[1], 80)
        print("ready", flush=True)
        await server.serve_forever()
    asyncio.run(main())
""")
# A lean DNS responder: every A query gets one answer (no parsing beyond the question).
DNS_SERVER = textwrap.dedent("""
    import socket, struct, sys
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((sys.argv[1], 53))
    print("ready", flush=True)
    while True:
        q, peer = s.recvfrom(512)
        end = q.index(b"\\0", 12) + 5
        answer = q[:2] + b"\\x81\\x80\\x00\\x01\\x00\\x01\\x00\\x00\\x00\\x00" + q[12:end]
        answer += b"\\xc0\\x0c\\x00\\x01\\x00\\x01\\x00\\x00\\x00\\x1e\\x00\\x04" + socket.inet_aton("192.0.2.1")
        s.sendto(answer, peer)
""")
# Load: `concurrency` clients for `seconds`; prints [count, sorted latencies in microseconds (sampled)]
HTTP_CLIENT = textwrap.dedent("""
    import asyncio, json, sys, time
    ip, concurrency, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    REQUEST = f"GET /api/x HTTP/1.1\\r\\nhost: {ip}\\r\\n\\r\\n".encode()
    latencies = []
    async def one(end):
        reader, writer = await asyncio.open_connection(ip, 80)
        while time.monotonic() < end:
            t = time.perf_counter_ns()
            writer.write(REQUEST)
            await reader.readuntil(b"\\r\\n\\r\\n")
            await reader.readexactly(2)
            latencies.append((time.perf_counter_ns() - t) // 1000)
        writer.close()
    async def main():
        end = time.monotonic() + seconds
        await asyncio.gather(*(one(end) for _ in range(concurrency)))
    asyncio.run(main())
    print(json.dumps([len(latencies), sorted(latencies)[::max(1, len(latencies) // 20000)]]))
""")
DNS_CLIENT = textwrap.dedent("""
    import asyncio, json, os, socket, struct, sys, time
    ip, concurrency, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    latencies, lost = [], 0
    def query(qid):
        return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + b"\\x07example\\x03com\\x00\\x00\\x01\\x00\\x01"
    async def one(end):
        global lost
        loop = asyncio.get_running_loop()
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setblocking(False)
        await loop.sock_connect(s, (ip, 53))
        qid = 0
        while time.monotonic() < end:
            qid = (qid + 1) & 0xffff
            t = time.perf_counter_ns()
            await loop.sock_sendall(s, query(qid))
            try:
                async with asyncio.timeout(1):
                    while (await loop.sock_recv(s, 512))[:2] != struct.pack("!H", qid):
                        pass
            except TimeoutError:
                lost += 1
                continue
            latencies.append((time.perf_counter_ns() - t) // 1000)
        s.close()
    async def main():
        end = time.monotonic() + seconds
        await asyncio.gather(*(one(end) for _ in range(concurrency)))
    asyncio.run(main())
    print(json.dumps([len(latencies), sorted(latencies)[::max(1, len(latencies) // 20000)], lost]))
""")


def policy(doc: dict) -> dict:
    return {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
            "metadata": {"name": doc.pop("name"), "namespace": "default"}, "spec": doc}


HTTP_POLICY = policy({"name": "http", "endpointSelector": {"matchLabels": {"app": "web-l7"}},
                      "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "client"}}],
                                   "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}],
                                                "rules": {"http": [{"method": "GET", "path": "/api/.*"}]}}]}]})
DNS_POLICY = policy({"name": "dns", "endpointSelector": {"matchLabels": {"app": "client-l7"}},
                     "egress": [{"toEndpoints": [{"matchLabels": {"app": "dns"}}],
                                 "toPorts": [{"ports": [{"port": "53", "protocol": "UDP"}],
                                              "rules": {"dns": [{"matchPattern": "*.com"}]}}]}]})


def percentile(sample: list[int], p: float) -> float:
    return sample[min(len(sample) - 1, int(len(sample) * p))] / 1000 if sample else float("nan")


def run(ns: str, script: str, ip: str, concurrency: int, seconds: float) -> tuple[float, float, float]:
    out = json.loads(exec_in(ns, "taskset", "-c", "0", sys.executable, "-c", script, ip, str(concurrency),
                             str(seconds), timeout=seconds + 60).stdout)
    count, sample = out[0], out[1]
    return count / seconds, percentile(sample, 0.5), percentile(sample, 0.99)


def serve(ns: str, script: str, ip: str) -> subprocess.Popen:
    proc = subprocess.Popen(["ip", "netns", "exec", ns, "taskset", "-c", "0", sys.executable, "-c", script, ip],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def compare(name: str, unit: str, client_ns: tuple[str, str], servers: tuple[str, str], script: str,
            seconds: float, target: str) -> None:
    print(f"\n{name} (client and server on CPU 0, the proxy where the kernel puts it)")
    print(f"{'clients':>8} {'path':>7} {unit + '/s':>10} {'p50 ms':>8} {'p99 ms':>8}")
    for concurrency in (1, 32):
        rows = {}
        for path, ns, ip in (("direct", client_ns[1], servers[1]), ("proxy", client_ns[0], servers[0]),
                             ("direct", client_ns[1], servers[1]), ("proxy", client_ns[0], servers[0])):
            rows.setdefault(path, []).append(run(ns, script, ip, concurrency, seconds))
        for path in ("direct", "proxy"):
            best = max(rows[path])  # the better of two rounds: less noise from the other tenants
            rows[path] = best
            print(f"{concurrency:>8} {path:>7} {best[0]:>10.0f} {best[1]:>8.3f} {best[2]:>8.3f}")
        (d_rate, d50, d99), (p_rate, p50, p99) = rows["direct"], rows["proxy"]
        print(f"{concurrency:>8} {'ratio':>7} {p_rate / d_rate:>10.2f}   added p50 {p50 - d50:.3f} ms, "
              f"p99 {p99 - d99:.3f} ms")
    print(f"target: {target}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--only", choices=("http", "dns"))
    args = parser.parse_args()
    with node_with_agent() as (_, client, netns, _, run_dir):
        servers = []
        try:
            if args.only != "dns":
                c = netns("c")
                add_pod(client, c, {"k8s:app": "client", **NS})
                ips = []
                for app in ("web-l7", "web"):
                    ns = netns(app)
                    ips.append(add_pod(client, ns, {"k8s:app": app, **NS}))
                    servers.append(serve(ns, HTTP_SERVER, ips[-1]))
                wait(client, HTTP_POLICY, run_dir)
                compare("HTTP through the proxy vs direct", "req", (c, c), tuple(ips), HTTP_CLIENT, args.seconds,
                        "p99 added <= 2 ms at 1 connection")
            if args.only != "http":
                d = netns("dns")
                dns_ip = add_pod(client, d, {"k8s:app": "dns", **NS})
                servers.append(serve(d, DNS_SERVER, dns_ip))
                proxied, direct = netns("cl7"), netns("cd")
                add_pod(client, proxied, {"k8s:app": "client-l7", **NS})
                add_pod(client, direct, {"k8s:app": "client-direct", **NS})
                wait(client, DNS_POLICY, run_dir)
                compare("DNS through the proxy vs direct", "q", (proxied, direct), (dns_ip, dns_ip), DNS_CLIENT,
                        args.seconds, "beat Cilium's DNS proxy: p50 2.9 ms, p99 117 ms")
        finally:
            for proc in servers:
                proc.kill()


def wait(client, doc: dict, run_dir) -> None:
    revision = client.call("POST", "/v1/policy", {"documents": [doc]})["revision"]
    client.call("GET", f"/v1/policy/wait?revision={revision}")
    deadline = time.monotonic() + 30
    while not (run_dir / "l7proxy.pid").exists():  # the proxy starts in the background
        if time.monotonic() > deadline:
            raise SystemExit("the L7 proxy did not start")
        time.sleep(0.2)
    time.sleep(1)


if __name__ == "__main__":
    main()

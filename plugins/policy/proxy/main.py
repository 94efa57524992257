"""The L7 proxy process (`pylium-l7proxy`): started and supervised by the policy plugin, but
its own process in its own session, so a restart or crash of the agent does not interrupt
proxied connections. It reads the policy snapshot the agent writes (re-read on SIGHUP and
when the file changes), resolves peers' identities from the pinned BPF maps, and publishes
what it sees on the bus (topic `l7`) whenever an agent is there to take it."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import aiohttp
import zmq

from pylium.core.api_for_plugins import CORE_MAPS, BusPaths, EndpointKey, IpcacheKey, PinnedMap
from pylium.core.api_for_plugins import events as ev
from pylium.plugins.policy.proxy.dns import DnsListener
from pylium.plugins.policy.proxy.http import HttpListener, ProxyContext
from pylium.plugins.policy.proxy.policy import PID_FILE, POLICY_FILE, L7Policy
from pylium.plugins.policy.proxy.tracing import Tracer, TracingSettings

ID_WORLD = 2
POLL_SECONDS = 0.5


class Identities:
    """Address -> security identity, as the datapath sees it: local endpoints, then the ipcache."""

    def __init__(self, core_dir: Path):
        specs = {s.name: s for s in CORE_MAPS}
        self.endpoints = PinnedMap.open(specs["endpoints"], core_dir)
        self.ipcache = PinnedMap.open(specs["ipcache"], core_dir)

    def __call__(self, ip: str) -> int:
        ep = self.endpoints.get(EndpointKey.of(ip))
        if ep is not None:
            return ep.identity
        info = self.ipcache.get(IpcacheKey.of(ip))
        return info.identity if info is not None else ID_WORLD


class Publisher:
    """L7 records onto the agent's bus; dropped while no agent (or no subscriber) is there."""

    def __init__(self, run_dir: Path, node: str):
        self.node = node
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.PUB)
        self.sock.setsockopt(zmq.SNDHWM, 10000)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(BusPaths(run_dir).publish)
        self.seq = 0

    def __call__(self, record: ev.L7Record) -> None:
        self.seq += 1
        header = ev.Header(v=ev.SCHEMA_VERSION, type="l7", source="l7proxy", node=self.node, seq=self.seq,
                           time=time.time_ns())
        try:
            self.sock.send_multipart([b"l7", ev.encode(header), ev.encode(record)], zmq.NOBLOCK)
        except zmq.Again:
            pass

    def close(self) -> None:
        self.sock.close()
        self.ctx.term()


class Agent:
    """The agent's API, for what it must know before a DNS answer goes back: the addresses
    pods looked up (toFQDNs). Waits at most `max_delay`; without an agent the answer goes
    anyway (lookups never fail because the agent is away)."""

    def __init__(self, run_dir: Path):
        self.socket = run_dir / "pylium.sock"
        self.max_delay = 0.1
        self._session: aiohttp.ClientSession | None = None
        self._told: dict[tuple, float] = {}  # (endpoint, name, addresses) -> when to tell the agent again

    async def observe_dns(self, endpoint: int, name: str, ips: list[str], ttl: int) -> None:
        key, now = (endpoint, name, tuple(sorted(ips))), time.monotonic()
        if self._told.get(key, 0) > now:
            return  # the agent knows these addresses, for longer than this answer needs
        if len(self._told) > 65536:
            self._told.clear()
        if self._session is None:
            self._session = aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(self.socket)))
        try:
            async with asyncio.timeout(self.max_delay):
                async with self._session.post("http://agent/v1/fqdn/observe", json={
                        "endpoint": endpoint, "name": name, "ips": ips, "ttl": ttl}) as answer:
                    await answer.read()
                    if answer.status == 200:
                        self._told[key] = now + ttl / 2  # told again at half the TTL: it stays allowed
        except (OSError, asyncio.TimeoutError, aiohttp.ClientError):
            pass

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


class Proxy:
    def __init__(self, args: argparse.Namespace):
        self.policy_file = Path(args.state_dir) / POLICY_FILE
        self.policy = L7Policy()
        self.stamp = None
        self.listeners: dict[str, HttpListener] = {}
        core_dir = Path(args.bpf_root) / args.node / "core"
        self.publisher = Publisher(Path(args.run_dir), args.node)
        self.agent = Agent(Path(args.run_dir))
        self.ctx = ProxyContext(policy=lambda: self.policy, identity_of=Identities(core_dir),
                                emit=self.publisher, max_request_bytes=args.max_request_bytes, node=args.node)

    async def reload(self) -> None:
        try:
            stat = self.policy_file.stat()
        except FileNotFoundError:
            return
        if (stat.st_ino, stat.st_mtime_ns, stat.st_size) == self.stamp:
            return
        self.stamp = (stat.st_ino, stat.st_mtime_ns, stat.st_size)  # replaced atomically: a new inode
        try:
            self.policy = L7Policy.load(self.policy_file)
        except (ValueError, KeyError, TypeError) as e:  # the agent writes it atomically: should not happen
            print(f"l7proxy: {self.policy_file}: {e}; keeping the previous policy", file=sys.stderr)
            return
        for name, port in self.policy.ports.items():
            listener = self.listeners.get(name)
            if listener is not None and listener.port == port:
                continue
            if listener is not None:
                listener.close()
            if name.startswith("http-"):
                self.listeners[name] = HttpListener(name, port, self.ctx)
            elif name == "dns-egress":
                self.listeners[name] = DnsListener(port, self.ctx, self.agent.observe_dns)
            else:
                continue
            await self.listeners[name].start()
        tracing = TracingSettings.from_snapshot(self.policy.tracing)
        if tracing != (self.ctx.tracer.settings if self.ctx.tracer else None):
            if self.ctx.tracer is not None:
                self.ctx.tracer.shutdown()
            self.ctx.tracer = Tracer(tracing, self.ctx.node) if tracing else None
        dns_listener = self.listeners.get("dns-egress")
        if dns_listener is not None:
            dns_listener.reject_rcode = self.policy.dns_reject_rcode
            self.agent.max_delay = self.policy.dns_max_delay

    async def run(self) -> None:
        hup = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, hup.set)
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        while not stop.is_set():
            await self.reload()
            hup.clear()
            waits = [asyncio.ensure_future(e.wait()) for e in (hup, stop)]
            await asyncio.wait(waits, timeout=POLL_SECONDS, return_when=asyncio.FIRST_COMPLETED)
            for w in waits:
                w.cancel()
        for listener in self.listeners.values():
            listener.close()
        self.publisher.close()
        await self.agent.close()
        if self.ctx.tracer is not None:
            self.ctx.tracer.shutdown()  # what is batched goes out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pylium-l7proxy", description=__doc__)
    parser.add_argument("--node", required=True, help="node name (the agent's --node-name)")
    parser.add_argument("--run-dir", required=True, help="the agent's run directory (bus sockets, pid file)")
    parser.add_argument("--state-dir", required=True, help="the policy plugin's state directory (policy snapshot)")
    parser.add_argument("--bpf-root", required=True, help="the agent's BPF pin root")
    parser.add_argument("--max-request-bytes", type=int, default=65536,
                        help="largest request line plus headers accepted (larger: 431)")
    args = parser.parse_args(argv)
    pid_file = Path(args.run_dir) / PID_FILE
    pid_file.write_text(f"{os.getpid()}\n")
    try:
        asyncio.run(Proxy(args).run())
    finally:
        if pid_file.read_text().strip() == str(os.getpid()):
            pid_file.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

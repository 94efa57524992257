"""The DNS proxy: queries the datapath assigns to its UDP and TCP sockets (transparent, on
loopback; UDP reads the original destination from IP_ORIGDSTADDR) are parsed with dnspython
and checked against the pod's `rules.dns`. Denied queries get REFUSED (or NXDOMAIN); allowed
ones go to the server the pod asked, marked with the pod's identity, and the answer's
addresses are handed to the agent (toFQDNs) before the answer goes back, from the server's
own address."""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import Awaitable, Callable

import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype

from pylium.core.api_for_plugins import events
from pylium.plugins.policy.proxy.http import (IP_TRANSPARENT, IPV6_TRANSPARENT, MARK_EGRESS_PROXY, ProxyContext,
                                              identity_mark, transparent_listener)

IP_RECVORIGDSTADDR, IPV6_RECVORIGDSTADDR = 20, 74  # linux/in.h, linux/in6.h (IP_ORIGDSTADDR is the same)
UPSTREAM_TIMEOUT = 10.0  # as Cilium: no answer in time, no answer to the pod (it retries)
MAX_DNS = 65535


def original_destination(ancillary) -> tuple[str, int] | None:
    for level, kind, data in ancillary:
        if level == socket.SOL_IP and kind == IP_RECVORIGDSTADDR and len(data) >= 8:
            port, = struct.unpack("!H", data[2:4])
            return socket.inet_ntop(socket.AF_INET, data[4:8]), port
        if level == socket.IPPROTO_IPV6 and kind == IPV6_RECVORIGDSTADDR and len(data) >= 24:
            port, = struct.unpack("!H", data[2:4])
            return socket.inet_ntop(socket.AF_INET6, data[8:24]), port
    return None


def _family(ip: str) -> int:
    return socket.AF_INET6 if ":" in ip else socket.AF_INET


def _transparent(sock: socket.socket, family: int) -> None:
    if family == socket.AF_INET:
        sock.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
    else:
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_TRANSPARENT, 1)


def formerr(wire: bytes) -> bytes | None:
    """An answer to a query that does not parse: FORMERR with its id, if it has one."""
    if len(wire) < 12:
        return None
    return wire[:2] + struct.pack("!HHHHH", 0x8000 | dns.rcode.FORMERR, 0, 0, 0, 0)


class DnsListener:
    def __init__(self, port: int, ctx: ProxyContext, observe: Callable[..., Awaitable[None]],
                 reject_rcode: int = dns.rcode.REFUSED):
        self.port, self.ctx, self.observe, self.reject_rcode = port, ctx, observe, reject_rcode
        self.sockets: list[socket.socket] = []
        self.servers: list[asyncio.base_events.Server] = []
        self.tasks: set[asyncio.Task] = set()
        self._replies: dict[tuple, socket.socket] = {}  # original destination -> transparent reply socket
        self._idle: dict[tuple, list[socket.socket]] = {}  # (server, mark) -> connected UDP sockets at rest

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for family, address in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
            try:
                udp = socket.socket(family, socket.SOCK_DGRAM)
                udp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                _transparent(udp, family)
                if family == socket.AF_INET:
                    udp.setsockopt(socket.SOL_IP, IP_RECVORIGDSTADDR, 1)
                else:
                    udp.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVORIGDSTADDR, 1)
                udp.bind((address, self.port))
                udp.setblocking(False)
                tcp = transparent_listener(family, address, self.port)
            except OSError:
                if family == socket.AF_INET:
                    raise
                continue  # no IPv6 on the node
            self.sockets.append(udp)
            loop.add_reader(udp.fileno(), self._readable, udp)
            self.servers.append(await asyncio.start_server(self._serve_tcp, sock=tcp))

    def close(self) -> None:
        loop = asyncio.get_running_loop()
        for sock in self.sockets:
            loop.remove_reader(sock.fileno())
            sock.close()
        for sock in [*self._replies.values(), *(s for idle in self._idle.values() for s in idle)]:
            sock.close()
        for server in self.servers:
            server.close()

    # ---- UDP --------------------------------------------------------------------------------

    def _readable(self, sock: socket.socket) -> None:
        for _ in range(64):
            try:
                wire, ancillary, _, client = sock.recvmsg(MAX_DNS, 256)
            except (BlockingIOError, InterruptedError):
                return
            original = original_destination(ancillary)
            if original is None:
                continue
            task = asyncio.ensure_future(self._udp(wire, client[:2], original))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _udp(self, wire: bytes, client: tuple, original: tuple) -> None:
        answer = await self.handle(wire, client, original, socket.IPPROTO_UDP)
        if answer is None:
            return
        try:
            self._reply_socket(original).sendto(answer, client)
        except OSError:
            self._replies.pop(original, None)

    def _reply_socket(self, original: tuple) -> socket.socket:
        """Answers leave from the server's address and port, as the pod expects: a transparent
        socket may bind it (one per server, kept)."""
        sock = self._replies.get(original)
        if sock is None:
            if len(self._replies) > 1024:
                for old in self._replies.values():
                    old.close()
                self._replies.clear()
            family = _family(original[0])
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            _transparent(sock, family)
            sock.bind(original)
            sock.setblocking(False)
            self._replies[original] = sock
        return sock

    # ---- TCP --------------------------------------------------------------------------------

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        client, original = sock.getpeername()[:2], sock.getsockname()[:2]
        try:
            while True:
                size, = struct.unpack("!H", await reader.readexactly(2))
                answer = await self.handle(await reader.readexactly(size), client, original, socket.IPPROTO_TCP)
                if answer is None:
                    return
                writer.write(struct.pack("!H", len(answer)) + answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            writer.close()

    # ---- one query --------------------------------------------------------------------------

    async def handle(self, wire: bytes, client: tuple, original: tuple, proto: int) -> bytes | None:
        started = time.time_ns()
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return formerr(wire)  # nothing to check a name on
        if not query.question or query.flags & dns.flags.QR:
            return formerr(wire)
        question = query.question[0]
        name = question.name.to_text().lower()
        qtypes = [dns.rdatatype.to_text(q.rdtype) for q in query.question]
        policy = self.ctx.policy()
        local = policy.by_ip.get(client[0])
        server = self.ctx.identity_of(original[0])
        allowed, rules = policy.decide_dns(client[0], server, proto, original[1], name)
        record = _Record(self.ctx, client, original, local.ep_id if local else 0,
                         local.identity if local else 0, server, rules, started,
                         "TCP" if proto == socket.IPPROTO_TCP else "UDP")
        self.ctx.emit(record.make("REQUEST", "FORWARDED" if allowed else "DROPPED",
                                  events.DnsInfo(query=name, qtypes=qtypes)))
        if not allowed:
            refusal = dns.message.make_response(query)
            refusal.set_rcode(self.reject_rcode)
            return refusal.to_wire()
        try:
            answer_wire = await self._upstream(wire, original, local.identity if local else 0, proto)
            answer = dns.message.from_wire(answer_wire)
        except (OSError, asyncio.TimeoutError, dns.exception.DNSException):
            return None  # as a lost packet: the pod asks again
        ips, cnames, rrtypes, ttl = [], [], [], None
        for rrset in answer.answer:
            rrtypes.append(dns.rdatatype.to_text(rrset.rdtype))
            if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
                ips.extend(r.address for r in rrset)
                ttl = rrset.ttl if ttl is None else min(ttl, rrset.ttl)
            elif rrset.rdtype == dns.rdatatype.CNAME:
                cnames.extend(r.target.to_text() for r in rrset)
        if ips and local is not None:
            await self.observe(local.ep_id, name, ips, ttl or 0)
        self.ctx.emit(record.make("RESPONSE", "FORWARDED", events.DnsInfo(
            query=name, ips=ips, ttl=ttl or 0, cnames=cnames, rcode=answer.rcode(), qtypes=qtypes, rrtypes=rrtypes)))
        return answer_wire

    async def _upstream(self, wire: bytes, server: tuple, identity: int, proto: int) -> bytes:
        mark = identity_mark(MARK_EGRESS_PROXY, identity)
        loop = asyncio.get_running_loop()
        if proto != socket.IPPROTO_TCP:
            idle = self._idle.setdefault((server, mark), [])
            sock = idle.pop() if idle else _marked(server, socket.SOCK_DGRAM, mark)
            try:
                async with asyncio.timeout(UPSTREAM_TIMEOUT):
                    await loop.sock_connect(sock, server)
                    await loop.sock_sendall(sock, wire)
                    while (answer := await loop.sock_recv(sock, MAX_DNS))[:2] != wire[:2]:
                        pass  # a late answer to an earlier query of this socket
            except BaseException:
                sock.close()
                raise
            if len(idle) < 64:
                idle.append(sock)
            else:
                sock.close()
            return answer
        sock = _marked(server, socket.SOCK_STREAM, mark)
        try:
            async with asyncio.timeout(UPSTREAM_TIMEOUT):
                await loop.sock_connect(sock, server)
                await loop.sock_sendall(sock, struct.pack("!H", len(wire)) + wire)
                size, = struct.unpack("!H", await _recv_exactly(loop, sock, 2))
                return await _recv_exactly(loop, sock, size)
        finally:
            sock.close()


def _marked(server: tuple, kind: int, mark: int) -> socket.socket:
    """A socket to the server, marked with the identity it speaks for (not redirected again)."""
    sock = socket.socket(_family(server[0]), kind)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, struct.pack("I", mark))
    sock.setblocking(False)
    return sock


async def _recv_exactly(loop, sock: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = await loop.sock_recv(sock, n - len(out))
        if not chunk:
            raise ConnectionResetError("the DNS server closed the connection")
        out += chunk
    return out


class _Record:
    def __init__(self, ctx: ProxyContext, client, original, ep_id: int, local_identity: int, server_identity: int,
                 rules: list[int], started: int, transport: str):
        self.ctx, self.client, self.original, self.transport = ctx, client, original, transport
        self.ep_id, self.local_identity, self.server_identity = ep_id, local_identity, server_identity
        self.rules, self.started = rules, started

    def make(self, kind: str, verdict: str, info: events.DnsInfo) -> events.L7Record:
        now = time.time_ns()
        return events.L7Record(
            node=self.ctx.node, kind=kind, verdict=verdict, time=now, proxy="dns", transport=self.transport,
            direction="EGRESS",
            endpoint=self.ep_id, source_ip=self.client[0], source_port=self.client[1],
            source_identity=self.local_identity, destination_ip=self.original[0],
            destination_port=self.original[1], destination_identity=self.server_identity,
            latency_ns=now - self.started if kind == "RESPONSE" else 0, dns=info, rule_ids=self.rules)

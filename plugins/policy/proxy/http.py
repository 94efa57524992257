"""The HTTP/1.1 proxy: connections the datapath assigns to its listener (IP_TRANSPARENT on
loopback; the accepted socket's own address is the original destination) are parsed with h11,
each request is checked against the L7 rules, allowed ones go to the original destination
over an upstream connection marked with the identity it speaks for (so the datapath neither
redirects it again nor mistakes it for the node), denied ones get 403 `Access denied`.
Keep-alive connections are checked request by request."""

from __future__ import annotations

import asyncio
import re
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import h11

from pylium.core.api_for_plugins import events
from pylium.plugins.policy.proxy.policy import L7Policy

IP_TRANSPARENT, IPV6_TRANSPARENT = 19, 75  # linux/in.h, linux/in6.h
MARK_INGRESS_PROXY, MARK_EGRESS_PROXY = 0x0A00, 0x0B00
READ_SIZE = 65536
_TRACEPARENT = re.compile(r"[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}")


def identity_mark(magic: int, identity: int) -> int:
    """Cilium's magic mark: the identity's low 16 bits on top, its next 8 at the bottom."""
    return magic | ((identity & 0xFFFF) << 16) | ((identity >> 16) & 0xFF)


def transparent_listener(family: int, address: str, port: int) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET:
        sock.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
    else:
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_TRANSPARENT, 1)
    sock.bind((address, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


@dataclass
class ProxyContext:
    """What a listener needs from the process around it."""

    policy: Callable[[], L7Policy]
    identity_of: Callable[[str], int]
    emit: Callable[[events.L7Record], None]
    max_request_bytes: int = 65536
    node: str = ""
    tracer: Any = None  # a tracing.Tracer while tracing.enabled


class _Stream:
    """One h11 connection over one asyncio stream pair."""

    def __init__(self, role, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, limit: int):
        self.conn = h11.Connection(role, max_incomplete_event_size=limit)
        self.reader, self.writer = reader, writer

    async def next_event(self):
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            self.conn.receive_data(await self.reader.read(READ_SIZE))

    async def send(self, event) -> None:
        data = self.conn.send(event)
        if data:
            self.writer.write(data)
            await self.writer.drain()

    def reusable(self) -> bool:
        return self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE

    def close(self) -> None:
        self.writer.close()


class HttpListener:
    def __init__(self, name: str, port: int, ctx: ProxyContext):
        self.name, self.port, self.ctx = name, port, ctx
        self.ingress = name.endswith("-ingress")
        self.servers: list[asyncio.base_events.Server] = []

    async def start(self) -> None:
        for family, address in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
            try:
                sock = transparent_listener(family, address, self.port)
            except OSError:
                if family == socket.AF_INET:
                    raise
                continue  # no IPv6 on the node
            self.servers.append(await asyncio.start_server(self._serve, sock=sock, limit=READ_SIZE))

    def close(self) -> None:
        for server in self.servers:
            server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # h11 writes a message in parts
        client, original = sock.getpeername()[:2], sock.getsockname()[:2]
        local_ip, peer_ip = (original[0], client[0]) if self.ingress else (client[0], original[0])
        downstream = _Stream(h11.SERVER, reader, writer, self.ctx.max_request_bytes)
        upstream: _Stream | None = None
        conn = _Connection(self, client, original, local_ip, peer_ip)
        try:
            while True:
                try:
                    request = await downstream.next_event()
                except h11.RemoteProtocolError as e:
                    await _refuse(downstream, e.error_status_hint, str(e))
                    return
                if not isinstance(request, h11.Request):
                    return  # the client closed (ConnectionClosed) or paused at the end
                if request.http_version not in (b"1.0", b"1.1"):  # HTTP/2's preface parses as a request
                    await _refuse(downstream, 505, "only HTTP/1.x is proxied")
                    return
                upstream = await conn.exchange(request, downstream, upstream)
                if not downstream.reusable():
                    return
                downstream.conn.start_next_cycle()
        except (ConnectionError, OSError, h11.ProtocolError, asyncio.IncompleteReadError):
            pass
        finally:
            downstream.close()
            if upstream is not None:
                upstream.close()


class _Connection:
    """One client connection's facts, and one request's round trip."""

    def __init__(self, listener: HttpListener, client, original, local_ip: str, peer_ip: str):
        self.listener, self.ctx = listener, listener.ctx
        self.client, self.original = client, original
        self.local_ip, self.peer_ip = local_ip, peer_ip

    async def exchange(self, request: h11.Request, downstream: _Stream, upstream: _Stream | None) -> _Stream | None:
        """Check one request, forward it or answer 403; returns the upstream to reuse."""
        started = time.time_ns()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in request.headers}
        method, target = request.method.decode("latin-1"), request.target.decode("latin-1")
        host = headers.get("host", self.original[0])
        policy = self.ctx.policy()
        peer = self.ctx.identity_of(self.peer_ip)
        local = policy.by_ip.get(self.local_ip)
        direction = 0 if self.listener.ingress else 1
        allowed, rules = policy.decide_http(self.local_ip, direction, peer, self.original[1], method, target, host,
                                            headers)
        flow = _Flow(self, local.ep_id if local else 0, local.identity if local else 0, peer, method,
                     f"http://{host}{target}", _http_version(request), request.headers, rules, started)
        self.ctx.emit(flow.record("REQUEST", "FORWARDED" if allowed else "DROPPED"))
        if not allowed:
            await _drain(downstream)
            await _reply(downstream, 403, policy.deny_message.rstrip("\r\n") + "\r\n")
            self.ctx.emit(flow.record("RESPONSE", "FORWARDED", code=403))
            self._trace(flow, headers, 403, "DROPPED")
            return upstream
        if upstream is None or not upstream.reusable():
            if upstream is not None:
                upstream.close()
            try:
                upstream = await self._connect(local.identity if local and not self.listener.ingress else peer)
            except OSError:
                await _drain(downstream)
                await _reply(downstream, 503, "upstream connect error\r\n")
                self.ctx.emit(flow.record("RESPONSE", "ERROR", code=503))
                self._trace(flow, headers, 503, "ERROR")
                return None
        else:
            upstream.conn.start_next_cycle()
        await upstream.send(request)
        while True:  # the request's body
            event = await downstream.next_event()
            if isinstance(event, h11.ConnectionClosed):
                raise ConnectionResetError("the client closed in the middle of its request")
            await upstream.send(event)
            if isinstance(event, h11.EndOfMessage):
                break
        code = 0
        while True:  # the response (after any 1xx), then its body
            event = await upstream.next_event()
            if isinstance(event, h11.ConnectionClosed):
                raise ConnectionResetError("upstream closed before the response")
            await downstream.send(event)
            if isinstance(event, h11.Response):
                code = event.status_code
                self.ctx.emit(flow.record("RESPONSE", "FORWARDED", code=code))
            if isinstance(event, h11.EndOfMessage):
                self._trace(flow, headers, code, "FORWARDED")
                return upstream

    def _trace(self, flow: _Flow, headers: dict[str, str], code: int, verdict: str) -> None:
        if self.ctx.tracer is not None:
            self.ctx.tracer.http_span(headers, self.listener.ingress, flow.method, flow.url, code, verdict,
                                      flow.started, time.time_ns(), self.client[0], self.original[0])

    async def _connect(self, identity: int) -> _Stream:
        address = self.original
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        magic = MARK_INGRESS_PROXY if self.listener.ingress else MARK_EGRESS_PROXY
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, struct.pack("I", identity_mark(magic, identity)))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setblocking(False)
            await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, address), 10)
            reader, writer = await asyncio.open_connection(sock=sock, limit=READ_SIZE)
        except (OSError, asyncio.TimeoutError) as e:
            sock.close()
            raise OSError(f"upstream {address}: {e}") from None
        return _Stream(h11.CLIENT, reader, writer, 1 << 20)


@dataclass
class _Flow:
    conn: _Connection
    ep_id: int
    local_identity: int
    peer_identity: int
    method: str
    url: str
    version: str
    headers: list
    rules: list[int]
    started: int

    def record(self, kind: str, verdict: str, code: int = 0) -> events.L7Record:
        c = self.conn
        ingress = c.listener.ingress
        src_id, dst_id = (self.peer_identity, self.local_identity) if ingress else (self.local_identity,
                                                                                     self.peer_identity)
        now = time.time_ns()
        trace = next((_TRACEPARENT.fullmatch(v.decode("latin-1").strip()) for k, v in self.headers
                      if k.lower() == b"traceparent"), None)
        return events.L7Record(
            node=c.ctx.node, kind=kind, verdict=verdict, time=now, proxy="http",
            direction="INGRESS" if ingress else "EGRESS", endpoint=self.ep_id,
            source_ip=c.client[0], source_port=c.client[1], source_identity=src_id,
            destination_ip=c.original[0], destination_port=c.original[1], destination_identity=dst_id,
            latency_ns=now - self.started if kind == "RESPONSE" else 0,
            http=events.HttpInfo(code=code, method=self.method, url=self.url, protocol=self.version,
                                 headers=[events.HttpHeader(key=k.decode("latin-1"), value=v.decode("latin-1"))
                                          for k, v in self.headers]),
            trace_id=trace.group(1) if trace else "", rule_ids=self.rules)


def _http_version(request: h11.Request) -> str:
    return f"HTTP/{request.http_version.decode()}"


async def _drain(stream: _Stream) -> None:
    """Read a denied request's body to its end (so the connection can go on)."""
    while not isinstance(await stream.next_event(), (h11.EndOfMessage, h11.ConnectionClosed)):
        pass


async def _reply(stream: _Stream, status: int, body: str) -> None:
    data = body.encode()
    await stream.send(h11.Response(status_code=status, headers=[
        ("content-length", str(len(data))), ("content-type", "text/plain"), ("server", "pylium")]))
    await stream.send(h11.Data(data=data))
    await stream.send(h11.EndOfMessage())


async def _refuse(stream: _Stream, status: int, why: str) -> None:
    """A request the parser cannot take (malformed, too large): say so, then close."""
    if stream.conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
        return
    try:
        data = f"{why}\r\n".encode()
        stream.writer.write(stream.conn.send(h11.Response(status_code=status, headers=[
            ("content-length", str(len(data))), ("content-type", "text/plain"), ("connection", "close")])))
        stream.writer.write(stream.conn.send(h11.Data(data=data)) + stream.conn.send(h11.EndOfMessage()))
        await stream.writer.drain()
    except (h11.ProtocolError, ConnectionError, OSError):
        pass

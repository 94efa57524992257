"""The agent's HTTP/1.1 servers (the control API on its unix socket, metrics, the health
responder) and the health prober's GET. h11 speaks the protocol; this module routes a request
to its handler and writes the answer. It replaced aiohttp, whose client, websocket, multipart
and cookie modules cost an idle agent ~9 MiB of its ~82 (issue 20)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, AsyncIterator, Awaitable, Callable
from urllib.parse import parse_qsl, unquote, urlsplit

import h11

MAX_BODY = 1 << 20  # aiohttp's default too: a larger request body is answered 413
_READ = 64 * 1024


class HTTPError(Exception):
    """Answer with this status; the reason defaults to the status's phrase."""

    def __init__(self, status: int, reason: str = ""):
        self.status, self.reason = status, reason or HTTPStatus(status).phrase
        super().__init__(self.reason)


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # names in lower case
    body: bytes
    raw_path: str = ""  # as sent, percent-encoded (`path` is decoded)
    match_info: dict[str, str] = field(default_factory=dict)
    #: True once the client has gone away (checked by streaming handlers)
    disconnected: Callable[[], bool] = lambda: False

    def json(self) -> Any:
        """The body as JSON (None when there is none); raises ValueError or RecursionError."""
        return json.loads(self.body) if self.body else None


@dataclass
class Response:
    body: bytes = b""
    status: int = 200
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, data: Any, status: int = 200) -> Response:
        return cls(json.dumps(data, default=str).encode(), status)


@dataclass
class Stream:
    """A response sent as its chunks come (chunked encoding), until they end or the client leaves."""

    chunks: AsyncIterator[bytes]
    content_type: str = "application/x-ndjson"


Handler = Callable[[Request], Awaitable[Response | Stream]]


class Router:
    """Paths with `{name}` segments; an unknown path is 404, a known one with another method 405."""

    def __init__(self) -> None:
        self._routes: list[tuple[str, re.Pattern, Handler]] = []
        self.paths: list[tuple[str, str]] = []  # (method, path) as added

    def add(self, method: str, path: str, handler: Handler) -> None:
        pattern = re.sub(r"\\{(\w+)\\}", r"(?P<\1>[^/]+)", re.escape(path))
        self._routes.append((method.upper(), re.compile(pattern + "$"), handler))
        self.paths.append((method.upper(), path))

    def add_get(self, path: str, handler: Handler) -> None:
        self.add("GET", path, handler)

    def add_post(self, path: str, handler: Handler) -> None:
        self.add("POST", path, handler)

    def resolve(self, method: str, path: str) -> tuple[Handler, dict[str, str]]:
        """`path` as sent (percent-encoded): a `{name}` segment may hold an encoded "/"."""
        path_known = False
        for route_method, pattern, handler in self._routes:
            match = pattern.match(path)
            if match:
                if route_method == method or (method == "HEAD" and route_method == "GET"):
                    return handler, {k: unquote(v) for k, v in match.groupdict().items()}
                path_known = True
        raise HTTPError(405 if path_known else 404)


def _error(e: HTTPError) -> Response:
    return Response.json({"error": e.reason}, e.status)


class Server:
    """Serves a router on listening sockets; `close()` also ends the open connections."""

    def __init__(self, router: Router, errors: Callable[[Exception], Response] | None = None):
        self.router = router
        self.errors = errors or (lambda e: _error(HTTPError(500)))  # a handler's exception as an answer
        self._servers: list[asyncio.AbstractServer] = []
        self._connections: set[asyncio.Task] = set()

    async def listen_unix(self, sock: socket.socket) -> None:
        self._servers.append(await asyncio.start_unix_server(self._connection, sock=sock))

    async def listen_tcp(self, host: str | None, port: int) -> None:
        self._servers.append(await asyncio.start_server(self._connection, host, port, reuse_address=True))

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        for server in self._servers:
            await server.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._connections.add(task)
        conn = h11.Connection(h11.SERVER)
        try:
            while await self._exchange(conn, reader, writer):
                conn.start_next_cycle()
        except (ConnectionError, asyncio.IncompleteReadError, h11.LocalProtocolError):
            pass
        finally:
            self._connections.discard(task)
            writer.close()

    async def _exchange(self, conn: h11.Connection, reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter) -> bool:
        """One request and its answer; False when the connection is to end."""
        try:
            request = await _read_request(conn, reader, writer)
        except HTTPError as e:
            if conn.our_state is h11.SEND_RESPONSE:
                await _send(conn, writer, _error(e), head_only=False)
            return False
        except h11.RemoteProtocolError as e:
            if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                await _send(conn, writer, _error(HTTPError(e.error_status_hint)), head_only=False)
            return False
        if request is None:
            return False
        answer = await self._answer(request, writer)
        if isinstance(answer, Stream):
            await _send_stream(conn, reader, writer, answer, request)
            return False  # not reused: the watcher may have read the client's next bytes
        await _send(conn, writer, answer, head_only=request.method == "HEAD")
        return conn.our_state is h11.DONE and conn.their_state is h11.DONE

    async def _answer(self, request: Request, writer: asyncio.StreamWriter) -> Response | Stream:
        request.disconnected = writer.transport.is_closing
        try:
            handler, request.match_info = self.router.resolve(request.method, request.raw_path)
            return await handler(request)
        except HTTPError as e:
            return _error(e)
        except Exception as e:
            return self.errors(e)


async def _receive(conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        if conn.they_are_waiting_for_100_continue:
            writer.write(conn.send(h11.InformationalResponse(status_code=100, headers=[])))
        conn.receive_data(await reader.read(_READ))


async def _read_request(conn: h11.Connection, reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter) -> Request | None:
    event = await _receive(conn, reader, writer)
    if not isinstance(event, h11.Request):
        return None  # the client closed the connection between requests
    body = bytearray()
    while not isinstance(data := await _receive(conn, reader, writer), h11.EndOfMessage):
        if isinstance(data, h11.ConnectionClosed):
            return None
        body += data.data
        if len(body) > MAX_BODY:
            raise HTTPError(413, f"request body larger than {MAX_BODY} bytes")
    target = urlsplit(event.target.decode("ascii", "replace"))
    return Request(event.method.decode("ascii", "replace"), unquote(target.path), dict(parse_qsl(target.query)),
                   {k.decode("latin-1"): v.decode("latin-1") for k, v in event.headers}, bytes(body), target.path)


def _head(status: int, content_type: str, extra: dict[str, str], length: int | None) -> h11.Response:
    headers = [("Content-Type", content_type), *extra.items()]
    if length is not None:
        headers.append(("Content-Length", str(length)))
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:  # a status a plugin made up: sent without a phrase
        reason = ""
    return h11.Response(status_code=status, headers=headers, reason=reason)


async def _send(conn: h11.Connection, writer: asyncio.StreamWriter, answer: Response, head_only: bool) -> None:
    writer.write(conn.send(_head(answer.status, answer.content_type, answer.headers, len(answer.body))))
    if answer.body and not head_only:
        writer.write(conn.send(h11.Data(data=answer.body)))
    writer.write(conn.send(h11.EndOfMessage()))
    await writer.drain()


async def _send_stream(conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       answer: Stream, request: Request) -> None:
    """Chunks as they come. The client leaving shows as end of input on its side of the
    connection, watched meanwhile: a handler waiting for its next chunk learns of it through
    `request.disconnected()`."""
    gone = asyncio.Event()

    async def watch() -> None:
        with contextlib.suppress(ConnectionError):
            while await reader.read(_READ):
                pass  # a client does not send while it reads a stream
        gone.set()

    watcher = asyncio.ensure_future(watch())
    request.disconnected = lambda: gone.is_set() or writer.transport.is_closing()
    try:
        writer.write(conn.send(_head(200, answer.content_type, {}, None)))
        async for chunk in answer.chunks:
            writer.write(conn.send(h11.Data(data=chunk)))
            await writer.drain()
        writer.write(conn.send(h11.EndOfMessage()))
        await writer.drain()
    finally:
        watcher.cancel()
        if hasattr(answer.chunks, "aclose"):
            await answer.chunks.aclose()


async def get_status(host: str, port: int, path: str, timeout: float) -> int:
    """GET http://host:port/path and return the answer's status (the health prober's probe)."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            conn = h11.Connection(h11.CLIENT)
            writer.write(conn.send(h11.Request(method="GET", target=path, headers=[("Host", host),
                                                                                 ("Connection", "close")])))
            writer.write(conn.send(h11.EndOfMessage()))
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await reader.read(_READ))
                elif isinstance(event, h11.Response):
                    return event.status_code
                elif isinstance(event, h11.ConnectionClosed):
                    raise ConnectionResetError("connection closed before an answer")
        finally:
            writer.close()

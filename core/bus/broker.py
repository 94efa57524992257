"""The request/reply broker: routes each request, by method name, to the plugin that serves it.

    outside requesters ─ipc rpc.sock─ ROUTER ┐                 ┌ in-process handlers (called directly)
    in-process requesters ──────────────────►├─ broker (loop) ─┤
                                             │                 └ ROUTER ─ipc rpc-svc.sock─ outside services
                                             └ answers no_service / timeout errors itself

The broker lives on the agent's event loop, so a request for an in-process plugin costs no
thread hand-off; payloads still round-trip through JSON, so plugins never share objects.
Wire formats are documented in docs/events.md (Requests).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

import anyio
import msgspec
import zmq
import zmq.asyncio

from pylium.core.bus import events as ev
from pylium.core.bus.proxy import bind_private

Handler = Callable[[Any], Awaitable[Any]]
Spawn = Callable[[str, Callable[[], Awaitable[Any]]], None]

OK, ERROR, NO_SERVICE = b"ok", b"error", b"no_service"
REGISTER, REGISTERED, UNREGISTER, PING = b"\x00register", b"\x00registered", b"\x00unregister", b"\x00ping"
SERVICE_EXPIRY = 5.0  # seconds without a ping before an outside service is forgotten


class RpcError(Exception):
    """A request failed; `code` is machine-readable, `message` says what and where."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class NoService(RpcError):
    """No plugin serves the method."""


class RpcTimeout(RpcError, TimeoutError):
    """No answer within the timeout."""


def error_body(code: str, message: str) -> bytes:
    return ev.encode({"code": code, "message": message})


def raise_for(outcome: bytes, body: bytes) -> Any:
    """Decode an answer: the result for OK, else the matching RpcError."""
    if outcome == OK:
        return msgspec.json.decode(body)
    try:
        data = msgspec.json.decode(body)
        code, message = str(data.get("code", "error")), str(data.get("message", data))
    except (msgspec.DecodeError, AttributeError):
        code, message = "error", body.decode(errors="replace")
    cls = NoService if outcome == NO_SERVICE else RpcTimeout if code == "timeout" else RpcError
    raise cls(code, message)


async def invoke(handler: Handler, payload: bytes, owner: str) -> tuple[bytes, bytes]:
    """Run a handler on a JSON payload; every failure becomes an (ERROR, body) answer."""
    try:
        result = await handler(msgspec.json.decode(payload) if payload else None)
        return OK, ev.encode(result)
    except RpcError as e:
        return ERROR, error_body(e.code, e.message)
    except msgspec.DecodeError as e:
        return ERROR, error_body("bad_request", f"payload is not valid JSON: {e}")
    except Exception as e:  # a handler bug answers an error instead of hanging the caller
        return ERROR, error_body("internal", f"{owner}: {type(e).__name__}: {e}")


class RequestTasks:
    """Per-request tasks, owned by the broker and cancelled when it closes.

    Plain asyncio tasks rather than anyio's start_soon: on a 2-core VM start_soon costs ~37 us
    per task against ~4 us, and a request round trip must stay within 200 us."""

    def __init__(self, log: Any):
        self._tasks: set[asyncio.Task] = set()
        self._log = log

    def spawn(self, coro_fn: Callable[[], Awaitable[Any]], name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro_fn(), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._log.error("request task failed", task=task.get_name(), error=repr(task.exception()))

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=1)


class Broker:
    def __init__(self, ctx: zmq.asyncio.Context, rpc_endpoint: str, service_endpoint: str, *, spawn: Spawn,
                 metrics: Any, rejects: Any, timeout: float, log: Any):
        self._front = ctx.socket(zmq.ROUTER)  # outside requesters
        self._front.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self._front.setsockopt(zmq.LINGER, 0)
        bind_private(self._front, rpc_endpoint)
        self._back = ctx.socket(zmq.ROUTER)  # outside services
        self._back.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self._back.setsockopt(zmq.LINGER, 0)
        bind_private(self._back, service_endpoint)
        self._endpoints = (rpc_endpoint, service_endpoint)
        self._spawn, self._metrics, self._rejects, self._timeout = spawn, metrics, rejects, timeout
        self.local: dict[str, tuple[str, Handler]] = {}  # method -> (plugin, handler)
        self.remote: dict[str, list[bytes]] = {}  # method -> outside service identities (round robin)
        self._last_seen: dict[bytes, float] = {}
        self._ids = itertools.count(1)
        self._waiting: dict[bytes, list[Any]] = {}  # forwarded request id -> [event, answer]
        self.requests = RequestTasks(log)
        spawn("rpc-front", self._serve_front)
        spawn("rpc-back", self._serve_back)
        spawn("rpc-expiry", self._expire)

    # ---- in-process side ----------------------------------------------------------------

    def serve(self, plugin: str, method: str, handler: Handler) -> None:
        owner = self.local.get(method)
        if owner is not None:
            raise ValueError(f"method {method!r} is already served by {owner[0]}")
        self.local[method] = (plugin, handler)

    def unserve(self, plugin: str) -> None:
        for method in [m for m, (p, _) in self.local.items() if p == plugin]:
            del self.local[method]

    async def call(self, method: str, payload: Any, timeout: float) -> Any:
        """A request from inside the agent."""
        outcome, body = await self._route(method, ev.encode(payload), timeout)
        self._metrics.bus_requests.labels(outcome.decode()).inc()
        return raise_for(outcome, body)

    async def _route(self, method: str, payload: bytes, timeout: float,
                     client: bytes | None = None, corr: bytes = b"") -> tuple[bytes, bytes]:
        local = self.local.get(method)
        if local is not None:
            plugin, handler = local
            done = anyio.Event()
            answer: list[tuple[bytes, bytes]] = []

            async def run() -> None:  # in its own task: a caller's timeout never cancels the handler
                answer.append(await invoke(handler, payload, plugin))
                done.set()

            self.requests.spawn(run, f"rpc:{method}")
            with anyio.move_on_after(timeout):
                await done.wait()
            return answer[0] if answer else (ERROR, error_body(
                "timeout", f"request {method!r} got no answer from {plugin} within {timeout:g}s"))
        services = self.remote.get(method)
        if services:
            service = services.pop(0)
            services.append(service)
            rid = next(self._ids).to_bytes(8, "big")
            slot: list[Any] = [anyio.Event(), None]
            self._waiting[rid] = slot
            try:
                await self._send(self._back, [service, b"", b"", rid, method.encode(), payload])
                with anyio.move_on_after(timeout):
                    await slot[0].wait()
            finally:
                self._waiting.pop(rid, None)
            return slot[1] or (ERROR, error_body("timeout", f"request {method!r} got no answer within {timeout:g}s"))
        served = ", ".join(sorted({*self.local, *self.remote})) or "none"
        return NO_SERVICE, error_body("no_service", f"no plugin serves {method!r} (served: {served})")

    # ---- outside requesters -------------------------------------------------------------

    async def _serve_front(self) -> None:
        while True:
            frames = await self._front.recv_multipart()
            if len(frames) != 5 or frames[1] != b"":
                self._rejects.reject("rpc-requester", "malformed", f"{len(frames)} request frames, expected "
                                                                   "[b'', id, method, payload]")
                continue
            client, _, corr, method, payload = frames
            self.requests.spawn(self._answer(client, corr, method.decode(errors="replace"), payload), "rpc-request")

    def _answer(self, client: bytes, corr: bytes, method: str, payload: bytes):
        async def answer() -> None:
            local = self.local.get(method)
            if local is not None:  # already in a task of its own: run the handler right here
                outcome, body = ERROR, error_body("timeout", f"{method!r}: no answer from {local[0]} "
                                                             f"within {self._timeout:g}s")
                with anyio.move_on_after(self._timeout):
                    outcome, body = await invoke(local[1], payload, local[0])
            else:
                outcome, body = await self._route(method, payload, self._timeout)
            self._metrics.bus_requests.labels(outcome.decode()).inc()
            await self._send(self._front, [client, b"", corr, outcome, body])

        return answer

    # ---- outside services ---------------------------------------------------------------

    async def _serve_back(self) -> None:
        while True:
            frames = await self._back.recv_multipart()
            service = frames[0]
            self._last_seen[service] = time.monotonic()
            kind = frames[2] if len(frames) >= 3 else b""
            if kind in (REGISTER, UNREGISTER, PING):
                self._control(service, kind, frames[3:])
            elif len(frames) == 6 and frames[3] in self._waiting:
                slot = self._waiting[frames[3]]
                slot[1] = (frames[4], frames[5])
                slot[0].set()
            elif len(frames) != 6:
                self._rejects.reject("rpc-service", "malformed", f"{len(frames)} reply frames")

    def _control(self, service: bytes, kind: bytes, args: list[bytes]) -> None:
        try:
            methods = [str(m) for m in msgspec.json.decode(args[0])] if args else []
        except msgspec.DecodeError:
            self._rejects.reject("rpc-service", "malformed", "registration is not a JSON list")
            return
        if kind == REGISTER:
            for m in methods:
                lst = self.remote.setdefault(m, [])
                if service not in lst:
                    lst.append(service)
            self.requests.spawn(lambda: self._send(self._back, [service, b"", REGISTERED]), "rpc-registered")
        elif kind == UNREGISTER:
            self._forget(service, methods)

    def _forget(self, service: bytes, methods: list[str] | None = None) -> None:
        for m, lst in list(self.remote.items()):
            if (methods is None or m in methods) and service in lst:
                lst.remove(service)
                if not lst:
                    del self.remote[m]

    async def _expire(self) -> None:
        while True:
            await anyio.sleep(1)
            now = time.monotonic()
            for service, seen in list(self._last_seen.items()):
                if now - seen > SERVICE_EXPIRY:
                    del self._last_seen[service]
                    self._forget(service)

    @staticmethod
    async def _send(sock: zmq.asyncio.Socket, frames: list[bytes]) -> None:
        try:
            await sock.send_multipart(frames, zmq.NOBLOCK)
        except (zmq.Again, zmq.ZMQError):
            pass  # the peer went away (ROUTER_MANDATORY): its caller times out

    async def aclose(self) -> None:
        await self.requests.aclose()
        self._front.close(0)
        self._back.close(0)
        for endpoint in self._endpoints:
            if endpoint.startswith("ipc://"):
                Path(endpoint[len("ipc://"):]).unlink(missing_ok=True)

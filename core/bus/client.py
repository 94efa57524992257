"""What plugins use to talk over the bus: publish, subscribe, serve and send requests.

In the agent each plugin gets one :class:`BusClient` as ``ctx.bus``. A plugin running in
another process uses the same class through :func:`connect`, over the ipc addresses in the
agent's run directory.
"""

from __future__ import annotations

import itertools
import os
import struct
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Iterable, Iterator

import anyio
import anyio.lowlevel
import msgspec
import zmq
import zmq.asyncio

from pylium.core.bus import proxy as busmod
from pylium.core.bus import broker as rpc
from pylium.core.bus import events as ev
from pylium.core.bus.broker import NoService, RpcError, RpcTimeout  # noqa: F401  (re-exported)
from pylium.core.compress import Compressor

Handler = Callable[[Any], Awaitable[Any]]
YIELD_EVERY = 64  # messages handled between forced turns of the event loop
NOTICE_CHECK_NS = 1_000_000  # publishers look for unread subscription notices at most this often
NOTICE_WAIT_SECONDS = 0.1  # and their notice reader looks again after this long
_NOBLOCK_MORE = int(zmq.NOBLOCK | zmq.SNDMORE)
_raw_get = zmq.backend.Socket.get  # skips pyzmq's enum wrapping: this runs on every publish
_raw_send = zmq.backend.Socket.send  # and its checks for DRAFT options
_SNDMORE = int(zmq.SNDMORE)
_EVENTS, _POLLIN = int(zmq.EVENTS), int(zmq.POLLIN)
Spawn = Callable[[str, Callable[..., Awaitable[Any]]], None]
SMALL_PAYLOAD = 64  # bytes: kept as they are (compressing would not pay)


class StateFamily:
    """The state events in force of one family, by key: (topic, payload, rev). Payloads are
    kept compressed against the family's first sizeable one: they share their field names and
    much of their values (a `service.changed` of ~320 bytes keeps in ~50). Each entry is one
    bytes object (rev, topic, whether compressed, payload): a tuple and an int besides would
    cost ~0.1 KiB more per entry, per service with tens of thousands of services."""

    _HEAD = struct.Struct("<QB")  # rev; topic index, high bit: compressed

    def __init__(self) -> None:
        self._entries: dict[str, bytes] = {}
        self._topics: list[str] = []
        self._compressor: Compressor | None = None

    def put(self, key: str, topic: str, payload: bytes, rev: int) -> None:
        if topic not in self._topics:
            self._topics.append(topic)
        flags = self._topics.index(topic)
        if len(payload) >= SMALL_PAYLOAD:
            if self._compressor is None:
                self._compressor = Compressor(payload)
            payload, flags = self._compressor.compress(payload), flags | 0x80
        self._entries[key] = self._HEAD.pack(rev, flags) + payload

    def pop(self, key: str) -> None:
        self._entries.pop(key, None)

    def get(self, key: str) -> tuple[str, bytes, int] | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        rev, flags = self._HEAD.unpack_from(entry)
        payload = entry[self._HEAD.size:]
        return self._topics[flags & 0x7F], self._compressor.decompress(payload) if flags & 0x80 else payload, rev

    def __iter__(self):
        return iter(list(self._entries))


@dataclass(frozen=True)
class BusAddresses:
    """The ZeroMQ addresses of an agent's bus (inproc in the agent, ipc outside it)."""

    publish: str
    subscribe: str
    rpc: str
    rpc_service: str

    @classmethod
    def in_process(cls) -> BusAddresses:
        return cls(busmod.PROXY_IN, busmod.PROXY_OUT, "", "")  # requests go straight to the broker

    @classmethod
    def for_run_dir(cls, run_dir: str | Path) -> BusAddresses:
        p = busmod.BusPaths(Path(run_dir))
        return cls(p.publish, p.subscribe, p.rpc, p.rpc_service)


@dataclass(frozen=True)
class Received:
    """One event as a subscriber sees it."""

    topic: str
    header: ev.Header
    event: ev.Event


class _NoMetrics:
    """Stands in for the agent's counters in outside processes."""

    def __getattr__(self, name):
        return self

    def labels(self, *a):
        return self

    def inc(self, n=1):
        pass

    def observe(self, value):
        pass


# ============================================================================================
# Publishing
# ============================================================================================


class Publisher:
    """One publishing connection: validates, numbers and sends events; owns state families
    and replays their current objects to each new subscriber, followed by `<family>.synced`."""

    def __init__(self, ctx: zmq.asyncio.Context, endpoint: str, *, source: str, node: str,
                 registry: ev.Registry, metrics: Any, queue: int, spawn: Spawn):
        self.source, self.node, self.registry, self.metrics = source, node, registry, metrics
        self._sock = ctx.socket(zmq.XPUB)
        self._sock.setsockopt(zmq.XPUB_VERBOSE, 1)  # see every subscription: each one gets a replay
        self._sock.setsockopt(zmq.XPUB_NODROP, 1)  # a full queue is reported, not silently dropped
        self._sock.setsockopt(zmq.SNDHWM, queue)
        self._sock.setsockopt(zmq.LINGER, 1000)
        self._sock.connect(endpoint)
        self._send_now = zmq.Socket.shadow(self._sock.underlying)  # sync, non-blocking sends
        self._seq: dict[str, int] = {}
        self._state: dict[str, StateFamily] = {}
        self._owned: set[str] = set()
        self._snapshots: dict[str, Callable[[], Iterable[ev.Event]]] = {}  # families replayed from their owner
        self._family_rev: dict[str, int] = {}  # the last revision published in each of those
        self._last_rev = 0
        # Prefixes some subscriber holds (the proxy reports each one's last unsubscription), and
        # per topic whether any matches: what nobody receives is neither encoded nor sent.
        self._subscribed: set[str] = set()
        self._wanted: dict[str, bool] = {}
        self._notices_checked = 0
        self._unread_notices = False
        self.connected = anyio.Event()  # set once the proxy's first subscription arrived
        self._published = metrics.bus_published.labels(source)
        self._dropped = metrics.bus_dropped.labels(source, "publisher_queue_full")
        spawn(f"bus-replay:{source}", self._serve_replays)

    def owns(self, *families: str, snapshot: Callable[[], Iterable[ev.Event]] | None = None) -> None:
        """Answer subscriptions for these state families even while they are empty.
        `snapshot`: replay them from what it gives (their current events) instead of a copy
        of each event published."""
        unknown = set(families) - self.registry.families()
        if unknown:
            raise ValueError(f"unknown state families: {sorted(unknown)}")
        self._owned.update(families)
        if snapshot is not None:
            for family in families:
                self._snapshots[family] = snapshot
                self._state.pop(family, None)

    def publish(self, event: ev.Event, revision: int | None = None, *, encoded: bytes | None = None) -> int | None:
        """Send now, never blocking. Returns the sequence number, or None when the queue to
        the proxy is full (the message is dropped and counted). `encoded`: the event's payload
        if the caller already has it (it must equal what the event encodes to)."""
        topic = getattr(type(event), "topic", None)
        et = self.registry.types.get(topic) if topic else None
        if et is None or not isinstance(event, et.model):
            raise TypeError(f"{type(event).__name__} is not a registered event type")
        wanted = self.wants(topic)
        payload = encoded
        cached = et.kind == "state" and et.family not in self._snapshots
        if payload is None and (wanted or cached):
            payload = ev.encode(event)
        key = rev = None
        if et.kind == "state":
            key = str(getattr(event, et.key))
            rev = self._next_rev(revision)
            self._owned.add(et.family)
            if not cached:
                self._family_rev[et.family] = rev
        if cached:
            family = self._state.get(et.family)
            if family is None:
                family = self._state[et.family] = StateFamily()
            if et.deletes:
                family.pop(key)
            else:
                family.put(key, topic, payload, rev)
        seq = self._seq.get(topic, 0) + 1
        self._seq[topic] = seq
        if not wanted:
            self._published.inc()
            return seq
        header = ev.encode(ev.Header(v=ev.SCHEMA_VERSION, type=topic, source=self.source, node=self.node, seq=seq,
                                     time=time.time_ns(), key=key, rev=rev))
        sock = self._send_now
        try:  # the high-water mark is checked on a message's first frame only
            _raw_send(sock, topic.encode(), _NOBLOCK_MORE)
        except zmq.Again:
            self._dropped.inc()
            return None
        _raw_send(sock, header, _SNDMORE)
        _raw_send(sock, payload)
        self._notices_pending()
        self._published.inc()
        return seq

    def wants(self, topic: str) -> bool:
        """Would an event of this topic reach any subscriber now?"""
        wanted = self._wanted.get(topic)
        if wanted is None:
            wanted = self._wanted[topic] = any(topic.startswith(p) for p in self._subscribed)
        # Subscription notices not read yet may name this topic: yes, as libzmq would send it.
        return wanted or self._unread_notices or self._notices_pending()

    def _notices_pending(self) -> bool:
        """Are subscription notices waiting to be read? A send can swallow the socket's
        edge-triggered "readable" signal that the notice reader waits on, so a pending one is
        handed to pyzmq to wake it. Asked at most once a millisecond: it takes libzmq's locks."""
        now = time.monotonic_ns()
        if now - self._notices_checked < NOTICE_CHECK_NS:
            return False
        self._notices_checked = now
        if _raw_get(self._send_now, _EVENTS) & _POLLIN:
            self._unread_notices = True  # until the reader has them: every topic counts as wanted
            self._sock._schedule_remaining_events()
            return True
        return False

    def _next_rev(self, revision: int | None) -> int:
        # Automatic revisions follow the clock, so they keep growing across agent restarts.
        rev = revision if revision is not None else max(self._last_rev + 1, time.time_ns())
        self._last_rev = max(self._last_rev, rev)
        return rev

    async def _serve_replays(self) -> None:
        while True:
            note = None
            with anyio.move_on_after(NOTICE_WAIT_SECONDS):  # a signal swallowed by a send: look again
                note = await self._sock.recv()
            if note is None:
                continue
            self.connected.set()
            notes = [note]
            while True:  # every notice waiting now counts before any replay (replays take turns)
                try:
                    notes.append(self._send_now.recv(zmq.NOBLOCK))
                except zmq.Again:
                    break
            self._unread_notices = False
            replays = []
            for note in notes:
                prefix = note[1:].decode(errors="replace")
                if note[:1] == b"\x01":
                    self._subscribed.add(prefix)
                    if note[1:2] != b"\x00":  # \x00...: the bus's anchor, not a subscriber
                        replays.append(prefix)
                else:
                    self._subscribed.discard(prefix)
            self._wanted.clear()
            for prefix in replays:
                await self._replay(prefix)

    def _cached(self, family: str, prefix: str) -> Iterator[tuple[str, str, bytes, int]]:
        """(topic, key, payload, rev) of the family's objects kept for replay."""
        objects = self._state.get(family, StateFamily())
        for key in objects:
            entry = objects.get(key)  # read at send time: never older than what was published
            if entry is not None and entry[0].startswith(prefix):
                topic, payload, rev = entry
                yield topic, key, payload, rev

    def _from_owner(self, family: str, prefix: str) -> Iterator[tuple[str, str, bytes, int]]:
        """The same, from the owner's snapshot. Each object is as current as the family's last
        revision when it is read: that revision goes with it."""
        for event in self._snapshots[family]():
            et = self.registry.types[type(event).topic]
            if et.topic.startswith(prefix):
                rev = self._family_rev.get(family) or self._next_rev(None)
                yield et.topic, str(getattr(event, et.key)), ev.encode(event), rev

    async def _replay(self, prefix: str) -> None:
        for family in sorted(self._owned):
            count = 0
            objects = self._from_owner if family in self._snapshots else self._cached
            for topic, key, payload, rev in objects(family, prefix):
                header = ev.Header(v=ev.SCHEMA_VERSION, type=topic, source=self.source, node=self.node,
                                   seq=self._seq.get(topic, 0), time=time.time_ns(), key=key, rev=rev,
                                   replay=True)
                await self._sock.send_multipart([topic.encode(), ev.encode(header), payload])
                count += 1
                if count % YIELD_EVERY == 0:
                    await anyio.lowlevel.checkpoint()
            synced = f"{family}.{ev.SYNCED}"
            if synced.startswith(prefix):
                seq = self._seq.get(synced, 0) + 1
                self._seq[synced] = seq
                header = ev.Header(v=ev.SCHEMA_VERSION, type=synced, source=self.source, node=self.node,
                                   seq=seq, time=time.time_ns())
                await self._sock.send_multipart([synced.encode(), ev.encode(header),
                                                 ev.encode(ev.Synced(family=family, count=count))])
            if count:
                self.metrics.bus_replayed.labels(self.source).inc(count)

    def close(self) -> None:
        self._sock.close()


# ============================================================================================
# Subscribing
# ============================================================================================


class Subscription:
    """An async iterator of :class:`Received` events for some topic prefixes. Counts what it
    lost (sequence gaps) and skips what it cannot decode (counted, logged once per source)."""

    def __init__(self, ctx: zmq.asyncio.Context, endpoint: str, prefixes: tuple[str, ...], *,
                 registry: ev.Registry, name: str, metrics: Any, queue: int, rejects: Any = None):
        self.registry, self.name, self.metrics, self.rejects = registry, name, metrics, rejects
        self._sock = ctx.socket(zmq.SUB)
        self._sock.setsockopt(zmq.RCVHWM, queue)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.connect(endpoint)
        for p in prefixes or ("",):
            self._sock.subscribe(p.encode())
        self._last: dict[tuple[str, str, str], int] = {}
        self._since_yield = 0
        self.lost = 0

    def __aiter__(self) -> AsyncIterator[Received]:
        return self

    async def __anext__(self) -> Received:
        while True:
            # Awaiting a ready socket does not yield to the event loop: under a flood, give
            # other tasks (the API) a turn every so often.
            self._since_yield += 1
            if self._since_yield >= YIELD_EVERY:
                self._since_yield = 0
                await anyio.lowlevel.checkpoint()
            frames = await self._sock.recv_multipart()
            received = self._decode(frames)
            if received is not None:
                return received

    def _decode(self, frames: list[bytes]) -> Received | None:
        try:
            topic_raw, header_raw, payload = frames
            header = ev.decode_header(header_raw)
            if header.v != ev.SCHEMA_VERSION:  # an agent of another version: its payloads may mean other things
                raise ValueError(f"schema version {header.v}, this subscriber speaks {ev.SCHEMA_VERSION}")
            topic = topic_raw.decode()
            event = self.registry.decode(topic, payload)
        except (ValueError, ev.UnknownTopic, msgspec.DecodeError, msgspec.ValidationError) as e:
            if self.rejects is not None:
                self.rejects.reject(f"subscriber:{self.name}", "undecodable", str(e))
            return None
        if not header.replay:
            stream = (header.node, header.source, topic)
            last = self._last.get(stream)
            if last is not None and header.seq > last + 1:
                gap = header.seq - last - 1
                self.lost += gap
                self.metrics.bus_lost.labels(self.name).inc(gap)
            self._last[stream] = header.seq
        return Received(topic, header, event)

    def close(self) -> None:
        self._sock.close()


# ============================================================================================
# Requests
# ============================================================================================


class _Requester:
    """Outside the agent: a DEALER to rpc.sock; one reader task matches answers to requests."""

    def __init__(self, ctx: zmq.asyncio.Context, endpoint: str, spawn: Spawn, name: str):
        self._sock = ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.connect(endpoint)
        self._ids = itertools.count(1)
        self._waiting: dict[bytes, list[Any]] = {}
        spawn(f"bus-replies:{name}", self._read_replies)

    async def _read_replies(self) -> None:
        while True:
            frames = await self._sock.recv_multipart()
            if len(frames) == 4 and frames[1] in self._waiting:
                slot = self._waiting[frames[1]]
                slot[1] = (frames[2], frames[3])
                slot[0].set()

    async def request(self, method: str, payload: Any, timeout: float) -> Any:
        corr = next(self._ids).to_bytes(8, "big")
        slot: list[Any] = [anyio.Event(), None]
        self._waiting[corr] = slot
        try:
            await self._sock.send_multipart([b"", corr, method.encode(), ev.encode(payload)])
            with anyio.move_on_after(timeout):
                await slot[0].wait()
        finally:
            self._waiting.pop(corr, None)
        if slot[1] is None:
            raise RpcTimeout("timeout", f"request {method!r} got no answer within {timeout:g}s")
        return rpc.raise_for(*slot[1])

    def close(self) -> None:
        self._sock.close()


class _Service:
    """Outside the agent: a DEALER to rpc-svc.sock serving methods; each request in its own
    task. Pings (and re-registers) every second, so the broker forgets dead processes and a
    restarted agent learns about live ones."""

    def __init__(self, ctx: zmq.asyncio.Context, endpoint: str, spawn: Spawn, name: str):
        self._sock = ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 1000)
        self._sock.connect(endpoint)
        self._handlers: dict[str, Handler] = {}
        self._registered = anyio.Event()
        self._spawn, self._name = spawn, name
        spawn(f"bus-service:{name}", self._serve)
        spawn(f"bus-service-ping:{name}", self._ping)

    async def add(self, method: str, handler: Handler) -> None:
        if method in self._handlers:
            raise ValueError(f"method {method!r} is already served here")
        self._handlers[method] = handler
        self._registered = anyio.Event()
        await self._register()
        with anyio.fail_after(5):
            await self._registered.wait()

    async def _register(self) -> None:
        await self._sock.send_multipart([b"", rpc.REGISTER, ev.encode(sorted(self._handlers))])

    async def _ping(self) -> None:
        while True:
            await anyio.sleep(1)
            if self._handlers:
                await self._register()
            await self._sock.send_multipart([b"", rpc.PING])

    async def _serve(self) -> None:
        while True:
            frames = await self._sock.recv_multipart()
            if len(frames) == 2 and frames[1] == rpc.REGISTERED:
                self._registered.set()
            elif len(frames) == 5:
                self._spawn("bus-request", self._answer_one(*frames[1:]))

    def _answer_one(self, client: bytes, corr: bytes, method: bytes, payload: bytes):
        async def answer() -> None:
            handler = self._handlers.get(method.decode(errors="replace"))
            if handler is None:
                outcome, body = rpc.NO_SERVICE, rpc.error_body("no_service", f"{method!r} is not served by {self._name}")
            else:
                outcome, body = await rpc.invoke(handler, payload, self._name)
            await self._sock.send_multipart([b"", client, corr, outcome, body])

        return answer

    async def unregister_all(self) -> None:
        if self._handlers:
            await self._sock.send_multipart([b"", rpc.UNREGISTER, ev.encode(sorted(self._handlers))])

    def close(self) -> None:
        self._sock.close()


# ============================================================================================
# The facade a plugin gets
# ============================================================================================


class BusClient:
    """``ctx.bus``: one plugin's connection to the bus. Sockets are created on first use."""

    def __init__(self, *, ctx: zmq.asyncio.Context, source: str, node: str, registry: ev.Registry,
                 addresses: BusAddresses, spawn: Spawn, metrics: Any = None, rejects: Any = None,
                 publisher_queue: int = 100_000, subscriber_queue: int = 100_000,
                 request_timeout: float = 5.0, broker: rpc.Broker | None = None):
        self.source, self.node, self.registry = source, node, registry
        self._broker = broker  # in the agent: requests and services go straight to the broker
        self._ctx, self._addresses, self._spawn = ctx, addresses, spawn
        self._metrics = metrics or _NoMetrics()
        self._rejects = rejects
        self._publisher_queue, self._subscriber_queue = publisher_queue, subscriber_queue
        self.request_timeout = request_timeout
        self._publisher: Publisher | None = None
        self._requester: _Requester | None = None
        self._service: _Service | None = None
        self._subscriptions: list[Subscription] = []

    @property
    def publisher(self) -> Publisher:
        if self._publisher is None:
            self._publisher = Publisher(self._ctx, self._addresses.publish, source=self.source, node=self.node,
                                        registry=self.registry, metrics=self._metrics,
                                        queue=self._publisher_queue, spawn=self._spawn)
        return self._publisher

    async def ready(self, timeout: float = 5.0) -> None:
        """Wait until the proxy knows this client's publisher, so nothing published is lost to a
        not-yet-connected socket."""
        with anyio.fail_after(timeout):
            await self.publisher.connected.wait()

    def publish(self, event: ev.Event, revision: int | None = None, *, encoded: bytes | None = None) -> int | None:
        """Publish an event of a registered type (validated); state events update this
        plugin's replay cache. Never blocks; returns the sequence number or None if dropped.
        Nothing is sent while no subscriber's prefix matches the topic."""
        return self.publisher.publish(event, revision, encoded=encoded)

    def wants(self, topic: str) -> bool:
        """Whether some subscriber would receive an event of `topic` now: what nobody receives
        need not be built (publish() already skips sending it)."""
        return self.publisher.wants(topic)

    def owns(self, *families: str, snapshot: Callable[[], Iterable[ev.Event]] | None = None) -> None:
        """Replay (and mark synced) these state families for new subscribers, even when empty.
        With `snapshot`, the bus keeps no copy of what is published in them: each replay
        iterates `snapshot()`, the families' current events, read lazily (a replay yields to
        the event loop between objects: iterate over a copy of your keys, skip those gone)."""
        self.publisher.owns(*families, snapshot=snapshot)

    @asynccontextmanager
    async def subscribe(self, *prefixes: str) -> AsyncIterator[Subscription]:
        """``async with ctx.bus.subscribe("plugin.") as events: async for e in events: ...``"""
        sub = Subscription(self._ctx, self._addresses.subscribe, prefixes, registry=self.registry,
                           name=self.source, metrics=self._metrics, queue=self._subscriber_queue,
                           rejects=self._rejects)
        self._subscriptions.append(sub)
        try:
            yield sub
        finally:
            self._subscriptions.remove(sub)
            sub.close()

    async def serve(self, method: str, handler: Handler) -> None:
        """Answer requests for `method` with ``await handler(payload)``. Raise RpcError(code,
        message) for a clear error; any other exception is answered as code "internal"."""
        if self._broker is not None:
            self._broker.serve(self.source, method, handler)
            return
        if self._service is None:
            self._service = _Service(self._ctx, self._addresses.rpc_service, self._spawn, self.source)
        await self._service.add(method, handler)

    async def request(self, method: str, payload: Any = None, timeout: float | None = None) -> Any:
        """Call whichever plugin serves `method`. Raises NoService, RpcTimeout or RpcError."""
        timeout = timeout or self.request_timeout
        if self._broker is None and self._requester is None:
            self._requester = _Requester(self._ctx, self._addresses.rpc, self._spawn, self.source)
        start = time.monotonic()
        outcome = "ok"
        try:
            if self._broker is not None:
                return await self._broker.call(method, payload, timeout)
            return await self._requester.request(method, payload, timeout)
        except NoService:
            outcome = "no_service"
            raise
        except RpcTimeout:
            outcome = "timeout"
            raise
        except RpcError:
            outcome = "error"
            raise
        finally:
            self._metrics.bus_request_seconds.labels(outcome).observe(time.monotonic() - start)

    async def aclose(self) -> None:
        if self._broker is not None:
            self._broker.unserve(self.source)
        if self._service is not None:
            with anyio.move_on_after(1):
                await self._service.unregister_all()
        for part in (self._service, self._requester, self._publisher, *self._subscriptions):
            if part is not None:
                part.close()


@asynccontextmanager
async def connect(run_dir: str | Path, *, source: str, node: str | None = None,
                  registry: ev.Registry | None = None) -> AsyncIterator[BusClient]:
    """A bus client for a plugin that runs in its own process, next to an agent."""
    ctx = zmq.asyncio.Context()
    try:
        async with anyio.create_task_group() as tg:
            client = BusClient(ctx=ctx, source=source, node=node or os.uname().nodename,
                               registry=registry or ev.VOCABULARY, addresses=BusAddresses.for_run_dir(run_dir),
                               spawn=lambda name, fn: tg.start_soon(fn, name=name))
            try:
                await client.ready()
                yield client
            finally:
                await client.aclose()
                tg.cancel_scope.cancel()
    finally:
        ctx.destroy(linger=0)

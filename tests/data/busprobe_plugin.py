"""Test plugin: publishes, subscribes, serves and requests over the bus on command (API)."""

from contextlib import asynccontextmanager

import anyio
import msgspec

from pylium.core.api_for_plugins import ApiError, Event, RpcError, hookimpl


class ProbeTick(Event, frozen=True):
    """A test stream event."""

    n: int
    text: str = ""


class QuietTick(Event, frozen=True):
    """A stream event outside the plugin's own subscription ("probe.")."""

    n: int


class ProbeItem(Event, frozen=True):
    """A test state object."""

    name: str
    value: int


class ProbeSnap(Event, frozen=True):
    """A test state object replayed from the plugin's own state (owns(..., snapshot=))."""

    name: str
    value: int


class BusProbe:
    def __init__(self):
        self.received = []
        self.lost = 0
        self.snaps: dict[str, int] = {}

    @hookimpl
    def pylium_declare(self, declare):
        declare.event_type("probe.tick", ProbeTick)
        declare.event_type("probe.item", ProbeItem, state_family="probe.item", key="name")
        declare.event_type("quiet.tick", QuietTick)
        declare.event_type("probe.snap", ProbeSnap, state_family="probe.snap", key="name")
        declare.api_route("POST", "/v1/busprobe/publish", self.publish)
        declare.api_route("GET", "/v1/busprobe/received", self.get_received)
        declare.api_route("POST", "/v1/busprobe/request", self.request)

    @hookimpl
    def pylium_lifespan(self, ctx):
        return self._life(ctx)

    @asynccontextmanager
    async def _life(self, ctx):
        self.ctx = ctx
        ctx.bus.owns("probe.item")
        ctx.bus.owns("probe.snap", snapshot=self._snapshot)
        await ctx.bus.serve("probe.echo", self.echo)
        await ctx.bus.serve("probe.slow", self.slow)
        ready = anyio.Event()
        ctx.start_task("listen", self._listen, ready)
        await ready.wait()
        yield

    async def _listen(self, ready):
        async with self.ctx.bus.subscribe("probe.") as events:
            ready.set()
            async for e in events:
                self.received.append({"topic": e.topic, "seq": e.header.seq, "replay": e.header.replay,
                                      "payload": msgspec.to_builtins(e.event)})
                self.lost = events.lost

    async def publish(self, request):
        body = request.body or {}
        seqs = []
        for i in range(body.get("ticks", 0)):
            seqs.append(self.ctx.bus.publish(ProbeTick(n=i, text=body.get("text", ""))))
        for i in range(body.get("quiet", 0)):
            seqs.append(self.ctx.bus.publish(QuietTick(n=i)))
        for i in range(body.get("items", 0)):
            self.ctx.bus.publish(ProbeItem(name=f"item-{i}", value=body.get("value", i)))
        for i in range(body.get("snaps", 0)):
            self.snaps[f"snap-{i}"] = body.get("value", i)
            self.ctx.bus.publish(ProbeSnap(name=f"snap-{i}", value=self.snaps[f"snap-{i}"]))
        return {"seqs": seqs}

    def _snapshot(self):
        for name in list(self.snaps):
            if name in self.snaps:
                yield ProbeSnap(name=name, value=self.snaps[name])

    async def get_received(self, request):
        return {"events": self.received, "lost": self.lost}

    async def request(self, request):
        b = request.body
        try:
            return {"result": await self.ctx.bus.request(b["method"], b.get("payload"), b.get("timeout"))}
        except RpcError as e:
            raise ApiError(502, f"{type(e).__name__}: {e.code}: {e.message}") from None

    async def echo(self, payload):
        if not isinstance(payload, dict) or "text" not in payload:
            raise RpcError("bad_request", "payload.text: required")
        return {"echo": payload["text"], "by": "busprobe"}

    async def slow(self, payload):
        await anyio.sleep(payload.get("seconds", 10))
        return {"done": True}

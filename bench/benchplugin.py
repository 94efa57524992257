"""Benchmark plugin: publishes flow-sized events at a given rate, answers echo requests."""

import time
from contextlib import asynccontextmanager

import anyio

from pylium.core.api_for_plugins import Event, hookimpl


class BenchFlow(Event, frozen=True):
    """A flow-sized benchmark event."""

    n: int
    src: str
    dst: str
    sport: int
    dport: int
    proto: str
    verdict: str
    bytes: int


class BenchDone(Event, frozen=True):
    """End of a benchmark run."""

    sent: int


class BenchPub:
    def __init__(self):
        self.status = {"sent": 0, "dropped": 0, "done": True, "elapsed": 0.0}

    @hookimpl
    def pylium_declare(self, declare):
        declare.event_type("bench.flow", BenchFlow)
        declare.event_type("bench.done", BenchDone)
        declare.api_route("POST", "/v1/benchpub/run", self.run)
        declare.api_route("GET", "/v1/benchpub/status", self.get_status)

    @hookimpl
    def pylium_lifespan(self, ctx):
        return self._life(ctx)

    @asynccontextmanager
    async def _life(self, ctx):
        self.ctx = ctx
        await ctx.bus.serve("bench.echo", self.echo)
        yield

    async def echo(self, payload):
        return payload

    async def run(self, request):
        body = request.body
        self.status = {"sent": 0, "dropped": 0, "done": False, "elapsed": 0.0}
        self.ctx.start_task("publish", self._publish, body.get("rate", 0), body["seconds"])
        return {"started": True}

    async def get_status(self, request):
        return self.status

    async def _publish(self, rate, seconds):
        """rate 0: as fast as possible. Otherwise batches every millisecond, catching up."""
        publish = self.ctx.bus.publish
        sent = dropped = 0
        start = time.monotonic()
        batch = 200 if not rate else max(1, rate // 1000)
        total = int(rate * seconds) if rate else None
        while (sent < total) if rate else (time.monotonic() - start < seconds):
            elapsed = time.monotonic() - start
            due = min(int(elapsed * rate) + batch, total) if rate else sent + batch
            while sent < due:
                seq = publish(BenchFlow(n=sent, src="10.0.1.17", dst="10.0.2.33", sport=40000 + sent % 20000,
                                        dport=8080, proto="TCP", verdict="FORWARDED", bytes=1448))
                sent += 1
                dropped += seq is None
            self.status.update(sent=sent, dropped=dropped)
            await anyio.sleep(0.001 if rate else 0)
        self.status.update(elapsed=time.monotonic() - start)
        await anyio.sleep(0.2)
        publish(BenchDone(sent=sent))
        self.status["done"] = True

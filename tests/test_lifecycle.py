"""The lifecycle in-process: declare, ordered start, reverse stop, start failure unwinding,
failing tasks, bounded shutdown, health and status details."""

from __future__ import annotations

import time
import uuid
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest

from pylium.core.agent.agent import Agent, AgentOptions
from pylium.core.hookspecs import hookimpl
from pylium.core.plugin_api import Health
from pylium.core.agent.plugin_host import PluginInfo, PluginLoadError


class Recorder:
    """A plugin that records its lifecycle into a shared journal."""

    def __init__(self, name: str, journal: list, after=(), fail_start=False, fail_stop=False, hang_stop=False):
        self.name, self.journal, self._after = name, journal, after
        self.fail_start, self.fail_stop, self.hang_stop = fail_start, fail_stop, hang_stop

    @hookimpl
    def pylium_declare(self, declare):
        self.journal.append(("declare", self.name))
        declare.after(*self._after)

    @hookimpl
    def pylium_lifespan(self, ctx):
        return self._life(ctx)

    @asynccontextmanager
    async def _life(self, ctx):
        self.journal.append(("start", self.name))
        await anyio.sleep(0)
        if self.fail_start:
            raise RuntimeError("disk on fire")
        try:
            yield
        finally:
            self.journal.append(("stop", self.name))
            if self.hang_stop:
                await anyio.sleep(3600)
            if self.fail_stop:
                raise RuntimeError("cannot clean up")


def _options(tmp_path: Path, **kw) -> AgentOptions:
    return AgentOptions(node_name=f"t-{uuid.uuid4().hex[:6]}", state_dir=tmp_path / "state",
                        run_dir=tmp_path / "run", bpf_root=tmp_path / "bpf", **kw)


def _load(tmp_path, *plugins, sets=("prometheus.port=0",), **kw) -> Agent:
    extra = [PluginInfo(p.name, f"tests:{type(p).__name__}", "tests", "0", obj=p) for p in plugins]
    return Agent.load(_options(tmp_path, **kw), sets=list(sets), entries=[], extra=extra)


async def _run_until(agent: Agent, condition, timeout=10) -> int:
    stop = anyio.Event()
    code = None

    async def runner():
        nonlocal code
        code = await agent.run(stop, handle_signals=False)

    async with anyio.create_task_group() as tg:
        tg.start_soon(runner)
        with anyio.fail_after(timeout):
            while not condition():
                await anyio.sleep(0.01)
        stop.set()
    return code


def test_start_in_order_stop_in_reverse(tmp_path):
    journal: list = []
    a, b, c = Recorder("a", journal), Recorder("b", journal, after=["c"]), Recorder("c", journal)
    agent = _load(tmp_path, a, b, c)
    assert agent.order == ["a", "c", "b"]  # b moved after c, otherwise base order kept
    code = anyio.run(_run_until, agent, lambda: agent.state == "running")
    assert code == 0
    assert [e for e in journal if e[0] != "declare"] == [
        ("start", "a"), ("start", "c"), ("start", "b"), ("stop", "b"), ("stop", "c"), ("stop", "a")]
    assert {ctx.health.health for ctx in agent.contexts.values()} == {Health.STOPPED}


def test_start_failure_unwinds_started_plugins(tmp_path):
    journal: list = []
    plugins = [Recorder("a", journal), Recorder("b", journal), Recorder("c", journal, fail_start=True),
               Recorder("d", journal)]
    agent = _load(tmp_path, *plugins)
    code = anyio.run(agent.run, None, False)
    assert code == 1
    assert "plugin c failed to start: RuntimeError: disk on fire" in agent.failure
    lifecycle = [e for e in journal if e[0] != "declare"]
    assert lifecycle == [("start", "a"), ("start", "b"), ("start", "c"), ("stop", "b"), ("stop", "a")]
    assert agent.contexts["c"].health.message.startswith("failed to start")
    assert not (tmp_path / "run" / "pylium.sock").exists()


def test_declare_runs_before_any_start(tmp_path):
    journal: list = []
    agent = _load(tmp_path, Recorder("a", journal), Recorder("b", journal))
    assert journal == [("declare", "a"), ("declare", "b")]  # at load, no I/O, nothing started
    anyio.run(_run_until, agent, lambda: agent.state == "running")


def test_start_order_cycle_is_a_load_error(tmp_path):
    journal: list = []
    with pytest.raises(PluginLoadError, match="cycle"):
        _load(tmp_path, Recorder("a", journal, after=["b"]), Recorder("b", journal, after=["a"]))


def test_failing_stop_is_reported_and_others_still_stop(tmp_path):
    journal: list = []
    agent = _load(tmp_path, Recorder("a", journal), Recorder("b", journal, fail_stop=True))
    code = anyio.run(_run_until, agent, lambda: agent.state == "running")
    assert code == 1
    assert ("stop", "a") in journal and ("stop", "b") in journal


def test_hanging_stop_is_forced_after_the_timeout(tmp_path):
    journal: list = []
    agent = _load(tmp_path, Recorder("a", journal), Recorder("b", journal, hang_stop=True), stop_timeout=0.5)


    t0 = time.monotonic()
    code = anyio.run(_run_until, agent, lambda: agent.state == "running")
    assert code == 1
    assert time.monotonic() - t0 < 5


class Worker:
    """A plugin with a named task; optionally the task crashes."""

    name = "worker"

    def __init__(self, crash=False):
        self.crash, self.ticks, self.cancelled = crash, 0, False

    @hookimpl
    def pylium_lifespan(self, ctx):
        return self._life(ctx)

    @asynccontextmanager
    async def _life(self, ctx):
        ctx.start_task("ticker", self._tick)
        yield
        assert self.cancelled, "tasks must be cancelled before the lifespan exits"

    async def _tick(self):
        try:
            while True:
                self.ticks += 1
                if self.crash and self.ticks == 3:
                    raise ValueError("tick overflow")
                await anyio.sleep(0.01)
        except anyio.get_cancelled_exc_class():
            self.cancelled = True
            raise

    @hookimpl
    def pylium_status_details(self, ctx):
        return {"Worker": f"{self.ticks} ticks, health {ctx.health.health.value}"}


def test_tasks_run_and_are_cancelled_before_lifespan_exit(tmp_path):
    w = Worker()
    agent = _load(tmp_path, w)
    code = anyio.run(_run_until, agent, lambda: w.ticks >= 5)
    assert code == 0 and w.cancelled


def test_crashing_task_degrades_plugin_and_stops_agent(tmp_path):
    w = Worker(crash=True)
    agent = _load(tmp_path, w)
    code = anyio.run(agent.run, None, False)
    assert code == 1
    assert "plugin worker: task ticker failed: ValueError: tick overflow" in agent.failure


def test_status_reports_health_and_details(tmp_path):
    w = Worker()
    agent = _load(tmp_path, w)
    seen = {}

    def check():
        if w.ticks >= 2 and agent.state == "running":
            seen.update(agent.status())
            return True
        return False

    anyio.run(_run_until, agent, check)
    assert seen["plugins"][0]["name"] == "worker" and seen["plugins"][0]["health"] == "OK"
    assert seen["details"]["Worker"].endswith("health OK")
    assert seen["state"] == "running"


def test_lifespan_must_return_an_async_context_manager(tmp_path):
    class Wrong:
        name = "wrong"

        @hookimpl
        def pylium_lifespan(self):
            return 42

    agent = _load(tmp_path, Wrong())
    assert anyio.run(agent.run, None, False) == 1
    assert "must return an async context manager" in agent.failure


def test_second_agent_on_same_dirs_is_refused(tmp_path):
    from pylium.core.agent.agent import AgentError

    first = _load(tmp_path)
    second = _load(tmp_path)

    async def both():
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(first.run, stop, False)
            with anyio.fail_after(5):
                while first.state != "running":
                    await anyio.sleep(0.01)
            with pytest.raises(AgentError, match="another pylium-agent"):
                await second.run(None, False)
            stop.set()

    anyio.run(both)


def test_a_lifespan_written_as_an_async_generator_runs_and_stops(tmp_path):
    journal: list = []

    class Gen:
        name = "gen"

        @hookimpl
        async def pylium_lifespan(self, ctx):
            journal.append("start")
            yield
            journal.append("stop")

    agent = _load(tmp_path, Gen())
    assert anyio.run(_run_until, agent, lambda: agent.state == "running") == 0
    assert journal == ["start", "stop"]


class _Owns:
    """A plugin declaring endpoint fields and ipcache owners."""

    def __init__(self, name, fields=(), owners=()):
        self.name, self.fields, self.owners = name, fields, owners

    @hookimpl
    def pylium_declare(self, declare):
        declare.endpoint_fields(*self.fields)
        for owner in self.owners:
            declare.ipcache_owner(owner, 1)


def test_an_endpoint_field_has_one_owner(tmp_path):
    with pytest.raises(PluginLoadError, match="plugin b: endpoint field 'identity' is already owned by a"):
        _load(tmp_path, _Owns("a", ["identity"]), _Owns("b", ["mtu", "identity"]))
    with pytest.raises(PluginLoadError, match=r"'color' is not a field plugins set \(they are: host_ifname"):
        _load(tmp_path, _Owns("a", ["color"]))
    with pytest.raises(PluginLoadError, match="plugin a: ipcache owner 'x' is declared twice"):
        _load(tmp_path, _Owns("a", owners=["x", "x"]))
    agent = _load(tmp_path, _Owns("a", ["identity"], ["x"]), _Owns("b", ["mtu"], ["x"]))
    assert agent.declared.owned_fields == {"a": ["identity"], "b": ["mtu"]}
    assert [o for o, _, _ in agent.declared.ipcache_owners] == ["a/x", "b/x"]  # names are per plugin


def test_each_plugin_sees_its_own_settings_and_the_cores_config(tmp_path):
    from pydantic import Field

    from pylium.core.config import Section

    class Mine(Section):
        class Bpf(Section):
            mine: int = Field(1)

        bpf: Bpf = Field(default_factory=Bpf)
        flavour: str = "plain"

    seen = {}

    class Configured:
        name = "configured"

        @hookimpl
        def pylium_config_model(self):
            return Mine

        @hookimpl
        def pylium_declare(self, declare):
            seen["declare"] = (declare.settings.flavour, declare.settings.bpf.mine, declare.config.cluster.name)

        @hookimpl
        async def pylium_lifespan(self, ctx):
            seen["ctx"] = (type(ctx.settings).__name__, hasattr(ctx.config, "flavour"),
                           hasattr(ctx.config.bpf, "mine"), hasattr(ctx.settings.bpf, "monitorAggregation"))
            yield

    agent = _load(tmp_path, Configured(), sets=("prometheus.port=0", "flavour=spicy", "bpf.mine=7",
                                                "cluster.name=blue"))
    anyio.run(_run_until, agent, lambda: agent.state == "running")
    assert seen == {"declare": ("spicy", 7, "blue"), "ctx": ("Mine", False, False, False)}


def test_a_plugins_routes_answer_503_while_it_is_not_running(tmp_path):
    """The core answers for a plugin that is starting or stopping: its handlers never run
    without their plugin."""
    from pylium.core.cli.client import Client

    answers: list = []

    class Slow:
        name = "slow"

        def __init__(self):
            self.go = None

        @hookimpl
        def pylium_declare(self, declare):
            declare.api_route("GET", "/v1/slow", self.handler)

        async def handler(self, request):
            return {"served": True}

        @hookimpl
        async def pylium_lifespan(self, ctx):
            self.go = anyio.Event()
            await self.go.wait()
            yield

    slow = Slow()
    agent = _load(tmp_path, slow)
    client = Client(agent.options.api_socket, timeout=5)

    async def scenario():
        while slow.go is None or not agent.options.api_socket.exists():
            await anyio.sleep(0.01)
        answers.append(await anyio.to_thread.run_sync(client.request, "GET", "/v1/slow"))
        slow.go.set()
        while agent.state != "running":
            await anyio.sleep(0.01)
        answers.append(await anyio.to_thread.run_sync(client.request, "GET", "/v1/slow"))

    async def main():
        async with anyio.create_task_group() as tg:
            tg.start_soon(scenario)
            await _run_until(agent, lambda: len(answers) == 2)

    anyio.run(main)
    assert answers == [(503, {"error": "slow is not running (starting)"}), (200, {"served": True})]

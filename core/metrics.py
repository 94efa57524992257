"""The agent's own Prometheus metrics; Cilium's names where Cilium has an equivalent."""

from __future__ import annotations

import platform
from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily

from pylium.core.plugin_api import Health

_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())


class _ProxyCollector:
    """Message counts of the bus proxy, read from libzmq when scraped."""

    def __init__(self, stats: Callable[[], dict[str, int]]):
        self._stats = stats

    def collect(self):
        stats = self._stats()
        family = CounterMetricFamily("pylium_bus_proxy_messages", "Messages through the bus proxy",
                                     labels=["side", "direction"])
        for side in ("frontend", "backend"):
            for direction in ("in", "out"):
                value = stats.get(f"{side}_{direction}_msgs")
                if value is not None:
                    family.add_metric([side, direction], value)
        yield family


class AgentMetrics:
    """One registry per agent, so several agents can live in one test process."""

    def __init__(self, version: str, revision: str = ""):
        r = self.registry = CollectorRegistry()
        # Cilium exposes its build as cilium_version{version,revision,arch} = 1.
        Gauge("cilium_version", "Agent version", ["version", "revision", "arch"], registry=r).labels(
            version, revision, _ARCH).set(1)
        self.bootstrap = Gauge("cilium_agent_bootstrap_seconds", "Duration of agent bootstrap phases",
                               ["scope", "outcome"], registry=r)
        self.plugin_health = Gauge("pylium_plugin_health", "1 for the plugin's current health state, 0 for the others",
                                   ["plugin", "status"], registry=r)
        self.hook_duration = Histogram(
            "pylium_hook_duration_seconds", "Time spent in one plugin's implementation of one hook",
            ["plugin", "hook"], buckets=(0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30), registry=r)
        # --- event bus ---
        self.bus_published = Counter("pylium_bus_published", "Events published by in-process publishers",
                                     ["source"], registry=r)
        self.bus_dropped = Counter("pylium_bus_dropped", "Events the agent dropped because a queue was full",
                                   ["source", "reason"], registry=r)
        self.bus_rejected = Counter("pylium_bus_rejected",
                                    "Bus messages rejected as malformed, oversized, of unknown topic or schema",
                                    ["reason"], registry=r)
        self.bus_lost = Counter("pylium_bus_lost", "Events in-process subscribers missed (sequence gaps)",
                                ["subscriber"], registry=r)
        self.bus_replayed = Counter("pylium_bus_replayed", "State events replayed to new subscribers",
                                    ["source"], registry=r)
        self.bus_requests = Counter("pylium_bus_requests", "Requests routed by the bus broker, by outcome",
                                    ["outcome"], registry=r)
        self.bus_request_seconds = Histogram(
            "pylium_bus_request_duration_seconds", "Round trip of requests made by in-process plugins",
            ["outcome"], buckets=(0.0001, 0.0002, 0.0005, 0.001, 0.005, 0.01, 0.1, 1, 5), registry=r)

    def watch_proxy(self, stats: Callable[[], dict[str, int]]) -> None:
        self.registry.register(_ProxyCollector(stats))

    def set_health(self, plugin: str, health: Health) -> None:
        for state in Health:
            self.plugin_health.labels(plugin, state.value).set(1 if state is health else 0)

    def observe_hook(self, plugin: str, hook: str, seconds: float) -> None:
        self.hook_duration.labels(plugin, hook).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)

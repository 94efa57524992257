"""The agent's own Prometheus metrics; Cilium's names where Cilium has an equivalent."""

from __future__ import annotations

import platform

from prometheus_client import CollectorRegistry, Gauge, Histogram, generate_latest

from pylium.core.plugin_api import Health

_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())


class AgentMetrics:
    """One registry per agent, so several agents can live in one test process."""

    def __init__(self, version: str, revision: str = ""):
        self.registry = CollectorRegistry()
        # Cilium exposes its build as cilium_version{version,revision,arch} = 1.
        Gauge("cilium_version", "Agent version", ["version", "revision", "arch"], registry=self.registry).labels(
            version, revision, _ARCH
        ).set(1)
        self.bootstrap = Gauge(
            "cilium_agent_bootstrap_seconds",
            "Duration of agent bootstrap phases",
            ["scope", "outcome"],
            registry=self.registry,
        )
        self.plugin_health = Gauge(
            "pylium_plugin_health",
            "1 for the plugin's current health state, 0 for the others",
            ["plugin", "status"],
            registry=self.registry,
        )
        self.hook_duration = Histogram(
            "pylium_hook_duration_seconds",
            "Time spent in one plugin's implementation of one hook",
            ["plugin", "hook"],
            buckets=(0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30),
            registry=self.registry,
        )

    def set_health(self, plugin: str, health: Health) -> None:
        for state in Health:
            self.plugin_health.labels(plugin, state.value).set(1 if state is health else 0)

    def observe_hook(self, plugin: str, hook: str, seconds: float) -> None:
        self.hook_duration.labels(plugin, hook).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)

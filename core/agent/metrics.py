"""The agent's own Prometheus metrics; Cilium's names where Cilium has an equivalent."""

from __future__ import annotations

import platform
from typing import Callable

from prometheus_client.core import CollectorRegistry, Counter, CounterMetricFamily, Gauge, GaugeMetricFamily, Histogram

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


# Cilium's endpoint states (cilium_endpoint_state{endpoint_state})
ENDPOINT_STATES = ("creating", "waiting-for-identity", "not-ready", "waiting-to-regenerate", "regenerating",
                   "restoring", "ready", "disconnecting", "disconnected", "invalid")
_PRESSURE_TYPES = {"hash", "lru_hash", "lpm_trie", "percpu_hash"}


class _DatapathCollector:
    """Cilium's datapath and endpoint metrics, read from the BPF maps and the endpoint table
    when scraped: drops and forwards per reason and direction, map operations and pressure."""

    def __init__(self, datapath: Callable[[], object], endpoints: Callable[[], dict]):
        self._datapath, self._endpoints = datapath, endpoints

    def collect(self):
        eps = self._endpoints() or {}
        yield GaugeMetricFamily("cilium_endpoint", "Number of endpoints managed by this agent", value=len(eps))
        states = GaugeMetricFamily("cilium_endpoint_state", "Count of all endpoints", labels=["endpoint_state"])
        for state in ENDPOINT_STATES:
            states.add_metric([state], sum(1 for e in eps.values() if e.state == state))
        yield states
        dp = self._datapath()
        if dp is None:
            return
        yield from _bpf_counters(dp.maps["metrics"])
        ops = CounterMetricFamily("cilium_bpf_map_ops", "Total operations on BPF maps by the agent",
                                  labels=["map_name", "operation", "outcome"])
        pressure = GaugeMetricFamily("cilium_bpf_map_pressure", "Fill percentage of BPF maps (0..1)",
                                     labels=["map_name"])
        from pylium.core.datapath.maps import TYPE_NAMES

        for m in dp.all_maps():
            for (operation, outcome), n in sorted(m.ops.items()):
                ops.add_metric([m.spec.name, operation, outcome], n)
            if TYPE_NAMES.get(m.spec.type) in _PRESSURE_TYPES and m.fd >= 0 and m.spec.name not in dp.pressure:
                pressure.add_metric([m.spec.name], m.count() / m.spec.max_entries)
        for name, ratio in sorted(dp.pressure.items()):
            pressure.add_metric([name], ratio)
        yield ops
        yield pressure


def _bpf_counters(metrics_map):
    """cilium_drop_count/bytes{reason,direction} and cilium_forward_count/bytes{direction}."""
    from pylium.core.datapath.consts import METRIC_DIRECTIONS
    from pylium.core.datapath.monitor import drop_reason

    labels = ["reason", "direction"]
    drops = CounterMetricFamily("cilium_drop_count", "Total dropped packets", labels=labels)
    drop_bytes = CounterMetricFamily("cilium_drop_bytes", "Total dropped bytes", labels=labels)
    fwd = CounterMetricFamily("cilium_forward_count", "Total forwarded packets", labels=["direction"])
    fwd_bytes = CounterMetricFamily("cilium_forward_bytes", "Total forwarded bytes", labels=["direction"])
    for reason, direction, packets, nbytes in read_bpf_metrics(metrics_map):
        dir_name = METRIC_DIRECTIONS.get(direction, "UNKNOWN")
        if reason == 0:
            fwd.add_metric([dir_name], packets)
            fwd_bytes.add_metric([dir_name], nbytes)
        else:
            drops.add_metric([drop_reason(reason)[1], dir_name], packets)
            drop_bytes.add_metric([drop_reason(reason)[1], dir_name], nbytes)
    yield from (drops, drop_bytes, fwd, fwd_bytes)


def read_bpf_metrics(metrics_map) -> list[tuple[int, int, int, int]]:
    """(reason, direction, packets, bytes) of every non-empty slot, summed over CPUs."""
    import ctypes as ct

    out = []
    for index in range(metrics_map.spec.max_entries):
        values = metrics_map.get(ct.c_uint32(index))
        if values is None:
            continue
        packets = sum(v.count for v in values)
        if packets:
            out.append((index >> 2, index & 3, packets, sum(v.bytes for v in values)))
    return out


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

        self.kvstore_bad_records = Counter("pylium_kvstore_bad_records", "Records in the cluster store that did not "
                                           "parse and were ignored", ["kind"], registry=r)

    def watch_proxy(self, stats: Callable[[], dict[str, int]]) -> None:
        self.registry.register(_ProxyCollector(stats))

    def watch_datapath(self, datapath: Callable[[], object], endpoints: Callable[[], dict]) -> None:
        self.registry.register(_DatapathCollector(datapath, endpoints))

    def set_health(self, plugin: str, health: Health) -> None:
        for state in Health:
            self.plugin_health.labels(plugin, state.value).set(1 if state is health else 0)

    def observe_hook(self, plugin: str, hook: str, seconds: float) -> None:
        self.hook_duration.labels(plugin, hook).observe(seconds)

    def render(self) -> bytes:
        from prometheus_client.exposition import generate_latest  # on the first scrape: it imports ~2 MiB

        return generate_latest(self.registry)

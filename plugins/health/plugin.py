"""The health plugin: a responder on every node (`healthPort`, GET /hello) and a prober that
checks every node of the cluster (ICMP and HTTP to its address) every `health.probeInterval`.
`pylium health status`, `Cluster health: x/y reachable` in `pylium status`, and Cilium's
cilium_unreachable_nodes and cilium_node_health_connectivity_status metrics."""

from __future__ import annotations

import time

import anyio
from prometheus_client.core import GaugeMetricFamily

from pylium.core.api_for_plugins import hookimpl, http_server, parse_duration
from pylium.plugins.health.config import HealthConfig
from pylium.plugins.health.probe import NodeHealth, probe_http, probe_icmp


class HealthPlugin:
    def __init__(self) -> None:
        self.ctx = None
        self.nodes: dict[str, NodeHealth] = {}
        self.probed_at = 0.0
        self._probe_now: anyio.Event | None = None
        self._probed: anyio.Event | None = None

    @hookimpl
    def pylium_config_model(self):
        return HealthConfig

    @hookimpl
    def pylium_declare(self, declare):
        declare.api_routes(("GET", "/v1/health", self.api_status), ("POST", "/v1/health/probe", self.api_probe))

    @hookimpl
    async def pylium_lifespan(self, ctx):
        self.ctx = ctx
        if not ctx.settings.healthChecking:
            yield
            return
        self._probe_now, self._probed = anyio.Event(), anyio.Event()
        server = await self._serve(ctx.settings.healthPort)
        ctx.metrics.register(_Collector(self))
        ctx.start_task("nodes", self._follow_nodes)
        ctx.start_task("prober", self._prober)
        try:
            yield
        finally:
            with anyio.CancelScope(shield=True):
                await server.close()
            self.ctx = None

    async def _serve(self, port: int) -> http_server.Server:
        async def hello(_):
            return http_server.Response(b"Hello", content_type="text/plain")

        router = http_server.Router()
        router.add_get("/hello", hello)
        server = http_server.Server(router)
        try:
            await server.listen_tcp(None, port)
        except OSError as e:
            raise OSError(f"healthPort {port}: cannot listen: {e.strerror}") from None
        return server

    # ---- the nodes and the probes ----------------------------------------------------------

    async def _follow_nodes(self) -> None:
        async with self.ctx.bus.subscribe("node.") as stream:
            async for e in stream:
                if e.topic == "node.changed":
                    ev, old = e.event, self.nodes.get(e.event.name)
                    ip = ev.health_ipv4 or ev.ipv4
                    if old is None or old.ip != ip:
                        self.nodes[ev.name] = NodeHealth(ev.name, ip, ev.local)
                        self._probe_now.set()
                elif e.topic == "node.deleted":
                    self.nodes.pop(e.event.name, None)

    async def _prober(self) -> None:
        interval = parse_duration(self.ctx.settings.health.probeInterval)
        while True:
            await self.probe()
            with anyio.move_on_after(interval):
                await self._probe_now.wait()
            self._probe_now = anyio.Event()

    async def probe(self) -> None:
        """Probe every node now, all at once."""
        timeout = parse_duration(self.ctx.settings.health.probeTimeout)
        port = self.ctx.settings.healthPort

        async def one(node: NodeHealth) -> None:
            if not node.ip:
                return
            async with anyio.create_task_group() as tg:
                async def icmp():
                    node.icmp = await probe_icmp(node.ip, timeout)

                async def http():
                    node.http = await probe_http(node.ip, port, timeout)

                tg.start_soon(icmp)
                tg.start_soon(http)
            node.probed_at = time.time()

        async with anyio.create_task_group() as tg:
            for node in list(self.nodes.values()):
                tg.start_soon(one, node)
        self.probed_at = time.time()
        self._probed.set()
        self._probed = anyio.Event()

    def summary(self) -> tuple[int, int]:
        """(reachable, all): unknown counts as reachable, as Cilium counts it."""
        return sum(n.status != "unreachable" for n in self.nodes.values()), len(self.nodes)

    # ---- API and status --------------------------------------------------------------------

    def _report(self) -> dict:
        reachable, total = self.summary()
        return {"probe_time": self.probed_at, "interval": self.ctx.settings.health.probeInterval,
                "reachable": reachable, "total": total,
                "nodes": [n.as_dict() for n in sorted(self.nodes.values(), key=lambda n: (not n.local, n.name))]}

    async def api_status(self, request):
        if self._probed is None:
            return {"probe_time": 0, "interval": "", "reachable": 0, "total": 0, "nodes": [], "disabled": True}
        return self._report()

    async def api_probe(self, request):
        """Probe now (`pylium health status --probe`) and answer with the results."""
        if self._probed is None:
            return await self.api_status(request)
        await self.probe()
        return self._report()

    @hookimpl
    def pylium_status_details(self, ctx):
        if not ctx.settings.healthChecking:
            return {"Cluster health": "Probe disabled"}
        reachable, total = self.summary()
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.probed_at)) if self.probed_at else "never"
        return {"Cluster health": f"{reachable}/{total} reachable ({when}) (Probe interval: "
                                  f"{ctx.settings.health.probeInterval})"}


class _Collector:
    def __init__(self, plugin: HealthPlugin):
        self.plugin = plugin

    def collect(self):
        p = self.plugin
        if p.ctx is None:
            return
        nodes = list(p.nodes.values())
        yield GaugeMetricFamily("cilium_unreachable_nodes", "Number of nodes that cannot be reached",
                                value=sum(n.status == "unreachable" for n in nodes))
        status = GaugeMetricFamily("cilium_node_health_connectivity_status",
                                   "Number of nodes by the status of their connectivity from this node",
                                   labels=["source_cluster", "source_node_name", "type", "status"])
        for state in ("reachable", "unreachable", "unknown"):
            status.add_metric([p.ctx.config.cluster.name, p.ctx.node_name, "node", state],
                              sum(n.status == state for n in nodes))
        yield status

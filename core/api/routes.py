"""Control-API routes for endpoints, the core's BPF maps and metrics."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import msgspec

from pylium.core.api.http import Request, Response, Router

from pylium.core.cni import routes as cni_routes
from pylium.core.plugin_api import EndpointError

if TYPE_CHECKING:
    from pylium.core.agent.agent import Agent


class LabelChange(msgspec.Struct, forbid_unknown_fields=True):
    add: dict[str, str] = {}
    delete: list[str] = []


def _json(data, status: int = 200) -> Response:
    return Response(msgspec.json.encode(data), status)


async def _body(request: Request, model):
    try:
        return msgspec.json.decode(request.body, type=model)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError) as e:
        raise EndpointError("bad_request", f"request body: {e}") from None


def add_routes(router: Router, agent: Agent) -> None:
    def manager():
        if agent.endpoints is None or agent.state != "running":
            raise EndpointError("not_ready", f"the agent is {agent.state}", 503)
        return agent.endpoints

    async def list_endpoints(_):
        return _json([ep.as_dict() for ep in sorted(manager().endpoints.values(), key=lambda e: e.id)])

    async def get_endpoint(request):
        try:
            ep_id = int(request.match_info["id"])
        except ValueError:
            raise EndpointError("bad_request", f"endpoint id {request.match_info['id']!r} is not a number") from None
        ep = manager().get(ep_id).as_dict()
        if agent.datapath is not None and ep["host_ifindex"]:
            try:
                programs = await anyio.to_thread.run_sync(agent.datapath.attached_program_ids, ep["host_ifname"])
                ep["datapath"] = {"programs": programs,
                                  "dispatchers": agent.datapath.dispatch_ids()}
            except OSError as e:
                ep["datapath"] = {"error": str(e)}
        return _json(ep)

    async def labels(request):
        change = await _body(request, LabelChange)
        ep = await manager().set_labels(int(request.match_info["id"]), change.add, change.delete)
        return _json(ep.as_dict())


    async def bpf_endpoints(_):
        dp = agent.datapath
        if dp is None:
            raise EndpointError("not_ready", "no datapath is loaded", 503)
        from pylium.core.datapath.structs import mac_str

        rows = []
        for key, v in dp.maps["endpoints"].items():
            rows.append({"ip": key.ip, "endpoint": v.ep_id, "ifindex": v.ifindex, "mac": mac_str(v.mac),
                         "host_mac": mac_str(v.host_mac), "identity": v.identity})
        return _json(sorted(rows, key=lambda r: (r["endpoint"], r["ip"])))

    async def bpf_ipcache(_):
        """What the map holds, each entry with the owner that wrote it."""
        if agent.datapath is None or agent.ipcache is None:
            raise EndpointError("not_ready", "no datapath is loaded", 503)
        return _json(list(agent.ipcache.rows()))

    async def bpf_metrics(_):
        dp = agent.datapath
        if dp is None:
            raise EndpointError("not_ready", "no datapath is loaded", 503)
        from pylium.core.datapath.consts import METRIC_DIRECTIONS
        from pylium.core.datapath.monitor import drop_reason
        from pylium.core.agent.metrics import read_bpf_metrics

        rows = [{"reason": reason, "description": drop_reason(reason)[1] if reason else "Forwarded",
                 "direction": METRIC_DIRECTIONS.get(direction, "UNKNOWN"), "packets": packets, "bytes": nbytes}
                for reason, direction, packets, nbytes in read_bpf_metrics(dp.maps["metrics"])]
        return _json(rows)

    async def metrics(request: Request):
        """Every sample of the agent's metrics registry, optionally those whose name matches a regex."""
        import re

        pattern = request.query.get("pattern", "")
        try:
            wanted = re.compile(pattern) if pattern else None
        except re.error as e:
            raise EndpointError("bad_request", f"pattern {pattern!r}: {e}") from None
        rows = [{"name": sample.name, "labels": sample.labels, "value": sample.value}
                for family in agent.metrics.registry.collect() for sample in family.samples
                if not sample.name.endswith("_created") and (wanted is None or wanted.search(sample.name))]
        return _json(rows)

    async def nodes(_):
        if agent.nodes is None:
            raise EndpointError("not_ready", f"the agent is {agent.state}", 503)
        return _json([{"name": n.name, "cluster": n.cluster, "ipv4": n.ipv4, "ipv6": n.ipv6, "pod_cidrs": n.pod_cidrs,
                       "health_ipv4": n.ipv4_health_ip, "boot_id": n.boot_id, "annotations": n.annotations,
                       "source": "local" if local else "kvstore"} for n, local in agent.nodes.nodes()])

    def not_ok() -> list[str]:
        return [f"{n}: {c.health.health.value}" for n, c in agent.contexts.items() if c.health.health.value != "OK"]

    cni_routes.add_routes(router, manager, not_ok)
    r = router
    r.add_get("/v1/metrics", metrics)
    r.add_get("/v1/bpf/metrics", bpf_metrics)
    r.add_get("/v1/endpoints", list_endpoints)
    r.add_get("/v1/endpoints/{id}", get_endpoint)
    r.add_post("/v1/endpoints/{id}/labels", labels)
    r.add_get("/v1/bpf/endpoints", bpf_endpoints)
    r.add_get("/v1/bpf/ipcache", bpf_ipcache)
    r.add_get("/v1/nodes", nodes)

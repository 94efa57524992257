"""IPAM plugin: hook implementations only; the work is in allocator.py, service.py, blocks.py."""

from __future__ import annotations

import msgspec
from prometheus_client.core import Counter, Gauge

from pylium.core.api_for_plugins import RpcError, events, hookimpl
from pylium.plugins.ipam.allocator import FAMILIES, Allocation, Allocator, Exhausted, IpamError, Owner
from pylium.plugins.ipam.blocks import BlockClaimer
from pylium.plugins.ipam.config import IpamConfig
from pylium.plugins.ipam.journal import Journal
from pylium.plugins.ipam.models import AllocateRequest, ListRequest, ReleaseRequest, check_owner
from pylium.plugins.ipam.service import GroupCommit, IpamService


def _decode(payload, model):
    try:
        return msgspec.convert(payload if payload is not None else {}, model)
    except msgspec.ValidationError as e:
        raise RpcError("bad_request", str(e)) from None


class IpamPlugin:
    def __init__(self) -> None:
        self.allocator: Allocator | None = None
        self.service: IpamService | None = None
        self._node = None  # ctx.node while running

    @hookimpl
    def pylium_config_model(self):
        return IpamConfig

    @hookimpl
    def pylium_declare(self, declare):
        declare.api_route("GET", "/v1/ipam", self._api_list)

    @hookimpl
    def pylium_status_details(self):
        parts = [f"{p['name'] + ' ' if p['name'] != 'default' else ''}{p['family'].replace('ip', 'IP')}: "
                 f"{p['used']}/{p['capacity']} allocated from {', '.join(p['blocks']) or 'no block yet'}"
                 for p in self.allocator.describe()]
        return {"IPAM": "; ".join(parts)}

    # ---------------------------------------------------------------------------------------

    @hookimpl
    async def pylium_lifespan(self, ctx):
        settings = ctx.settings.ipam
        enabled = [f for f, on in ((4, ctx.config.ipv4.enabled), (6, ctx.config.ipv6.enabled)) if on]
        allocator = Allocator()
        claimer = BlockClaimer(ctx.store, ctx.node_name, allocator)
        self._configure_pools(settings, enabled, allocator)
        await claimer.load_own()
        if settings.mode == "cluster-pool":
            for family, pf in allocator.pools["default"].items():
                if not pf.blocks and await claimer.claim("default", family) is None:
                    raise RuntimeError(f"cluster-pool: no free /{pf.mask} block left in {', '.join(pf.cidrs)} "
                                       f"for node {ctx.node_name}")
        journal = Journal(ctx.plugin_state_dir / "ipam.db")
        for alloc in journal.load():
            for warning in allocator.restore(alloc):
                ctx.log.warning(warning)
        commit = GroupCommit(journal)
        ctx.start_task("journal", commit.run)
        self._metrics(ctx)
        self._node = ctx.node
        self.allocator = allocator
        self.service = IpamService(allocator, commit, claimer, self._exhausted(ctx), self._changed)
        self._update_gauges()
        await ctx.bus.serve("ipam.allocate", self._rpc_allocate)
        await ctx.bus.serve("ipam.release", self._rpc_release)
        await ctx.bus.serve("ipam.list", self._rpc_list)
        ctx.log.info("ipam ready", mode=settings.mode, restored=len(allocator.by_owner),
                     pools=[f"{p['name']}/{p['family']}: {','.join(p['blocks'])}" for p in allocator.describe()])
        try:
            yield
        finally:
            self.allocator = self.service = self._node = None
            journal.close()

    @staticmethod
    def _configure_pools(settings, enabled: list[int], allocator: Allocator) -> None:
        if settings.mode == "cluster-pool":
            op = settings.operator
            for family in enabled:
                cidrs, mask = ((op.clusterPoolIPv4PodCIDRList, op.clusterPoolIPv4MaskSize) if family == 4 else
                               (op.clusterPoolIPv6PodCIDRList, op.clusterPoolIPv6MaskSize))
                allocator.add_pool("default", family, cidrs, mask, can_grow=False)
        elif settings.mode == "kubernetes":
            import ipaddress

            for cidr in settings.podCIDRs:
                net = ipaddress.ip_network(cidr)
                if net.version in enabled:
                    allocator.add_pool("default", net.version, [cidr], net.prefixlen, can_grow=False)
                    allocator.add_block("default", net.version, cidr)
        else:
            for name, pool in settings.all_pools().items():
                for family, fam in ((4, pool.ipv4), (6, pool.ipv6)):
                    if fam is not None and fam.cidrs and family in enabled:
                        allocator.add_pool(name, family, fam.cidrs, fam.maskSize, can_grow=True)

    # ---- bus methods ----------------------------------------------------------------------

    async def _rpc_allocate(self, payload):
        req = _decode(payload, AllocateRequest)
        problem = check_owner(req.owner.container_id, req.owner.interface)
        if problem:
            raise RpcError("bad_request", f"owner.{problem}")
        families = None if req.family is None else [4 if req.family == "ipv4" else 6]
        try:
            alloc = await self.service.allocate(Owner(req.owner.container_id, req.owner.interface), req.pool,
                                                families, req.requested)
        except IpamError as e:
            raise RpcError(e.code, str(e)) from None
        return alloc.as_dict()

    async def _rpc_release(self, payload):
        req = _decode(payload, ReleaseRequest)
        problem = check_owner(req.container_id, req.interface)
        if problem:
            raise RpcError("bad_request", problem)
        released = await self.service.release(req.container_id, req.interface)
        return {"released": [a.as_dict() for a in released]}

    async def _rpc_list(self, payload):
        return self._list(_decode(payload, ListRequest).all)

    async def _api_list(self, request):
        return self._list(request.query.get("all", "").lower() in ("1", "true", "yes"))

    def _list(self, everything: bool) -> dict:
        out = {"pools": self.allocator.describe()}
        if everything:
            out["allocations"] = [a.as_dict() for _, a in sorted(self.allocator.by_owner.items())]
        return out

    # ---- metrics and events ---------------------------------------------------------------

    def _metrics(self, ctx) -> None:
        r = ctx.metrics
        self._capacity = Gauge("cilium_ipam_capacity", "Addresses this node can hand out, per pool and family",
                               ["family", "pool"], registry=r)
        self._in_use = Gauge("cilium_ip_addresses", "Addresses allocated on this node, per pool and family",
                             ["family", "pool"], registry=r)
        self._events = Counter("cilium_ipam_events", "IPAM allocations and releases", ["action", "family"], registry=r)
        self._exhaustions = Counter("pylium_ipam_exhausted", "Allocations refused because a pool was exhausted",
                                    ["pool", "family"], registry=r)

    def _update_gauges(self) -> None:
        pools = self.allocator.describe()
        for p in pools:
            self._capacity.labels(p["family"], p["name"]).set(p["capacity"])
            self._in_use.labels(p["family"], p["name"]).set(p["used"])
        if self._node is not None:  # this node's blocks are its pod CIDRs for the other nodes
            self._node.update(pod_cidrs=sorted({b for p in pools for b in p["blocks"]}))

    def _changed(self, action: str, alloc: Allocation) -> None:
        for a in alloc.addresses:
            self._events.labels(action, FAMILIES[a.family]).inc()
        self._update_gauges()

    def _exhausted(self, ctx):
        def report(e: Exhausted) -> None:
            self._exhaustions.labels(e.pool, e.family).inc()
            self._update_gauges()
            ctx.bus.publish(events.IpamPoolExhausted(pool=e.pool, family=e.family, cidrs=e.cidrs, blocks=e.blocks,
                                              used=e.used, total=e.total))

        return report

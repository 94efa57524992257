"""The other nodes, as this node reaches them: from the bus's node events, the ipcache records
(owner `connectivity/nodes`) and routes that send traffic to their pods.

- tunnel: each peer's pod CIDRs -> reserved:world with the peer as tunnel endpoint (its pods'
  own /32 records, from the cluster store, carry their identities), its address ->
  reserved:remote-node through the tunnel too; a route `<pod CIDR> dev <tunnel> src <node
  IP>` for the host's own traffic.
- native: its address -> reserved:remote-node; with autoDirectNodeRoutes a route
  `<pod CIDR> via <its address>` (refused, or skipped with directRoutingSkipUnreachable, when
  the address is not on a local network).

A node that leaves takes its records and routes with it. After a restart the routes of
nodes that left meanwhile are removed once the first replay of the nodes has ended."""

from __future__ import annotations

import ipaddress
from typing import Any

import anyio
from pyroute2.netlink.exceptions import NetlinkError

from pylium.core.api_for_plugins import ReservedIdentity, events
from pylium.plugins.connectivity import netlink

OWNER = "nodes"


class Peers:
    def __init__(self, ctx: Any, tunnel_device: str | None, cluster_cidrs: Any = lambda: []):
        self.ctx, self.tunnel, self.cluster_cidrs = ctx, tunnel_device, cluster_cidrs
        self.settings = ctx.settings
        self.nodes: dict[str, events.NodeChanged] = {}
        self.problems: dict[str, str] = {}  # node -> why it is not reachable

    async def follow(self) -> None:
        async with self.ctx.bus.subscribe("node.") as stream:
            async for e in stream:
                if e.topic == "node.synced":
                    await self.ctx.node.synced.wait()  # the replay is whole only once the store was read
                    for node in self.ctx.node.peers():
                        if node.name not in self.nodes:
                            await self._changed(node)
                    await self._remove_stale_routes()
                elif e.topic == "node.changed" and not e.event.local:
                    await self._changed(e.event)
                elif e.topic == "node.deleted":
                    await self._deleted(e.event.name)

    def _prefixes(self, node: events.NodeChanged) -> dict[str, int]:
        wanted = {}
        if node.ipv4:
            wanted[node.ipv4] = ReservedIdentity.REMOTE_NODE
        if self.tunnel is not None:
            for cidr in node.pod_cidrs:
                if ":" not in cidr:
                    wanted[cidr] = ReservedIdentity.WORLD
        return wanted

    def _check(self, node: events.NodeChanged) -> str | None:
        """Why a node's record cannot be used (its pod CIDRs must lie in the cluster's pools)."""
        pools = [ipaddress.ip_network(c) for c in self.cluster_cidrs()]
        for cidr in node.pod_cidrs:
            net = ipaddress.ip_network(cidr)
            if pools and not any(net.version == p.version and net.subnet_of(p) for p in pools):
                return f"node {node.name}: pod CIDR {cidr} is outside the cluster's pools ({', '.join(map(str, pools))})"
        return None

    async def _changed(self, node: events.NodeChanged) -> None:
        problem = self._check(node)
        if problem is None:
            try:
                await self._apply(node)
                self.problems.pop(node.name, None)
                return
            except (OSError, netlink.TunnelError, NetlinkError) as e:
                problem = f"node {node.name}: {e}"
        if self.problems.get(node.name) != problem:
            self.ctx.log.error("cannot route to a node", problem=problem)
        self.problems[node.name] = problem

    async def _apply(self, node: events.NodeChanged) -> None:
        old = self.nodes.get(node.name)
        self.nodes[node.name] = node
        tunnel_endpoint = node.ipv4 if self.tunnel is not None else ""
        before = self._prefixes(old) if old else {}
        wanted = self._prefixes(node)
        for prefix in before.keys() - wanted.keys():
            self.ctx.ipcache.release(prefix, OWNER)
        for prefix, identity in wanted.items():
            self.ctx.ipcache.upsert(prefix, identity, OWNER, tunnel_endpoint=tunnel_endpoint)
        gone = [c for c in (old.pod_cidrs if old else ()) if c not in node.pod_cidrs]
        for cidr in gone:
            await anyio.to_thread.run_sync(netlink.delete_node_route, cidr)
        await self._routes(node)

    async def _routes(self, node: events.NodeChanged) -> None:
        cidrs = [c for c in node.pod_cidrs if ":" not in c]
        if not cidrs or not node.ipv4:
            return
        if self.tunnel is not None:
            local_ip = self.ctx.node.local.ipv4
            for cidr in cidrs:
                await anyio.to_thread.run_sync(lambda c=cidr: netlink.set_node_route(c, device=self.tunnel,
                                                                                      src=local_ip))
            return
        if not self.settings.autoDirectNodeRoutes:
            return
        gateway = await anyio.to_thread.run_sync(netlink.gateway_towards, node.ipv4)
        if gateway is None or gateway:
            problem = (f"node {node.name} ({node.ipv4}): the route to it "
                       f"{'goes through gateway ' + gateway if gateway else 'is missing'}: it must be directly "
                       f"reachable for autoDirectNodeRoutes")
            if self.settings.directRoutingSkipUnreachable:
                self.ctx.log.warning("skipping direct routes", problem=problem)
                return
            raise netlink.TunnelError(problem)
        for cidr in cidrs:
            await anyio.to_thread.run_sync(lambda c=cidr: netlink.set_node_route(c, gateway=node.ipv4))

    async def _deleted(self, name: str) -> None:
        node = self.nodes.pop(name, None)
        self.problems.pop(name, None)
        if node is None:
            return
        for prefix in self._prefixes(node):
            self.ctx.ipcache.release(prefix, OWNER)
        for cidr in node.pod_cidrs:
            if ":" not in cidr:
                await anyio.to_thread.run_sync(netlink.delete_node_route, cidr)

    async def _remove_stale_routes(self) -> None:
        wanted = {c for n in self.nodes.values() for c in n.pod_cidrs}
        for cidr in await anyio.to_thread.run_sync(netlink.node_routes):
            if cidr not in wanted:
                await anyio.to_thread.run_sync(netlink.delete_node_route, cidr)
        self.ctx.ipcache.synced(OWNER)

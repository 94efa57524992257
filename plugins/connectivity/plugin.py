"""Connectivity plugin: hook implementations; the work is in netlink.py, masquerade.py and the
C stages in bpf/delivery.c."""

from __future__ import annotations

import ctypes as ct
import ipaddress

import anyio

from pylium.core.api_for_plugins import (EndpointContribution, IpcacheKey, ReservedIdentity, Slot, Source, events,
                                         hookimpl)
from pylium.plugins.connectivity import masquerade, netlink
from pylium.plugins.connectivity.config import ConnectivityConfig
from pylium.plugins.connectivity.maps import LOCAL_BLOCKS, TUNNEL_CONFIG, TunnelConfig
from pylium.plugins.connectivity.peers import OWNER as NODES, Peers

HOST = "host"  # ipcache owner: the node's own addresses and the pods' gateways (reserved:host)
TUNNEL_DEVICES = {"vxlan": "pylium_vxlan", "geneve": "pylium_geneve"}
TUNNEL_OVERHEAD = 50  # VXLAN over IPv4: outer Ethernet, IPv4, UDP and VXLAN headers


class ConnectivityPlugin:
    def __init__(self) -> None:
        self.ctx = None
        self._blocks: tuple = ()
        self._routers: set[str] = set()
        self._refresh: anyio.Lock | None = None  # created on the agent's event loop
        self.peers: Peers | None = None
        self._cluster_cidrs: list[str] = []  # IPAM's pool CIDRs: where other nodes' pod CIDRs must lie

    @hookimpl
    def pylium_config_model(self):
        return ConnectivityConfig

    @hookimpl
    def pylium_declare(self, declare):
        declare.after("ipam")
        tunnel = declare.settings.routingMode == "tunnel"
        declare.bpf_maps(LOCAL_BLOCKS, TUNNEL_CONFIG)
        declare.bpf_defines(CONN_TUNNEL=int(tunnel))
        declare.bpf_stage(Slot.FROM_DELIVERY, "bpf/delivery.c", "from_delivery", fast_path=True)
        declare.bpf_stage(Slot.TO_DELIVERY, "bpf/delivery.c", "to_delivery", fast_path=True)
        declare.endpoint_fields("host_ifname", "host_ifindex", "mac", "host_mac", "mtu")
        declare.ipcache_owner(HOST, Source.LOCAL)
        declare.ipcache_owner(NODES, Source.KVSTORE, waits_for_sync=True)

    @hookimpl
    async def pylium_lifespan(self, ctx):
        self.ctx = ctx
        self._refresh = anyio.Lock()
        cfg = ctx.settings
        tunnel = TUNNEL_DEVICES[cfg.tunnelProtocol] if cfg.routingMode == "tunnel" else None
        self.mtu = cfg.MTU  # as configured; else the device's, less the encapsulation's room in tunnel mode
        if not self.mtu:
            self.mtu = await anyio.to_thread.run_sync(netlink.default_mtu) - (TUNNEL_OVERHEAD if tunnel else 0)
        netlink.sysctl("net/ipv4/ip_forward", "1")
        # New host-side veths inherit these: no per-endpoint sysctl writes on the ADD path.
        netlink.sysctl("net/ipv4/conf/default/rp_filter", "0")
        netlink.sysctl("net/ipv4/conf/default/forwarding", "1")
        if ctx.config.ipv6.enabled:
            netlink.sysctl("net/ipv6/conf/all/forwarding", "1")
            netlink.sysctl("net/ipv6/conf/default/accept_dad", "0")
        await self.refresh_blocks()
        await self._host_addresses()
        if tunnel is not None:
            await self._tunnel(ctx, cfg, tunnel, self.mtu)
        else:
            ctx.bpf_maps["tunnel_config"].put(ct.c_uint32(0), TunnelConfig())
            await self._native(ctx)
        self.peers = Peers(ctx, tunnel, lambda: self._cluster_cidrs)
        ctx.start_task("nodes", self.peers.follow)
        ctx.log.info("connectivity ready", mtu=self.mtu, blocks=self._blocks, routing=cfg.routingMode,
                     tunnel=f"{cfg.tunnelProtocol}:{cfg.tunnel_port()}" if tunnel else "")
        try:
            yield
        finally:
            self.ctx = None  # devices, routes, maps and rules stay: the datapath outlives the agent

    @hookimpl
    def pylium_cleanup(self, ctx):
        done = [f"iptables chain {masquerade.chain_name(ctx.node_name)} (IPv{family})" for family in (4, 6)
                if masquerade.remove(ctx.node_name, family)]
        host = ctx.settings.connectivity.hostDevice
        return done + netlink.remove_node_state([host, *TUNNEL_DEVICES.values()])

    async def refresh_blocks(self) -> None:
        """Follow IPAM's pools: gateway addresses on the host device, the local-blocks map and
        the masquerade chain. Cheap when nothing changed."""
        answer = await self.ctx.bus.request("ipam.list", {})
        pools = answer["pools"]
        self._cluster_cidrs = sorted({c for p in pools for c in p["cidrs"]})
        blocks = tuple(sorted({b for p in pools for b in p["blocks"]}))
        async with self._refresh:
            if blocks == self._blocks:
                return
            routers = sorted({r for p in pools for r in p["routers"]})
            await anyio.to_thread.run_sync(netlink.ensure_host_device, self.ctx.settings.connectivity.hostDevice,
                                           routers)
            local = self.ctx.bpf_maps["local_blocks"]
            for key in list(local.keys()):
                if key.cidr not in blocks:
                    local.delete(key)
            for b in blocks:
                local.put(IpcacheKey.of(b), ct.c_uint32(1))
            for r in set(routers) - self._routers:  # the gateways live on the node: reserved:host
                self.ctx.ipcache.upsert(r, ReservedIdentity.HOST, HOST)
            for r in self._routers - set(routers):
                self.ctx.ipcache.release(r, HOST)
            self._routers = set(routers)
            cfg = self.ctx.settings
            for family, enabled in ((4, cfg.enableIPv4Masquerade), (6, cfg.enableIPv6Masquerade)):
                fam = "ipv4" if family == 4 else "ipv6"
                if not getattr(self.ctx.config, fam).enabled:
                    continue
                mine = [b for b in blocks if ipaddress.ip_network(b).version == family]
                cluster = sorted({c for p in pools if p["family"] == fam for c in p["cidrs"]})
                if family == 4 and cfg.ipv4NativeRoutingCIDR:  # the network routes these as they are
                    cluster = sorted({*cluster, cfg.ipv4NativeRoutingCIDR})
                await anyio.to_thread.run_sync(masquerade.apply, self.ctx.node_name, family, mine, cluster, enabled)
            self._blocks = blocks

    async def _native(self, ctx) -> None:
        """Native routing: packets for local pods are taken off the node's device by BPF (after
        the load balancer's NodePort program, a priority before)."""
        device = await anyio.to_thread.run_sync(netlink.device_of, ctx.node.local.ipv4)
        if device is None:
            ctx.log.warning("no device holds this node's address: pods of other nodes arrive through the stack",
                            address=ctx.node.local.ipv4)
            return
        pins = await ctx.datapath.compile_programs("bpf/delivery.c", {"from_netdev": {"type": "SCHED_CLS"}})
        await ctx.datapath.attach_tc({device: {"ingress": pins["from_netdev"]}}, prio=2)

    async def _tunnel(self, ctx, cfg, device: str, mtu: int) -> None:
        """The tunnel device, its programs, and its index for the delivery stage."""
        index = await anyio.to_thread.run_sync(netlink.ensure_tunnel_device, device, cfg.tunnelProtocol,
                                               cfg.tunnel_port(), mtu)
        pins = await ctx.datapath.compile_programs("bpf/overlay.c", {"from_overlay": {"type": "SCHED_CLS"},
                                                                     "to_overlay": {"type": "SCHED_CLS"}})
        await ctx.datapath.attach_tc({device: {"ingress": pins["from_overlay"], "egress": pins["to_overlay"]}})
        ctx.bpf_maps["tunnel_config"].put(ct.c_uint32(0), TunnelConfig(ifindex=index))
        ctx.bus.owns("connectivity.tunnel")
        ctx.bus.publish(events.TunnelDevice(node=ctx.node_name, device=device, ifindex=index,
                                            protocol=cfg.tunnelProtocol, port=cfg.tunnel_port()))

    async def _host_addresses(self) -> None:
        """The node's own addresses are reserved:host: traffic from them to a pod is the host's."""
        for ip in await anyio.to_thread.run_sync(netlink.node_addresses):
            self.ctx.ipcache.upsert(ip, ReservedIdentity.HOST, HOST)

    # ---- endpoints ------------------------------------------------------------------------

    @hookimpl
    async def pylium_endpoint_plug(self, ctx, endpoint):
        if any(a["block"] not in self._blocks for a in endpoint.addresses):
            await self.refresh_blocks()  # the address comes from a block claimed since
        host_ifname = netlink.host_ifname(ctx.node_name, endpoint.container_id, endpoint.ifname)
        done = await netlink.plug(netns=endpoint.netns, ifname=endpoint.ifname, host_name=host_ifname,
                                  mtu=endpoint.requested_mtu or self.mtu, addresses=endpoint.addresses)
        await ctx.datapath.attach(host_ifname)
        return EndpointContribution(host_ifname=host_ifname, host_ifindex=done.host_ifindex, mac=done.mac,
                                    host_mac=done.host_mac, mtu=done.mtu)

    @hookimpl
    async def pylium_endpoint_unplug(self, ctx, endpoint):
        name = endpoint.host_ifname or netlink.host_ifname(ctx.node_name, endpoint.container_id, endpoint.ifname)
        await anyio.to_thread.run_sync(netlink.unplug, name)

    @hookimpl
    async def pylium_endpoint_restore(self, ctx, endpoint):
        idx = await anyio.to_thread.run_sync(netlink.host_ifindex, endpoint.host_ifname)
        if idx is None or idx != endpoint.host_ifindex:
            return False
        await ctx.datapath.attach(endpoint.host_ifname)  # the new dispatchers, hitlessly

    @hookimpl
    async def pylium_endpoint_check(self, ctx, endpoint):
        return await anyio.to_thread.run_sync(lambda: netlink.check(
            netns=endpoint.netns, ifname=endpoint.ifname, host_name=endpoint.host_ifname,
            addresses=endpoint.addresses))

    @hookimpl
    def pylium_status_details(self, ctx):
        masq = "IPTables" if ctx.settings.enableIPv4Masquerade else "Disabled"
        cfg = ctx.settings
        network = f"Tunnel [{cfg.tunnelProtocol}]" if cfg.routingMode == "tunnel" else "Native"
        unreachable = f"  Unreachable: {'; '.join(self.peers.problems.values())}" if self.peers and \
            self.peers.problems else ""
        return {"Routing": f"Network: {network}  Host: BPF (local delivery by redirect){unreachable}",
                "Masquerading": f"{masq} [{', '.join(self._blocks) or 'no blocks'}]",
                "Fast path": ctx.datapath.fast_path_status()}

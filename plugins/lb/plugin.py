"""The load-balancing plugin: hook implementations. Services and EndpointSlices come from the
manifests directory (model.py), become frontends (frontends.py) and are written to the maps
(writer.py); the C is in bpf/: per-packet stages (lb.c), the node's devices (nodeport.c)
and cgroup socket hooks (sock.c)."""

from __future__ import annotations

import ctypes as ct
import time
from pathlib import Path
from typing import Any

import anyio

from pylium.core.api_for_plugins import (Health, NoService, PluginManifests, Slot, events, gc_paused,
                                        hookimpl, libbpf, netns, release_freed_memory)
from pylium.plugins.lb import maglev
from pylium.plugins.lb.api import LbApi
from pylium.plugins.lb.config import LbConfig
from pylium.plugins.lb.frontends import Catalog, Frontend, Problem, frontends, key_label, key_parts
from pylium.plugins.lb.maps import LbDevice, ip4, lb_maps
from pylium.plugins.lb.model import (EndpointSlice, ModelError, Service, pack, parse_endpoint_slice, parse_service,
                                     unpack)
from pylium.plugins.lb.writer import MapFull, SortedTable, Writer

STAGES = (Slot.FROM_LB, Slot.TO_LB)
SOCKET_HOOKS = {"sock4_connect": libbpf.CGROUP_INET4_CONNECT, "sock4_sendmsg": libbpf.CGROUP_UDP4_SENDMSG,
                "sock4_recvmsg": libbpf.CGROUP_UDP4_RECVMSG, "sock4_getpeername": libbpf.CGROUP_INET4_GETPEERNAME}


def cgroup2_root() -> Path:
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[fields.index("-") + 1] == "cgroup2":
            return Path(fields[4])
    raise OSError("no cgroup2 file system is mounted (socket LB needs one; or set socketLB.enabled=false)")


_NOW = object()  # _in_force(): the entry in the manifests now


class LbPlugin(LbApi):
    def __init__(self) -> None:
        self.ctx: Any = None
        self.catalog = Catalog()
        self.problems: dict[tuple, Problem] = {}
        # frontend key -> the service whose frontend is written there: a sorted table (16 bytes a
        # frontend), not a dict of each service's keys (~84 bytes a service with the int objects);
        # a service's frontends are found in one pass over it per change
        self.owners = SortedTable()
        self._synced = False  # the first write replaces whatever an earlier run left
        self._manifests: PluginManifests | None = None
        self.writer: Writer | None = None
        self.cookies: dict[int, int] = {}  # endpoint id -> netns cookie
        self.local_ips: set[str] = set()
        self.devices: dict[str, int] = {}
        self.tunnel: tuple[str, int] | None = None  # the node's tunnel device (connectivity.tunnel)
        self._nodeport: Path | None = None  # the pinned NodePort program
        self._lock: anyio.Lock | None = None

    # ---- hooks ------------------------------------------------------------------------------

    @hookimpl
    def pylium_config_model(self):
        return LbConfig

    @hookimpl
    def pylium_declare(self, declare):
        cfg = declare.settings
        declare.after("connectivity")
        declare.bpf_maps(*lb_maps(cfg.bpf.lbMapMax, cfg.maglev.tableSize, cfg.bpf.natMax))
        seed = int.from_bytes(maglev.seed_bytes(cfg.maglev.hashSeed)[:4], "little")
        declare.bpf_defines(LB_MAP_MAX=cfg.bpf.lbMapMax, LB_CT_MAX=cfg.bpf.natMax, LB_MAGLEV_M=cfg.maglev.tableSize,
                            LB_HASH_SEED=f"{seed}U", LB_REJECT=int(cfg.serviceNoBackendResponse == "reject"))
        declare.bpf_stage(Slot.FROM_LB, "bpf/lb.c", "lb_from_container", fast_path=True)
        declare.bpf_stage(Slot.TO_LB, "bpf/lb.c", "lb_to_container", fast_path=True)
        declare.api_routes(("GET", "/v1/service", self.api_services), ("GET", "/v1/bpf/lb", self.api_bpf_lb),
                           ("GET", "/v1/bpf/lb/maglev/{service}", self.api_maglev))

    @hookimpl
    def pylium_status_details(self, ctx):
        cfg = ctx.settings
        kpr = "True" if cfg.kubeProxyReplacement else "False"
        socket_lb = "Enabled" if self._socket_lb_on() else "Disabled"
        return {"KubeProxyReplacement": f"{kpr} [{', '.join(self.devices) or 'no devices'}] "
                                        f"(Socket LB: {socket_lb}, algorithm {cfg.loadBalancer.algorithm}, "
                                        f"mode {cfg.loadBalancer.mode})",
                "Services": f"{len(self.services_written())} services, "
                            f"{len(self.writer.frontends) if self.writer else 0} "
                            f"frontends" + (f", {len(self.problems)} not loaded" if self.problems else "")}

    def _socket_lb_on(self) -> bool:
        cfg = self.ctx.settings
        return cfg.kubeProxyReplacement and cfg.socketLB.enabled

    @hookimpl
    async def pylium_lifespan(self, ctx):
        self.ctx = ctx
        self._lock = anyio.Lock()
        cfg = ctx.settings
        self.writer = Writer(ctx.bpf_maps, cfg.bpf.lbMapMax, cfg.loadBalancer.algorithm, cfg.maglev.tableSize,
                             maglev.seed_bytes(cfg.maglev.hashSeed))
        self.writer.restore()
        await self._load_programs()
        for key in list(ctx.bpf_maps["lb_netns"].keys()):  # endpoints that come back are added again
            ctx.bpf_maps["lb_netns"].delete(key)
        if self._socket_lb_on():  # the node's own processes
            ctx.bpf_maps["lb_netns"].put(ct.c_uint64(netns.netns_cookie("/proc/self/ns/net")), ct.c_uint32(0))
        ctx.bus.owns("service", snapshot=self._snapshot)  # late subscribers get the frontends (none is an answer too)
        await self._changed(ctx.manifests)
        ctx.manifests.on_change(lambda: self._changed(ctx.manifests))
        ctx.set_health(Health.OK)
        try:
            yield
        finally:
            ctx.datapath.set_pressure("lb4_services", None)
            self.ctx = None  # programs and maps stay: services keep working while the agent is away

    # ---- programs ---------------------------------------------------------------------------

    async def _load_programs(self) -> None:
        ctx, cfg = self.ctx, self.ctx.settings
        dp = ctx.datapath
        sock, nodeport = {}, {}

        async def compile_sock():
            sock.update(await dp.compile_programs("bpf/sock.c", {
                fn: {"type": "CGROUP_SOCK_ADDR", "attach_type": at} for fn, at in SOCKET_HOOKS.items()}))

        async def compile_nodeport():
            nodeport.update(await dp.compile_programs("bpf/nodeport.c", {"lb_nodeport": {"type": "SCHED_CLS"}}))

        async with anyio.create_task_group() as tg:
            if self._socket_lb_on():
                tg.start_soon(compile_sock)
            if cfg.kubeProxyReplacement and cfg.nodePort.enabled:
                tg.start_soon(compile_nodeport)
        cgroup = Path(cfg.cgroup.hostRoot) if cfg.cgroup.hostRoot else cgroup2_root()
        for fn, attach_type in SOCKET_HOOKS.items():
            link = dp.pin_dir / f"link_{fn}"
            if self._socket_lb_on():
                dp.attach_cgroup_link(sock[fn], cgroup, attach_type, link)
            else:
                dp.detach_cgroup_link(link)
        if nodeport:
            self._nodeport = nodeport["lb_nodeport"]
            await self._attach_devices(self._nodeport)
            self.ctx.start_task("tunnel", self._follow_tunnel)

    async def _attach_devices(self, program: Path) -> None:
        from pyroute2.iproute.linux import IPRoute

        cfg = self.ctx.settings
        gateways = await self._pod_gateways()

        def find() -> dict[str, tuple[int, str]]:
            with IPRoute() as ipr:
                names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
                found: dict[str, tuple[int, str]] = {}
                pods: set[str] = set()  # devices that carry the pods' gateways
                for a in ipr.get_addr(family=2):
                    name = names.get(a["index"])
                    if a.get_attr("IFA_ADDRESS") in gateways:
                        pods.add(name)
                    if a["scope"] == 0 and name not in found:
                        found[name] = (a["index"], a.get_attr("IFA_ADDRESS"))
            if cfg.devices:
                missing = [d for d in cfg.devices if d not in found]
                if missing:
                    raise OSError(f"devices: {', '.join(missing)} not found or without an IPv4 address")
                return {d: found[d] for d in cfg.devices}
            return {n: v for n, v in found.items() if n != "lo" and n not in pods}

        devices = await anyio.to_thread.run_sync(find)
        table = self.ctx.bpf_maps["lb_devices"]
        keep = {i for i, _ in devices.values()} | ({self.tunnel[1]} if self.tunnel else set())
        for key in list(table.keys()):
            if key.value not in keep:
                table.delete(key)
        for index, address in devices.values():
            table.put(ct.c_uint32(index), LbDevice.from_buffer_copy(ip4(address) + bytes(4)))
        await self.ctx.datapath.attach_tc({name: {"ingress": program} for name in devices})
        self.devices = {name: index for name, (index, _) in devices.items()}
        self.ctx.log.info("serving NodePort and external addresses", devices=sorted(self.devices))

    async def _follow_tunnel(self) -> None:
        """Replies of backends on other nodes to NodePort clients come back through the tunnel:
        the NodePort program runs there too, after the connectivity plugin's (priority 2)."""
        async with self.ctx.bus.subscribe("connectivity.tunnel") as stream:
            async for e in stream:
                if e.topic != "connectivity.tunnel" or e.event.node != self.ctx.node_name:
                    continue
                self.tunnel = (e.event.device, e.event.ifindex)
                self.ctx.bpf_maps["lb_devices"].put(ct.c_uint32(e.event.ifindex), LbDevice.from_buffer_copy(
                    ip4(self.ctx.node.local.ipv4 or "0.0.0.0") + bytes(4)))
                await self.ctx.datapath.attach_tc({e.event.device: {"ingress": self._nodeport}}, prio=2)

    async def _pod_gateways(self) -> set[str]:
        """The pods' gateway addresses (IPAM's routers, over the bus): their device is not one
        to serve NodePorts on."""
        try:
            answer = await self.ctx.bus.request("ipam.list", {})
        except NoService:
            return set()
        return {r for pool in answer["pools"] for r in pool["routers"]}

    # ---- services ---------------------------------------------------------------------------

    def _load(self, manifests: PluginManifests, parsed: dict[str, dict]) -> set[tuple[str, str]]:
        """Take in changed Service and EndpointSlice documents (all of them the first time); a
        bad one is reported with its file and field, and its previous version (if any) stays
        in force. Returns the keys of the services to compute again; what was parsed goes into
        `parsed[kind][key]`, packed (model.pack)."""
        port_range = self.ctx.settings.nodePort.bounds()
        catalog = self.catalog
        first = self._manifests is None
        self._manifests = manifests
        dirty: set[tuple[str, str]] = set()
        for kind, parse, put, drop in (
                ("Service", lambda d: parse_service(d, port_range), catalog.put_service, catalog.drop_service),
                ("EndpointSlice", parse_endpoint_slice, catalog.put_slice, catalog.drop_slice)):
            entries = manifests.entries(kind)
            for key, before in (dict.fromkeys(entries) if first else manifests.changes(kind)).items():
                old = self._in_force(kind, key, before)
                entry = entries.get(key)
                if entry is None:  # gone
                    self.problems.pop((kind, *key), None)
                    if old is not None:
                        dirty.add(self._service_key(drop(key, old)))
                    continue
                try:
                    obj = parse(entry.doc)
                except ModelError as e:
                    self._problem(Problem(kind, key, str(entry.path), e, entry, old))
                    continue
                self.problems.pop((kind, *key), None)
                if old is not None:
                    dirty.add(self._service_key(drop(key, old)))
                if obj is None:
                    continue
                parsed[kind][key] = pack(obj)  # keyed by the manifests' own key: no tuple made
                if kind == "Service":
                    put(key, obj)
                    dirty.add(key)
                    continue
                service = self._service_key((obj.namespace, obj.service))
                put(key, obj, service)
                dirty.add(service)
        return dirty

    def _in_force(self, kind: str, key: tuple[str, str], entry=_NOW):
        """The manifest entry in force for an object: `entry` (by default the one in the
        manifests now) unless it was found bad, then the last good one (None if none)."""
        if entry is _NOW:
            entry = self._manifests.entries(kind).get(key) if self._manifests else None
        problem = self.problems.get((kind, *key))
        if problem is not None and problem.entry is not None and problem.entry is entry:
            return problem.kept
        return entry

    def _service_key(self, key: tuple[str, str]) -> tuple[str, str]:
        """The Service's key as its manifest entry holds it: one tuple (and name) kept across
        the tables, not one per table."""
        entry = self._manifests.entries("Service").get(key) if self._manifests else None
        return entry.key if entry is not None else key

    def _problem(self, problem: Problem) -> None:
        self.problems[(problem.kind, *problem.key)] = problem
        self.ctx.log.error("service manifest not loaded; its previous version stays in force",
                           file=problem.file, object=f"{problem.kind} {problem.key[0]}/{problem.key[1]}",
                           field=problem.error.path, error=str(problem.error))

    def _is_local(self, backend) -> bool:
        return backend.node == self.ctx.node_name if backend.node else backend.address in self.local_ips

    def _parsed(self, kind: str, key: tuple[str, str], parsed: dict[str, dict]):
        """An object in force, parsed: in this change (taken out: it is used once), or again
        from its entry."""
        packed = parsed[kind].pop(key, None)
        if packed is not None:
            return unpack(Service if kind == "Service" else EndpointSlice, packed)
        if kind == "Service":
            return parse_service(self._in_force(kind, key).doc, self.ctx.settings.nodePort.bounds())
        return parse_endpoint_slice(self._in_force(kind, key).doc)

    def services_written(self) -> set[tuple[str, str]]:
        """The services with frontends in the maps."""
        return set(self.owners.values())

    def _written_for(self, dirty: set[tuple[str, str]]) -> dict[tuple[str, str], list[int]]:
        """The frontend keys written for each of these services."""
        found: dict[tuple[str, str], list[int]] = {}
        for key, service in self.owners.items():
            if service in dirty:
                found.setdefault(service, []).append(key)
        return found

    def _delta(self, dirty: set[tuple[str, str]], parsed: dict[str, dict]) -> tuple[dict, dict]:
        """The frontends of the services in `dirty`, computed again: what to write (a
        Frontend, packed) and what to remove (None); and the service of each one written."""
        port_range = self.ctx.settings.nodePort.bounds()
        written = self._written_for(dirty)
        taken: set[int] | None = None
        delta: dict[int, bytes | None] = {}
        owners: dict[int, tuple[str, str]] = {}
        for key in dirty:
            old = written.get(key, ())
            service = self._parsed("Service", key, parsed) if self._in_force("Service", key) else None
            new: list[Frontend] = []
            if service is not None:
                if taken is None and service.type in ("NodePort", "LoadBalancer"):
                    # NodePorts in use (frontends on 0.0.0.0), but for those about to be computed again
                    again = {k for keys in written.values() for k in keys}
                    taken = set().union(*self.catalog.node_ports.values())
                    taken |= {key_parts(k)[1] for k in self.writer.frontends if not k >> 24 and k not in again}
                slices = [self._parsed("EndpointSlice", k, parsed)
                          for k in self.catalog.slice_keys(key)]
                try:
                    new = frontends(service, slices, self._is_local, taken or set(), port_range)
                    self.problems.pop(("Service", *key), None)
                except ModelError as e:  # found only with the slices: an unknown targetPort name
                    entry = self._manifests.entries("Service").get(key)
                    self._problem(Problem("Service", key, str(entry.path if entry else "?"), e))
                    continue  # its frontends as written stay in force
                if not self.ctx.settings.kubeProxyReplacement:  # ClusterIP only, per packet
                    new = [f for f in new if f.type == "ClusterIP"]
            for k in old:
                delta.setdefault(k, None)  # unless another service of this change writes it
            for f in new:
                delta[f.key] = f.pack()  # packed now: see Writer.apply
                owners[f.key] = key
        return delta, owners

    async def _changed(self, manifests: PluginManifests | None, dirty: set | None = None) -> None:
        async with self._lock:
            with gc_paused():
                large = self._apply(manifests, dirty)
            if large:  # now that all it used is freed
                release_freed_memory()

    def _apply(self, manifests: PluginManifests | None, dirty: set | None) -> bool:
        """Take in what changed and write the difference to the maps; True for a large change."""
        started = time.perf_counter()
        dirty = set(dirty or ())
        parsed: dict[str, dict] = {"Service": {}, "EndpointSlice": {}}  # this change's, dropped after it
        if manifests is not None:
            dirty |= self._load(manifests, parsed)
        first = not self._synced
        if first:
            services = self._manifests.entries("Service") if self._manifests else {}
            dirty = {k for k in services if self._in_force("Service", k)} | self.services_written()
        delta, owners = self._delta(dirty, parsed)
        del parsed
        try:
            if first:
                written = self.writer.sync({k: f for k, f in delta.items() if f is not None})
                self._synced = True
            else:
                written = self.writer.apply(delta)
        except MapFull as e:
            self.ctx.log.error("services not programmed", error=str(e))
            self._pressure(full=True)
            return False
        self.owners.remove([k for k, f in delta.items() if f is None])
        self.owners.update(owners)
        self._pressure()
        idle = not self.writer.frontends
        for slot in STAGES:
            self.ctx.datapath.bypass(slot, idle)
        if written or self.writer.removed:
            self.ctx.log.info("services programmed", frontends=len(written), removed=len(self.writer.removed),
                              total=len(self.writer.frontends), ms=round((time.perf_counter() - started) * 1000, 1))
        self._publish(written, delta)
        return len(written) + len(self.writer.removed) > 1000

    def _publish(self, written: list[int], delta: dict[int, bytes | None]) -> None:
        """service.changed / service.deleted for subscribers (built only when some subscriber
        is there to receive them; late ones get the _snapshot)."""
        bus = self.ctx.bus
        for key in self.writer.removed:
            f = self.writer.removed_frontend(key)
            label = f.label() if f else key_label(key)
            bus.publish(events.ServiceDeleted(frontend=label, service="/".join(f.service) if f else ""))
        if written and bus.wants("service.changed"):
            for key in written:
                bus.publish(self._changed_event(key, Frontend.unpack(delta[key])))

    def _changed_event(self, key: int, f: Frontend) -> events.ServiceChanged:
        return events.ServiceChanged(frontend=f.label(), id=self.writer.id_of(key), type=f.type,
                                     service="/".join(f.service),
                                     backends=[events.ServiceBackend(b.address, b.port, b.state) for b in f.backends])

    def _snapshot(self):
        """service.changed for every frontend written: what the bus replays to a new
        subscriber (it keeps no copy of them: ~0.2 KiB per service)."""
        for key in list(self.writer.frontends):  # a replay yields between events: some may go meanwhile
            f = self.writer.frontend(key)
            if f is not None:
                yield self._changed_event(key, f)

    def _pressure(self, full: bool = False) -> None:
        """A change refused for want of room shows as a full map (cilium_bpf_map_pressure 1.0)
        until one fits; otherwise the core reports the maps' fill."""
        if full:
            self.ctx.datapath.set_pressure("lb4_services", 1.0)
        else:
            self.ctx.datapath.set_pressure("lb4_services", None)

    # ---- endpoints --------------------------------------------------------------------------

    @hookimpl
    async def pylium_endpoint_plug(self, ctx, endpoint):
        await self._adopt(endpoint)

    @hookimpl
    async def pylium_endpoint_restore(self, ctx, endpoint):
        await self._adopt(endpoint)

    async def _adopt(self, endpoint) -> None:
        cfg = self.ctx.settings
        if self._socket_lb_on() and not cfg.socketLB.hostNamespaceOnly:
            cookie = await anyio.to_thread.run_sync(netns.netns_cookie, endpoint.netns)
            self.cookies[endpoint.id] = cookie
            self.ctx.bpf_maps["lb_netns"].put(ct.c_uint64(cookie), ct.c_uint32(endpoint.id))
        await self._endpoint_addresses(add={a["ip"] for a in endpoint.addresses})

    @hookimpl
    async def pylium_endpoint_unplug(self, ctx, endpoint):
        cookie = self.cookies.pop(endpoint.id, None)
        if cookie is not None:
            ctx.bpf_maps["lb_netns"].delete(ct.c_uint64(cookie))
        await self._endpoint_addresses(remove={a["ip"] for a in endpoint.addresses})

    async def _endpoint_addresses(self, add: set[str] = frozenset(), remove: set[str] = frozenset()) -> None:
        """Backends without a nodeName are local when a local endpoint has their address; that
        matters only to services with a Local traffic policy."""
        self.local_ips = (self.local_ips | add) - remove
        if self.catalog.local and self._synced:
            await self._changed(None, set(self.catalog.local))

"""Endpoints: the pods (or plain network namespaces) this node serves.

The core owns the endpoint model, its durable record (<state-dir>/endpoints/<id>.json), the
shared maps that make an endpoint reachable, and the order of work. Plugins do their part
through hooks, in start order (teardown in reverse):

    create:  id, record (not ready) -> ipam.allocate (bus) -> pylium_endpoint_plug per plugin
             -> core maps (the endpoint becomes reachable) -> record ready -> endpoint.created
    delete:  record disconnecting -> core maps removed -> pylium_endpoint_unplug per plugin
             -> ipam.release -> record removed -> endpoint.deleted

Any failure during create undoes what was done: no veth, no address, no map entry is left.
"""

from __future__ import annotations

import contextlib
import ctypes as ct
import ipaddress
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import msgspec

from pylium.core.bus import events as ev
from pylium.core.bus.client import NoService, RpcError
from pylium.core.plugin_api import EndpointError

if TYPE_CHECKING:
    from pylium.core.agent.agent import Agent

MAX_ENDPOINT_ID = 4095
ID_INIT = 5  # reserved:init: the identity of an endpoint whose labels are not known yet


class Endpoint(msgspec.Struct, kw_only=True):
    id: int
    container_id: str
    ifname: str
    netns: str
    netns_id: str = ""  # "<dev>:<inode>" of the namespace, to notice a recycled path
    state: str = "waiting-to-regenerate"
    labels: dict[str, str] = {}  # "source:key" -> value
    identity: int = ID_INIT
    pool: str | None = None
    addresses: list[dict] = []  # as IPAM answered: ip, family, cidr, block, gateway
    host_ifname: str = ""
    host_ifindex: int = 0
    mac: str = ""
    host_mac: str = ""
    mtu: int = 0
    k8s_namespace: str = ""
    k8s_pod_name: str = ""
    created: float = 0.0

    def label_list(self) -> list[str]:
        return [f"{k}={v}" if v != "" else k for k, v in sorted(self.labels.items())]

    def ip(self, family: str) -> str | None:
        return next((a["ip"] for a in self.addresses if a["family"] == family), None)

    def as_dict(self) -> dict:
        d = msgspec.to_builtins(self)
        d["labels"] = self.label_list()
        return d

    def event(self, kind: type[ev.Event]) -> ev.Event:
        return kind(id=self.id, container_id=self.container_id, ifname=self.ifname, netns=self.netns,
                    state=self.state, identity=self.identity, labels=self.label_list(),
                    addresses=[ev.EndpointAddress(ip=a["ip"], family=a["family"], cidr=a["cidr"],
                                                  gateway=a["gateway"]) for a in self.addresses],
                    host_ifname=self.host_ifname, host_ifindex=self.host_ifindex, mac=self.mac,
                    host_mac=self.host_mac, namespace=self.k8s_namespace, pod_name=self.k8s_pod_name)


def netns_id(path: str) -> str:
    st = os.stat(path)
    return f"{st.st_dev}:{st.st_ino}"


class EndpointStore:
    """One JSON file per endpoint, replaced atomically (temp file, rename).

    No fsync: records must survive the agent's crash (the page cache does that), and after a
    power loss there is nothing to restore: every pod's network namespace died with the
    machine. Addresses, which must never be handed out twice, are fsynced by IPAM."""

    def __init__(self, directory: Path):
        self.dir = directory
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)

    def save(self, ep: Endpoint) -> None:
        final = self.dir / f"{ep.id}.json"
        tmp = self.dir / f".{ep.id}.json.tmp"
        tmp.write_bytes(msgspec.json.format(msgspec.json.encode(ep)))
        os.replace(tmp, final)

    def remove(self, ep_id: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.dir / f"{ep_id}.json").unlink()

    def load_all(self) -> tuple[list[Endpoint], list[str]]:
        out, problems = [], []
        for path in sorted(self.dir.glob("*.json")):
            try:
                out.append(msgspec.json.decode(path.read_bytes(), type=Endpoint))
            except (OSError, msgspec.DecodeError, msgspec.ValidationError) as e:
                problems.append(f"{path}: {e}")
        return out, problems


class _Locks:
    def __init__(self) -> None:
        self._locks: dict[Any, list] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: Any):
        entry = self._locks.setdefault(key, [anyio.Lock(), 0])
        entry[1] += 1
        try:
            async with entry[0]:
                yield
        finally:
            entry[1] -= 1
            if entry[1] == 0:
                del self._locks[key]


class EndpointManager:
    def __init__(self, agent: Agent):
        self.agent = agent
        self.log = agent.log.bind(component="endpoints")
        self.store = EndpointStore(agent.options.state_dir / "endpoints")
        self.endpoints: dict[int, Endpoint] = {}
        self._locks = _Locks()
        self._ids = anyio.Lock()

    # ---- lookups ------------------------------------------------------------------------

    def find(self, container_id: str, ifname: str | None = None) -> list[Endpoint]:
        return [e for e in self.endpoints.values()
                if e.container_id == container_id and (ifname is None or e.ifname == ifname)]

    def get(self, ep_id: int) -> Endpoint:
        ep = self.endpoints.get(ep_id)
        if ep is None:
            raise EndpointError("not_found", f"endpoint {ep_id} does not exist", 404)
        return ep

    # ---- create ---------------------------------------------------------------------------

    async def create(self, *, container_id: str, ifname: str, netns: str, labels: dict[str, str] | None = None,
                     k8s_namespace: str = "", k8s_pod_name: str = "", pool: str | None = None,
                     mtu: int = 0) -> Endpoint:
        async with self._locks.hold((container_id, ifname)):
            for ep in self.find(container_id, ifname):  # a retried ADD: same answer, nothing new
                if ep.netns != netns:
                    raise EndpointError("conflict", f"{container_id}/{ifname} already exists in netns {ep.netns}")
                return ep
            if not netns or not os.path.exists(netns):
                raise EndpointError("netns_missing", f"network namespace {netns!r} does not exist")
            async with self._ids:
                ep = Endpoint(id=self._free_id(), container_id=container_id, ifname=ifname, netns=netns,
                              netns_id=netns_id(netns), k8s_namespace=k8s_namespace, k8s_pod_name=k8s_pod_name,
                              pool=pool, mtu=mtu, created=time.time(),
                              labels={**self.agent.pod_labels(k8s_namespace, k8s_pod_name), **(labels or {})})
                self.endpoints[ep.id] = ep
                self.store.save(ep)  # a crash from here on is cleaned up at the next start
            try:
                await self._build(ep)
            except BaseException as e:
                with anyio.CancelScope(shield=True):
                    try:
                        await self._teardown(ep, f"create failed: {e}")
                    except Exception as undo:  # the record stays; the next start cleans up
                        self.log.error("undoing a failed create failed", endpoint=ep.id, error=repr(undo))
                if isinstance(e, EndpointError):
                    raise
                if isinstance(e, Exception):
                    raise EndpointError("internal", f"{type(e).__name__}: {e}", 500) from e
                raise
            self.log.info("endpoint created", endpoint=ep.id, container=container_id, ifname=ifname,
                          addresses=[a["ip"] for a in ep.addresses], host_ifname=ep.host_ifname)
            return ep

    def _free_id(self) -> int:
        used = set(self.endpoints)
        for candidate in range(1, MAX_ENDPOINT_ID + 1):
            if candidate not in used:
                return candidate
        raise EndpointError("exhausted", f"no free endpoint id (at most {MAX_ENDPOINT_ID} endpoints per node)")

    async def _build(self, ep: Endpoint) -> None:
        ep.state = "regenerating"
        answer = await self._request("ipam.allocate", {"owner": {"container_id": ep.container_id,
                                                                 "interface": ep.ifname}, "pool": ep.pool})
        ep.pool, ep.addresses = answer["pool"], answer["addresses"]
        for name in self.agent.order:
            await self._hook("pylium_endpoint_plug", name, ep)
        self._program(ep)
        ep.state = "ready"
        self.store.save(ep)
        self.agent.publish(ep.event(ev.EndpointCreated))

    async def _request(self, method: str, payload: dict) -> Any:
        try:
            return await self.agent.core_bus.request(method, payload)
        except NoService:
            raise EndpointError("not_ready", f"no plugin serves {method} (is the ipam plugin enabled?)", 503) from None
        except RpcError as e:
            raise EndpointError(e.code, e.message, 409 if e.code in ("exhausted", "conflict") else 400) from None

    async def _hook(self, hook: str, plugin: str, ep: Endpoint, **extra) -> Any:
        result = self.agent.host.call(hook, plugin, ctx=self.agent.contexts[plugin], endpoint=ep, **extra)
        if hasattr(result, "__await__"):
            result = await result
        return result

    # ---- delete ---------------------------------------------------------------------------

    async def delete(self, container_id: str, ifname: str | None = None, reason: str = "deleted") -> list[Endpoint]:
        """Remove the container's endpoint(s); deleting what does not exist is not an error."""
        gone = []
        for ep in self.find(container_id, ifname):
            async with self._locks.hold((ep.container_id, ep.ifname)):
                if ep.id in self.endpoints:
                    await self._teardown(ep, reason)
                    gone.append(ep)
        if not gone:  # addresses may be held without an endpoint (a crash mid-create): free them
            await self._release(container_id, ifname)
        return gone

    async def _teardown(self, ep: Endpoint, reason: str) -> None:
        ep.state = "disconnecting"
        self.store.save(ep)
        self._unprogram(ep)
        for name in reversed(self.agent.order):
            try:
                await self._hook("pylium_endpoint_unplug", name, ep)
            except Exception as e:  # keep going: the other plugins must still clean up
                self.log.error("unplug failed", plugin=name, endpoint=ep.id, error=f"{type(e).__name__}: {e}")
        await self._release(ep.container_id, ep.ifname)
        ep.state = "disconnected"
        self.store.remove(ep.id)
        self.endpoints.pop(ep.id, None)
        self.agent.publish(ep.event(ev.EndpointDeleted))
        self.log.info("endpoint removed", endpoint=ep.id, container=ep.container_id, reason=reason)

    async def _release(self, container_id: str, ifname: str | None) -> None:
        if self.agent.core_bus is None:  # the agent is stopping: the next start cleans up
            return
        try:
            await self.agent.core_bus.request("ipam.release", {"container_id": container_id, "interface": ifname})
        except RpcError as e:
            self.log.warning("address release failed", container=container_id, error=e.message)

    # ---- check, gc, labels --------------------------------------------------------------

    async def check(self, container_id: str, ifname: str, netns: str) -> Endpoint:
        eps = self.find(container_id, ifname)
        if not eps:
            raise EndpointError("not_found", f"no endpoint for {container_id}/{ifname}", 404)
        ep = eps[0]
        if ep.state != "ready":
            raise EndpointError("not_ready", f"endpoint {ep.id} is {ep.state}")
        if netns and ep.netns != netns:
            raise EndpointError("conflict", f"endpoint {ep.id} lives in {ep.netns}, not {netns}")
        for name in self.agent.order:
            problem = await self._hook("pylium_endpoint_check", name, ep)
            if problem:
                raise EndpointError("check_failed", f"endpoint {ep.id}: {problem}")
        return ep

    async def gc(self, valid: set[tuple[str, str]]) -> list[Endpoint]:
        removed = []
        for ep in list(self.endpoints.values()):
            if (ep.container_id, ep.ifname) not in valid:
                removed += await self.delete(ep.container_id, ep.ifname, reason="garbage collected")
        return removed

    async def set_labels(self, ep_id: int, add: dict[str, str], delete: list[str]) -> Endpoint:
        ep = self.get(ep_id)
        async with self._locks.hold((ep.container_id, ep.ifname)):
            labels = dict(ep.labels)
            for key in delete:
                full = key if ":" in key else f"unspec:{key}"
                if labels.pop(full, None) is None:
                    raise EndpointError("bad_request", f"endpoint {ep_id} has no label {full!r}")
            for key, value in add.items():
                labels[key if ":" in key else f"unspec:{key}"] = value
            await self._relabel(ep, labels)
            return ep

    async def _relabel(self, ep: Endpoint, labels: dict[str, str]) -> None:
        if labels == ep.labels:
            return
        ep.labels = labels
        self.store.save(ep)
        for name in self.agent.order:
            await self._hook("pylium_endpoint_update", name, ep, changed=["labels"])
        self._program(ep)
        self.agent.publish(ep.event(ev.EndpointUpdated))

    async def refresh_pod_labels(self) -> None:
        """Manifests changed: endpoints of pods follow their Pod's labels."""
        for ep in list(self.endpoints.values()):
            if ep.k8s_pod_name:
                pod = self.agent.pod_labels(ep.k8s_namespace, ep.k8s_pod_name)
                kept = {k: v for k, v in ep.labels.items() if not k.startswith("k8s:")}
                await self._relabel(ep, {**kept, **pod})

    # ---- restart ------------------------------------------------------------------------

    async def restore(self) -> None:
        """Take back the endpoints of the previous run; clean up what did not survive."""
        found, problems = self.store.load_all()
        for p in problems:
            self.log.error("unreadable endpoint record", problem=p)
        for ep in found:
            self.endpoints[ep.id] = ep
        for ep in found:
            alive = ep.state == "ready" and _netns_matches(ep)
            if alive:
                ep.state = "restoring"
                for name in self.agent.order:
                    if await self._hook("pylium_endpoint_restore", name, ep) is False:
                        alive = False
                        break
            if not alive:
                await self._teardown(ep, "not restored: unfinished, or its namespace is gone")
                continue
            self._program(ep)
            ep.state = "ready"
            self.store.save(ep)
            self.agent.publish(ep.event(ev.EndpointCreated))
        self._reconcile_maps()
        self.log.info("endpoints restored", count=len(self.endpoints))

    # ---- the core's maps ----------------------------------------------------------------

    def _program(self, ep: Endpoint) -> None:
        dp = self.agent.datapath
        if dp is None or not ep.host_ifindex:
            return
        from pylium.core.datapath import structs as s

        info = s.EndpointInfo(ifindex=ep.host_ifindex, ep_id=ep.id, mac=s.mac_bytes(ep.mac),
                              host_mac=s.mac_bytes(ep.host_mac), identity=ep.identity)
        lxc = s.LxcInfo(ep_id=ep.id, identity=ep.identity, mac=s.mac_bytes(ep.mac), host_mac=s.mac_bytes(ep.host_mac))
        for a in ep.addresses:
            packed = ipaddress.ip_address(a["ip"]).packed
            if a["family"] == "ipv4":
                ct.memmove(lxc.ip4, packed, 4)
            else:
                ct.memmove(lxc.ip6, packed, 16)
            dp.maps["ipcache"].put(s.IpcacheKey.of(a["ip"]), s.IpcacheInfo(identity=ep.identity))
            dp.maps["endpoints"].put(s.EndpointKey.of(a["ip"]), info)
        dp.maps["lxc_by_ifindex"].put(ct.c_uint32(ep.host_ifindex), lxc)  # last: now packets flow

    def _unprogram(self, ep: Endpoint) -> None:
        dp = self.agent.datapath
        if dp is None:
            return
        from pylium.core.datapath import structs as s

        if ep.host_ifindex:
            dp.maps["lxc_by_ifindex"].delete(ct.c_uint32(ep.host_ifindex))  # first: traffic stops here
        for a in ep.addresses:
            dp.maps["endpoints"].delete(s.EndpointKey.of(a["ip"]))
            dp.maps["ipcache"].delete(s.IpcacheKey.of(a["ip"]))

    def _reconcile_maps(self) -> None:
        """Remove map entries no endpoint owns any more (left by a crash or a lost endpoint)."""
        dp = self.agent.datapath
        if dp is None:
            return
        ips = {a["ip"] for ep in self.endpoints.values() for a in ep.addresses}
        ifindexes = {ep.host_ifindex for ep in self.endpoints.values()}
        for key in list(dp.maps["endpoints"].keys()):
            if key.ip not in ips:
                dp.maps["endpoints"].delete(key)
        for key in list(dp.maps["lxc_by_ifindex"].keys()):
            if key.value not in ifindexes:
                dp.maps["lxc_by_ifindex"].delete(key)
        for key in list(dp.maps["ipcache"].keys()):
            host_route = key.prefixlen - 32 == (32 if key.family == 4 else 128)
            if host_route and key.cidr.split("/")[0] not in ips and self._is_endpoint_identity(key):
                dp.maps["ipcache"].delete(key)

    def _is_endpoint_identity(self, key) -> bool:
        value = self.agent.datapath.maps["ipcache"].get(key)
        # endpoint identities are the reserved init one and allocated ones (256 .. 2^24-1): host,
        # world and node-local CIDR identities (from 2^24, the policy plugin's) are not ours
        return value is not None and (value.identity == ID_INIT or 256 <= value.identity < 1 << 24)


def _netns_matches(ep: Endpoint) -> bool:
    try:
        return netns_id(ep.netns) == ep.netns_id
    except OSError:
        return False


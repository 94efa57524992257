"""Endpoints: the pods (or plain network namespaces) this node serves.

The core owns the endpoint model, its durable record (<state-dir>/endpoints/<id>.json), the
core maps that make an endpoint reachable, its ipcache records, and the order of work.
Plugins do their part through hooks, in start order (teardown in reverse), each returning
what it contributes (EndpointContribution), which the core applies before the next hook:

    create:  id, record (not ready) -> ipam.allocate (bus) -> pylium_endpoint_plug per plugin
             -> core maps and ipcache (the endpoint becomes reachable) -> record ready
             -> endpoint.created
    delete:  record disconnecting -> core maps and ipcache removed -> pylium_endpoint_unplug
             per plugin -> ipam.release -> record removed -> endpoint.deleted

Any failure during create undoes what was done: no veth, no address, no map entry is left.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any, Callable, Protocol

import anyio
import msgspec

from pylium.core.bus import events as ev
from pylium.core.bus.client import BusClient, NoService, RpcError
from pylium.core.endpoints.maps import EndpointMaps
from pylium.core.faults import crash_point
from pylium.core.endpoints.model import Endpoint, EndpointContribution
from pylium.core.endpoints.store import EndpointStore
from pylium.core.plugin_api import EndpointError

MAX_ENDPOINT_ID = 4095


class Cluster(Protocol):
    """Where the cluster learns this node's endpoints (the cluster store's ipcache prefix)."""

    def publish(self, ep: Endpoint) -> None: ...

    def withdraw(self, ep: Endpoint) -> None: ...


class Plugins(Protocol):
    """How the manager reaches the plugins (the agent's plugin host, narrowed)."""

    order: list[str]  # start order
    owned_fields: dict[str, list[str]]  # plugin -> the endpoint fields it contributes

    async def call(self, hook: str, plugin: str, endpoint: Endpoint, **extra: Any) -> Any: ...


def netns_id(path: str) -> str:
    st = os.stat(path)
    return f"{st.st_dev}:{st.st_ino}"


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
    def __init__(self, directory: Path, plugins: Plugins, bus: Callable[[], BusClient | None],
                 maps: EndpointMaps | None, pod_labels: Callable[[str, str], dict[str, str]], log: Any,
                 cluster: Cluster | None = None):
        """`bus()` is the core's bus connection (None once the agent stops); `maps` writes the
        core's endpoint maps and ipcache records (None without a datapath); `pod_labels` looks
        up a Pod's labels in the manifests; `cluster` tells the other nodes."""
        self.plugins, self._bus, self.maps, self._pod_labels = plugins, bus, maps, pod_labels
        self.cluster = cluster
        self.log = log
        self.store = EndpointStore(directory)
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

    def _set(self, ep: Endpoint, save: bool = True) -> Endpoint:
        if save:
            self.store.save(ep)  # first: a record that cannot be written changes nothing
        self.endpoints[ep.id] = ep
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
                ep = self._set(Endpoint(
                    id=self._free_id(), container_id=container_id, ifname=ifname, netns=netns,
                    netns_id=netns_id(netns), k8s_namespace=k8s_namespace, k8s_pod_name=k8s_pod_name, pool=pool,
                    requested_mtu=mtu, created=time.time(),
                    labels={**self._pod_labels(k8s_namespace, k8s_pod_name), **(labels or {})}))
                # a crash from here on is cleaned up at the next start
            crash_point("endpoint-recorded")
            try:
                ep = await self._build(ep)
            except BaseException as e:
                with anyio.CancelScope(shield=True):
                    try:  # the latest version: what the plugins that ran have contributed
                        await self._teardown(self.endpoints.get(ep.id, ep), f"create failed: {e}")
                    except Exception as undo:  # the record stays; the next start cleans up
                        self.log.error("undoing a failed create failed", endpoint=ep.id, error=repr(undo))
                if isinstance(e, EndpointError):
                    raise
                if isinstance(e, Exception):
                    raise EndpointError("internal", f"{type(e).__name__}: {e}", 500) from e
                raise
            self.log.info("endpoint created", endpoint=ep.id, container=container_id, ifname=ifname,
                          addresses=[a["ip"] for a in ep.addresses], host_ifname=ep.host_ifname)
            crash_point("endpoint-ready")
            return ep

    def _free_id(self) -> int:
        used = set(self.endpoints)
        for candidate in range(1, MAX_ENDPOINT_ID + 1):
            if candidate not in used:
                return candidate
        raise EndpointError("exhausted", f"no free endpoint id (at most {MAX_ENDPOINT_ID} endpoints per node)")

    async def _build(self, ep: Endpoint) -> Endpoint:
        ep = self._set(ep.replace(state="regenerating"), save=False)
        answer = await self._request("ipam.allocate", {"owner": {"container_id": ep.container_id,
                                                                 "interface": ep.ifname}, "pool": ep.pool})
        crash_point("address-allocated")
        ep = self._set(ep.replace(pool=answer["pool"], addresses=answer["addresses"]))
        for name in self.plugins.order:
            ep = await self._contribute("pylium_endpoint_plug", name, ep)
        crash_point("endpoint-plugged")
        self._program(ep)
        crash_point("endpoint-programmed")
        ep = self._set(ep.replace(state="ready"))
        self._publish(ep.event(ev.EndpointCreated))
        return ep

    async def _call(self, hook: str, plugin: str, ep: Endpoint, **extra: Any) -> Any:
        """One plugin's hook, given its own copy of the endpoint's labels and addresses: what
        a plugin does to them changes nothing else."""
        copy = ep.replace(labels=dict(ep.labels), addresses=[dict(a) for a in ep.addresses])
        return await self.plugins.call(hook, plugin, copy, **extra)

    async def _contribute(self, hook: str, plugin: str, ep: Endpoint, **extra: Any) -> Endpoint:
        """Run one plugin's hook and apply what it returns."""
        return self._apply(hook, plugin, ep, await self._call(hook, plugin, ep, **extra))

    def _apply(self, hook: str, plugin: str, ep: Endpoint, result: Any) -> Endpoint:
        """A hook's contribution, checked: only fields the plugin owns, of the right types."""
        if result is None:
            return ep
        if not isinstance(result, EndpointContribution):
            raise EndpointError("internal", f"plugin {plugin}: {hook} returned {type(result).__name__}, not an "
                                            f"EndpointContribution (or None)", 500)
        fields = result.fields()
        foreign = sorted(set(fields) - set(self.plugins.owned_fields.get(plugin, ())))
        if foreign:
            raise EndpointError("internal", f"plugin {plugin}: {hook} sets {', '.join(foreign)}, which it did not "
                                            f"declare (declare.endpoint_fields)", 500)
        try:
            msgspec.convert(fields, EndpointContribution)
        except msgspec.ValidationError as e:
            raise EndpointError("internal", f"plugin {plugin}: {hook}: {e}", 500) from None
        return self._set(ep.replace(**fields), save=False) if fields else ep

    async def _request(self, method: str, payload: dict) -> Any:
        bus = self._bus()
        if bus is None:
            raise EndpointError("not_ready", "the agent is stopping", 503)
        try:
            return await bus.request(method, payload)
        except NoService:
            raise EndpointError("not_ready", f"no plugin serves {method} (is the ipam plugin enabled?)", 503) from None
        except RpcError as e:
            raise EndpointError(e.code, e.message, 409 if e.code in ("exhausted", "conflict") else 400) from None

    def _publish(self, event: ev.Event) -> None:
        bus = self._bus()
        if bus is not None:
            bus.publish(event)

    # ---- delete ---------------------------------------------------------------------------

    async def delete(self, container_id: str, ifname: str | None = None, reason: str = "deleted") -> list[Endpoint]:
        """Remove the container's endpoint(s); deleting what does not exist is not an error."""
        gone = []
        for ep in self.find(container_id, ifname):
            async with self._locks.hold((ep.container_id, ep.ifname)):
                current = self.endpoints.get(ep.id)
                if current is not None:
                    gone.append(await self._teardown(current, reason))
        if not gone:  # addresses may be held without an endpoint (a crash mid-create): free them
            await self._release(container_id, ifname)
        return gone

    async def _teardown(self, ep: Endpoint, reason: str) -> Endpoint:
        try:
            ep = self._set(ep.replace(state="disconnecting"))
        except EndpointError as e:  # a full state directory must not keep the endpoint in place
            self.log.warning("endpoint record not updated; removing the endpoint anyway", endpoint=ep.id,
                             error=e.message)
            ep = self._set(ep.replace(state="disconnecting"), save=False)
        self._unprogram(ep)
        for name in reversed(self.plugins.order):
            try:
                await self._call("pylium_endpoint_unplug", name, ep)
            except Exception as e:  # keep going: the other plugins must still clean up
                self.log.error("unplug failed", plugin=name, endpoint=ep.id, error=f"{type(e).__name__}: {e}")
        await self._release(ep.container_id, ep.ifname)
        ep = ep.replace(state="disconnected")
        self.store.remove(ep.id)
        self.endpoints.pop(ep.id, None)
        self._publish(ep.event(ev.EndpointDeleted))
        self.log.info("endpoint removed", endpoint=ep.id, container=ep.container_id, reason=reason)
        return ep

    async def _release(self, container_id: str, ifname: str | None) -> None:
        bus = self._bus()
        if bus is None:  # the agent is stopping: the next start cleans up
            return
        try:
            await bus.request("ipam.release", {"container_id": container_id, "interface": ifname})
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
        for name in self.plugins.order:
            problem = await self._call("pylium_endpoint_check", name, ep)
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
            ep = self.get(ep_id)
            labels = dict(ep.labels)
            for key in delete:
                full = key if ":" in key else f"unspec:{key}"
                if labels.pop(full, None) is None:
                    raise EndpointError("bad_request", f"endpoint {ep_id} has no label {full!r}")
            for key, value in add.items():
                labels[key if ":" in key else f"unspec:{key}"] = value
            return await self._relabel(ep, labels)

    async def _relabel(self, ep: Endpoint, labels: dict[str, str]) -> Endpoint:
        """Every plugin sees the new labels, then the core programs and saves the result. A
        hook that fails refuses the change: the plugins that already took it are given the
        old endpoint again, and the endpoint keeps its labels."""
        if labels == ep.labels:
            return ep
        new, done = ep.replace(labels=labels), []
        try:
            for name in self.plugins.order:
                new = self._apply("pylium_endpoint_update", name, new,
                                  await self._call("pylium_endpoint_update", name, new, changed=["labels"]))
                done.append(name)
        except Exception as e:
            self._set(ep, save=False)
            for name in done:
                with contextlib.suppress(Exception):
                    await self._call("pylium_endpoint_update", name, ep, changed=["labels"])
            if isinstance(e, EndpointError):
                raise
            raise EndpointError("internal", f"{type(e).__name__}: {e}", 500) from e
        ep = self._set(new)
        self._program(ep)
        self._publish(ep.event(ev.EndpointUpdated))
        return ep

    async def refresh_pod_labels(self) -> None:
        """Manifests changed: endpoints of pods follow their Pod's labels."""
        for ep in list(self.endpoints.values()):
            if ep.k8s_pod_name:
                async with self._locks.hold((ep.container_id, ep.ifname)):
                    ep = self.endpoints.get(ep.id)
                    if ep is None:
                        continue
                    pod = self._pod_labels(ep.k8s_namespace, ep.k8s_pod_name)
                    kept = {k: v for k, v in ep.labels.items() if not k.startswith("k8s:")}
                    try:
                        await self._relabel(ep, {**kept, **pod})
                    except EndpointError as e:  # it keeps its labels; the next change tries again
                        self.log.error("new pod labels refused", endpoint=ep.id, error=e.message)

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
            reason = "not restored: unfinished, or its namespace is gone"
            if alive:
                ep = self._set(ep.replace(state="restoring"), save=False)
                for name in self.plugins.order:
                    try:
                        result = await self._call("pylium_endpoint_restore", name, ep)
                        if result is False:
                            alive, reason = False, f"not restored: {name} cannot take it back"
                            break
                        ep = self._apply("pylium_endpoint_restore", name, ep, result)
                    except Exception as e:
                        message = e.message if isinstance(e, EndpointError) else f"{type(e).__name__}: {e}"
                        alive, reason = False, f"not restored: {name}: {message}"
                        break
            if not alive:
                await self._teardown(ep, reason)
                continue
            self._program(ep)
            ep = self._set(ep.replace(state="ready"))
            self._publish(ep.event(ev.EndpointCreated))
        if self.maps is not None:
            self.maps.reconcile(self.endpoints.values())
        self.log.info("endpoints restored", count=len(self.endpoints))

    # ---- the core's maps ----------------------------------------------------------------

    def _program(self, ep: Endpoint) -> None:
        if self.maps is not None and ep.host_ifindex:
            self.maps.program(ep)
        if self.cluster is not None:
            self.cluster.publish(ep)

    def _unprogram(self, ep: Endpoint) -> None:
        if self.maps is not None:
            self.maps.unprogram(ep)
        if self.cluster is not None:
            self.cluster.withdraw(ep)


def _netns_matches(ep: Endpoint) -> bool:
    try:
        return netns_id(ep.netns) == ep.netns_id
    except OSError:
        return False

"""The node registry: this node's record in the cluster store (written with the agent's lease,
written again whenever it changes), and every other node's, followed through a watch.

Both reach plugins as state events on the bus: `node.changed` (the local node too, with
`local: true`) and `node.deleted` (a node whose lease ran out, or that was removed). A record
that does not parse is logged once, counted and ignored: one bad writer does not take the
cluster's view down with it."""

from __future__ import annotations

from typing import Any, Callable

import anyio

from pylium.core.bus import events as ev
from pylium.core.nodes.model import PREFIX, BadNodeRecord, Node, node_key, parse
from pylium.core.state.store import ClusterStore, Mirror, StoreUnavailable


class NodeRegistry:
    def __init__(self, store: ClusterStore, local: Node, publish: Callable[[ev.Event], None], log: Any,
                 count_bad: Callable[[], None] = lambda: None):
        self.store, self.local, self._publish, self.log, self._count_bad = store, local, publish, log, count_bad
        self.peers: dict[str, Node] = {}
        self.bad: dict[str, str] = {}  # key -> why its record was ignored
        self._dirty = anyio.Event()
        self.mirror = Mirror(store, f"{PREFIX}{local.cluster}/", self._changed, log)

    @property
    def synced(self) -> anyio.Event:
        return self.mirror.synced

    def nodes(self) -> list[tuple[Node, bool]]:
        """Every known node and whether it is this one, by name."""
        return sorted([(self.local, True), *((n, False) for n in self.peers.values())], key=lambda x: x[0].name)

    # ---- the local node -------------------------------------------------------------------

    def update(self, **fields: Any) -> None:
        """Change this node's record (pod CIDRs, health address, ...); written soon after."""
        node = self.local.replace(**fields)
        if node != self.local:
            self.local = node
            self._publish(_changed_event(node, True))
            self._dirty.set()

    def annotate(self, key: str, value: str | None) -> None:
        """Set (None: remove) one of this node's annotations, the free-form attributes peers read."""
        annotations = {k: v for k, v in self.local.annotations.items() if k != key}
        if value is not None:
            annotations[key] = value
        self.update(annotations=annotations)

    async def run(self) -> None:
        self._publish(_changed_event(self.local, True))
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._write_local)
            tg.start_soon(self.mirror.run)

    async def _write_local(self) -> None:
        while True:
            node = self.local
            try:
                await self.store.put(node_key(node.cluster, node.name), node.record(), lease=True)
            except StoreUnavailable as e:
                self.log.warning("cannot write this node's record yet", error=str(e))
                await anyio.sleep(1)
                continue
            if node == self.local:
                await self._dirty.wait()
                self._dirty = anyio.Event()

    # ---- the others -----------------------------------------------------------------------

    def _changed(self, key: str, old: Any, new: Any) -> None:
        name = key.rsplit("/", 1)[-1]
        if name == self.local.name:
            return  # our own record: the registry writes it from memory
        if new is None:
            self.bad.pop(key, None)
            if self.peers.pop(name, None) is not None:
                self.log.info("node left", node=name)
                self._publish(ev.NodeDeleted(name=name, cluster=self.local.cluster))
            return
        try:
            node = parse(key, new)
        except BadNodeRecord as e:
            if self.bad.get(key) != str(e):  # once per bad version
                self.bad[key] = str(e)
                self._count_bad()
                self.log.error("ignoring a node record that does not parse", key=key, error=str(e))
            return
        self.bad.pop(key, None)
        if name not in self.peers:
            self.log.info("node joined", node=name, ip=node.ipv4, pod_cidrs=node.pod_cidrs)
        self.peers[name] = node
        self._publish(_changed_event(node, False))


def _changed_event(node: Node, local: bool) -> ev.NodeChanged:
    return ev.NodeChanged(name=node.name, cluster=node.cluster, local=local, ipv4=node.ipv4, ipv6=node.ipv6,
                          pod_cidrs=node.pod_cidrs, health_ipv4=node.ipv4_health_ip, boot_id=node.boot_id,
                          annotations=dict(node.annotations))


class PluginNode:
    """This node as a plugin changes it (`ctx.node`): the record peers read."""

    def __init__(self, registry: NodeRegistry):
        self._registry = registry

    @property
    def local(self) -> Node:
        return self._registry.local

    @property
    def synced(self) -> anyio.Event:
        """Set once the registry has read the cluster's nodes from the store."""
        return self._registry.synced

    def peers(self) -> list[ev.NodeChanged]:
        """The other nodes as the registry knows them now (what `node.changed` events carry)."""
        return [_changed_event(n, False) for n in self._registry.peers.values()]

    def update(self, *, pod_cidrs: list[str] | None = None, health_ipv4: str | None = None) -> None:
        """Publish this node's pod CIDRs (the IPAM plugin) or its health address."""
        changes: dict[str, Any] = {}
        if pod_cidrs is not None:
            changes["ipv4_alloc_cidr"] = sorted(c for c in pod_cidrs if ":" not in c)
            changes["ipv6_alloc_cidr"] = sorted(c for c in pod_cidrs if ":" in c)
        if health_ipv4 is not None:
            changes["ipv4_health_ip"] = health_ipv4
        self._registry.update(**changes)

    def annotate(self, key: str, value: str | None) -> None:
        """Set (None: remove) an annotation of this node, e.g. an encryption public key."""
        self._registry.annotate(key, value)

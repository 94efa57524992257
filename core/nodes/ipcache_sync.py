"""Every pod address of the cluster in every node's ipcache, through the cluster store.

Each agent writes its endpoints' addresses under `cilium/state/ip/v1/default/<ip>` (with its
lease, in the shape of Cilium's IPIdentityPair: IP, HostIP = the node to tunnel to, ID = the
security identity, Key = the encryption key index, K8sNamespace, K8sPodName) and follows the
prefix: the other nodes' addresses become ipcache records of the owner `core/kvstore`
(source kvstore), so policy on this node knows a remote pod's identity.

Writing is in the background (an ADD does not wait for etcd; while etcd is away the writes
wait and are retried), reading is a `Mirror` (resynced after an outage). The owner waits for
its first snapshot before the entries a previous run left in the map are released.
"""

from __future__ import annotations

from typing import Any

import anyio
import msgspec

from pylium.core.datapath.ipcache import Ipcache, IpcacheError, Source
from pylium.core.endpoints.model import Endpoint
from pylium.core.state import keys
from pylium.core.state.store import ClusterStore, Mirror, StoreUnavailable

PREFIX = keys.IPS
OWNER = "core/kvstore"


class IPIdentityPair(msgspec.Struct, frozen=True, rename="pascal", kw_only=True):
    ip: str = msgspec.field(name="IP")
    host_ip: str = msgspec.field(name="HostIP", default="")
    id: int = msgspec.field(name="ID")
    key: int = 0
    k8s_namespace: str = msgspec.field(name="K8sNamespace", default="")
    k8s_pod_name: str = msgspec.field(name="K8sPodName", default="")


class IpcacheSync:
    def __init__(self, store: ClusterStore, node_ip: str, log: Any, count_bad: Any = lambda: None):
        self.store, self.node_ip, self.log, self._count_bad = store, node_ip, log, count_bad
        self.ipcache: Ipcache | None = None
        self._restored = anyio.Event()
        self._wanted: dict[str, dict | None] = {}  # ip -> record to write (None: delete), not yet written
        self._dirty = anyio.Event()
        self.remote: dict[str, IPIdentityPair] = {}
        self.bad: dict[str, str] = {}
        self.mirror = Mirror(store, PREFIX, self._changed, log)

    def attach(self, ipcache: Ipcache) -> None:
        """Write the other nodes' addresses into this ipcache (declared before it restores
        its entries; written once `restored()` says it has)."""
        ipcache.register(OWNER, Source.KVSTORE, waits_for_sync=True)
        self.ipcache = ipcache

    def restored(self) -> None:
        """The datapath's ipcache (if any) has taken back its entries: write what we know."""
        self._restored.set()
        for ip, pair in self.remote.items():
            self._upsert(ip, pair)

    # ---- this node's endpoints --------------------------------------------------------------

    def publish(self, ep: Endpoint) -> None:
        for a in ep.addresses:
            pair = IPIdentityPair(ip=a["ip"], host_ip=self.node_ip, id=ep.identity, k8s_namespace=ep.k8s_namespace,
                                  k8s_pod_name=ep.k8s_pod_name)
            self._wanted[a["ip"]] = msgspec.to_builtins(pair)
        self._dirty.set()

    def withdraw(self, ep: Endpoint) -> None:
        for a in ep.addresses:
            self._wanted[a["ip"]] = None
        self._dirty.set()

    async def _write(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty = anyio.Event()
            for ip, record in list(self._wanted.items()):
                try:
                    if record is None:
                        await self.store.delete(PREFIX + ip)
                    else:
                        await self.store.put(PREFIX + ip, record, lease=True)
                except StoreUnavailable as e:
                    self.log.warning("cannot publish endpoint addresses yet; retrying", error=str(e))
                    await anyio.sleep(1)
                    self._dirty.set()
                    break
                if self._wanted.get(ip) is record:
                    del self._wanted[ip]

    # ---- the other nodes' ----------------------------------------------------------------

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._write)
            tg.start_soon(self.mirror.run)
            await self.mirror.synced.wait()
            await self._restored.wait()
            if self.ipcache is not None:  # what a previous run left and nobody has now: released
                self.ipcache.synced(OWNER)

    def _changed(self, key: str, old: Any, new: Any) -> None:
        ip = key.removeprefix(PREFIX)
        if new is None:
            self.bad.pop(key, None)
            if self.remote.pop(ip, None) is not None and self.ipcache is not None and self._restored.is_set():
                self.ipcache.release(ip, OWNER)
            return
        try:
            pair = msgspec.convert(new, IPIdentityPair)
            if pair.ip != ip:
                raise ValueError(f"stored under {ip} but names {pair.ip}")
        except (msgspec.ValidationError, ValueError) as e:
            if self.bad.get(key) != str(e):
                self.bad[key] = str(e)
                self._count_bad()
                self.log.error("ignoring an ipcache record that does not parse", key=key, error=str(e))
            return
        if self.node_ip and pair.host_ip == self.node_ip:  # ours: the core's endpoints own it here
            if self.remote.pop(ip, None) is not None and self.ipcache is not None and self._restored.is_set():
                self.ipcache.release(ip, OWNER)
            return
        self.remote[ip] = pair
        self._upsert(ip, pair)

    def _upsert(self, ip: str, pair: IPIdentityPair) -> None:
        if self.ipcache is None or not self._restored.is_set():
            return
        try:
            self.ipcache.upsert(ip, pair.id, OWNER, tunnel_endpoint=pair.host_ip if ":" not in pair.host_ip else "",
                                encrypt_key=pair.key)
        except IpcacheError as e:
            self.log.error("ignoring an ipcache record", ip=ip, error=str(e))

"""The ipcache: address prefixes -> security identity (and tunnel endpoint, encryption key),
read by every datapath program. Several owners write it (the core's endpoints, the node's own
addresses, policy's CIDR peers; later remote nodes, FQDNs, Kubernetes), so it is a service
with records per owner instead of a map anyone writes:

- `upsert(prefix, identity, owner, ...)` / `release(prefix, owner)`: one record per owner
  per prefix. The map holds the winning record: the highest `Source` wins (Cilium's
  `source.AllowOverwrite` order: local > kvstore > kubernetes > generated); between owners of
  one source, the first by name. Releasing the winner puts the next record in the map.
- Restart: entries left in the pinned map become records of the owner `restored` (lowest),
  so packets keep their identities while the owners write theirs again. Once the agent has
  started (and every owner that syncs later has called `synced`), restored records that
  nobody claimed again are removed.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass
from typing import Any, Iterator

from pylium.core.datapath.structs import IpcacheInfo, IpcacheKey

RESTORED = "restored"


class Source(enum.IntEnum):
    """Who vouches for an ipcache record; the higher wins."""

    RESTORED = 0  # found in the pinned map at start, not claimed again yet
    GENERATED = 1  # derived on this node: CIDR peers of policies, FQDN answers
    KUBERNETES = 2  # objects of the Kubernetes API
    KVSTORE = 3  # other nodes, through the cluster store
    LOCAL = 4  # this node: its endpoints, its own addresses, the pods' gateways


@dataclass(frozen=True)
class Record:
    identity: int
    tunnel_endpoint: str = ""  # IPv4 address of the node to tunnel to ("": local or direct)
    encrypt_key: int = 0

    def info(self) -> IpcacheInfo:
        info = IpcacheInfo(identity=self.identity, encrypt_key=self.encrypt_key)
        if self.tunnel_endpoint:
            info.tunnel_ip4[:] = ipaddress.IPv4Address(self.tunnel_endpoint).packed
        return info


@dataclass(frozen=True)
class Owner:
    name: str  # "<plugin>/<what>", e.g. "policy/cidr"
    source: Source
    waits_for_sync: bool = False  # restored entries stay until it calls synced()


class IpcacheError(Exception):
    """A write the ipcache refuses: an unknown owner, or a prefix that is not one."""


def canonical(prefix: str) -> str:
    """"10.0.0.5" and "10.0.0.5/32" are one prefix; host bits are an error."""
    try:
        return str(ipaddress.ip_network(prefix, strict=True))
    except ValueError as e:
        raise IpcacheError(f"ipcache: {prefix!r} is not a prefix ({e})") from None


class Ipcache:
    """The records, and the map that holds each prefix's winner (a PinnedMap, or anything with
    put/delete/items over IpcacheKey/IpcacheInfo)."""

    def __init__(self, table: Any):
        self.table = table
        self.owners: dict[str, Owner] = {RESTORED: Owner(RESTORED, Source.RESTORED)}
        self.records: dict[str, dict[str, Record]] = {}
        self._unsynced: set[str] = set()
        self._started = False

    # ---- owners -------------------------------------------------------------------------

    def register(self, name: str, source: Source, waits_for_sync: bool = False) -> None:
        if name in self.owners:
            raise IpcacheError(f"ipcache owner {name!r} is declared twice")
        self.owners[name] = Owner(name, Source(source), waits_for_sync)
        if waits_for_sync:
            self._unsynced.add(name)

    def synced(self, owner: str) -> None:
        """`owner` has written everything it knows after a restart."""
        self._unsynced.discard(self._owner(owner).name)
        self._drop_restored()

    def started(self) -> None:
        """The agent has started: every owner that does not wait for a sync has written."""
        self._started = True
        self._drop_restored()

    # ---- records ------------------------------------------------------------------------

    def restore(self) -> int:
        """Take what the pinned map holds as restored records (at start, before any owner)."""
        count = 0
        for key, info in self.table.items():
            tunnel = "" if not any(info.tunnel_ip4) else str(ipaddress.IPv4Address(bytes(info.tunnel_ip4)))
            self.records.setdefault(key.cidr, {})[RESTORED] = Record(info.identity, tunnel, info.encrypt_key)
            count += 1
        return count

    def upsert(self, prefix: str, identity: int, owner: str, *, tunnel_endpoint: str = "",
               encrypt_key: int = 0) -> None:
        self._owner(owner)
        prefix = canonical(prefix)
        self._write(prefix, owner, Record(identity, tunnel_endpoint, encrypt_key))

    def release(self, prefix: str, owner: str) -> None:
        """Remove `owner`'s record of `prefix` (not there: nothing happens)."""
        self._owner(owner)
        self._write(canonical(prefix), owner, None)

    def owned(self, owner: str) -> dict[str, Record]:
        return {p: recs[owner] for p, recs in self.records.items() if owner in recs}

    def winner(self, prefix: str) -> tuple[str, Record] | None:
        records = self.records.get(canonical(prefix))
        if not records:
            return None
        best = max(self.owners[o].source for o in records)
        name = min(o for o in records if self.owners[o].source == best)
        return name, records[name]

    def rows(self) -> Iterator[dict]:
        """Every prefix with its winner and the owners it shadows (for `pylium bpf ipcache list`)."""
        for prefix in sorted(self.records, key=_sort_key):
            owner, record = self.winner(prefix)
            yield {"prefix": prefix, "identity": record.identity, "tunnel_endpoint": record.tunnel_endpoint,
                   "encrypt_key": record.encrypt_key, "owner": owner, "source": self.owners[owner].source.name.lower(),
                   "shadowed": sorted(o for o in self.records[prefix] if o != owner)}

    # ---- internals ----------------------------------------------------------------------

    def _owner(self, name: str) -> Owner:
        owner = self.owners.get(name)
        if owner is None or name == RESTORED:
            known = ", ".join(sorted(o for o in self.owners if o != RESTORED)) or "none"
            raise IpcacheError(f"ipcache: unknown owner {name!r} (declared owners: {known})")
        return owner

    def _write(self, prefix: str, owner: str, record: Record | None) -> None:
        before = self.winner(prefix)
        records = self.records.setdefault(prefix, {})
        if record is None:
            records.pop(owner, None)
        else:
            records[owner] = record
        if not records:
            del self.records[prefix]
        after = self.winner(prefix)
        if after is None:
            if before is not None:
                self.table.delete(IpcacheKey.of(prefix))
        elif before is None or before[1] != after[1]:
            self.table.put(IpcacheKey.of(prefix), after[1].info())

    def _drop_restored(self) -> None:
        if not self._started or self._unsynced:
            return
        for prefix in [p for p, recs in self.records.items() if RESTORED in recs]:
            self._write(prefix, RESTORED, None)


def _sort_key(prefix: str) -> tuple:
    net = ipaddress.ip_network(prefix)
    return net.version, net.network_address.packed, net.prefixlen


class PluginIpcache:
    """A plugin's handle on the ipcache (`ctx.ipcache`): owners are the names the plugin
    declared (`declare.ipcache_owner("cidr", Source.GENERATED)`), without its prefix."""

    def __init__(self, ipcache: Ipcache, plugin: str):
        self._ipcache, self._plugin = ipcache, plugin

    def _name(self, owner: str) -> str:
        return f"{self._plugin}/{owner}"

    def upsert(self, prefix: str, identity: int, owner: str, *, tunnel_endpoint: str = "",
               encrypt_key: int = 0) -> None:
        self._ipcache.upsert(prefix, identity, self._name(owner), tunnel_endpoint=tunnel_endpoint,
                             encrypt_key=encrypt_key)

    def release(self, prefix: str, owner: str) -> None:
        self._ipcache.release(prefix, self._name(owner))

    def owned(self, owner: str) -> dict[str, Record]:
        return self._ipcache.owned(self._name(owner))

    def synced(self, owner: str) -> None:
        self._ipcache.synced(self._name(owner))

"""The ipcache: address prefixes -> security identity (and tunnel endpoint, encryption key),
read by every datapath program. Several owners write it (the core's endpoints, the node's own
addresses, policy's CIDR peers; later remote nodes, FQDNs, Kubernetes), so it is a service
with records per owner instead of a map anyone writes:

- `upsert(prefix, identity, owner, ...)` / `release(prefix, owner)`: one record per owner
  per prefix. The map holds the winning record: the highest `Source` wins (Cilium's
  `source.AllowOverwrite` order: local > kvstore > kubernetes > generated); between owners of
  one source, the first by name. Releasing the winner puts the next record in the map.
- Each map entry carries its owner's id (ids are kept in `<state-dir>/ipcache-owners.json`,
  stable across restarts). At start, the pinned map's entries become records of the owners
  that wrote them, so packets keep their identities and no other owner's record stands in
  for them while the agent starts. Each owner then reconciles on its own: once it has
  written again (when the agent has started, or, for owners that learn their entries later
  from a store, when it calls `synced`), its restored records that it did not write again are
  released. Entries of owners that no longer exist go when the agent has started.
"""

from __future__ import annotations

import enum
import ipaddress
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol

from pylium.core.datapath.structs import IpcacheInfo, IpcacheKey

RESTORED = "restored"  # entries of owners that are gone (or of a pin without owner ids)


class Table(Protocol):
    """The map under the service: a PinnedMap, or a stand-in in tests."""

    def put(self, key: IpcacheKey, value: IpcacheInfo) -> None: ...

    def delete(self, key: IpcacheKey) -> bool: ...

    def items(self) -> Iterator[tuple[IpcacheKey, IpcacheInfo]]: ...


class Source(enum.IntEnum):
    """Who vouches for an ipcache record; the higher wins."""

    RESTORED = 0  # found in the pinned map at start, its owner gone
    GENERATED = 1  # derived on this node: CIDR peers of policies, FQDN answers
    KUBERNETES = 2  # objects of the Kubernetes API
    KVSTORE = 3  # other nodes, through the cluster store
    LOCAL = 4  # this node: its endpoints, its own addresses, the pods' gateways


@dataclass(frozen=True)
class Record:
    identity: int
    tunnel_endpoint: str = ""  # IPv4 address of the node to tunnel to ("": local or direct)
    encrypt_key: int = 0

    def info(self, owner_id: int) -> IpcacheInfo:
        info = IpcacheInfo(identity=self.identity, encrypt_key=self.encrypt_key, owner=owner_id)
        if self.tunnel_endpoint:
            info.tunnel_ip4[:] = ipaddress.IPv4Address(self.tunnel_endpoint).packed
        return info

    @classmethod
    def of(cls, info: IpcacheInfo) -> Record:
        tunnel = str(ipaddress.IPv4Address(bytes(info.tunnel_ip4))) if any(info.tunnel_ip4) else ""
        return cls(info.identity, tunnel, info.encrypt_key)


@dataclass(frozen=True)
class Owner:
    name: str  # "<plugin>/<what>", e.g. "policy/cidr"
    source: Source
    waits_for_sync: bool = False  # its restored records stay until it calls synced()


class IpcacheError(Exception):
    """A write the ipcache refuses: an unknown owner, or a prefix that is not one."""


def canonical(prefix: str) -> str:
    """"10.0.0.5" and "10.0.0.5/32" are one prefix; host bits are an error."""
    try:
        return str(ipaddress.ip_network(prefix, strict=True))
    except ValueError as e:
        raise IpcacheError(f"ipcache: {prefix!r} is not a prefix ({e})") from None


class OwnerIds:
    """Owner name <-> the small number map entries carry; kept in a file (None: in memory)."""

    def __init__(self, path: Path | None):
        self.path = path
        self.ids: dict[str, int] = {}
        if path is not None and path.exists():
            self.ids = json.loads(path.read_text())

    def id_of(self, name: str) -> int:
        if name == RESTORED:
            return 0
        if name not in self.ids:
            self.ids[name] = max(self.ids.values(), default=0) + 1  # 0: no owner
            if self.path is not None:
                partial = self.path.with_suffix(".tmp")
                partial.write_text(json.dumps(self.ids, indent=1, sort_keys=True))
                os.replace(partial, self.path)
        return self.ids[name]

    def name_of(self, owner_id: int) -> str | None:
        return next((n for n, i in self.ids.items() if i == owner_id), None)


class Ipcache:
    """The records, and the map that holds each prefix's winner."""

    def __init__(self, table: Table, ids_path: Path | None = None):
        self.table = table
        self.ids = OwnerIds(ids_path)
        self.owners: dict[str, Owner] = {RESTORED: Owner(RESTORED, Source.RESTORED)}
        self.records: dict[str, dict[str, Record]] = {}
        self._restored: dict[str, set[str]] = {}  # owner -> restored prefixes it has not written again

    # ---- owners -------------------------------------------------------------------------

    def register(self, name: str, source: Source, waits_for_sync: bool = False) -> None:
        if name in self.owners:
            raise IpcacheError(f"ipcache owner {name!r} is declared twice")
        self.owners[name] = Owner(name, Source(source), waits_for_sync)
        self.ids.id_of(name)

    def synced(self, owner: str) -> None:
        """`owner` has written everything it knows after a restart: its records it did not
        write again are released."""
        self._reconcile(self._owner(owner).name)

    def started(self) -> None:
        """The agent has started: every owner that does not wait for a sync has written."""
        for name, owner in list(self.owners.items()):
            if not owner.waits_for_sync:
                self._reconcile(name)

    # ---- records ------------------------------------------------------------------------

    def restore(self) -> int:
        """Give the pinned map's entries back to their owners (at start, before any owner writes)."""
        count = 0
        for key, info in self.table.items():
            name = self.ids.name_of(info.owner)
            owner = name if name in self.owners else RESTORED
            self.records.setdefault(key.cidr, {})[owner] = Record.of(info)
            self._restored.setdefault(owner, set()).add(key.cidr)
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
        """What the map holds, each entry with the owner that wrote it (from the entry itself)
        and the owners whose records it shadows (for `pylium bpf ipcache list`)."""
        for key, info in sorted(self.table.items(), key=lambda kv: _sort_key(kv[0].cidr)):
            owner = self.ids.name_of(info.owner) or ""
            record = Record.of(info)
            yield {"prefix": key.cidr, "identity": record.identity, "tunnel_endpoint": record.tunnel_endpoint,
                   "encrypt_key": record.encrypt_key, "owner": owner,
                   "source": self.owners[owner].source.name.lower() if owner in self.owners else "",
                   "shadowed": sorted(o for o in self.records.get(key.cidr, {}) if o != owner)}

    # ---- internals ----------------------------------------------------------------------

    def _owner(self, name: str) -> Owner:
        owner = self.owners.get(name)
        if owner is None or name == RESTORED:
            known = ", ".join(sorted(o for o in self.owners if o != RESTORED)) or "none"
            raise IpcacheError(f"ipcache: unknown owner {name!r} (declared owners: {known})")
        return owner

    def _write(self, prefix: str, owner: str, record: Record | None) -> None:
        self._restored.get(owner, set()).discard(prefix)
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
        elif after != before:
            self.table.put(IpcacheKey.of(prefix), after[1].info(self.ids.id_of(after[0])))

    def _reconcile(self, owner: str) -> None:
        for prefix in sorted(self._restored.pop(owner, ())):
            self._write(prefix, owner, None)


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

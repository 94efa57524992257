"""Puts frontends into the BPF maps and keeps them in step, changing only what changed.

Order matters to packets in flight: backends exist before a slot names them, slots before
the slot-0 entry that counts them, and slot 0 changes before surplus slots go. A change that
does not fit the maps (bpf.lbMapMax) is refused whole: nothing is written."""

from __future__ import annotations

import array
import bisect
import ctypes as ct
import struct
from collections import Counter
from dataclasses import dataclass

from pylium.core.api_for_plugins import Compressor
from pylium.plugins.lb import maglev
from pylium.plugins.lb.frontends import Backend, Frontend, backend_key, frontend_key, key_parts
from pylium.plugins.lb.maps import (ALGORITHMS, F_AFFINITY, F_EXTERNAL, F_LOCAL_EXT, F_NODEPORT, PROTOCOL_NAMES, PROTOCOLS,
                                    SCOPE_EXTERNAL, SCOPE_INTERNAL, STATES, Lb4Key, addr_str, maglev_struct,
                                    pack_backend, pack_key, pack_revnat, pack_service, port_of, u32)

MAX_IDS = 65535  # frontend ids are 16 bits (rev_nat_index)
NO_STATE = 0xFF  # a backend id with nothing written
BPF_STATE = {"active": STATES["active"], "terminating": STATES["terminating"],
             "terminating-not-serving": STATES["quarantined"], "quarantined": STATES["quarantined"]}


class MapFull(Exception):
    """The frontends do not fit the maps; nothing was changed."""


class SortedTable:
    """int -> value, as a sorted array of the keys and an array (or list) of the values: 8 bytes
    a key where a dict takes ~52 and an int object per key. Changes come in batches (`update`,
    `remove`): one merge each, not an insert into the arrays per key."""

    def __init__(self, values=list) -> None:
        self._new_values = values
        self._keys = array.array("Q")
        self._values = values()

    def __len__(self) -> int:
        return len(self._keys)

    def __iter__(self):
        return iter(self._keys.tolist())  # a copy: callers change the table while they iterate

    def _index(self, key: int) -> int:
        i = bisect.bisect_left(self._keys, key)
        return i if i < len(self._keys) and self._keys[i] == key else -1

    def get(self, key: int, default=None):
        i = self._index(key)
        return self._values[i] if i >= 0 else default

    def __contains__(self, key: int) -> bool:
        return self._index(key) >= 0

    def items(self):
        return zip(self._keys.tolist(), list(self._values))  # a copy, as __iter__

    def values(self) -> list:
        return list(self._values)

    def __getitem__(self, key: int):
        i = self._index(key)
        if i < 0:
            raise KeyError(key)
        return self._values[i]

    def update(self, pairs: dict) -> None:
        """Add (or change) key -> value pairs."""
        new = {}
        for key, value in pairs.items():
            i = self._index(key)
            if i >= 0:
                self._values[i] = value
            else:
                new[key] = value
        if len(new) < 64:
            for key, value in new.items():
                i = bisect.bisect_left(self._keys, key)
                self._keys.insert(i, key)
                self._values.insert(i, value)
            return
        added, keys, values = sorted(new), array.array("Q"), self._new_values()
        j = 0
        for key, value in zip(self._keys, self._values):  # one merge of two sorted sequences
            while j < len(added) and added[j] < key:
                keys.append(added[j])
                values.append(new[added[j]])
                j += 1
            keys.append(key)
            values.append(value)
        for key in added[j:]:
            keys.append(key)
            values.append(new[key])
        self._keys, self._values = keys, values

    def remove(self, keys) -> list:
        """Take out these keys (those present); returns their values."""
        found = [i for i in map(self._index, set(keys)) if i >= 0]
        gone = [self._values[i] for i in found]
        if len(found) < 64:
            for i in sorted(found, reverse=True):
                del self._keys[i]
                del self._values[i]
        elif found:
            skip = set(found)
            self._keys = array.array("Q", (k for i, k in enumerate(self._keys) if i not in skip))
            values = self._new_values()
            values.extend(v for i, v in enumerate(self._values) if i not in skip)
            self._values = values
        return gone


class BackendIds(SortedTable):
    """backend_key() -> backend id: 12 bytes per backend instead of ~90 for a dict of Python
    ints (200,000 backends: 2.4 MB instead of ~18)."""

    def __init__(self) -> None:
        super().__init__(lambda: array.array("I"))


@dataclass(slots=True)
class Adopted:
    """A frontend found in the maps at start, not (yet) claimed by a service."""

    id: int
    slots: dict[int, int]  # scope -> slots written (1 + backends)


# What the writer keeps of a frontend it wrote: its id, then the Frontend packed and compressed
# against a typical one (~0.1 KiB instead of ~0.25 packed, ~0.3 more with an object per frontend)
_ID = struct.Struct("<H")
_TYPICAL = Frontend("10.96.0.10", 80, "TCP", "ClusterIP", ("default", "service"), "http",
                    tuple(Backend(f"10.0.0.{i}", 8080, "TCP") for i in range(1, 5)))
_PACKED = Compressor(_TYPICAL.pack() + Frontend("", 30080, "TCP", "NodePort", ("default", "service"), "", (
    Backend("10.0.0.1", 8080, "TCP", "terminating", "node"),), (), 10800, True).pack(), level=3)  # 7: no smaller


def _scopes(f: Frontend) -> dict[int, tuple[Backend, ...]]:
    scopes = {SCOPE_INTERNAL: f.backends}
    if f.external_backends is not None:
        scopes[SCOPE_EXTERNAL] = f.external_backends
    return scopes


def _chosen(backends: tuple[Backend, ...]) -> tuple[list[Backend], list[Backend]]:
    """Backends new connections may use: the active ones, then the terminating ones."""
    return ([b for b in backends if b.state == "active"], [b for b in backends if b.state == "terminating"])


def _backend_keys(f: Frontend) -> list[int]:
    return list({b.key for backends in _scopes(f).values() for b in backends})


def _slots(f: Frontend) -> dict[int, int]:
    """Entries per scope in lb4_services: slot 0 and one per backend new connections may use."""
    return {scope: 1 + sum(map(len, _chosen(b))) for scope, b in _scopes(f).items()}


def _packed(kept: bytes | Adopted | None) -> bytes | None:
    return None if kept is None or isinstance(kept, Adopted) else _PACKED.decompress(kept[_ID.size:])


def _frontend(kept: bytes | Adopted | None) -> Frontend | None:
    packed = _packed(kept)
    return None if packed is None else Frontend.unpack(packed)


def _unpacked(packed: dict[int, bytes]):
    return ((k, Frontend.unpack(p)) for k, p in packed.items())


def entries_needed(f: Frontend) -> int:
    return sum(1 + sum(map(len, _chosen(b))) for b in _scopes(f).values())


class Writer:
    def __init__(self, maps: dict, map_max: int, algorithm: str, maglev_m: int, seed: bytes):
        self.maps, self.map_max, self.maglev_m, self.seed = maps, map_max, maglev_m, seed
        self.algorithm = ALGORITHMS[algorithm]
        # by frontend_key(): bytes (see _ID) or Adopted; ~36 bytes a frontend less than a dict
        self.frontends = SortedTable()
        self._id_used = bytearray(MAX_IDS + 1)  # by frontend id: 1 if taken (id 0 is never given)
        self._id_used[0] = 1
        self.backend_ids = BackendIds()
        # By backend id (ids are small and dense): the state written to lb4_backends (NO_STATE:
        # none) and how many frontends use it. Arrays, not dicts: ~0.5 KiB less per service.
        self._states = bytearray()
        self._refs = array.array("I")
        self.live_backends = 0  # ids with users
        self.removed: dict[int, bytes | Adopted] = {}  # by the last apply(): what was kept of them
        self.entries = 0  # in lb4_services
        self._maglev: set[int] = set()  # frontend ids with a table in lb4_maglev (deleting none costs a syscall)

    # ---- start: adopt what an earlier run left -------------------------------------------

    def restore(self) -> None:
        """Ids of frontends and backends already in the maps stay theirs: connections in
        flight keep their translation while the new desired state is written over them."""
        slots: dict[int, dict[int, int]] = {}
        ids: dict[int, int] = {}
        for k, v in self.maps["lb4_services"].items():
            key = frontend_key(addr_str(k.address), port_of(k.dport), PROTOCOL_NAMES.get(k.proto, "TCP"))
            scopes = slots.setdefault(key, {})
            scopes[k.scope] = max(scopes.get(k.scope, 0), k.slot + 1)
            if k.slot == 0:
                ids[key] = v.rev_nat_index
        adopted = {}
        for key, scopes in slots.items():
            if key in ids:
                adopted[key] = Adopted(ids[key], scopes)
                self._id_used[ids[key]] = 1
                self.entries += sum(scopes.values())
        self.frontends.update(adopted)
        foreign, found = [], {}
        for k, v in self.maps["lb4_backends"].items():
            if k.value > self.map_max:  # not an id this writer gives (its tables are sized by them)
                foreign.append(k.value)
                continue
            found[backend_key(addr_str(v.address), port_of(v.port), PROTOCOL_NAMES.get(v.proto, "TCP"))] = k.value
            self._set_state(k.value, v.state)
        self.backend_ids.update(found)
        for bid in foreign:
            self.maps["lb4_backends"].delete(ct.c_uint32(bid))
        self._maglev = {k.value for k in self.maps["lb4_maglev"].keys()}

    # ---- per frontend -------------------------------------------------------------------------

    def id_of(self, key: int) -> int:
        kept = self.frontends[key]
        return kept.id if isinstance(kept, Adopted) else _ID.unpack_from(kept)[0]

    def packed_of(self, key: int) -> bytes | None:
        """The Frontend written for `key`, packed; None if none was (or adopted at start)."""
        return _packed(self.frontends.get(key))

    def frontend(self, key: int) -> Frontend | None:
        return _frontend(self.frontends.get(key))

    def removed_frontend(self, key: int) -> Frontend | None:
        """A frontend the last apply() removed (None: adopted at start, never written)."""
        return _frontend(self.removed[key])

    def installed(self):
        """(id, Frontend) of every frontend written, by id."""
        found = ((self.id_of(key), self.frontend(key)) for key in self.frontends)
        return sorted(((fid, f) for fid, f in found if f is not None), key=lambda row: row[0])

    def _slots_of(self, key: int) -> dict[int, int]:
        kept = self.frontends[key]
        return kept.slots if isinstance(kept, Adopted) else _slots(self.frontend(key))

    # ---- per backend id ------------------------------------------------------------------

    def refs_of(self, key: int) -> int:
        """How many frontends use a backend."""
        bid = self.backend_ids.get(key)
        return self._refs[bid] if bid is not None and bid < len(self._refs) else 0

    def _grow(self, bid: int) -> None:
        if bid >= len(self._refs):
            more = bid + 1 - len(self._refs) + 1024
            self._refs.frombytes(bytes(self._refs.itemsize * more))
            self._states.extend(bytes([NO_STATE]) * more)

    def _state_of(self, bid: int) -> int:
        return self._states[bid] if bid < len(self._states) else NO_STATE

    def _set_state(self, bid: int, state: int) -> None:
        self._grow(bid)
        self._states[bid] = state

    # ---- apply ------------------------------------------------------------------------------

    def sync(self, desired: dict[int, Frontend | bytes]) -> list[int]:
        """Make the maps serve exactly `desired` (and nothing an earlier run left)."""
        delta: dict[int, Frontend | None] = {k: None for k in self.frontends if k not in desired}
        delta.update(desired)
        written = self.apply(delta)
        self._drop_backends([k for k in self.backend_ids if not self.refs_of(k)])
        return written

    def apply(self, delta: dict[int, Frontend | bytes | None]) -> list[int]:
        """Add, change (a Frontend, or one packed) or remove (None) frontends; returns the keys
        written. The frontends removed are in `self.removed` until the next call
        (`removed_frontend()`).

        Each changed frontend is unpacked where it is used, one at a time: thousands of
        Frontend and Backend objects alive at once, freed between what the writer keeps,
        would leave the agent's heap fragmented (~1 KiB per service)."""
        packed = {k: f if isinstance(f, bytes) else f.pack() for k, f in delta.items() if f is not None}
        changed = {k: p for k, p in packed.items() if k not in self.frontends or self.packed_of(k) != p}
        removed = [k for k, f in delta.items() if f is None and k in self.frontends]
        self.removed = {k: self.frontends[k] for k in removed}
        if not changed and not removed:
            return []
        # what the frontends removed or replaced used (each unpacked once here)
        old_slots = {k: self._slots_of(k) for k in [*removed, *changed] if k in self.frontends}
        released = {k: _backend_keys(self.frontend(k)) for k in old_slots if isinstance(self.frontends[k], bytes)}
        moved = self._check_room(changed, old_slots, released)
        for key in removed:
            self._remove(key, old_slots[key])
        self.frontends.remove(removed)
        ids = self._assign_ids(list(changed))
        self._write_backends(f for _, f in _unpacked(changed))
        # packed into growing buffers, not lists of small bytes: tens of thousands of those,
        # freed between objects that stay, would leave the agent's heap fragmented
        slot_keys, slot_values, master_keys, master_values = bytearray(), bytearray(), bytearray(), bytearray()
        revnat_keys, revnat_values = bytearray(), bytearray()
        for key, f in _unpacked(changed):
            fid = ids[key]
            proto = PROTOCOLS[f.protocol]
            flags = ((F_EXTERNAL if f.external else 0) | (F_NODEPORT if f.type == "NodePort" else 0) |
                     (F_AFFINITY if f.affinity_timeout else 0) | (F_LOCAL_EXT if f.external_local else 0))
            for scope, backends in _scopes(f).items():
                active, terminating = _chosen(backends)
                for slot, b in enumerate(active + terminating, 1):
                    slot_keys += pack_key(f.address, f.port, proto, slot, scope)
                    slot_values += pack_service(backend_id=self.backend_ids[b.key])
                master_keys += pack_key(f.address, f.port, proto, 0, scope)
                master_values += pack_service(0, f.affinity_timeout, len(active), len(terminating), fid, flags,
                                              self.algorithm)
            revnat_keys += u32(fid)
            revnat_values += pack_revnat(f.address, f.port)
        services = self.maps["lb4_services"]
        services.put_many(slot_keys, slot_values)
        services.put_many(master_keys, master_values)
        self.maps["lb4_reverse_nat"].put_many(revnat_keys, revnat_values)
        for key, f in _unpacked(changed):
            new_slots = _slots(f)
            if key in old_slots:
                self._drop_slots(f.address, f.port, PROTOCOLS[f.protocol], old_slots[key], new_slots)
                self.entries -= sum(old_slots[key].values())
            self.entries += sum(new_slots.values())
            self._write_maglev(ids[key], f)
            self._id_used[ids[key]] = 1
        for bkey, n in moved.items():
            if n:
                bid = self.backend_ids[bkey]
                self._grow(bid)
                before = self._refs[bid]
                self._refs[bid] = max(before + n, 0)
                self.live_backends += (self._refs[bid] > 0) - (before > 0)
        self._drop_backends([k for keys in released.values() for k in keys if not self.refs_of(k)])
        # what is kept is made last, once the change's temporaries are gone: made among them,
        # each would hold on to memory they leave free (the heap's arenas are given back whole)
        del moved, released, old_slots
        self.frontends.update({key: _PACKED.compress(packed[key], prefix=_ID.pack(ids[key])) for key in changed})
        return list(changed)

    def _check_room(self, changed: dict, old_slots: dict[int, dict[int, int]],
                    released: dict[int, list[int]]) -> Counter:
        """How the change moves backend reference counts, if it fits; MapFull otherwise.
        `old_slots`: the entries of the frontends the change removes or replaces."""
        moved: Counter = Counter()
        entries = self.entries - sum(sum(slots.values()) for slots in old_slots.values())
        for keys in released.values():
            moved.subtract(keys)
        for _, f in _unpacked(changed):
            entries += entries_needed(f)
            moved.update(_backend_keys(f))
        frontends = len(self.frontends) - len(old_slots) + len(changed)
        backends = self.live_backends + sum((self.refs_of(k) > 0) != (self.refs_of(k) + n > 0) and
                                        (1 if n > 0 else -1) for k, n in moved.items())
        if entries > self.map_max:
            raise MapFull(f"the services need {entries} entries in lb4_services, more than bpf.lbMapMax "
                          f"({self.map_max}); the change was not applied")
        if backends > self.map_max:
            raise MapFull(f"the services have {backends} backends, more than bpf.lbMapMax ({self.map_max}); "
                          f"the change was not applied")
        if frontends > min(MAX_IDS, self.map_max):
            raise MapFull(f"{frontends} frontends, more than the {min(MAX_IDS, self.map_max)} ids available; "
                          f"the change was not applied")
        return moved

    def _assign_ids(self, changed: list) -> dict[int, int]:
        """Frontends keep their ids; new ones get the lowest free (_check_room made sure
        there are enough)."""
        ids = {k: self.id_of(k) for k in changed if k in self.frontends}
        candidate = 1
        for key in changed:
            if key not in ids:
                candidate = self._id_used.find(0, candidate)
                ids[key] = candidate
                candidate += 1
        return ids

    def _free_backend_id(self, start: int) -> int:
        """The lowest id from `start` with nothing written: the state table marks the ids in
        use (a set of them would be ~6 MB of ints at 200,000 backends)."""
        bid = self._states.find(NO_STATE, start)
        return bid if bid >= 0 else max(start, len(self._states))

    def _write_backends(self, frontends) -> None:
        new: dict[int, int] = {}  # added to the table at once, after the loop
        candidate, keys, values = 1, bytearray(), bytearray()
        for f in frontends:
            for backends in _scopes(f).values():
                for b in backends:
                    key = b.key
                    bid = self.backend_ids.get(key)
                    if bid is None:
                        bid = new.get(key)
                    if bid is None:  # its state is written below: the id is taken
                        bid = new[key] = self._free_backend_id(candidate)
                        candidate = bid + 1
                    state = BPF_STATE[b.state]
                    if self._state_of(bid) != state:
                        keys += u32(bid)
                        values += pack_backend(b.address, b.port, PROTOCOLS[b.protocol], state)
                        self._set_state(bid, state)
        self.backend_ids.update(new)
        self.maps["lb4_backends"].put_many(keys, values)

    def _write_maglev(self, fid: int, f: Frontend) -> None:
        backends = f.external_backends if f.external_backends is not None else f.backends
        active = _chosen(backends)[0]
        if self.algorithm != ALGORITHMS["maglev"] or not active:
            self._drop_maglev(fid)
            return
        names = [f"{b.address}:{b.port}" for b in active]
        value = maglev_struct(self.maglev_m)()
        value.backend_ids[:] = [self.backend_ids[active[i].key] for i in maglev.table(names, self.maglev_m, self.seed)]
        self.maps["lb4_maglev"].put(ct.c_uint32(fid), value)
        self._maglev.add(fid)

    def _drop_maglev(self, fid: int) -> None:
        if fid in self._maglev:
            self.maps["lb4_maglev"].delete(ct.c_uint32(fid))
            self._maglev.discard(fid)

    def _drop_slots(self, address: str, port: int, proto: int, old: dict[int, int], new: dict[int, int]) -> None:
        services = self.maps["lb4_services"]
        for scope, count in old.items():
            for slot in range(new.get(scope, 0), count):
                services.delete(Lb4Key.from_buffer_copy(pack_key(address, port, proto, slot, scope)))

    def _remove(self, key: int, slots: dict[int, int]) -> None:
        fid = self.id_of(key)  # the caller takes it out of self.frontends
        self._id_used[fid] = 0
        address, port, protocol = key_parts(key)
        proto = PROTOCOLS[protocol]
        self._drop_slots(address, port, proto, {s: 1 for s in slots}, {})  # slot 0 first
        self._drop_slots(address, port, proto, slots, {s: 1 for s in slots})
        self.maps["lb4_reverse_nat"].delete(ct.c_uint32(fid))
        self._drop_maglev(fid)
        self.entries -= sum(slots.values())

    def _drop_backends(self, keys: list[int]) -> None:
        for bid in self.backend_ids.remove(keys):
            self._set_state(bid, NO_STATE)
            self.maps["lb4_backends"].delete(ct.c_uint32(bid))

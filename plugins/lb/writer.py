"""Puts frontends into the BPF maps and keeps them in step, changing only what changed.

Order matters to packets in flight: backends exist before a slot names them, slots before
the slot-0 entry that counts them, and slot 0 changes before surplus slots go. A change that
does not fit the maps (bpf.lbMapMax) is refused whole: nothing is written."""

from __future__ import annotations

import array
import bisect
import ctypes as ct
from collections import Counter
from dataclasses import dataclass

from pylium.plugins.lb import maglev
from pylium.plugins.lb.frontends import Backend, Frontend, backend_key
from pylium.plugins.lb.maps import (ALGORITHMS, F_AFFINITY, F_EXTERNAL, F_LOCAL_EXT, F_NODEPORT, PROTOCOL_NAMES, PROTOCOLS,
                                    SCOPE_EXTERNAL, SCOPE_INTERNAL, STATES, Lb4Key, addr_str, maglev_struct,
                                    pack_backend, pack_key, pack_revnat, pack_service, port_of, u32)

MAX_IDS = 65535  # frontend ids are 16 bits (rev_nat_index)
NO_STATE = 0xFF  # a backend id with nothing written
BPF_STATE = {"active": STATES["active"], "terminating": STATES["terminating"],
             "terminating-not-serving": STATES["quarantined"], "quarantined": STATES["quarantined"]}


class MapFull(Exception):
    """The frontends do not fit the maps; nothing was changed."""


class BackendIds:
    """backend_key() -> backend id, as two sorted arrays: 12 bytes per backend instead of ~90
    for a dict of Python ints (200,000 backends: 2.4 MB instead of ~18). Changes come in
    batches (`update`, `remove`): one merge each, not an insert into the arrays per backend."""

    def __init__(self) -> None:
        self._keys = array.array("Q")
        self._ids = array.array("I")

    def __len__(self) -> int:
        return len(self._keys)

    def __iter__(self):
        return iter(self._keys.tolist())  # a copy: callers remove while they iterate

    def _index(self, key: int) -> int:
        i = bisect.bisect_left(self._keys, key)
        return i if i < len(self._keys) and self._keys[i] == key else -1

    def get(self, key: int, default: int | None = None) -> int | None:
        i = self._index(key)
        return self._ids[i] if i >= 0 else default

    def __contains__(self, key: int) -> bool:
        return self._index(key) >= 0

    def __getitem__(self, key: int) -> int:
        i = self._index(key)
        if i < 0:
            raise KeyError(key)
        return self._ids[i]

    def ids(self) -> set[int]:
        return set(self._ids)

    def update(self, pairs: dict[int, int]) -> None:
        """Add (or change) key -> id pairs."""
        if len(pairs) < 64:
            for key, bid in pairs.items():
                i = bisect.bisect_left(self._keys, key)
                if i < len(self._keys) and self._keys[i] == key:
                    self._ids[i] = bid
                else:
                    self._keys.insert(i, key)
                    self._ids.insert(i, bid)
            return
        merged = dict(zip(self._keys, self._ids))
        merged.update(pairs)
        self._rebuild(merged)

    def remove(self, keys) -> list[int]:
        """Take out these keys (those present); returns their ids."""
        found = [i for i in map(self._index, set(keys)) if i >= 0]
        ids = [self._ids[i] for i in found]
        if len(found) < 64:
            for i in sorted(found, reverse=True):
                del self._keys[i]
                del self._ids[i]
        else:
            gone = set(found)
            self._rebuild({k: b for i, (k, b) in enumerate(zip(self._keys, self._ids)) if i not in gone})
        return ids

    def _rebuild(self, pairs: dict[int, int]) -> None:
        keys = sorted(pairs)
        self._keys = array.array("Q", keys)
        self._ids = array.array("I", (pairs[k] for k in keys))


@dataclass(slots=True)
class Installed:
    id: int
    packed: bytes | None  # the Frontend, packed; None: found in the maps at start, not (yet) claimed
    slots: dict[int, int]  # scope -> slots written (1 + backends)

    @property
    def frontend(self) -> Frontend | None:
        return None if self.packed is None else Frontend.unpack(self.packed)


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


def _unpacked(packed: dict[tuple, bytes]):
    return ((k, Frontend.unpack(p)) for k, p in packed.items())


def entries_needed(f: Frontend) -> int:
    return sum(1 + sum(map(len, _chosen(b))) for b in _scopes(f).values())


class Writer:
    def __init__(self, maps: dict, map_max: int, algorithm: str, maglev_m: int, seed: bytes):
        self.maps, self.map_max, self.maglev_m, self.seed = maps, map_max, maglev_m, seed
        self.algorithm = ALGORITHMS[algorithm]
        self.frontends: dict[tuple, Installed] = {}
        self.backend_ids = BackendIds()
        # By backend id (ids are small and dense): the state written to lb4_backends (NO_STATE:
        # none) and how many frontends use it. Arrays, not dicts: ~0.5 KiB less per service.
        self._states = bytearray()
        self._refs = array.array("I")
        self.live_backends = 0  # ids with users
        self.removed: dict[tuple, Frontend | None] = {}  # by the last apply()
        self.entries = 0  # in lb4_services
        self._slot_counts: dict[tuple, dict[int, int]] = {}
        self._maglev: set[int] = set()  # frontend ids with a table in lb4_maglev (deleting none costs a syscall)

    # ---- start: adopt what an earlier run left -------------------------------------------

    def restore(self) -> None:
        """Ids of frontends and backends already in the maps stay theirs: connections in
        flight keep their translation while the new desired state is written over them."""
        slots: dict[tuple, dict[int, int]] = {}
        ids: dict[tuple, int] = {}
        for k, v in self.maps["lb4_services"].items():
            address = addr_str(k.address)
            key = ("" if address == "0.0.0.0" else address, port_of(k.dport),
                   PROTOCOL_NAMES.get(k.proto, "TCP"))
            scopes = slots.setdefault(key, {})
            scopes[k.scope] = max(scopes.get(k.scope, 0), k.slot + 1)
            if k.slot == 0:
                ids[key] = v.rev_nat_index
        for key, scopes in slots.items():
            if key in ids:
                self.frontends[key] = Installed(ids[key], None, scopes)
                self.entries += sum(scopes.values())
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

    def sync(self, desired: dict[tuple, Frontend | bytes]) -> list[tuple]:
        """Make the maps serve exactly `desired` (and nothing an earlier run left)."""
        delta: dict[tuple, Frontend | None] = {k: None for k in self.frontends if k not in desired}
        delta.update(desired)
        written = self.apply(delta)
        self._drop_backends([k for k in self.backend_ids if not self.refs_of(k)])
        return written

    def apply(self, delta: dict[tuple, Frontend | bytes | None]) -> list[tuple]:
        """Add, change (a Frontend, or one packed) or remove (None) frontends; returns the keys
        written. The frontends removed are in `self.removed` until the next call.

        Each changed frontend is unpacked where it is used, one at a time: thousands of
        Frontend and Backend objects alive at once, freed between what the writer keeps,
        would leave the agent's heap fragmented (~1 KiB per service)."""
        packed = {k: f if isinstance(f, bytes) else f.pack() for k, f in delta.items() if f is not None}
        changed = {k: p for k, p in packed.items() if k not in self.frontends or self.frontends[k].packed != p}
        removed = [k for k, f in delta.items() if f is None and k in self.frontends]
        self.removed = {k: self.frontends[k].frontend for k in removed}
        if not changed and not removed:
            return []
        # what the frontends removed or replaced used
        released = {k: _backend_keys(self.removed[k] if k in self.removed else self.frontends[k].frontend)
                    for k in [*removed, *changed] if k in self.frontends and self.frontends[k].packed is not None}
        moved = self._check_room(changed, removed, released)
        for key in removed:
            self._remove(key)
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
            old = self.frontends.get(key)
            new_slots = {scope: 1 + sum(map(len, _chosen(b))) for scope, b in _scopes(f).items()}
            # shared (never changed in place): most frontends have the same counts, and a dict
            # each would cost 2 MiB per 10,000 services
            new_slots = self._slot_counts.setdefault(tuple(new_slots.items()), new_slots)
            if old is not None:
                self._drop_slots(f.address, f.port, PROTOCOLS[f.protocol], old.slots, new_slots)
                self.entries -= sum(old.slots.values())
            self.entries += sum(new_slots.values())
            self._write_maglev(ids[key], f)
            self.frontends[key] = Installed(ids[key], packed[key], new_slots)
        for bkey, n in moved.items():
            if n:
                bid = self.backend_ids[bkey]
                self._grow(bid)
                before = self._refs[bid]
                self._refs[bid] = max(before + n, 0)
                self.live_backends += (self._refs[bid] > 0) - (before > 0)
        self._drop_backends([k for keys in released.values() for k in keys if not self.refs_of(k)])
        return list(changed)

    def _check_room(self, changed: dict, removed: list, released: dict[tuple, list[int]]) -> Counter:
        """How the change moves backend reference counts, if it fits; MapFull otherwise."""
        moved: Counter = Counter()
        entries = self.entries
        for key in [*removed, *changed]:
            old = self.frontends.get(key)
            if old is not None:
                entries -= sum(old.slots.values())
                moved.subtract(released.get(key, ()))
        for _, f in _unpacked(changed):
            entries += entries_needed(f)
            moved.update(_backend_keys(f))
        frontends = len(self.frontends) + sum(k not in self.frontends for k in changed) - len(removed)
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

    def _assign_ids(self, changed: list) -> dict[tuple, int]:
        used = {i.id for i in self.frontends.values()}
        ids = {k: self.frontends[k].id for k in changed if k in self.frontends}
        candidate = 1
        for key in changed:
            if key in ids:
                continue
            while candidate in used:
                candidate += 1
            ids[key] = candidate
            used.add(candidate)
        return ids

    def _write_backends(self, frontends) -> None:
        used = self.backend_ids.ids()
        new: dict[int, int] = {}  # added to the table at once, after the loop
        candidate, keys, values = 1, bytearray(), bytearray()
        for f in frontends:
            for backends in _scopes(f).values():
                for b in backends:
                    bid = self.backend_ids.get(b.key)
                    if bid is None:
                        bid = new.get(b.key)
                    if bid is None:
                        while candidate in used:
                            candidate += 1
                        bid = new[b.key] = candidate
                        used.add(bid)
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

    def _remove(self, key: tuple) -> None:
        installed = self.frontends.pop(key)
        address, port, protocol = key
        proto = PROTOCOLS[protocol]
        self._drop_slots(address, port, proto, {s: 1 for s in installed.slots}, {})  # slot 0 first
        self._drop_slots(address, port, proto, installed.slots, {s: 1 for s in installed.slots})
        self.maps["lb4_reverse_nat"].delete(ct.c_uint32(installed.id))
        self._drop_maglev(installed.id)
        self.entries -= sum(installed.slots.values())

    def _drop_backends(self, keys: list[int]) -> None:
        for bid in self.backend_ids.remove(keys):
            self._set_state(bid, NO_STATE)
            self.maps["lb4_backends"].delete(ct.c_uint32(bid))

"""Pinned BPF maps declared in Python (ctypes mirrors of the C structs) and checked against
their pins: a pin whose type, key, value or size differs from the declaration is replaced,
with a log line, instead of being silently reused (bcc checks nothing)."""

from __future__ import annotations

import collections
import ctypes as ct
import itertools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from pylium.core.datapath import libbpf

TYPE_NAMES = {libbpf.MAP_HASH: "hash", libbpf.MAP_ARRAY: "array", libbpf.MAP_PROG_ARRAY: "prog",
              libbpf.MAP_PERCPU_HASH: "percpu_hash", libbpf.MAP_PERCPU_ARRAY: "percpu_array",
              libbpf.MAP_LRU_HASH: "lru_hash", libbpf.MAP_LPM_TRIE: "lpm_trie", libbpf.MAP_RINGBUF: "ringbuf"}


@dataclass(frozen=True)
class MapSpec:
    """One map: its C name, type, key/value ctypes and size. Bump `version` when the layout
    changes: the pin name carries it (`<name>_v<version>`)."""

    name: str
    type: int
    key: Any  # a ctypes type (None for a ring buffer)
    value: Any
    max_entries: int
    version: int = 1
    flags: int = 0

    @property
    def pin_name(self) -> str:
        return f"{self.name}_v{self.version}"

    @property
    def key_size(self) -> int:
        return ct.sizeof(self.key) if self.key is not None else 0

    @property
    def value_size(self) -> int:
        return ct.sizeof(self.value) if self.value is not None else 0

    def c_declaration(self, pin_dir_macro: str) -> str:
        """The matching bcc declaration, for headers generated or checked by tests."""
        return (f'BPF_TABLE_PINNED("{TYPE_NAMES[self.type]}", ..., {self.name}, {self.max_entries}, '
                f'{pin_dir_macro} "/{self.pin_name}")')

    def mismatch(self, info: libbpf.MapInfo) -> str | None:
        want = (self.type, self.key_size, self.value_size, self.max_entries, self.flags)
        have = (info.type, info.key_size, info.value_size, info.max_entries, info.map_flags)
        if want == have:
            return None
        names = ("type", "key size", "value size", "max entries", "flags")
        return ", ".join(f"{n} {h} != {w}" for n, w, h in zip(names, want, have) if w != h)


class PinnedMap:
    """A pinned map opened by path; keys and values are the spec's ctypes."""

    def __init__(self, spec: MapSpec, path: Path, fd: int):
        self.spec, self.path, self.fd = spec, path, fd
        self._percpu = spec.type in libbpf.PERCPU_TYPES
        #: (operation, outcome) -> count of the agent's writes (cilium_bpf_map_ops_total)
        self.ops: collections.Counter = collections.Counter()
        #: called after each write that took effect (the datapath's fast path generation)
        self.on_write: Callable[[], None] | None = None

    @classmethod
    def open_or_create(cls, spec: MapSpec, directory: Path, log=None) -> PinnedMap:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = directory / spec.pin_name
        if path.exists():
            fd = libbpf.obj_get(str(path))
            problem = spec.mismatch(libbpf.map_info(fd))
            if problem is None:
                return cls(spec, path, fd)
            os.close(fd)
            if log is not None:
                log.warning("pinned map differs from its declaration; replacing it", map=str(path), differences=problem)
            path.unlink()
        fd = libbpf.map_create(spec.type, spec.name, spec.key_size, spec.value_size, spec.max_entries, spec.flags)
        libbpf.obj_pin(fd, str(path))
        return cls(spec, path, fd)

    @classmethod
    def open(cls, spec: MapSpec, directory: Path) -> PinnedMap:
        """Open an existing pin (read-only tools); raises if it is missing or different."""
        path = directory / spec.pin_name
        fd = libbpf.obj_get(str(path))
        problem = spec.mismatch(libbpf.map_info(fd))
        if problem:
            os.close(fd)
            raise libbpf.BpfError(0, f"{path}: {problem}")
        return cls(spec, path, fd)

    def _value_buffer(self):
        if self._percpu:
            return (self.spec.value * libbpf.possible_cpus())()
        return self.spec.value()

    def _counted(self, operation: str, fn, *args):
        try:
            result = fn(self.fd, *args)
        except OSError:
            self.ops[(operation, "fail")] += 1
            raise
        self.ops[(operation, "success")] += 1
        if self.on_write is not None:
            self.on_write()
        return result

    def get(self, key) -> Any | None:
        value = self._value_buffer()
        return value if libbpf.lookup(self.fd, key, value) else None

    def put(self, key, value, flags: int = libbpf.ANY) -> None:
        self._counted("update", libbpf.update, key, value, flags)

    def put_many(self, keys: bytes, values: bytes) -> None:
        """Write many entries with one batch update: `keys` and `values` are the packed structs
        back to back (packing with `struct` is much cheaper than building ctypes objects)."""
        n = len(keys) // self.spec.key_size
        if not n:
            return
        if len(keys) != n * self.spec.key_size or len(values) != n * self.spec.value_size:
            raise ValueError(f"{self.spec.name}: {len(keys)} key bytes and {len(values)} value bytes are not "
                             f"{n} whole entries")
        keys = (self.spec.key * n).from_buffer_copy(keys)
        values = (self.spec.value * n).from_buffer_copy(values)
        try:
            libbpf.update_batch(self.fd, keys, values)
        except OSError:
            self.ops[("update", "fail")] += n
            raise
        self.ops[("update", "success")] += n
        if self.on_write is not None:
            self.on_write()

    def delete(self, key) -> bool:
        return self._counted("delete", libbpf.delete, key)

    def count(self) -> int:
        """Entries in a hash-like map (for cilium_bpf_map_pressure). At most max_entries keys
        are walked: a walk of a busy LRU map restarts when its current key is evicted."""
        return sum(1 for _ in itertools.islice(self.keys(), self.spec.max_entries))

    def keys(self) -> Iterator[Any]:
        key = None
        while True:
            nxt = self.spec.key()
            if not libbpf.next_key(self.fd, key, nxt):
                return
            yield nxt
            key = nxt

    def items(self) -> Iterator[tuple[Any, Any]]:
        for key in list(self.keys()):
            value = self.get(key)
            if value is not None:
                yield key, value

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

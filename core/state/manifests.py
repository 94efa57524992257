"""Standalone mode's source of Kubernetes-shaped objects: YAML files in a directory, watched.

Every *.yaml / *.yml / *.json file may hold several documents. A file that cannot be read or
parsed keeps its previous objects (the last good version stays in force) and its problem is
logged once per change. Objects are indexed by kind and (namespace, name), each kept packed
(msgpack, compressed) and decoded when asked for: tens of thousands of services would otherwise
stay in memory as nested dicts (~2 KiB each instead of ~0.1).
"""

from __future__ import annotations

import contextlib
import gc
import sys
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterable, Iterator

import anyio
import msgspec
import yaml

from pylium.core.agent.memory import release_freed_memory
from pylium.core.compress import Compressor
from pylium.core.state.vocabulary import VOCABULARY

SUFFIXES = (".yaml", ".yml", ".json")
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: 10x faster on large directories
NAMESPACE_LABEL = "k8s:io.kubernetes.pod.namespace"
NAMESPACE_LABELS_PREFIX = "k8s:io.cilium.k8s.namespace.labels."
CLUSTER_SCOPED = {"Namespace", "Node", "CiliumClusterwideNetworkPolicy"}


@contextlib.contextmanager
def gc_paused():
    """No cyclic garbage collection while building many objects at once: with tens of
    thousands of manifests the collector, run again and again over the new objects, costs
    more than the work itself (measured 4x). Our objects have no cycles to collect."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


# The index is read and written on the event loop only. One compressor per kind, its dictionary
# the vocabulary and the first object of that kind read: objects of a kind share their shape,
# which halves what a Service keeps (~64 bytes against the vocabulary alone, ~32 with it).
_PACKERS: dict[str | None, Compressor] = {}


def _packer(kind: str | None, first: bytes = b"") -> Compressor:
    packer = _PACKERS.get(kind)
    if packer is None:
        packer = _PACKERS[kind] = Compressor(VOCABULARY + first[:4096])
    return packer


_JSON_TOP = msgspec.json.Decoder(list[msgspec.Raw] | dict[str, msgspec.Raw])
_JSON_ITEMS = msgspec.json.Decoder(list[msgspec.Raw])


def _objects(docs: Iterable) -> Iterator[dict]:
    """`kind: List` objects (as `kubectl get -o json|yaml` writes) stand for their items."""
    for d in docs:
        if isinstance(d, dict) and d.get("kind") == "List" and isinstance(d.get("items"), list):
            yield from (i for i in d["items"] if isinstance(i, dict))
        elif isinstance(d, dict):
            yield d


def _json_objects(data: bytes) -> Iterator[dict]:
    """The objects of a JSON file (an object, a List or a list of them) decoded one at a
    time: thousands decoded at once would fragment the heap around what is kept of them."""
    try:
        top = _JSON_TOP.decode(data)
    except msgspec.ValidationError:  # a lone string or number: no object
        return
    if isinstance(top, list):
        yield from _objects(msgspec.json.decode(raw) for raw in top)
        return
    items = None
    if "kind" in top and "items" in top and msgspec.json.decode(top["kind"]) == "List":
        with contextlib.suppress(msgspec.ValidationError):  # not a list: the object stands for itself
            items = _JSON_ITEMS.decode(top["items"])
    if items is None:
        yield msgspec.json.decode(data)
        return
    for raw in items:
        item = msgspec.json.decode(raw)
        if isinstance(item, dict):
            yield item


def _documents(path: Path) -> Iterator[dict]:
    """The objects in a file, one by one: YAML documents or JSON. Raises (ValueError, ...)
    for a file that cannot be read whole."""
    if path.suffix == ".json":
        objects = _json_objects(path.read_bytes())
    else:
        objects = _objects(yaml.load_all(path.read_text(), Loader=_LOADER))
    for n, d in enumerate(objects, 1):  # the index keys on these: anything else is the file's error
        meta = d.get("metadata")
        fields = {"kind": d.get("kind"), **({"metadata.name": meta.get("name"), "metadata.namespace":
                                              meta.get("namespace")} if isinstance(meta, dict) else {})}
        for name, value in fields.items():
            if value is not None and not isinstance(value, str):
                raise ValueError(f"object {n}: {name} must be a string, not {type(value).__name__}")
        yield d


class ManifestEntry(msgspec.Struct, gc=False):
    """One object and the file it came from. `doc` decodes it anew on each read. Kept as
    msgpack compressed against the Kubernetes vocabulary and the first object of its kind:
    ~35-70 bytes for a small Service or EndpointSlice instead of ~200 (~2 KiB as parsed dicts).
    A Struct outside the cycle collector (it refers to no container that could refer back):
    48 bytes, 16 less than a class with slots, for each of tens of thousands of objects."""

    packed: bytes | dict
    path: Path
    kind: str | None = None
    key: tuple[str, str] = ("", "")

    @classmethod
    def of(cls, doc: dict, path: Path, kind: str | None = None, key: tuple[str, str] = ("", ""),
           from_json: bool = False) -> ManifestEntry:
        try:
            packed = msgspec.msgpack.encode(doc)
        except (TypeError, ValueError, OverflowError, RecursionError, msgspec.EncodeError):
            return cls(doc, path, kind, key)
        # packed only when it reads back the same (a YAML set, say, would come back a list; what
        # JSON gives always does)
        if from_json or msgspec.msgpack.decode(packed) == doc:
            return cls(_packer(kind, packed).compress(packed), path, kind, key)
        return cls(doc, path, kind, key)

    @property
    def doc(self) -> dict:
        if isinstance(self.packed, bytes):
            return msgspec.msgpack.decode(_packer(self.kind).decompress(self.packed))
        return self.packed

    def __iter__(self):  # (doc, path), as entries() gave before
        yield self.doc
        yield self.path


class Manifests:
    def __init__(self, directory: Path | None, log: Any):
        self.dir = directory
        self.log = log
        self._signature: dict[Path, tuple[float, int]] = {}
        self._by_file: dict[Path, list[ManifestEntry]] = {}
        self._index: dict[str, dict[tuple[str, str], ManifestEntry]] = {}
        self._listeners: list[Callable[[], Awaitable[None]]] = []
        self.problems: dict[Path, str] = {}
        self._changes: dict[str, dict[tuple[str, str], ManifestEntry | None]] = {}  # by the last scan

    def on_change(self, callback: Callable[[], Awaitable[None]]) -> Callable[[], None]:
        """Call `callback` after each change `watch` finds; returns what stops that. One
        reader of the directory serves the core and every plugin (parsed once)."""
        self._listeners.append(callback)
        return lambda: self._listeners.remove(callback)

    def objects(self, kind: str) -> dict[tuple[str, str], dict]:
        return {key: entry.doc for key, entry in self._index.get(kind, {}).items()}

    def entries(self, kind: str) -> dict[tuple[str, str], ManifestEntry]:
        """The objects of a kind by (namespace, name): `entry.doc`, `entry.path` (or unpack
        `doc, path = entry`). An unchanged object keeps its entry from scan to scan (cheap to
        compare with `is`), also when other objects of its file change."""
        return self._index.get(kind, {})

    def changes(self, kind: str) -> dict[tuple[str, str], ManifestEntry | None]:
        """During an on_change() callback: the objects of a kind the scan changed, added or
        removed, each with the entry it had before (None: new); `entries()` has what they are
        now. A listener reads this instead of comparing every entry with an index of its own."""
        return self._changes.get(kind, {})

    def _changed(self, kind: str | None, key: tuple[str, str], before: ManifestEntry | None) -> None:
        self._changes.setdefault(kind, {}).setdefault(key, before)  # the scan's first: what was before it

    @staticmethod
    def _key(doc: dict) -> tuple[str, tuple[str, str]]:
        kind = doc.get("kind")
        meta = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}
        namespace = "" if kind in CLUSTER_SCOPED else meta.get("namespace") or "default"
        # kinds and namespaces repeat across thousands of objects: kept once
        return kind and sys.intern(kind), (sys.intern(namespace), meta.get("name", ""))

    def _replace(self, path: Path, docs: Iterable[dict] | None) -> bool:
        """A file's documents change (None: the file is gone): the index follows that file
        only. An object defined in two files is the last read one's. True if anything changed."""
        old = self._by_file.get(path, [])
        unchanged = {(entry.kind, entry.key): entry for entry in old}
        new = []
        from_json = path.suffix == ".json"
        for doc in docs or ():
            entry = ManifestEntry.of(doc, path, *self._key(doc), from_json=from_json)
            before = unchanged.get((entry.kind, entry.key))
            new.append(before if before == entry else entry)
        if new == old and docs is not None:
            return False
        in_force = {}  # this file's entries that were the ones in force
        for entry in old:
            if self._index.get(entry.kind, {}).get(entry.key) is entry:
                del self._index[entry.kind][entry.key]
                in_force[(entry.kind, entry.key)] = entry
        self._by_file.pop(path, None)
        if docs is not None:
            self._by_file[path] = new
            for entry in new:
                index = self._index.setdefault(entry.kind, {})
                before = in_force.pop((entry.kind, entry.key), None)
                if before is None:
                    before = index.get(entry.key)
                if before is not entry:
                    self._changed(entry.kind, entry.key, before)
                index[entry.key] = entry
        for (kind, key), entry in in_force.items():  # gone (or now another file's)
            self._changed(kind, key, entry)
        return True

    def scan(self) -> bool:
        """Re-read changed files; True if anything changed (`changes()` tells what)."""
        self._changes = {}
        with gc_paused():
            return self._scan()

    def _scan(self) -> bool:
        if self.dir is None or not self.dir.is_dir():
            changed = bool(self._by_file)
            for kind, entries in self._index.items():
                for key, entry in entries.items():
                    self._changed(kind, key, entry)
            self._by_file, self._signature, self._index = {}, {}, {}
            return changed
        files = sorted(p for p in self.dir.rglob("*") if p.suffix in SUFFIXES and p.is_file())
        changed = False
        for gone in set(self._by_file) - set(files):
            changed |= self._replace(gone, None)
            self._signature.pop(gone, None)
        for path in files:
            try:
                st = path.stat()
            except OSError:
                continue
            sig = (st.st_mtime, st.st_size)
            if self._signature.get(path) == sig:
                continue
            self._signature[path] = sig
            try:
                changed |= self._replace(path, _documents(path))
            except (OSError, ValueError, RecursionError, msgspec.DecodeError, yaml.YAMLError) as e:
                self.problems[path] = str(e).splitlines()[0]
                self.log.error("manifest not loaded; its previous version stays in force", file=str(path),
                               error=self.problems[path])
                continue
            self.problems.pop(path, None)
        return changed

    async def watch(self, on_change: Callable[[], Awaitable[None]] | None = None, interval: float = 1.0) -> None:
        """Call on_change, then the on_change() listeners, after each change: told by inotify
        within milliseconds, and a full rescan every `interval` seconds in any case (a
        directory that appears later, NFS)."""
        from watchfiles import awatch

        while True:
            if self.scan():
                await self._notify(on_change)
            if self.dir is None or not self.dir.is_dir():
                await anyio.sleep(interval)
                continue
            try:
                async for _ in awatch(self.dir, step=5, debounce=200, rust_timeout=int(interval * 1000),
                                      yield_on_timeout=True, recursive=True):
                    if self.scan():
                        await self._notify(on_change)
                    if not self.dir.is_dir():
                        break
            except (OSError, RuntimeError) as e:  # the directory went away under the watcher
                self.log.debug("manifests watcher restarting", error=str(e))
                await anyio.sleep(interval)

    async def _notify(self, first: Callable[[], Awaitable[None]] | None) -> None:
        try:
            for callback in ([first] if first else []) + list(self._listeners):
                await callback()
        finally:
            large = sum(map(len, self._changes.values())) > 1000
            self._changes = {}  # told: kept, they would hold the entries they replaced
            if large:
                release_freed_memory()  # what the scan and its listeners used

    def pod_labels(self, namespace: str, name: str) -> dict[str, str]:
        """Cilium's labels for a pod: its own (k8s:key), its namespace's, and the namespace."""
        if not name:
            return {}
        namespace = namespace or "default"
        entry = self.entries("Pod").get((namespace, name))
        if entry is None:
            return {NAMESPACE_LABEL: namespace}
        labels = {f"k8s:{k}": str(v) for k, v in ((entry.doc.get("metadata") or {}).get("labels") or {}).items()}
        ns = self.entries("Namespace").get(("", namespace))
        for k, v in (((ns.doc if ns else {}).get("metadata") or {}).get("labels") or {}).items():
            labels[NAMESPACE_LABELS_PREFIX + k] = str(v)
        labels[NAMESPACE_LABEL] = namespace
        return labels


class PluginManifests:
    """The manifests as one plugin sees them (`ctx.manifests`): the shared index, and change
    callbacks that end by themselves when the plugin stops."""

    def __init__(self, manifests: Manifests):
        self._manifests = manifests
        self._stops: list[Callable[[], None]] = []

    def entries(self, kind: str) -> dict[tuple[str, str], ManifestEntry]:
        return self._manifests.entries(kind)

    def objects(self, kind: str) -> dict[tuple[str, str], dict]:
        return self._manifests.objects(kind)

    def changes(self, kind: str) -> dict[tuple[str, str], ManifestEntry | None]:
        return self._manifests.changes(kind)

    def on_change(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Call `callback` after each change of the directory, until the plugin stops."""
        self._stops.append(self._manifests.on_change(callback))

    def close(self) -> None:
        while self._stops:
            self._stops.pop()()

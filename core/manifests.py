"""Standalone mode's source of Kubernetes-shaped objects: YAML files in a directory, watched.

Every *.yaml / *.yml / *.json file may hold several documents. A file that cannot be read or
parsed keeps its previous objects (the last good version stays in force) and its problem is
logged once per change. Objects are indexed by kind and (namespace, name).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Awaitable, Callable

import anyio
import yaml

SUFFIXES = (".yaml", ".yml", ".json")
NAMESPACE_LABEL = "k8s:io.kubernetes.pod.namespace"
NAMESPACE_LABELS_PREFIX = "k8s:io.cilium.k8s.namespace.labels."
CLUSTER_SCOPED = {"Namespace", "Node", "CiliumClusterwideNetworkPolicy"}


class Manifests:
    def __init__(self, directory: Path | None, log: Any):
        self.dir = directory
        self.log = log
        self._signature: dict[Path, tuple[float, int]] = {}
        self._by_file: dict[Path, list[dict]] = {}
        self.problems: dict[Path, str] = {}

    def objects(self, kind: str) -> dict[tuple[str, str], dict]:
        out = {}
        for docs in self._by_file.values():
            for doc in docs:
                if doc.get("kind") == kind:
                    meta = doc.get("metadata") or {}
                    ns = "" if kind in CLUSTER_SCOPED else meta.get("namespace") or "default"
                    out[(ns, meta.get("name", ""))] = doc
        return out

    def scan(self) -> bool:
        """Re-read changed files; True if anything changed."""
        if self.dir is None or not self.dir.is_dir():
            changed = bool(self._by_file)
            self._by_file, self._signature = {}, {}
            return changed
        files = sorted(p for p in self.dir.rglob("*") if p.suffix in SUFFIXES and p.is_file())
        changed = False
        for gone in set(self._by_file) - set(files):
            del self._by_file[gone]
            self._signature.pop(gone, None)
            changed = True
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
                docs = [d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict)]
            except (OSError, yaml.YAMLError) as e:
                self.problems[path] = str(e).splitlines()[0]
                self.log.error("manifest not loaded; its previous version stays in force", file=str(path),
                               error=self.problems[path])
                continue
            self.problems.pop(path, None)
            if docs != self._by_file.get(path):
                self._by_file[path] = docs
                changed = True
        return changed

    def files(self, kind: str) -> dict[tuple[str, str], Path]:
        """The file each object of a kind comes from (for messages)."""
        out = {}
        for path, docs in self._by_file.items():
            for doc in docs:
                if doc.get("kind") == kind:
                    meta = doc.get("metadata") or {}
                    ns = "" if kind in CLUSTER_SCOPED else meta.get("namespace") or "default"
                    out[(ns, meta.get("name", ""))] = path
        return out

    async def watch(self, on_change: Callable[[], Awaitable[None]], interval: float = 1.0) -> None:
        """Call on_change after each change: told by inotify within milliseconds, and a full
        rescan every `interval` seconds in any case (a directory that appears later, NFS)."""
        from watchfiles import awatch

        while True:
            if self.scan():
                await on_change()
            if self.dir is None or not self.dir.is_dir():
                await anyio.sleep(interval)
                continue
            try:
                async for _ in awatch(self.dir, step=5, debounce=200, rust_timeout=int(interval * 1000),
                                      yield_on_timeout=True, recursive=True):
                    if self.scan():
                        await on_change()
                    if not self.dir.is_dir():
                        break
            except (OSError, RuntimeError) as e:  # the directory went away under the watcher
                self.log.debug("manifests watcher restarting", error=str(e))
                await anyio.sleep(interval)

    def pod_labels(self, namespace: str, name: str) -> dict[str, str]:
        """Cilium's labels for a pod: its own (k8s:key), its namespace's, and the namespace."""
        if not name:
            return {}
        namespace = namespace or "default"
        pod = self.objects("Pod").get((namespace, name))
        if pod is None:
            return {NAMESPACE_LABEL: namespace}
        labels = {f"k8s:{k}": str(v) for k, v in ((pod.get("metadata") or {}).get("labels") or {}).items()}
        ns = self.objects("Namespace").get(("", namespace))
        for k, v in (((ns or {}).get("metadata") or {}).get("labels") or {}).items():
            labels[NAMESPACE_LABELS_PREFIX + k] = str(v)
        labels[NAMESPACE_LABEL] = namespace
        return labels

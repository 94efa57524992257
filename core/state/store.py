"""The cluster store: what nodes share (node registry, identities, ipcache, pod CIDR claims).

One interface, two backends: `LocalStore` (sqlite in WAL mode) for a single machine, and
`EtcdStore` (core/state/etcd.py) for a cluster. Keys are '/'-separated strings, values
JSON-able, and every write bumps a store-wide revision (like etcd's), so readers can order
what they see. Keys written with `lease=True` belong to this agent's session: in etcd they
disappear when the agent has been gone for `kvstore.leaseTTL`; the local store keeps them.

`Mirror` is how readers follow a prefix: a snapshot, then changes, and after a lost
connection a fresh snapshot compared with what it had, so a reader never misses a delete.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Protocol

import anyio


class StoreUnavailable(Exception):
    """The cluster store cannot be reached now; the call changed nothing that is known."""


class Undecodable(str):
    """A stored value that is not JSON (written by something else than an agent): its text.
    Readers that expect a record treat it as a bad one."""


def decode(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return Undecodable(raw.decode(errors="replace"))


@dataclass(frozen=True)
class Change:
    key: str
    value: Any | None  # None: the key was deleted
    revision: int


@dataclass(frozen=True)
class StoreStatus:
    backend: str  # "local" or "etcd"
    ok: bool
    message: str  # Cilium's style: "etcd: 1/1 connected, ... - 3.4.23 (Leader)"


class ClusterStore(Protocol):
    async def get(self, key: str) -> Any | None: ...

    async def put(self, key: str, value: Any, *, lease: bool = False) -> int: ...

    async def create(self, key: str, value: Any, *, lease: bool = False) -> bool:
        """Write only if the key is absent; True if this call created it (atomic)."""
        ...

    async def create_all(self, items: dict[str, Any]) -> bool:
        """Write every key only if none of them exists (one transaction); True if written."""
        ...

    async def delete(self, key: str) -> bool: ...

    async def list(self, prefix: str) -> dict[str, Any]: ...

    async def snapshot(self, prefix: str) -> tuple[dict[str, Any], int]:
        """The keys under `prefix` and the store's revision they were read at."""
        ...

    def watch(self, prefix: str) -> Any:
        """An async context manager giving an async iterator of the Changes under `prefix`
        from the moment it is entered; it raises StoreUnavailable when the connection is lost."""
        ...

    def status(self) -> StoreStatus: ...

    async def close(self) -> None: ...


class LocalStore:
    """The single-machine backend: one sqlite file, all calls serialised, each one a
    transaction, run in a worker thread so a slow disk never stalls the event loop."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL, "
                         "mod_revision INTEGER NOT NULL)")
        self._db.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL)")
        self._db.execute("INSERT OR IGNORE INTO meta VALUES ('revision', 0)")
        self._lock = threading.Lock()
        self._watchers: list[tuple[str, Callable[[Change], None]]] = []

    def _tx(self, fn):
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                result = fn(self._db)
                self._db.execute("COMMIT")
                return result
            except BaseException as e:
                if self._db.in_transaction:  # (sqlite has rolled back itself after a full disk)
                    self._db.execute("ROLLBACK")
                if isinstance(e, sqlite3.OperationalError):  # a full disk, an I/O error: retry later
                    raise StoreUnavailable(f"local store {self.path}: {e}") from e
                raise

    async def _run(self, fn):
        return await anyio.to_thread.run_sync(self._tx, fn)

    @staticmethod
    def _bump(db) -> int:
        db.execute("UPDATE meta SET value = value + 1 WHERE name = 'revision'")
        return db.execute("SELECT value FROM meta WHERE name = 'revision'").fetchone()[0]

    def _notify(self, changes: list[Change]) -> None:
        for change in changes:
            for prefix, deliver in list(self._watchers):
                if change.key.startswith(prefix):
                    deliver(change)

    async def get(self, key: str) -> Any | None:
        row = await self._run(lambda db: db.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone())
        return json.loads(row[0]) if row else None

    def _write(self, db, key: str, value: Any) -> Change:
        rev = self._bump(db)
        db.execute("INSERT INTO kv VALUES (?, ?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value, "
                   "mod_revision = excluded.mod_revision", (key, json.dumps(value), rev))
        return Change(key, value, rev)

    async def put(self, key: str, value: Any, *, lease: bool = False) -> int:
        change = await self._run(lambda db: self._write(db, key, value))
        self._notify([change])
        return change.revision

    async def create(self, key: str, value: Any, *, lease: bool = False) -> bool:
        return await self.create_all({key: value})

    async def create_all(self, items: dict[str, Any]) -> bool:
        def create(db):
            if any(db.execute("SELECT 1 FROM kv WHERE key = ?", (k,)).fetchone() for k in items):
                return []
            return [self._write(db, k, v) for k, v in items.items()]

        changes = await self._run(create)
        self._notify(changes)
        return bool(changes)

    async def delete(self, key: str) -> bool:
        def delete(db):
            if db.execute("DELETE FROM kv WHERE key = ?", (key,)).rowcount:
                return [Change(key, None, self._bump(db))]
            return []

        changes = await self._run(delete)
        self._notify(changes)
        return bool(changes)

    async def list(self, prefix: str) -> dict[str, Any]:
        return (await self.snapshot(prefix))[0]

    async def snapshot(self, prefix: str) -> tuple[dict[str, Any], int]:
        def read(db):
            rows = db.execute("SELECT key, value FROM kv WHERE key >= ? AND key < ? ORDER BY key",
                              (prefix, prefix + "\uffff")).fetchall()
            rev = db.execute("SELECT value FROM meta WHERE name = 'revision'").fetchone()[0]
            return {k: json.loads(v) for k, v in rows}, rev

        return await self._run(read)

    @asynccontextmanager
    async def watch(self, prefix: str) -> AsyncIterator[AsyncIterator[Change]]:
        send, receive = anyio.create_memory_object_stream[Change](max_buffer_size=float("inf"))
        entry = (prefix, send.send_nowait)
        self._watchers.append(entry)
        try:
            async with receive:
                yield receive
        finally:
            self._watchers.remove(entry)
            send.close()

    def status(self) -> StoreStatus:
        return StoreStatus("local", True, f"local: {self.path}")

    async def close(self) -> None:
        with self._lock:
            self._db.close()


class Mirror:
    """Follows a prefix of the store: `on_change(key, old, new)` for every difference (new
    None: deleted), first from a snapshot, then from the watch; after a lost connection it
    takes a new snapshot and reports only what differs. `synced` is set after the first
    snapshot was reported; `items` is what the mirror holds."""

    def __init__(self, store: ClusterStore, prefix: str,
                 on_change: Callable[[str, Any, Any], Awaitable[None] | None], log: Any = None,
                 retry: float = 1.0):
        self.store, self.prefix, self.on_change, self.log, self.retry = store, prefix, on_change, log, retry
        self.items: dict[str, Any] = {}
        self.synced = anyio.Event()

    async def _report(self, key: str, value: Any) -> None:
        old = self.items.get(key)
        if value is None:
            self.items.pop(key, None)
        else:
            self.items[key] = value
        if old != value:
            try:
                result = self.on_change(key, old, value)
                if result is not None:
                    await result
            except Exception as e:  # one bad change must not end the mirror (nor the agent)
                if self.log is not None:
                    self.log.error("handling a kvstore change failed", key=key, error=f"{type(e).__name__}: {e}",
                                   exc_info=e)

    async def run(self) -> None:
        while True:
            try:
                async with self.store.watch(self.prefix) as changes:  # first: nothing slips between
                    found, revision = await self.store.snapshot(self.prefix)
                    for key in [k for k in self.items if k not in found]:
                        await self._report(key, None)
                    for key, value in found.items():
                        await self._report(key, value)
                    self.synced.set()
                    async for change in changes:
                        if change.revision > revision:
                            await self._report(change.key, change.value)
            except StoreUnavailable as e:
                if self.log is not None:
                    self.log.warning("kvstore watch lost; resyncing", prefix=self.prefix, error=str(e))
                await anyio.sleep(self.retry)

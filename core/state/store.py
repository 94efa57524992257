"""The cluster store: what nodes share (pod CIDR claims, identities, ipcache, node registry).

One interface, several backends. This module has the embedded local backend (sqlite in WAL
mode) used on a single machine; the etcd backend implements the same calls with
transactions. Keys are '/'-separated strings, values JSON-able, and every write bumps a
store-wide revision (like etcd's), so readers can order what they see.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Any, Protocol

import anyio


class ClusterStore(Protocol):
    async def get(self, key: str) -> Any | None: ...

    async def put(self, key: str, value: Any) -> int: ...

    async def create(self, key: str, value: Any) -> bool:
        """Write only if the key is absent; True if this call created it (atomic)."""
        ...

    async def delete(self, key: str) -> bool: ...

    async def list(self, prefix: str) -> dict[str, Any]: ...

    async def close(self) -> None: ...


class LocalStore:
    """The single-machine backend: one sqlite file, all calls serialised, each one a
    transaction, run in a worker thread so a slow disk never stalls the event loop."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL, "
                         "mod_revision INTEGER NOT NULL)")
        self._db.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL)")
        self._db.execute("INSERT OR IGNORE INTO meta VALUES ('revision', 0)")
        self._lock = threading.Lock()

    def _tx(self, fn):
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                result = fn(self._db)
                self._db.execute("COMMIT")
                return result
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    async def _run(self, fn):
        return await anyio.to_thread.run_sync(self._tx, fn)

    @staticmethod
    def _bump(db) -> int:
        db.execute("UPDATE meta SET value = value + 1 WHERE name = 'revision'")
        return db.execute("SELECT value FROM meta WHERE name = 'revision'").fetchone()[0]

    async def get(self, key: str) -> Any | None:
        row = await self._run(lambda db: db.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone())
        return json.loads(row[0]) if row else None

    async def put(self, key: str, value: Any) -> int:
        def put(db):
            rev = self._bump(db)
            db.execute("INSERT INTO kv VALUES (?, ?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value, "
                       "mod_revision = excluded.mod_revision", (key, json.dumps(value), rev))
            return rev

        return await self._run(put)

    async def create(self, key: str, value: Any) -> bool:
        def create(db):
            if db.execute("SELECT 1 FROM kv WHERE key = ?", (key,)).fetchone():
                return False
            db.execute("INSERT INTO kv VALUES (?, ?, ?)", (key, json.dumps(value), self._bump(db)))
            return True

        return await self._run(create)

    async def delete(self, key: str) -> bool:
        def delete(db):
            if db.execute("DELETE FROM kv WHERE key = ?", (key,)).rowcount:
                self._bump(db)
                return True
            return False

        return await self._run(delete)

    async def list(self, prefix: str) -> dict[str, Any]:
        rows = await self._run(lambda db: db.execute(
            "SELECT key, value FROM kv WHERE key >= ? AND key < ? ORDER BY key", (prefix, prefix + "\uffff")).fetchall())
        return {k: json.loads(v) for k, v in rows}

    async def close(self) -> None:
        with self._lock:
            self._db.close()

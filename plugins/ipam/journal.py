"""Durable allocations: sqlite in WAL mode with synchronous=FULL, one transaction per batch.

A change is answered only after its transaction committed, so after kill -9 (or a power cut)
every returned address is still allocated and none is handed out twice. Concurrent requests
share a commit (group commit): 8 clients cost about as many fsyncs as one.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from pylium.plugins.ipam.allocator import Address, Allocation, Owner

SCHEMA = """
CREATE TABLE IF NOT EXISTS allocations (
    container_id TEXT NOT NULL,
    interface    TEXT NOT NULL,
    pool         TEXT NOT NULL,
    family       INTEGER NOT NULL,
    ip           TEXT NOT NULL UNIQUE,
    block        TEXT NOT NULL,
    gateway      TEXT NOT NULL,
    PRIMARY KEY (container_id, interface, family)
);
"""


class Journal:
    def __init__(self, path: Path):
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        self._lock = threading.Lock()

    def load(self) -> list[Allocation]:
        rows = self._db.execute("SELECT container_id, interface, pool, family, ip, block, gateway FROM allocations "
                                "ORDER BY container_id, interface, family").fetchall()
        out: dict[tuple[str, str], Allocation] = {}
        for cid, ifname, pool, family, ip, block, gateway in rows:
            alloc = out.setdefault((cid, ifname), Allocation(Owner(cid, ifname), pool, []))
            alloc.addresses.append(Address(ip, family, block, gateway))
        return list(out.values())

    def apply(self, adds: list[Allocation], removes: list[Allocation]) -> None:
        """One transaction: insert `adds`, delete `removes`. Raises, changing nothing, on error."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for alloc in removes:
                    self._db.execute("DELETE FROM allocations WHERE container_id = ? AND interface = ?",
                                     (alloc.owner.container_id, alloc.owner.interface))
                for alloc in adds:
                    self._db.executemany(
                        "INSERT INTO allocations VALUES (?, ?, ?, ?, ?, ?, ?)",
                        [(alloc.owner.container_id, alloc.owner.interface, alloc.pool, a.family, a.ip, a.block,
                          a.gateway) for a in alloc.addresses])
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def close(self) -> None:
        with self._lock:
            self._db.close()

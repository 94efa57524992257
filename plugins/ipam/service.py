"""The durable allocator: pure allocation (allocator.py) + group-committed journal + block claims.

Every answer comes after the change is on disk. Changes for one owner are serialised; different
owners proceed concurrently and share commits.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable

import anyio

from pylium.plugins.ipam.allocator import Allocation, Allocator, Exhausted, IpamError, NeedsBlock, Owner
from pylium.plugins.ipam.blocks import BlockClaimer
from pylium.plugins.ipam.journal import Journal


class _Waiter:
    def __init__(self) -> None:
        self.done = anyio.Event()
        self.error: BaseException | None = None


class GroupCommit:
    """Collects changes while a transaction is in flight and writes them in the next one."""

    def __init__(self, journal: Journal):
        self.journal = journal
        self._adds: list[Allocation] = []
        self._removes: list[Allocation] = []
        self._waiters: list[_Waiter] = []
        self._wake = anyio.Event()

    async def write(self, adds: list[Allocation] = (), removes: list[Allocation] = ()) -> None:
        waiter = _Waiter()
        self._adds.extend(adds)
        self._removes.extend(removes)
        self._waiters.append(waiter)
        self._wake.set()
        await waiter.done.wait()
        if waiter.error is not None:
            raise waiter.error

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            adds, removes, waiters = self._adds, self._removes, self._waiters
            self._adds, self._removes, self._waiters = [], [], []
            error = None
            try:
                await anyio.to_thread.run_sync(self.journal.apply, adds, removes)
            except Exception as e:  # disk full, I/O error: every change of the batch is refused
                error = IpamError(f"could not record the change on disk: {type(e).__name__}: {e}")
            for w in waiters:
                w.error = error
                w.done.set()


class _OwnerLocks:
    def __init__(self) -> None:
        self._locks: dict[str, list[Any]] = {}  # key -> [lock, users]

    @contextlib.asynccontextmanager
    async def hold(self, keys: list[str]):
        entries = []
        for key in sorted(set(keys)):  # a fixed order: no deadlock between multi-owner releases
            entry = self._locks.setdefault(key, [anyio.Lock(), 0])
            entry[1] += 1
            entries.append((key, entry))
        try:
            async with contextlib.AsyncExitStack() as stack:
                for _, entry in entries:
                    await stack.enter_async_context(entry[0])
                yield
        finally:
            for key, entry in entries:
                entry[1] -= 1
                if entry[1] == 0:
                    del self._locks[key]


class IpamService:
    def __init__(self, allocator: Allocator, commit: GroupCommit, claimer: BlockClaimer,
                 on_exhausted: Callable[[Exhausted], None], on_change: Callable[[str, Allocation], None]):
        self.allocator, self.commit, self.claimer = allocator, commit, claimer
        self._on_exhausted, self._on_change = on_exhausted, on_change
        self._owners = _OwnerLocks()
        self._claiming = anyio.Lock()

    async def allocate(self, owner: Owner, pool: str | None, families: list[int] | None,
                       requested: list[str]) -> Allocation:
        async with self._owners.hold([owner.key]):
            existing = owner.key in self.allocator.by_owner
            while True:
                try:
                    alloc = self.allocator.allocate(owner, pool, families, requested)
                    break
                except NeedsBlock as need:
                    await self._grow(need)
                except Exhausted as e:
                    self._on_exhausted(e)
                    raise
            if existing:
                return alloc  # already on disk: the lock made the earlier request finish first
            try:
                await self.commit.write(adds=[alloc])
            except BaseException:
                self.allocator.release_owner(owner.key)  # never answered: undo
                raise
            self._on_change("allocate", alloc)
            return alloc

    async def _grow(self, need: NeedsBlock) -> None:
        async with self._claiming:
            pf = self.allocator.pools[need.pool][need.family]
            if any(not b.full() for b in pf.blocks):
                return  # another request claimed one meanwhile
            if await self.claimer.claim(need.pool, need.family) is None:
                pf.can_grow = False  # the pool is exhausted cluster-wide; the retry raises Exhausted

    async def release(self, container_id: str, interface: str | None) -> list[Allocation]:
        keys = self.allocator.owners_of(container_id, interface)
        async with self._owners.hold(keys):
            keys = [k for k in keys if k in self.allocator.by_owner]  # only owners whose lock we hold
            if not keys:
                return []
            await self.commit.write(removes=[self.allocator.by_owner[k] for k in keys])  # still taken until on disk
            released = [self.allocator.release_owner(k) for k in keys]
            for alloc in released:
                self._on_change("release", alloc)
            return released

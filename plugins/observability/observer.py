"""The observer: a ring of the latest flows (and lost-event notices), queries over it, and
followers that receive new records as they come (`pylium observe -f`, `pylium monitor`)."""

from __future__ import annotations

import asyncio
import collections
from typing import Any, AsyncIterator, Callable

from pylium.plugins.observability.flow import Flow, LostEvents

FOLLOWER_QUEUE = 16384  # records a follower may fall behind before it loses some


class Follower:
    """A live subscriber: a bounded queue; what overflows is counted and reported to it."""

    def __init__(self, accept: Callable[[Any], bool]):
        self.accept = accept
        self.queue: collections.deque = collections.deque()
        self.lost = 0
        self._wake = asyncio.Event()

    def offer(self, record: Any) -> None:
        if not self.accept(record):
            return
        if len(self.queue) >= FOLLOWER_QUEUE:
            self.lost += 1
            return
        self.queue.append(record)
        self._wake.set()

    async def next_batch(self, timeout: float) -> list[Any]:
        """What arrived (possibly nothing after `timeout` seconds)."""
        if not self.queue:
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except asyncio.TimeoutError:
                return []
        batch = list(self.queue)
        self.queue.clear()
        return batch


class Observer:
    def __init__(self, capacity: int, on_lost: Callable[[str, int], None]):
        self.ring: collections.deque[Flow | LostEvents] = collections.deque(maxlen=capacity)
        self.capacity = capacity
        self.seen = 0
        self.flow_followers: set[Follower] = set()
        self.monitor_followers: set[Follower] = set()
        self._on_lost = on_lost

    def add(self, record: Flow | LostEvents) -> None:
        self.ring.append(record)
        self.seen += 1
        for f in self.flow_followers:
            f.offer(record)

    def query(self, match: Callable[[Flow], bool], *, number: int, first: bool, since: str, until: str) -> list:
        """Matching records of the ring, oldest first: the first or last `number` (0: all).
        Lost-event notices always pass."""
        def ok(r) -> bool:
            if isinstance(r, LostEvents):
                return True
            return (not since or r.time >= since) and (not until or r.time <= until) and match(r)

        records = list(self.ring)
        if first:
            out = []
            for r in records:
                if ok(r):
                    out.append(r)
                    if number and len(out) >= number:
                        break
            return out
        out = []
        for r in reversed(records):
            if ok(r):
                out.append(r)
                if number and len(out) >= number:
                    break
        out.reverse()
        return out

    async def follow(self, followers: set[Follower], accept: Callable[[Any], bool],
                     disconnected: Callable[[], bool], until: str = "",
                     wrap_lost: Callable[[LostEvents], Any] = lambda r: r,
                     follower: Follower | None = None) -> AsyncIterator[list]:
        """Batches of records as they arrive, until the client goes away (checked every
        second). A follower that falls behind gets a lost-events notice (HUBBLE_RING_BUFFER).
        Pass a `follower` already in `followers` to receive what arrived since it was added."""
        if follower is None:
            follower = Follower(accept)
            followers.add(follower)
        try:
            while not disconnected():
                batch = await follower.next_batch(1.0)
                if until and batch and isinstance(batch[-1], Flow) and batch[-1].time > until:
                    yield [r for r in batch if not isinstance(r, Flow) or r.time <= until]
                    return
                if follower.lost:
                    lost, follower.lost = follower.lost, 0
                    self._on_lost("HUBBLE_RING_BUFFER", lost)
                    batch.append(wrap_lost(LostEvents(source="HUBBLE_RING_BUFFER", num_events_lost=lost)))
                if batch:
                    yield batch
        finally:
            followers.discard(follower)

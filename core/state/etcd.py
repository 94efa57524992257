"""The etcd backend of the cluster store (`kvstore: etcd`), through aetcd (asyncio gRPC).

- Atomic writes are etcd transactions (`create`, `create_all`: compare version == 0).
- Keys written with `lease=True` carry this agent's lease (`kvstore.leaseTTL`): kept alive
  while the agent runs, gone from every peer once it has been away that long. If the lease
  was lost while etcd was out of reach, a new one is taken and every leased key is written
  again, so peers see this node and its endpoints again without a restart.
- Every failure to reach etcd becomes `StoreUnavailable`; `status()` says what the last
  contact found, in Cilium's words (`etcd: 1/1 connected, ...`).
"""

from __future__ import annotations

import json
import os
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator
from urllib.parse import urlsplit

# gRPC's fork handlers only log (the agent forks compilers and `ip`); its info lines are noise.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import aetcd  # noqa: E402
import aetcd.exceptions  # noqa: E402
import aetcd.rpc  # noqa: E402
import anyio  # noqa: E402

from pylium.core.state.store import Change, StoreStatus, StoreUnavailable, decode

# gRPC keepalive as Cilium's etcd client: a dead connection is noticed in ~40 s, not hours.
CHANNEL_OPTIONS = {"grpc.keepalive_time_ms": 15_000, "grpc.keepalive_timeout_ms": 25_000,
                   "grpc.keepalive_permit_without_calls": 1, "grpc.max_receive_message_length": 64 << 20}


@dataclass(frozen=True)
class TlsFiles:
    ca: str = ""
    cert: str = ""
    key: str = ""


class _Client(aetcd.Client):
    """aetcd's client with TLS: aetcd itself only opens plaintext channels."""

    def __init__(self, host: str, port: int, tls: TlsFiles | None, **kw: Any):
        super().__init__(host, port, **kw)
        self._tls = tls

    async def connect(self) -> None:
        if self._tls is None:
            return await super().connect()
        if self._connected.is_set():
            return
        import grpc
        from aetcd import rpc, watcher

        read = lambda path: Path(path).read_bytes() if path else None  # noqa: E731
        credentials = grpc.ssl_channel_credentials(read(self._tls.ca), read(self._tls.key), read(self._tls.cert))
        self.channel = rpc.secure_channel(f"{self._host}:{self._port}", credentials, self._options.items())
        self.kvstub, self.clusterstub = rpc.KVStub(self.channel), rpc.ClusterStub(self.channel)
        self.leasestub, self.maintenancestub = rpc.LeaseStub(self.channel), rpc.MaintenanceStub(self.channel)
        self._watcher = watcher.Watcher(rpc.WatchStub(self.channel), timeout=self._timeout, metadata=self.metadata)
        self._connected.set()


def _unavailable(error: Exception) -> StoreUnavailable:
    return StoreUnavailable(f"etcd: {type(error).__name__}: {error}".strip().rstrip(":"))


class EtcdStore:
    def __init__(self, endpoints: list[str], lease_ttl: float, tls: TlsFiles | None = None, log: Any = None,
                 timeout: float = 5.0):
        if not endpoints:
            raise ValueError("etcd.endpoints is empty")
        self.endpoints, self.lease_ttl, self.tls, self.log, self.timeout = endpoints, lease_ttl, tls, log, timeout
        self._client: _Client | None = None
        self._endpoint = endpoints[0]
        self._lease_id = 0
        self._leased: dict[str, Any] = {}  # what this agent wrote with its lease (written again if it is lost)
        self._rewrite: set[str] = set()  # leased keys to write again under a new lease
        self._lease_lock = anyio.Lock()
        self._status = StoreStatus("etcd", False, "etcd: not connected yet")
        self.version = ""

    # ---- connection ---------------------------------------------------------------------

    def _make_client(self, endpoint: str) -> _Client:
        url = urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
        tls = (self.tls or TlsFiles()) if url.scheme == "https" else None
        return _Client(url.hostname or "127.0.0.1", url.port or 2379, tls, timeout=self.timeout,
                       options=CHANNEL_OPTIONS)

    async def connect(self, deadline: float, on_retry: Any = None) -> None:
        """Reach one of the endpoints (in order, again and again) until `deadline`
        (time.monotonic()); StoreUnavailable naming every endpoint's problem after it."""
        delay = 0.2
        while True:
            problems = []
            for endpoint in self.endpoints:
                client = self._make_client(endpoint)
                try:
                    with anyio.fail_after(self.timeout):
                        status = await client.status()
                except (aetcd.exceptions.ClientError, TimeoutError, OSError) as e:
                    problems.append(f"{endpoint}: {type(e).__name__}: {e}".rstrip(": "))
                    await client.close()
                    continue
                self._client, self._endpoint, self.version = client, endpoint, status.version
                self._set_status(True)
                return
            message = "etcd unreachable: " + "; ".join(problems)
            self._status = StoreStatus("etcd", False, message)
            if time.monotonic() + delay > deadline:
                raise StoreUnavailable(message)
            if on_retry is not None:
                on_retry(message, delay)
            await anyio.sleep(delay)
            delay = min(delay * 2, 5.0)

    def _set_status(self, ok: bool, problem: str = "") -> None:
        total = len(self.endpoints)
        if ok:
            self._status = StoreStatus("etcd", True, f"etcd: 1/{total} connected, lease-ID={self._lease_id:x}: "
                                                     f"{self._endpoint} - {self.version}")
        else:
            self._status = StoreStatus("etcd", False, f"etcd: 0/{total} connected: {problem}")

    def status(self) -> StoreStatus:
        return self._status

    @property
    def client(self) -> _Client:
        if self._client is None:
            raise StoreUnavailable("etcd: not connected")
        return self._client

    async def _call(self, coro_fn, *args, **kw):
        try:
            with anyio.fail_after(self.timeout):
                result = await coro_fn(*args, **kw)
        except (aetcd.exceptions.ClientError, TimeoutError) as e:
            self._set_status(False, str(_unavailable(e)))
            raise _unavailable(e) from None
        if not self._status.ok:
            self._set_status(True)
        return result

    # ---- the lease ----------------------------------------------------------------------

    async def _lease(self) -> int:
        async with self._lease_lock:
            if not self._lease_id:
                lease = await self._call(self.client.lease, max(1, round(self.lease_ttl)))
                self._lease_id = lease.id
                self._set_status(True)
            return self._lease_id

    async def keep_alive(self, check_interval: float = 5.0) -> None:
        """Run for the agent's life: check etcd every `check_interval` (so `status()` tells an
        outage within seconds), move to another endpoint when this one fails, and refresh the
        lease every third of its TTL; a lease lost while etcd was away is replaced and the
        leased keys are written again, each until it succeeds."""
        refreshed = time.monotonic()
        while True:
            await anyio.sleep(min(check_interval, max(0.5, self.lease_ttl / 3)))
            try:
                if not self._status.ok and len(self.endpoints) > 1:
                    await self._failover()
                if time.monotonic() - refreshed >= self.lease_ttl / 3 or not self._status.ok:
                    await self._refresh()
                    refreshed = time.monotonic()
                else:
                    await self._call(self.client.status)
                for key in list(self._rewrite):
                    if key in self._leased:
                        await self.put(key, self._leased[key], lease=True)
                    self._rewrite.discard(key)
            except StoreUnavailable as e:
                if self.log is not None:
                    self.log.warning("kvstore unreachable", error=str(e))

    async def _failover(self) -> None:
        """Move to the next endpoint that answers (the current one last)."""
        start = self.endpoints.index(self._endpoint)
        for endpoint in self.endpoints[start + 1:] + self.endpoints[:start + 1]:
            client = self._make_client(endpoint)
            try:
                with anyio.fail_after(self.timeout):
                    status = await client.status()
            except (aetcd.exceptions.ClientError, TimeoutError, OSError):
                await client.close()
                continue
            old, self._client, self._endpoint, self.version = self._client, client, endpoint, status.version
            if old is not None:  # its watches end: their readers take a new snapshot from this one
                with anyio.CancelScope(shield=True), anyio.move_on_after(1):
                    await old.close()
            self._set_status(True)
            if self.log is not None:
                self.log.info("kvstore endpoint", endpoint=endpoint)
            return

    async def _refresh(self) -> None:
        if not self._lease_id:
            await self._call(self.client.status)
            return
        try:
            reply = await self._call(self.client.refresh_lease, self._lease_id)
            alive = reply is not None and reply.TTL > 0
        except StoreUnavailable as e:
            if "not found" not in str(e):
                raise
            alive = False
        if alive:
            return
        if self.log is not None:
            self.log.warning("kvstore lease expired; writing this node's keys again", keys=len(self._leased))
        async with self._lease_lock:
            self._lease_id = 0
        self._rewrite |= set(self._leased)  # written by keep_alive, one by one until each succeeds

    # ---- keys ---------------------------------------------------------------------------

    async def get(self, key: str) -> Any | None:
        found = await self._call(self.client.get, key.encode())
        return decode(found.value) if found is not None else None

    async def put(self, key: str, value: Any, *, lease: bool = False) -> int:
        lease_id = await self._lease() if lease else None
        reply = await self._call(self.client.put, key.encode(), json.dumps(value).encode(), lease=lease_id)
        if lease:
            self._leased[key] = value
        return reply.header.revision

    async def create(self, key: str, value: Any, *, lease: bool = False) -> bool:
        lease_id = await self._lease() if lease else None
        tx = self.client.transactions
        ok, _ = await self._call(self.client.transaction, [tx.version(key.encode()) == 0],
                                 [tx.put(key.encode(), json.dumps(value).encode(), lease_id)], [])
        if ok and lease:
            self._leased[key] = value
        return ok

    async def create_all(self, items: dict[str, Any]) -> bool:
        tx = self.client.transactions
        ok, _ = await self._call(self.client.transaction, [tx.version(k.encode()) == 0 for k in items],
                                 [tx.put(k.encode(), json.dumps(v).encode()) for k, v in items.items()], [])
        return ok

    async def delete(self, key: str) -> bool:
        self._leased.pop(key, None)
        return bool(await self._call(self.client.delete, key.encode()))

    async def list(self, prefix: str) -> dict[str, Any]:
        return (await self.snapshot(prefix))[0]

    async def snapshot(self, prefix: str) -> tuple[dict[str, Any], int]:
        found = await self._call(self.client.get_prefix, prefix.encode())
        return {kv.key.decode(): decode(kv.value) for kv in found}, found.header.revision

    @asynccontextmanager
    async def watch(self, prefix: str) -> AsyncIterator[AsyncIterator[Change]]:
        watch = await self._call(self.client.watch_prefix, prefix.encode())

        async def changes() -> AsyncIterator[Change]:
            try:
                async for event in watch:
                    value = decode(event.kv.value) if event.kind == "PUT" else None
                    yield Change(event.kv.key.decode(), value, event.kv.mod_revision)
            except aetcd.exceptions.ClientError as e:
                self._set_status(False, str(_unavailable(e)))
                raise _unavailable(e) from None
            raise StoreUnavailable("etcd: the watch ended")

        try:
            yield changes()
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(1):
                await watch.cancel()

    async def close(self) -> None:
        """Leaves the lease running: a restarting agent's node and endpoints stay known to
        the peers (it writes them again under a new lease); a node that is gone for good
        disappears after the TTL."""
        if self._client is not None:
            with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                await self._client.close()
            self._client = None

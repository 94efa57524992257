"""The cluster store, on both backends (the embedded sqlite store and a real etcd): the same
semantics for reads, writes, atomic creates and watches; etcd's leases, outages and races."""

from __future__ import annotations

import json
import time

import anyio
import pytest

from pylium.core.state.etcd import EtcdStore
from pylium.core.state.store import LocalStore, Mirror, StoreUnavailable
from pylium.testing.etcd import Etcd


@pytest.fixture(scope="module")
def etcd():
    server = Etcd().start()
    yield server
    server.close()


async def _etcd_store(server: Etcd, lease_ttl: float = 15.0) -> EtcdStore:
    store = EtcdStore([server.endpoint], lease_ttl)
    await store.connect(time.monotonic() + 10)
    return store


@pytest.fixture(params=["local", "etcd"])
def open_store(request, tmp_path, etcd):
    """open_store() -> a store of the parametrized backend, on a fresh key prefix."""
    prefix = f"t{time.monotonic_ns()}/"

    async def make():
        if request.param == "local":
            return LocalStore(tmp_path / "local.db"), prefix
        return await _etcd_store(etcd), prefix

    return make


def test_reads_writes_and_atomic_creates(open_store):
    async def main():
        store, p = await open_store()
        assert await store.get(p + "a") is None
        rev1 = await store.put(p + "a", {"x": 1})
        rev2 = await store.put(p + "b/c", [1, 2])
        assert rev2 > rev1 and await store.get(p + "a") == {"x": 1}
        assert await store.list(p + "b/") == {p + "b/c": [1, 2]}
        assert await store.create(p + "a", "other") is False and await store.get(p + "a") == {"x": 1}
        assert await store.create(p + "n", "new") is True
        assert await store.create_all({p + "k1": 1, p + "a": 2}) is False, "one key exists: nothing is written"
        assert await store.get(p + "k1") is None
        assert await store.create_all({p + "k1": 1, p + "k2": 2}) is True
        found, revision = await store.snapshot(p)
        assert set(found) == {p + "a", p + "b/c", p + "n", p + "k1", p + "k2"} and revision >= rev2
        assert await store.delete(p + "a") is True and await store.delete(p + "a") is False
        await store.close()

    anyio.run(main)


def test_a_mirror_sees_the_snapshot_then_every_change(open_store):
    async def main():
        store, p = await open_store()
        await store.put(p + "old", 1)
        seen: list = []
        mirror = Mirror(store, p, lambda key, old, new: seen.append((key.removeprefix(p), old, new)))
        async with anyio.create_task_group() as tg:
            tg.start_soon(mirror.run)
            await mirror.synced.wait()
            await store.put(p + "new", 2)
            await store.put(p + "old", 3)
            await store.put(p + "old", 3)  # the same value again: no change to report
            await store.delete(p + "new")
            with anyio.fail_after(5):
                while len(seen) < 4:
                    await anyio.sleep(0.01)
            tg.cancel_scope.cancel()
        assert seen == [("old", None, 1), ("new", None, 2), ("old", 1, 3), ("new", 2, None)]
        assert mirror.items == {p + "old": 3}
        await store.close()

    anyio.run(main)


def test_a_full_disk_makes_the_local_store_unavailable_not_broken(tmp_path):
    """A write that finds no space changes nothing and raises StoreUnavailable naming the cause
    (what background writers retry, instead of failing the agent); once space returns, writes
    work again."""
    import subprocess

    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "pylium-test-full", str(disk)], check=True)
    try:
        async def main():
            store = LocalStore(disk / "local.db")
            try:
                await store.put("k/a", "kept")
                filler = disk / "filler"
                subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=4k"], capture_output=True)  # until ENOSPC
                with pytest.raises(StoreUnavailable, match="disk is full"):
                    for i in range(200):  # past what sqlite's free pages take
                        await store.put(f"k/{i}", "x" * 4000)
                assert await store.get("k/a") == "kept"
                filler.unlink()
                await store.put("k/b", "written")
                assert await store.get("k/b") == "written"
            finally:
                await store.close()

        anyio.run(main)
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_concurrent_creates_have_one_winner(etcd):
    async def main():
        stores = [await _etcd_store(etcd) for _ in range(3)]
        p = f"race{time.monotonic_ns()}/"
        won: list = []

        async def claim(store, who):
            if await store.create_all({p + "id/300": who, p + "labels/a=b": 300}):
                won.append(who)

        async with anyio.create_task_group() as tg:
            for i, store in enumerate(stores):
                for j in range(5):
                    tg.start_soon(claim, store, f"{i}.{j}")
        assert len(won) == 1 and await stores[0].get(p + "id/300") == won[0]
        for store in stores:
            await store.close()

    anyio.run(main)


def test_leased_keys_go_with_their_agent_and_come_back_after_a_lost_lease(etcd):
    async def main():
        p = f"lease{time.monotonic_ns()}/"
        crashed = await _etcd_store(etcd, lease_ttl=2)
        await crashed.put(p + "crashed", 1, lease=True)
        live = await _etcd_store(etcd, lease_ttl=2)
        await live.put(p + "live", 1, lease=True)
        await live.put(p + "unleased", 1)
        await crashed.client.close()  # like kill -9: no keepalive, nothing cleaned up
        async with anyio.create_task_group() as tg:
            tg.start_soon(live.keep_alive)
            with anyio.fail_after(10):
                while await live.get(p + "crashed") is not None:
                    await anyio.sleep(0.2)
            assert await live.get(p + "live") == 1, "kept alive"
            # the lease is lost (revoked behind the agent's back): a new one, the keys again
            etcd.etcdctl("lease", "revoke", f"{live._lease_id:x}")
            assert await live.get(p + "live") is None
            with anyio.fail_after(10):
                while await live.get(p + "live") is None:
                    await anyio.sleep(0.2)
            tg.cancel_scope.cancel()
        assert await live.get(p + "unleased") == 1
        await live.close()

    anyio.run(main)


def test_an_outage_is_reported_and_watches_resync_after_it(etcd):
    async def main():
        store = await _etcd_store(etcd)
        p = f"outage{time.monotonic_ns()}/"
        await store.put(p + "a", 1)
        seen: list = []
        mirror = Mirror(store, p, lambda key, old, new: seen.append((key.removeprefix(p), new)), retry=0.2)
        async with anyio.create_task_group() as tg:
            tg.start_soon(mirror.run)
            await mirror.synced.wait()
            await anyio.to_thread.run_sync(etcd.stop)
            with pytest.raises(StoreUnavailable, match="etcd"):
                await store.put(p + "b", 2)
            assert store.status().ok is False and "0/1 connected" in store.status().message
            await anyio.to_thread.run_sync(etcd.start)
            with anyio.fail_after(20):
                while True:
                    try:
                        await store.put(p + "b", 2)
                        break
                    except StoreUnavailable:
                        await anyio.sleep(0.2)
                while ("b", 2) not in seen:
                    await anyio.sleep(0.05)
            tg.cancel_scope.cancel()
        assert store.status().ok and "1/1 connected" in store.status().message
        await store.close()

    anyio.run(main)


def test_an_unreachable_etcd_is_named_after_the_deadline():
    async def main():
        store = EtcdStore(["http://127.0.0.1:9", "127.0.0.1:7"], 15, timeout=0.5)
        retries: list = []
        t0 = time.monotonic()
        with pytest.raises(StoreUnavailable) as e:
            await store.connect(time.monotonic() + 1.5, lambda problem, delay: retries.append(delay))
        assert time.monotonic() - t0 < 5 and retries
        assert "http://127.0.0.1:9" in str(e.value) and "127.0.0.1:7" in str(e.value)

    anyio.run(main)


def test_etcdctl_sees_json_values(etcd):
    async def main():
        store = await _etcd_store(etcd)
        await store.put("cilium/state/test/v1/x", {"Name": "x"})
        await store.close()

    anyio.run(main)
    assert json.loads(etcd.etcdctl("get", "--print-value-only", "cilium/state/test/v1/x")) == {"Name": "x"}


def test_etcd_over_tls_with_a_client_certificate(tmp_path):
    from pylium.core.state.etcd import TlsFiles
    from pylium.testing.etcd import make_certs

    certs = make_certs(tmp_path / "pki", "127.0.0.1")
    server = Etcd(certs=certs).start()
    try:
        async def main():
            store = EtcdStore([server.endpoint], 15, TlsFiles(str(certs["ca"]), str(certs["client"]),
                                                             str(certs["client-key"])))
            await store.connect(time.monotonic() + 10)
            await store.put("tls/x", {"ok": True}, lease=True)
            assert await store.get("tls/x") == {"ok": True}
            await store.close()
            anonymous = EtcdStore([server.endpoint], 15, TlsFiles(str(certs["ca"])), timeout=1)
            with pytest.raises(StoreUnavailable):  # etcd asks for a client certificate
                await anonymous.connect(time.monotonic() + 2)

        anyio.run(main)
    finally:
        server.close()


def test_a_failing_endpoint_is_left_for_the_next(etcd):
    second = Etcd().start()
    try:
        async def main():
            store = EtcdStore([second.endpoint, etcd.endpoint], 15, timeout=1)
            await store.connect(time.monotonic() + 10)
            assert second.endpoint in store.status().message
            await anyio.to_thread.run_sync(second.stop)
            async with anyio.create_task_group() as tg:
                tg.start_soon(store.keep_alive, 0.2)
                with anyio.fail_after(15):
                    while not (store.status().ok and etcd.endpoint in store.status().message):
                        await anyio.sleep(0.1)
                tg.cancel_scope.cancel()
            await store.put("failover/x", 1)
            await store.close()

        anyio.run(main)
    finally:
        second.close()

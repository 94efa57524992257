"""The ipcache service on a stand-in map: one record per owner per prefix, the highest source
in the map, releasing brings the next one back, restored entries go back to
their owners, each of which reconciles on its own.
(The same through a real agent and the real map: test_datapath.py, test_policy.py.)"""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from pylium.core.datapath.ipcache import RESTORED, Ipcache, IpcacheError, Record, Source
from pylium.core.datapath.structs import IpcacheInfo, IpcacheKey


class FakeMap:
    """put/delete/items over IpcacheKey/IpcacheInfo, counting writes."""

    def __init__(self, entries: dict[str, int] = None):
        self.entries: dict[str, IpcacheInfo] = {p: IpcacheInfo(identity=i) for p, i in (entries or {}).items()}
        self.writes = 0

    def put(self, key: IpcacheKey, info: IpcacheInfo) -> None:
        self.entries[key.cidr] = info
        self.writes += 1

    def delete(self, key: IpcacheKey) -> bool:
        self.writes += 1
        return self.entries.pop(key.cidr, None) is not None

    def items(self):
        return [(IpcacheKey.of(p), v) for p, v in self.entries.items()]

    def identities(self) -> dict[str, int]:
        return {p: v.identity for p, v in self.entries.items()}


def cache(entries=None) -> tuple[Ipcache, FakeMap]:
    table = FakeMap(entries)
    ipc = Ipcache(table)
    ipc.register("core/endpoints", Source.LOCAL)
    ipc.register("connectivity/host", Source.LOCAL)
    ipc.register("nodes/remote", Source.KVSTORE)
    ipc.register("policy/cidr", Source.GENERATED)
    return ipc, table


def test_the_higher_owner_wins_and_releasing_it_restores_the_lower():
    ipc, table = cache()
    ipc.upsert("10.0.0.5/32", 16777217, "policy/cidr")
    assert table.identities() == {"10.0.0.5/32": 16777217}
    ipc.upsert("10.0.0.5", 300, "core/endpoints")  # an address is its /32
    assert table.identities() == {"10.0.0.5/32": 300}
    ipc.upsert("10.0.0.5/32", 16777299, "policy/cidr")  # a lower owner changes: the map does not
    assert table.identities() == {"10.0.0.5/32": 300}
    assert ipc.winner("10.0.0.5/32")[0] == "core/endpoints"
    ipc.release("10.0.0.5/32", "core/endpoints")
    assert table.identities() == {"10.0.0.5/32": 16777299}, "the lower record is back in the map"
    ipc.release("10.0.0.5/32", "policy/cidr")
    assert table.identities() == {}


def test_kvstore_ranks_between_local_and_generated():
    ipc, table = cache()
    ipc.upsert("10.1.0.0/24", 2, "policy/cidr")
    ipc.upsert("10.1.0.0/24", 6, "nodes/remote", tunnel_endpoint="192.0.2.7")
    assert table.entries["10.1.0.0/24"].identity == 6 and bytes(table.entries["10.1.0.0/24"].tunnel_ip4) == bytes(
        [192, 0, 2, 7])
    ipc.upsert("10.1.0.0/24", 1, "connectivity/host")
    assert table.identities() == {"10.1.0.0/24": 1}


def test_owners_of_one_source_are_ordered_by_name():
    ipc, table = cache()
    ipc.upsert("10.0.0.1/32", 1, "connectivity/host")
    ipc.upsert("10.0.0.1/32", 300, "core/endpoints")  # "connectivity/..." sorts first
    assert table.identities() == {"10.0.0.1/32": 1}
    assert next(ipc.rows())["shadowed"] == ["core/endpoints"]


def test_writing_what_the_map_holds_writes_nothing():
    ipc, table = cache()
    ipc.upsert("10.0.0.5/32", 300, "core/endpoints")
    before = table.writes
    ipc.upsert("10.0.0.5/32", 300, "core/endpoints")
    ipc.upsert("10.0.0.5/32", 7, "policy/cidr")
    ipc.release("10.0.0.9/32", "policy/cidr")  # nothing there
    assert table.writes == before


def test_restored_entries_stay_until_the_agent_started_unless_claimed():
    ipc, table = cache({"10.0.0.5/32": 300, "10.0.0.6/32": 301, "10.9.0.0/16": 16777217})
    assert ipc.restore() == 3
    ipc.upsert("10.0.0.5/32", 300, "core/endpoints")  # claimed again (same value: no write)
    ipc.upsert("10.9.0.0/16", 16777220, "policy/cidr")  # claimed with a new identity
    assert table.identities() == {"10.0.0.5/32": 300, "10.0.0.6/32": 301, "10.9.0.0/16": 16777220}
    assert ipc.winner("10.0.0.6/32")[0] == RESTORED
    ipc.started()
    assert table.identities() == {"10.0.0.5/32": 300, "10.9.0.0/16": 16777220}, "unclaimed: removed"
    assert not any(RESTORED in records for records in ipc.records.values())


def restart(table: FakeMap, ids, waiting=()) -> Ipcache:
    """A new agent's ipcache over the same pinned map and owner-ids file."""
    ipc = Ipcache(table, ids)
    for name, source in (("core/endpoints", Source.LOCAL), ("nodes/remote", Source.KVSTORE),
                         ("policy/cidr", Source.GENERATED)):
        ipc.register(name, source, waits_for_sync=name in waiting)
    ipc.restore()
    return ipc


def test_a_restart_gives_each_entry_back_to_its_owner_and_each_owner_reconciles_alone(tmp_path):
    table, ids = FakeMap(), tmp_path / "ipcache-owners.json"
    before = restart(table, ids)
    before.upsert("10.0.0.5/32", 300, "core/endpoints")
    before.upsert("10.1.0.7/32", 6, "nodes/remote", tunnel_endpoint="192.0.2.7")
    before.upsert("10.1.0.8/32", 7, "nodes/remote", tunnel_endpoint="192.0.2.7")
    before.upsert("10.9.0.0/16", 16777217, "policy/cidr")
    before.upsert("10.0.0.5/32", 16777218, "policy/cidr")  # shadowed: not in the map, not restored
    rows = {r["prefix"]: r["owner"] for r in before.rows()}

    after = restart(table, ids, waiting={"nodes/remote"})
    assert {r["prefix"]: r["owner"] for r in after.rows()} == rows, "owners come back from the map"
    assert after.winner("10.1.0.7/32") == ("nodes/remote", Record(6, "192.0.2.7"))
    after.upsert("10.0.0.5/32", 300, "core/endpoints")
    writes = table.writes
    after.upsert("10.1.0.7/32", 6, "nodes/remote", tunnel_endpoint="192.0.2.7")
    assert table.writes == writes, "writing again what the map holds writes nothing"
    after.started()  # core/endpoints and policy/cidr reconcile; the remote nodes are still read
    assert table.identities() == {"10.0.0.5/32": 300, "10.1.0.7/32": 6, "10.1.0.8/32": 7}
    after.synced("nodes/remote")  # 10.1.0.8 was not written again: released
    assert table.identities() == {"10.0.0.5/32": 300, "10.1.0.7/32": 6}


def test_entries_of_an_owner_that_is_gone_are_removed_when_the_agent_started(tmp_path):
    table, ids = FakeMap(), tmp_path / "ipcache-owners.json"
    first = Ipcache(table, ids)
    first.register("fqdn/names", Source.GENERATED)
    first.upsert("10.3.0.0/24", 16777300, "fqdn/names")
    second = restart(table, ids)  # the fqdn plugin is not loaded any more
    assert second.winner("10.3.0.0/24")[0] == RESTORED
    second.upsert("10.3.0.0/24", 16777301, "policy/cidr")  # any owner outranks a restored record
    assert table.identities() == {"10.3.0.0/24": 16777301}
    second.release("10.3.0.0/24", "policy/cidr")
    assert table.identities() == {"10.3.0.0/24": 16777300}, "until the agent has started"
    second.started()
    assert table.identities() == {}


def test_bad_owner_and_bad_prefix_are_named_and_change_nothing():
    ipc, table = cache()
    with pytest.raises(IpcacheError, match=r"unknown owner 'fqdn/names' \(declared owners: connectivity/host"):
        ipc.upsert("10.0.0.1/32", 5, "fqdn/names")
    with pytest.raises(IpcacheError, match="unknown owner 'restored'"):
        ipc.upsert("10.0.0.1/32", 5, RESTORED)
    with pytest.raises(IpcacheError, match="'10.0.0.1/24' is not a prefix"):
        ipc.upsert("10.0.0.1/24", 5, "policy/cidr")
    with pytest.raises(IpcacheError, match="declared twice"):
        ipc.register("policy/cidr", Source.GENERATED)
    assert table.identities() == {} and ipc.records == {}


OWNERS = ["core/endpoints", "connectivity/host", "nodes/remote", "policy/cidr"]
PREFIXES = ["10.0.0.1/32", "10.0.0.0/24", "fd00::1/128"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(OWNERS), st.sampled_from(PREFIXES), st.integers(1, 9) | st.none()),
                max_size=30))
def test_the_map_always_holds_each_prefixs_winner(operations):
    ipc, table = cache()
    held: dict[tuple[str, str], int] = {}
    for owner, prefix, identity in operations:
        if identity is None:
            ipc.release(prefix, owner)
            held.pop((owner, prefix), None)
        else:
            ipc.upsert(prefix, identity, owner)
            held[(owner, prefix)] = identity
    expected = {}
    for prefix in PREFIXES:  # the highest source, then the first name
        mine = sorted((-ipc.owners[o].source, o, i) for (o, p), i in held.items() if p == prefix)
        if mine:
            expected[prefix] = mine[0][2]
    assert table.identities() == expected

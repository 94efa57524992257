"""The agent's memory with many services (issue 20): the manifests index keeps objects packed,
the load balancer keeps no parsed copies, and the agent's cost per service stays small."""

from __future__ import annotations

import datetime
import gc
import json
import subprocess
import sys
import tracemalloc
from pathlib import Path
from types import SimpleNamespace

import yaml

BENCH = Path(__file__).parent.parent / "bench"
sys.path.insert(0, str(BENCH))
from _services import decoys, write_manifest  # noqa: E402
from helpers import NoMap  # noqa: E402

from pylium.core.state.manifests import Manifests  # noqa: E402

QUIET = SimpleNamespace(error=lambda *a, **k: None, debug=lambda *a, **k: None)


def test_the_manifests_index_keeps_each_object_in_under_half_a_kilobyte(tmp_path):
    docs = decoys(2000, 4)
    write_manifest(tmp_path / "services", docs)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        manifests = Manifests(tmp_path, QUIET)
        manifests.scan()
        gc.collect()
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    per_object = kept / len(docs)
    # as parsed dicts it was ~2,000; packed but not compressed ~650; compressed against the
    # vocabulary alone ~420; ~320 now, of which ~40 the scan's changes() until they are told
    assert per_object < 360, f"{per_object:.0f} bytes per object"
    services = manifests.objects("Service")
    assert len(services) == 2000 and len(manifests.entries("EndpointSlice")) == 2000
    assert services[("bench", "decoy-7")] == docs[14], "an object reads back as it was written"


def test_an_unchanged_object_keeps_its_entry_when_its_file_changes(tmp_path):
    path = tmp_path / "services.yaml"
    a, b = ({"kind": "Service", "metadata": {"name": n}, "spec": {"clusterIP": ip}}
            for n, ip in (("a", "10.96.0.1"), ("b", "10.96.0.2")))
    path.write_text(yaml.safe_dump_all([a, b]))
    manifests = Manifests(tmp_path, QUIET)
    assert manifests.scan()
    first = dict(manifests.entries("Service"))
    b["spec"]["clusterIP"] = "10.96.0.3"
    path.write_text(yaml.safe_dump_all([a, b]) + "\n")
    assert manifests.scan()
    now = manifests.entries("Service")
    assert now[("default", "a")] is first[("default", "a")], "a consumer comparing with `is` skips it"
    assert now[("default", "b")] is not first[("default", "b")]
    assert now[("default", "b")].doc["spec"]["clusterIP"] == "10.96.0.3"
    doc, file = now[("default", "b")]  # an entry still unpacks as (doc, path)
    assert file == path and doc == now[("default", "b")].doc
    path.write_text(yaml.safe_dump_all([a, b]) + "\n\n")
    assert not manifests.scan(), "the same objects again: no change to tell"


def test_a_scan_tells_what_it_changed_with_the_entry_before(tmp_path):
    """Listeners read `changes()` instead of keeping an index of their own: added (None before),
    changed, moved to another file, removed; an object rewritten unchanged is not a change."""
    one, two = tmp_path / "one.yaml", tmp_path / "two.yaml"
    svc = lambda name, ip: {"kind": "Service", "metadata": {"name": name}, "spec": {"clusterIP": ip}}  # noqa: E731
    one.write_text(yaml.safe_dump_all([svc("a", "10.96.0.1"), svc("b", "10.96.0.2")]))
    manifests = Manifests(tmp_path, QUIET)
    assert manifests.scan()
    assert manifests.changes("Service") == {("default", "a"): None, ("default", "b"): None}
    first = dict(manifests.entries("Service"))
    one.write_text(yaml.safe_dump_all([svc("a", "10.96.0.1"), svc("b", "10.96.0.3")]) + "\n")
    assert manifests.scan()
    assert manifests.changes("Service") == {("default", "b"): first[("default", "b")]}, "a is unchanged"
    second = dict(manifests.entries("Service"))
    one.write_text(yaml.safe_dump_all([svc("a", "10.96.0.1")]))
    two.write_text(yaml.safe_dump_all([svc("b", "10.96.0.3"), svc("c", "10.96.0.4")]))
    assert manifests.scan()
    changes = manifests.changes("Service")
    assert changes == {("default", "b"): second[("default", "b")], ("default", "c"): None}
    assert changes[("default", "b")] is second[("default", "b")], "the entry before, itself"
    assert manifests.entries("Service")[("default", "b")].path == two
    one.unlink()
    assert manifests.scan()
    assert manifests.changes("Service") == {("default", "a"): first[("default", "a")]}
    assert ("default", "a") not in manifests.entries("Service")
    assert not manifests.scan() and manifests.changes("Service") == {}


def test_a_yaml_value_msgpack_cannot_carry_reads_back_exactly(tmp_path):
    """YAML gives sets, dates and integer keys: such an object is kept as it was parsed."""
    (tmp_path / "odd.yaml").write_text(
        "kind: ConfigMap\nmetadata: {name: odd}\ndata:\n  when: 2001-12-14\n  tags: !!set {a, b}\n  ports: {80: web}\n")
    manifests = Manifests(tmp_path, QUIET)
    manifests.scan()
    data = manifests.objects("ConfigMap")[("default", "odd")]["data"]
    assert data == {"when": datetime.date(2001, 12, 14), "tags": {"a", "b"}, "ports": {80: "web"}}
    assert isinstance(data["tags"], set)


def test_the_load_balancer_keeps_under_half_a_kilobyte_per_service(tmp_path):
    """Its catalog and the writer's tables: frontends in sorted tables (no dict, no int object
    per key), each packed and compressed, one slice key kept without a tuple, no copy of the
    manifests' entries (~1 KiB per service before; ~0.25 measured now)."""
    from pylium.core.state.manifests import PluginManifests
    from pylium.plugins.lb.plugin import LbPlugin
    from pylium.plugins.lb.writer import Writer

    write_manifest(tmp_path / "services", decoys(2000, 4))
    manifests = Manifests(tmp_path, QUIET)
    manifests.scan()
    log = SimpleNamespace(info=lambda *a, **k: None, error=lambda *a, **k: None)
    lb = LbPlugin()
    lb.ctx = SimpleNamespace(settings=SimpleNamespace(nodePort=SimpleNamespace(bounds=lambda: (30000, 32767)),
                                                      kubeProxyReplacement=True),
                             node_name="n", log=log, bus=SimpleNamespace(publish=lambda e: None, wants=lambda t: False),
                             datapath=SimpleNamespace(bypass=lambda *a: None, set_pressure=lambda *a: None))
    lb.writer = Writer({name: NoMap() for name in ("lb4_services", "lb4_backends", "lb4_reverse_nat", "lb4_maglev")},
                       1 << 16, "random", 16381, bytes(12))
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        lb._apply(PluginManifests(manifests), None)
        gc.collect()
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(lb.services_written()) == 2000 and len(lb.writer.frontends) == 2000
    assert len(lb.writer.backend_ids) == 8000
    assert kept / 2000 < 320, f"{kept / 2000:.0f} bytes per service"
    f = lb.writer.frontend(next(iter(lb.writer.frontends)))
    assert f.service[0] == "bench" and len(f.backends) == 4, "what is kept reads back"


def test_the_agent_costs_a_few_kilobytes_per_service():
    """A real agent, 2,000 then 6,000 services x 4 backends from the manifests directory: all
    reach the maps, and the resident memory per service stays small: ~10 KiB with parsed
    documents kept, 4.9 KiB here while a change held its parsed objects and Frontends all at
    once (the heap they left fragmented), 3.3 KiB since they wait packed, ~1.8 KiB now (~1.0
    KiB at 10,000-50,000)."""
    r = subprocess.run([sys.executable, str(BENCH / "agent_memory.py"), "--pods", "5", "--services", "2000,6000",
                        "--json"], capture_output=True, text=True, timeout=600)
    assert r.stdout, r.stderr[-3000:]
    report = json.loads(r.stdout)
    assert [row["state"] for row in report["rows"]][2:] == ["5 endpoints, 2,000 services x 4",
                                                             "5 endpoints, 6,000 services x 4"]
    assert report["per_service_kib"] < 3, report

"""The load balancer's pure logic: manifests parsing with field paths, frontends with traffic
policies, maglev tables, and the writer's order and all-or-nothing behaviour (on fake maps)."""

from __future__ import annotations

import ctypes as ct
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import NoMap

from pylium.plugins.lb import maglev
from pylium.plugins.lb.frontends import Backend, Catalog, backend_key, frontend_key, frontends, key_parts
from pylium.plugins.lb.maps import Lb4Backend, Lb4Key, pack_backend
from pylium.plugins.lb.model import ModelError, parse_endpoint_slice, parse_service
from pylium.plugins.lb.writer import BackendIds, MapFull, SortedTable, Writer

RANGE = (30000, 32767)
SEED = maglev.seed_bytes(maglev.DEFAULT_SEED)


def svc(**spec) -> dict:
    return {"kind": "Service", "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 80, "targetPort": 8080}], **spec}}


def eps(endpoints, ports=({"port": 8080},)) -> dict:
    return {"kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {"name": "web-1", "namespace": "shop", "labels": {"kubernetes.io/service-name": "web"}},
            "ports": list(ports), "endpoints": endpoints}


@pytest.mark.parametrize("spec, path", [
    ({"ports": [{"port": 0}]}, "spec.ports[0].port"),
    ({"ports": [{"port": 80, "targetPort": 65536}]}, "spec.ports[0].targetPort"),
    ({"ports": [{"port": 80, "protocol": "ICMP"}]}, "spec.ports[0].protocol"),
    ({"ports": [{"name": "a", "port": 80}, {"name": "b", "port": 80}]}, "spec.ports[1].port"),
    ({"ports": [{"name": "a", "port": 80}, {"name": "a", "port": 81}]}, "spec.ports[1].name"),
    ({"ports": [{"port": 80}, {"port": 81}]}, "spec.ports[0].name"),
    ({"type": "NodePort", "ports": [{"port": 80, "nodePort": 80}]}, "spec.ports[0].nodePort"),
    ({"ports": [{"port": 80, "nodePort": 30000}]}, "spec.ports[0].nodePort"),
    ({"clusterIP": "10.96.0.300"}, "spec.clusterIP"),
    ({"externalIPs": ["nope"]}, "spec.externalIPs[0]"),
    ({"type": "Weird"}, "spec.type"),
    ({"sessionAffinity": "Cookie"}, "spec.sessionAffinity"),
    ({"sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 0}}},
     "spec.sessionAffinityConfig.clientIP.timeoutSeconds"),
    ({"externalTrafficPolicy": "Nearby"}, "spec.externalTrafficPolicy"),
])
def test_bad_services_name_the_field(spec, path):
    with pytest.raises(ModelError) as e:
        parse_service(svc(**spec), RANGE)
    assert e.value.path == path


@pytest.mark.parametrize("doc, path", [
    (eps([{"addresses": []}]), "endpoints[0].addresses"),
    (eps([{"addresses": ["fd00::1"]}]), "endpoints[0].addresses[0]"),
    (eps([{"addresses": ["10.0.0.1"], "conditions": {"ready": "yes"}}]), "endpoints[0].conditions.ready"),
    (eps([], ports=({"port": 99999},)), "ports[0].port"),
    ({**eps([]), "addressType": "IPX"}, "addressType"),
    ({**eps([]), "metadata": {"name": "x"}}, "metadata.labels[kubernetes.io/service-name]"),
])
def test_bad_endpoint_slices_name_the_field(doc, path):
    with pytest.raises(ModelError) as e:
        parse_endpoint_slice(doc)
    assert e.value.path == path


def test_service_defaults_and_conditions_give_backend_states():
    s = parse_service(svc(sessionAffinity="ClientIP"), RANGE)
    assert s.key == ("shop", "web") and s.affinity_timeout == 10800 and s.ports[0].protocol == "TCP"
    sl = parse_endpoint_slice(eps([
        {"addresses": ["10.0.0.1"]},
        {"addresses": ["10.0.0.2"], "conditions": {"ready": False, "serving": True, "terminating": True}},
        {"addresses": ["10.0.0.3"], "conditions": {"ready": False, "serving": False, "terminating": True}},
        {"addresses": ["10.0.0.4"], "conditions": {"ready": False}},
    ]))
    assert [e.state for e in sl.endpoints] == ["active", "terminating", "terminating-not-serving", "quarantined"]
    assert parse_endpoint_slice({**eps([{"addresses": ["fd00::1"]}]), "addressType": "IPv6"}) is None


def test_named_target_ports_and_frontends_of_each_type():
    s = parse_service(svc(type="LoadBalancer", externalIPs=["192.0.2.1"],
                          ports=[{"name": "http", "port": 80, "targetPort": "web", "nodePort": 30080}],
                          status=None) | {"status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.9"}]}}}, RANGE)
    sl = parse_endpoint_slice(eps([{"addresses": ["10.0.0.1"]}], ports=({"name": "web", "port": 8080},)))
    fs = frontends(s, [sl], lambda b: True, set(), RANGE)
    assert [(f.type, f.label()) for f in fs] == [
        ("ClusterIP", "10.96.0.10:80/TCP"), ("NodePort", "0.0.0.0:30080/TCP"),
        ("ExternalIPs", "192.0.2.1:80/TCP"), ("LoadBalancer", "192.0.2.9:80/TCP")]
    assert all(f.backends == (Backend("10.0.0.1", 8080, "TCP"),) for f in fs)
    with pytest.raises(ModelError) as e:  # no slice port of that name
        other = parse_endpoint_slice(eps([{"addresses": ["10.0.0.1"]}], ports=({"name": "api", "port": 9000},)))
        frontends(s, [other], lambda b: True, set(), RANGE)
    assert e.value.path == "spec.ports[0].targetPort"


def test_traffic_policies_split_internal_and_external_backends():
    s = parse_service(svc(type="NodePort", externalTrafficPolicy="Local", internalTrafficPolicy="Cluster"), RANGE)
    sl = parse_endpoint_slice(eps([{"addresses": ["10.0.0.1"], "nodeName": "me"},
                                   {"addresses": ["10.0.0.2"], "nodeName": "other"}]))
    cluster_ip, node_port = frontends(s, [sl], lambda b: b.node == "me", set(), RANGE)
    assert cluster_ip.external_backends is None and len(cluster_ip.backends) == 2
    assert [b.address for b in node_port.external_backends] == ["10.0.0.1"] and len(node_port.backends) == 2
    assert RANGE[0] <= node_port.port <= RANGE[1]  # allocated: the same on every node
    assert frontends(s, [sl], lambda b: True, set(), RANGE)[1].port == node_port.port
    assert frontends(s, [sl], lambda b: True, {node_port.port}, RANGE)[1].port != node_port.port


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 60), st.sampled_from([251, 509, 1021]))
def test_maglev_gives_every_backend_its_share(n, m):
    names = [f"10.0.{i // 250}.{i % 250}:80" for i in range(n)]
    table = maglev.table(names, m, SEED)
    counts = [table.count(i) for i in range(n)]
    assert len(table) == m and max(counts) - min(counts) <= 1 + (n > m // 2)
    assert maglev.table(list(reversed(names)), m, SEED) == [n - 1 - i for i in table]  # order does not matter


def test_maglev_removal_moves_little_and_the_seed_matters():
    names = [f"10.0.0.{i}:80" for i in range(10)]
    before = [names[i] for i in maglev.table(names, 16381, SEED)]
    rest = names[:3] + names[4:]
    after = [rest[i] for i in maglev.table(rest, 16381, SEED)]
    moved = sum(a != b for a, b in zip(before, after)) / 16381
    assert 0.09 < moved < 0.12
    assert maglev.table(names, 16381, maglev.seed_bytes("AAAAAAAAAAAAAAAA")) != maglev.table(names, 16381, SEED)
    with pytest.raises(ValueError):
        maglev.seed_bytes("short")


class FakeMap:
    """Records writes in order; put_many unpacks into the same dict."""

    def __init__(self, key_size: int, log: list, name: str):
        self.data, self.key_size, self.log, self.name = {}, key_size, log, name

    def put_many(self, keys: bytes, values: bytes) -> None:
        if not keys:
            return
        size = len(values) // (len(keys) // self.key_size)
        for i in range(len(keys) // self.key_size):
            k = bytes(keys[i * self.key_size:(i + 1) * self.key_size])  # the writer packs into bytearrays
            self.data[k] = bytes(values[i * size:(i + 1) * size])
            self.log.append(("put", self.name, k))

    def put(self, key, value) -> None:
        self.data[bytes(key)] = bytes(value)
        self.log.append(("put", self.name, bytes(key)))

    def delete(self, key) -> bool:
        self.log.append(("delete", self.name, bytes(key)))
        return self.data.pop(bytes(key), None) is not None

    def items(self):
        return iter(())

    def keys(self):
        return iter(())


def fake_writer(map_max: int = 1000, algorithm: str = "random"):
    log: list = []
    maps = {n: FakeMap(size, log, n) for n, size in (("lb4_services", 12), ("lb4_backends", 4),
                                                     ("lb4_reverse_nat", 4), ("lb4_maglev", 4))}
    return Writer(maps, map_max, algorithm, 251, SEED), maps, log


def web(addresses, state="active"):
    s = parse_service(svc(), RANGE)
    sl = parse_endpoint_slice(eps([{"addresses": [a]} for a in addresses]))
    return {f.key: f for f in frontends(s, [sl], lambda b: True, set(), RANGE)}


def test_writer_orders_backends_slots_then_slot0_and_removes_in_reverse():
    writer, maps, log = fake_writer()
    writer.sync(web(["10.0.0.1", "10.0.0.2"]))
    names = [(op, m, Lb4Key.from_buffer_copy(k).slot if m == "lb4_services" else None) for op, m, k in log]
    assert names == [("put", "lb4_backends", None)] * 2 + [("put", "lb4_services", 1), ("put", "lb4_services", 2),
                                                             ("put", "lb4_services", 0), ("put", "lb4_reverse_nat", None)]
    log.clear()
    writer.sync(web(["10.0.0.1"]))  # one backend fewer: slot 0 first, then the surplus slot and backend
    ops = [(op, m) for op, m, _ in log]
    assert ops.index(("delete", "lb4_services")) > ops.index(("put", "lb4_services"))
    assert ops[-1] == ("delete", "lb4_backends") and len(maps["lb4_backends"].data) == 1
    writer.sync({})
    assert not maps["lb4_services"].data and not maps["lb4_backends"].data and not maps["lb4_reverse_nat"].data


def test_writer_refuses_what_does_not_fit_and_writes_nothing():
    writer, maps, log = fake_writer(map_max=4)
    writer.sync(web(["10.0.0.1", "10.0.0.2"]))
    before = {n: dict(m.data) for n, m in maps.items()}
    log.clear()
    with pytest.raises(MapFull, match="more than bpf.lbMapMax"):
        writer.sync(web([f"10.0.0.{i}" for i in range(1, 6)]))
    assert log == [] and {n: m.data for n, m in maps.items()} == before


def test_writer_maglev_tables_cover_active_backends_only():
    writer, maps, _ = fake_writer(algorithm="maglev")
    s = parse_service(svc(), RANGE)
    sl = parse_endpoint_slice(eps([{"addresses": ["10.0.0.1"]}, {"addresses": ["10.0.0.2"]},
                                   {"addresses": ["10.0.0.3"], "conditions": {"ready": False, "terminating": True}}]))
    writer.sync({f.key: f for f in frontends(s, [sl], lambda b: True, set(), RANGE)})
    [table] = maps["lb4_maglev"].data.values()
    ids = {int.from_bytes(table[i:i + 4], "little") for i in range(0, len(table), 4)}
    assert ids == {writer.backend_ids[backend_key("10.0.0.1", 8080, "TCP")],
                   writer.backend_ids[backend_key("10.0.0.2", 8080, "TCP")]}


def test_writer_counts_backends_shared_by_frontends_and_drops_them_with_the_last():
    """Backend use is counted per backend id: one backend behind two services stays until
    neither uses it; a state change is written once."""
    writer, maps, _ = fake_writer()
    a = web(["10.0.0.1", "10.0.0.2"])
    other = parse_service(svc(clusterIP="10.96.0.20"), RANGE)
    b = {f.key: f for f in frontends(other, [parse_endpoint_slice(eps([{"addresses": ["10.0.0.2"]}]))],
                                     lambda _: True, set(), RANGE)}
    writer.sync({**a, **b})
    shared = backend_key("10.0.0.2", 8080, "TCP")
    assert writer.refs_of(shared) == 2 and writer.live_backends == 2 and len(maps["lb4_backends"].data) == 2
    writer.sync(b)
    assert writer.refs_of(shared) == 1 and writer.refs_of(backend_key("10.0.0.1", 8080, "TCP")) == 0
    assert writer.live_backends == 1 and len(maps["lb4_backends"].data) == 1
    writer.sync({})
    assert writer.live_backends == 0 and not maps["lb4_backends"].data and not writer.backend_ids


def test_writer_restore_drops_a_backend_id_it_would_never_give():
    writer, maps, log = fake_writer(map_max=1000)
    foreign = Lb4Backend.from_buffer_copy(pack_backend("10.0.0.9", 80, 6, 0))
    maps["lb4_backends"].items = lambda: iter([(ct.c_uint32(4_000_000_000), foreign)])
    writer.restore()  # (its tables are sized by the ids: a huge one would cost memory)
    assert not writer.backend_ids and log == [("delete", "lb4_backends", bytes(ct.c_uint32(4_000_000_000)))]


def test_writer_keeps_what_it_wrote_packed_and_reads_it_back_the_same():
    """Written frontends are kept as bytes (~0.2 KiB, not ~1 KiB of objects each): what the
    API lists and what a change compares with must read back exactly, local-only external
    backends and affinity included."""
    writer, _, _ = fake_writer()
    s = parse_service(svc(type="NodePort", externalTrafficPolicy="Local", sessionAffinity="ClientIP"), RANGE)
    sl = parse_endpoint_slice(eps([{"addresses": ["10.0.0.1"], "nodeName": "here"},
                                   {"addresses": ["10.0.0.2"], "nodeName": "there",
                                    "conditions": {"ready": False, "terminating": True}}]))
    fs = {f.key: f for f in frontends(s, [sl], lambda b: b.node == "here", set(), RANGE)}
    assert any(f.external_backends is not None for f in fs.values()) and len(fs) == 2
    writer.sync(fs)
    for key, f in fs.items():
        assert isinstance(writer.frontends[key], bytes) and len(writer.frontends[key]) < 120
        assert writer.frontend(key) == f and writer.frontend(key).affinity_timeout == 10800
    assert writer.apply(dict(fs)) == [], "the same frontends again: nothing to write"


def test_writer_deletes_a_maglev_table_only_where_one_was_written():
    """Not one delete per frontend when nothing uses Maglev (10,000 syscalls at a start); a
    table an earlier run left (another algorithm then) still goes."""
    writer, maps, log = fake_writer()
    maps["lb4_maglev"].keys = lambda: iter([ct.c_uint32(1)])
    writer.restore()
    writer.sync(web(["10.0.0.1"]))
    assert [e for e in log if e[1] == "lb4_maglev"] == [("delete", "lb4_maglev", bytes(ct.c_uint32(1)))]
    log.clear()
    writer.sync(web(["10.0.0.2"]))
    writer.sync({})
    assert not [e for e in log if e[1] == "lb4_maglev"]


KEYS = st.integers(0, 2**56 - 1)


@pytest.mark.parametrize("table_type", [BackendIds, SortedTable])
@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.dictionaries(KEYS, st.integers(1, 2**32 - 1), max_size=150),
                          st.lists(KEYS, max_size=150)), max_size=8))
def test_the_writers_sorted_tables_behave_as_dicts(table_type, steps):
    """The backend ids and the frontends kept: batches small (insert per key) and large (one
    merge) alike."""
    table, model = table_type(), {}
    for added, dropped in steps:
        table.update(added)
        model.update(added)
        dropped = dropped + list(model)[: len(dropped)]  # present keys too
        assert sorted(table.remove(dropped)) == sorted(model.pop(k) for k in set(dropped) if k in model)
        assert list(table) == sorted(model) and len(table) == len(model)
        assert all(table[k] == v and k in table for k, v in model.items())
        assert table.get(2**56) is None


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.sampled_from(["s1", "s2", "s3"]), st.integers(0, 3)), max_size=30))
def test_the_catalog_keeps_each_services_slices(steps):
    """One slice is kept as its key, several as a sorted tuple: slice_keys() gives the same
    either way, and a dropped slice names its service (from its label)."""
    catalog, model, entries = Catalog(), {}, {}
    for add, service, n in steps:
        key = ("shop", f"{service}-{n}")
        if add and key not in entries:
            doc = {"metadata": {"name": key[1], "namespace": "shop", "labels": {"kubernetes.io/service-name": service}}}
            entries[key] = SimpleNamespace(doc=doc)
            catalog.put_slice(key, None, ("shop", service))
            model.setdefault(("shop", service), set()).add(key)
        elif not add and key in entries:
            assert catalog.drop_slice(key, entries.pop(key)) == ("shop", service)
            model[("shop", service)].discard(key)
        for svc_key in [("shop", s) for s in ("s1", "s2", "s3")]:
            assert catalog.slice_keys(svc_key) == tuple(sorted(model.get(svc_key, ())))
    assert set(catalog.slices_of) == {k for k, keys in model.items() if keys}


@given(st.ip_addresses(v=4).map(str), st.integers(1, 65535), st.sampled_from(["TCP", "UDP", "SCTP"]))
def test_a_frontend_key_gives_back_its_parts(address, port, protocol):
    address = "" if address == "0.0.0.0" else address
    assert key_parts(frontend_key(address, port, protocol)) == (address, port, protocol)


class LbOnManifests:
    """The lb plugin over a real manifests directory and fake maps: each step writes files (a
    document, a list of them, or None to remove the file), scans and applies, as the agent does."""

    def __init__(self, tmp_path):
        from pylium.core.state.manifests import Manifests, PluginManifests
        from pylium.plugins.lb.plugin import LbPlugin

        self.dir, self.errors = tmp_path, []
        self.lb = LbPlugin()
        self.lb.ctx = SimpleNamespace(
            settings=SimpleNamespace(nodePort=SimpleNamespace(bounds=lambda: RANGE), kubeProxyReplacement=True),
            node_name="n", log=SimpleNamespace(info=lambda *a, **k: None, error=lambda *a, **k: self.errors.append(k)),
            bus=SimpleNamespace(publish=lambda e: None, wants=lambda t: False),
            datapath=SimpleNamespace(bypass=lambda *a: None, set_pressure=lambda *a: None))
        self.lb.writer = Writer({name: NoMap() for name in ("lb4_services", "lb4_backends", "lb4_reverse_nat",
                                                            "lb4_maglev")}, 1 << 16, "random", 16381, SEED)
        self.manifests = Manifests(tmp_path, SimpleNamespace(error=lambda *a, **k: None, debug=lambda *a, **k: None))
        self.view = PluginManifests(self.manifests)

    def step(self, **files) -> None:
        import json

        for name, doc in files.items():
            path = self.dir / f"{name}.json"
            if doc is None:
                path.unlink()
            else:
                path.write_text(json.dumps(doc))
        assert self.manifests.scan()
        self.lb._apply(self.view, None)


def test_a_bad_version_leaves_the_last_good_one_in_force_until_fixed_or_removed(tmp_path):
    """The plugin reads what each manifests scan changed (`changes()`): a bad Service or
    EndpointSlice is reported once and its last good version stays in force through further
    bad versions; a good one replaces it; removing the file while bad removes what was in force."""
    lab = LbOnManifests(tmp_path)
    lb, errors = lab.lb, lab.errors
    key = frontend_key("10.96.0.10", 80, "TCP")

    def step(**files):
        lab.step(**files)
        f = lb.writer.frontend(key)
        return f and sorted(b.address for b in f.backends)

    good = [{"addresses": [f"10.0.0.{i}"]} for i in (1, 2)]
    assert step(svc=svc(), slice=eps(good)) == ["10.0.0.1", "10.0.0.2"]
    assert step(slice=eps([{"addresses": ["10.0.0.999"]}])) == ["10.0.0.1", "10.0.0.2"]
    assert len(errors) == 1 and errors[0]["field"] == "endpoints[0].addresses[0]" and len(lb.problems) == 1
    assert step(slice=eps([{"addresses": ["nope"]}])) == ["10.0.0.1", "10.0.0.2"], "still the last good one"
    assert step(svc=svc(type="ClusterIP")) == ["10.0.0.1", "10.0.0.2"], "computed again from the good slice"
    assert step(slice=eps(good + [{"addresses": ["10.0.0.3"]}])) == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    assert not lb.problems
    step(slice=eps([{"addresses": ["10.0.0.999"]}]))
    assert step(slice=None) == [] and not lb.problems, "the slice in force goes with its file"
    assert step(svc=svc(ports=[{"port": 70000}])) == [] and lb.writer.frontend(key) is not None
    assert lb.problems
    assert step(svc=None) is None and not lb.problems and not lb.owners and not lb.catalog.slices_of


def test_services_computed_again_in_one_change_keep_their_node_ports(tmp_path):
    """A NodePort the service did not name is derived from its name: computed again, each of
    several services changed at once finds its own port free, not taken by its old frontend."""
    def services(target):
        return [{"kind": "Service", "metadata": {"name": f"np{i}", "namespace": "shop"},
                 "spec": {"type": "NodePort", "clusterIP": f"10.96.1.{i}",
                          "ports": [{"port": 80, "targetPort": target}]}}
                for i in range(1, 5)]

    lab = LbOnManifests(tmp_path)

    def node_ports():
        return {lab.lb.writer.frontend(k).service: key_parts(k)[1] for k in lab.lb.writer.frontends if not k >> 24}

    lab.step(services=services(8080))
    before = node_ports()
    assert len(before) == 4 and len(set(before.values())) == 4
    lab.step(services=services(8081))
    assert node_ports() == before
    assert {lab.lb.writer.frontend(k).backends for k in lab.lb.writer.frontends} == {()}

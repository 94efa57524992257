"""Flow decoding's fast path: a record of a known shape (connection direction, observation
point) must decode to exactly what a full decode gives, and encode to the same bus bytes."""

from __future__ import annotations

import struct

from hypothesis import given, settings, strategies as st

from pylium.core.api_for_plugins import EVENT_HEADER, consts as m, events
from pylium.plugins.observability.decode import Decoder
from pylium.plugins.observability.flow import Endpoint, Policy

ENDPOINTS = {7: Endpoint(ID=7, identity=1000, namespace="default", labels=("k8s:app=a",), pod_name="a")}


def decoders() -> tuple[Decoder, Decoder]:
    """Two decoders that agree on everything (clock, uuid prefix, endpoints, rule names)."""
    pair = []
    for _ in range(2):
        d = Decoder("node-1", lambda ip: 2 if ip.startswith("10.9.") else 0, {0: "bpf/lxc.c"})
        d.endpoint_by_id.update(ENDPOINTS)
        d.endpoint_by_ip["10.0.0.7"] = ENDPOINTS[7]
        d.rules = {3: Policy(name="allow-a", namespace="default")}
        d.ifnames[5] = "lxc-a"
        pair.append(d)
    pair[1].clock, pair[1]._uuid_prefix = pair[0].clock, pair[0]._uuid_prefix
    return pair[0], pair[1]


# A connection: what stays the same across its records.
connections = st.fixed_dictionaries({
    "mtype": st.sampled_from([m.MSG_TRACE, m.MSG_POLICY_VERDICT, m.MSG_DROP]),
    "subtype": st.sampled_from([0, 1, 3, 133]),
    "direction": st.integers(0, 2), "src_ep": st.sampled_from([0, 7]), "dst_ep": st.sampled_from([0, 7, 9]),
    "ifindex": st.sampled_from([0, 5]),
    "src": st.sampled_from([b"\x0a\x00\x00\x07", b"\x0a\x09\x00\x01", b"\x0a\x00\x00\x08"]),
    "dst": st.sampled_from([b"\x0a\x00\x00\x07", b"\x0a\x09\x00\x02"]),
    "proto": st.sampled_from([1, 6, 17, 47]), "options": st.booleans(), "sport": st.sampled_from([80, 40000]),
    "ethertype": st.sampled_from([b"\x08\x00", b"\x08\x00", b"\x08\x06"]),
})
# A record of a connection: what may differ from packet to packet (also what the shape covers:
# records that differ in one such field only must not share a shape).
records = st.fixed_dictionaries({
    "src_id": st.sampled_from([0, 1000]), "dst_id": st.sampled_from([0, 2]),
    "rules": st.sampled_from([(0, 0), (3, 0), (3, 4)]),
    "ts": st.integers(0, 2**40), "hash": st.integers(0, 2**32 - 1), "reason": st.integers(0, 3),
    "flags": st.sampled_from([0, 1, 3, 5, 9]), "ident": st.integers(0, 65535), "ttl": st.sampled_from([63, 64]),
    "frag": st.sampled_from([0, 0x4000, 0x2000, 0x0010]), "tcp_flags": st.sampled_from([0x02, 0x12, 0x10, 0x18, 0x11]),
    "seq": st.integers(0, 2**32 - 1), "payload": st.binary(max_size=20), "icmp": st.sampled_from([b"\x08\x00", b"\x00\x00", b"\x03\x01"]),
    "cut": st.integers(0, 70),
})


def record(c: dict, r: dict) -> bytes:
    options = b"\x01\x01\x01\x00" if c["options"] else b""
    if c["proto"] == 6:
        l4 = struct.pack("!HHIIBBHHH", c["sport"], 8080, r["seq"], 0, 0x50, r["tcp_flags"], 512, 0, 0)
    elif c["proto"] == 17:
        l4 = struct.pack("!HHHH", c["sport"], 53, 8 + len(r["payload"]), r["seq"] & 0xFFFF)
    elif c["proto"] == 1:
        l4 = r["icmp"] + struct.pack("!HHH", r["seq"] & 0xFFFF, 1, r["seq"] >> 16)
    else:
        l4 = b"\x00" * 8
    ip = struct.pack("!BBHHHBBH4s4s", 0x45 + len(options) // 4, 0, 20 + len(options) + len(l4), r["ident"],
                     r["frag"], r["ttl"], c["proto"], r["seq"] & 0xFFFF, c["src"], c["dst"]) + options
    packet = b"\x02\x00\x00\x00\x00\x01\x02\x00\x00\x00\x00\x02" + c["ethertype"] + ip + l4 + r["payload"]
    cap = max(14, len(packet) - r["cut"]) if r["cut"] > 50 else len(packet)
    head = EVENT_HEADER.pack(r["ts"], c["mtype"], c["subtype"], c["direction"], r["reason"], c["src_ep"],
                             c["dst_ep"], r["flags"], 42, c["ifindex"], r["hash"], r["src_id"], r["dst_id"], len(packet),
                             cap, 0, *r["rules"])
    return head + packet[:cap]




@st.composite
def packets_of_a_connection(draw) -> list[bytes]:
    """A connection's first record, then records that each differ from it in one field."""
    c, first = draw(connections), draw(records)
    changes = draw(st.lists(st.tuples(st.sampled_from(sorted(first)), records), max_size=8))
    return [record(c, first)] + [record(c, {**first, field: other[field]}) for field, other in changes]


@settings(max_examples=400, deadline=None)
@given(st.lists(packets_of_a_connection(), min_size=1, max_size=3))
def test_a_record_of_a_known_shape_decodes_as_a_full_decode_would(conns):
    fast, full = decoders()
    raws = [raw for rs in conns for raw in rs]
    for raw in raws + raws:  # the second pass: every shape known
        flow, shape = fast.decode_record(raw)
        assert flow == full.decode(raw)
        if shape is not None:
            assert shape.payload(flow) == events.encode(flow)


def test_invalidate_makes_a_changed_endpoint_show_in_the_next_flow():
    fast, _ = decoders()
    c = {"mtype": m.MSG_TRACE, "subtype": 0, "direction": 1, "src_ep": 7, "dst_ep": 0, "ifindex": 5, "src": b"\x0a\x00\x00\x07", "dst": b"\x0a\x09\x00\x02", "proto": 17, "options": False,
         "sport": 40000, "ethertype": b"\x08\x00"}
    r = {"src_id": 0, "dst_id": 0, "rules": (0, 0), "ts": 1, "hash": 0, "reason": 0, "flags": 0, "ident": 0, "ttl": 64, "frag": 0, "tcp_flags": 0, "seq": 0,
         "payload": b"x", "icmp": b"", "cut": 0}
    first, shape = fast.decode_record(record(c, r))
    assert shape is not None and first.source.labels == ("k8s:app=a",)
    assert fast.decode_record(record(c, {**r, "ts": 2}))[1] is shape  # known shape
    relabelled = Endpoint(ID=7, identity=1001, namespace="default", labels=("k8s:app=b",), pod_name="a")
    fast.endpoint_by_id[7] = relabelled
    fast.invalidate()
    later, _ = fast.decode_record(record(c, {**r, "ts": 3}))
    assert later.source == relabelled and later.time != first.time and later.uuid != first.uuid
    # what the header says (here the rule that denied) is also decoded afresh
    c["proto"] = 6  # a SYN: no shape, only the header's kind is reused
    denied = {**r, "rules": (3, 0), "tcp_flags": 0x02}
    assert fast.decode_record(record(c, denied))[0].ingress_denied_by == (Policy(name="allow-a", namespace="default"),)
    fast.rules = {3: Policy(name="renamed", namespace="default")}
    fast.invalidate()
    assert fast.decode_record(record(c, denied))[0].ingress_denied_by == (Policy(name="renamed", namespace="default"),)

"""The datapath programs one packet at a time (BPF_PROG_TEST_RUN), table-driven: input packet
and context in, verdict, packet and skb->cb out. Compiled once for the session, with private
pins, attached nowhere."""

from __future__ import annotations

import ctypes as ct
import json
import re
import socket
import subprocess
import time
import struct
import uuid
from pathlib import Path

import anyio
import pytest
import structlog

from pylium.testing.lab import BPF_TEST_ROOT, remove_bpf_root, require_datapath, skip_or_fail
from pylium.testing.packets import SkBuff, arp_request, checksum, ether, icmp_echo, ipv4, ipv6, mac, tcp, udp

from pylium.core.datapath import libbpf
from pylium.core.datapath.compiler import BPF_DIR
from pylium.core.datapath import consts as monitor
from pylium.core.datapath.consts import Cb, CbFlag, ReservedIdentity
from pylium.core.datapath.datapath import Datapath, Stage
from pylium.core.datapath.ringbuf import RingReader
from pylium.core.datapath.structs import (CORE_MAPS, EVENT_HEADER, EndpointInfo, EndpointKey, IpcacheInfo, IpcacheKey,
                                     LxcInfo, mac_bytes, metrics_index)
from pylium.plugins import connectivity
from pylium.plugins.connectivity.maps import LOCAL_BLOCKS
from pylium.plugins.observability.plugin import flow_key
from pylium.testing.stage import TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT

CONNECTIVITY = Path(connectivity.__file__).parent
POD_A, POD_B, GATEWAY = "10.9.0.2", "10.9.0.3", "10.9.0.1"
POD_A6, POD_B6 = "fd09::2", "fd09::3"
MAC_A, HOST_A, MAC_B, HOST_B = "02:00:00:00:00:0a", "02:00:00:00:00:a0", "02:00:00:00:00:0b", "02:00:00:00:00:b0"
IFINDEX_A = 1  # the loopback device: a test run needs a device that exists
IFINDEX_B = 4242  # never used as a device: local delivery only records it in skb->cb


@pytest.fixture(scope="module")
def dp():
    reason = require_datapath()
    if reason:
        skip_or_fail(reason)
    root = BPF_TEST_ROOT / f"prog-{uuid.uuid4().hex[:6]}"
    datapath = Datapath(root, "node", structlog.get_logger())
    try:
        datapath.open_maps({"connectivity": [LOCAL_BLOCKS]})
        delivery = str(CONNECTIVITY / "bpf" / "delivery.c")
        stages = [Stage("connectivity", "from-container", 7, delivery, "from_delivery", fast_path=True),
                  Stage("connectivity", "to-container", 7, delivery, "to_delivery", fast_path=True)]
        anyio.run(datapath.compile, stages)
        datapath.install_stages()
        m = datapath.maps
        m["lxc_by_ifindex"].put(ct.c_uint32(IFINDEX_A), LxcInfo(
            ep_id=1, identity=5, ip4=(ct.c_uint8 * 4)(10, 9, 0, 2),
            ip6=(ct.c_uint8 * 16)(*bytes.fromhex("fd09" + "0" * 26 + "02")), mac=mac_bytes(MAC_A),
            host_mac=mac_bytes(HOST_A)))
        for ip in (POD_B, POD_B6):
            m["endpoints"].put(EndpointKey.of(ip), EndpointInfo(ifindex=IFINDEX_B, ep_id=2, mac=mac_bytes(MAC_B),
                                                                host_mac=mac_bytes(HOST_B), identity=300))
        m["ipcache"].put(IpcacheKey.of(GATEWAY), IpcacheInfo(identity=1))
        datapath.plugin_maps["connectivity"]["local_blocks"].put(IpcacheKey.of("10.9.0.0/24"), ct.c_uint32(1))
        yield datapath
    finally:
        datapath.close()
        remove_bpf_root(root)


def run(dp, attach: str, packet: bytes, ifindex: int = IFINDEX_A):
    ctx = SkBuff(ifindex=ifindex, ingress_ifindex=ifindex)
    return libbpf.test_run(dp.dispatch_fds[attach], packet, ctx)


def drops(dp, reason: int, direction: int = 2) -> int:
    return sum(v.count for v in dp.maps["metrics"].get(ct.c_uint32(metrics_index(reason, direction))))


def from_a(dst: str, ttl: int = 64, src: str = POD_A) -> bytes:
    return ether(HOST_A, MAC_A, 0x0800) + ipv4(src, dst, icmp_echo(), ttl=ttl)


def test_local_delivery_rewrites_macs_decrements_ttl_and_redirects(dp):
    ret, out, ctx, _ = run(dp, "from-container", from_a(POD_B))
    assert ret == TC_ACT_REDIRECT
    assert out[0:6] == mac(MAC_B) and out[6:12] == mac(HOST_B)
    ip = out[14:34]
    assert ip[8] == 63 and checksum(ip) == 0, "TTL 63 with a valid header checksum"
    flags = ctx.cb[Cb.FLAGS]
    assert flags & 0xFFF00000 == monitor.PYLIUM_CB_MAGIC and flags & CbFlag.LOCAL
    assert ctx.cb[Cb.ENDPOINTS] == 1 | (2 << 16)  # source endpoint 1, destination endpoint 2
    assert ctx.cb[Cb.DELIVER] == IFINDEX_B and ctx.cb[Cb.SRC_ID] == 5 and ctx.cb[Cb.DST_ID] == 300


def test_ipv6_local_delivery(dp):
    packet = ether(HOST_A, MAC_A, 0x86DD) + ipv6(POD_A6, POD_B6, udp(4000, 53))
    ret, out, ctx, _ = run(dp, "from-container", packet)
    assert ret == TC_ACT_REDIRECT and out[0:6] == mac(MAC_B) and out[14 + 7] == 63


@pytest.mark.parametrize("name, packet, verdict, reason", [
    ("to the outside", from_a("192.0.2.99"), TC_ACT_OK, None),
    ("to the gateway (host identity)", from_a(GATEWAY), TC_ACT_OK, None),
    ("to a free address of the block", from_a("10.9.0.77"), TC_ACT_SHOT, 151),
    ("a spoofed source", from_a(POD_B, src="10.9.0.99"), TC_ACT_SHOT, 132),
    ("TTL 1 to a local pod", from_a(POD_B, ttl=1), TC_ACT_SHOT, 196),
    ("IPv6 neighbour discovery (multicast)", ether(HOST_A, MAC_A, 0x86DD) + ipv6("fe80::1", "ff02::1:ff00:3",
                                                                                 b"\x87\0\0\0", 58), TC_ACT_OK, None),
])
def test_from_container_table(dp, name, packet, verdict, reason):
    before = drops(dp, reason) if reason else 0
    ret, out, _, _ = run(dp, "from-container", packet)
    assert ret == verdict, name
    if verdict == TC_ACT_OK:
        assert out == packet, "passed on unchanged"
    if reason:
        assert drops(dp, reason) == before + 1, f"{name}: drop reason {reason} counted"


def test_a_device_that_is_no_endpoint_passes_untouched(dp):
    other = next((i for i, _ in socket.if_nameindex() if i != IFINDEX_A), None)
    if other is None:
        skip_or_fail("needs a second network device")
    packet = from_a(POD_B)
    ret, out, _, _ = run(dp, "from-container", packet, ifindex=other)
    assert ret == TC_ACT_OK and out == packet


def test_arp_for_the_gateway_is_answered(dp):
    ret, out, _, _ = run(dp, "from-container", arp_request(MAC_A, POD_A, GATEWAY))
    assert ret == TC_ACT_REDIRECT
    assert out[0:6] == mac(MAC_A) and out[6:12] == mac(HOST_A)
    op, sha, sip, tha, tip = struct.unpack("!6xH6s4s6s4s", out[14:42])
    assert op == 2 and sha == mac(HOST_A) and tha == mac(MAC_A)
    assert sip == bytes([10, 9, 0, 1]) and tip == bytes([10, 9, 0, 2])


def test_to_container_hands_the_packet_to_the_pod(dp):
    before = sum(v.count for v in dp.maps["metrics"].get(ct.c_uint32(metrics_index(0, 1))))
    ret, _, ctx, _ = run(dp, "to-container", ether(MAC_A, HOST_A, 0x0800) + ipv4(GATEWAY, POD_A, icmp_echo()))
    assert ret == TC_ACT_OK
    assert ctx.cb[Cb.ENDPOINTS] == 1 << 16 and ctx.cb[Cb.SRC_ID] == ReservedIdentity.HOST  # to endpoint 1
    assert sum(v.count for v in dp.maps["metrics"].get(ct.c_uint32(metrics_index(0, 1)))) == before + 1


def test_a_missed_tail_call_is_a_counted_drop(dp):
    mask = dp.maps["slot_mask"]
    key = ct.c_uint32(0)
    original = mask.get(key).value
    mask.put(key, ct.c_uint32(original | (1 << 3)))  # slot 3 "taken", but no program in it
    try:
        before = drops(dp, 140)
        ret, _, _, _ = run(dp, "from-container", from_a(POD_B))
        assert ret == TC_ACT_SHOT and drops(dp, 140) == before + 1
    finally:
        mask.put(key, ct.c_uint32(original))
    assert run(dp, "from-container", from_a(POD_B))[0] == TC_ACT_REDIRECT


def test_an_empty_slot_falls_through(dp):
    slots = dp.maps["calls_from_container"]
    assert slots.get(ct.c_uint32(3)) is None and slots.get(ct.c_uint32(7)) is not None
    assert run(dp, "from-container", from_a("192.0.2.99"))[0] == TC_ACT_OK


def test_c_structs_match_their_python_mirrors(dp):
    """compile() compares every map the C declares with its ctypes mirror; check it covered them."""
    names = {s.name for s in CORE_MAPS}
    assert {"endpoints", "lxc_by_ifindex", "ipcache", "metrics", "calls_from_container", "slot_mask", "events"} <= names
    assert ct.sizeof(EndpointInfo) == 28 and ct.sizeof(LxcInfo) == 40 and ct.sizeof(IpcacheKey) == 24


def test_every_tail_call_has_a_constant_slot(dp):
    """The JIT makes a tail call with a constant key a direct jump, any other an indirect one
    (a retpoline here: ~20% of the programs' time per packet). Fails when LLVM merges a chain's
    calls into one with the slot in a register again."""
    pins = [dp.pin_dir("core") / f"prog_{fn}" for fn in ("from_container", "to_container")]
    pins += [dp.pin_dir("connectivity") / f"prog_{fn}" for fn in ("from_delivery", "to_delivery")]
    for pin in pins:
        insns = [i["disasm"] for i in json.loads(subprocess.run(
            ["bpftool", "-j", "prog", "dump", "xlated", "pinned", str(pin)], check=True, capture_output=True,
            text=True).stdout)]
        calls = [n for n, insn in enumerate(insns) if insn.startswith("(85) call bpf_tail_call")]
        assert calls or pin.name == "prog_to_delivery", f"{pin.name}: no tail call"
        for n in calls:
            r3 = next(insn for insn in reversed(insns[:n]) if " r3 = " in insn)
            assert re.fullmatch(r"\(b7\) r3 = \d+", r3), f"{pin.name}: tail call slot from {r3!r}"


# ---- the fast path ----------------------------------------------------------------------------

def data_to_b(sport: int, flags: int = 0x18) -> bytes:
    """A TCP segment from A to B (ACK|PSH by default) with a byte of payload."""
    return ether(HOST_A, MAC_A, 0x0800) + ipv4(POD_A, POD_B, tcp(sport, 80, flags) + b"x", proto=6)


def took_fast_path(dp, packet: bytes) -> bool:
    """Run a packet from A; True when the fast path forwarded it (the stages, which mark
    skb->cb, did not run), after checking it left as the stages would have sent it."""
    ret, out, ctx, _ = run(dp, "from-container", packet)
    assert ret == TC_ACT_REDIRECT
    assert out[0:6] == mac(MAC_B) and out[6:12] == mac(HOST_B) and out[22] == 63 and checksum(out[14:34]) == 0
    return ctx.cb[Cb.FLAGS] == 0


def established(dp, sport: int) -> bytes:
    """A connection from A to B whose direction the monitor reported over a millisecond ago,
    so that delivery remembers it: the next packet takes the fast path."""
    assert not took_fast_path(dp, data_to_b(sport))  # first seen: reported, not remembered
    time.sleep(0.01)  # FAST_MIN_AGE_NS on the coarse clock: ticks of 4 ms at HZ=250
    assert not took_fast_path(dp, data_to_b(sport))  # remembered now
    return data_to_b(sport)


def test_an_established_connection_takes_the_fast_path_until_a_map_changes(dp):
    packet = established(dp, 42001)
    assert dp.fast_path.enabled
    before = sum(v.count for v in dp.maps["metrics"].get(ct.c_uint32(metrics_index(0, 2))))
    assert took_fast_path(dp, packet) and took_fast_path(dp, packet)
    assert sum(v.count for v in dp.maps["metrics"].get(ct.c_uint32(metrics_index(0, 2)))) == before + 2
    # any write to a map the stages read makes a new generation: the stages decide again
    generation = dp.fast_path.generation
    dp.maps["endpoints"].put(EndpointKey.of(POD_B), dp.maps["endpoints"].get(EndpointKey.of(POD_B)))
    assert dp.fast_path.generation == generation + 1
    assert not took_fast_path(dp, packet)
    assert took_fast_path(dp, packet)  # remembered again, under the new generation


@pytest.mark.parametrize("flags", [0x02, 0x11, 0x04], ids=["syn", "fin", "rst"])
def test_connection_flags_the_monitor_reports_take_the_stages(dp, flags):
    established(dp, 42100 + flags)
    assert not took_fast_path(dp, data_to_b(42100 + flags, flags))


def test_a_stage_without_the_fast_path_contract_turns_it_off_while_it_runs(dp):
    packet = established(dp, 42002)
    # delivery's program once more, in a free slot, as a stage that does not declare the contract
    foreign = Stage("connectivity", "from-container", 3, "delivery.c", "from_delivery")
    dp.stages.append(foreign)
    try:
        dp.install_stages()
        assert not dp.fast_path.enabled
        assert dp.fast_path_status() == ("Disabled (stage connectivity/from_delivery (from-container slot 3) not "
                                         "declared with fast_path=True)")
        assert not took_fast_path(dp, packet) and not took_fast_path(dp, packet)
        dp.bypass("from-container", 3, True)  # its plugin has nothing for it to do: it does not run
        assert dp.fast_path.enabled and dp.fast_path_status().startswith("Enabled (generation ")
    finally:
        dp.stages.remove(foreign)
        dp.bypass("from-container", 3, False)
        dp.install_stages()
    assert not took_fast_path(dp, packet) and took_fast_path(dp, packet)


def test_cost_of_dispatch_and_delivery(dp):
    ctx = SkBuff(ifindex=IFINDEX_A, ingress_ifindex=IFINDEX_A)
    # repeated runs reuse the packet they changed: measure the path that changes nothing
    ret, _, _, ns = libbpf.test_run(dp.dispatch_fds["from-container"], from_a("192.0.2.99"), ctx, repeat=20000)
    assert ret == TC_ACT_OK
    assert ns < 5000, f"{ns} ns per packet through dispatch and the delivery stage"


# ---- events: what the programs report for the observability plugin ---------------------------
# The fixture compiles with the default monitor settings: aggregation medium, flags syn,fin,rst.

FIELDS = ("ts", "type", "subtype", "dir", "trace_reason", "src_ep", "dst_ep", "flags", "line", "ifindex", "hash",
          "src_identity", "dst_identity", "orig_len", "cap_len", "file", "rule0", "rule1")


@pytest.fixture
def events(dp):
    reader = RingReader(dp.maps["events"].fd)
    reader.drain()

    def read() -> list[dict]:
        out = []
        for raw in reader.drain():
            record = dict(zip(FIELDS, EVENT_HEADER.unpack_from(raw)))
            record["packet"] = raw[EVENT_HEADER.size:EVENT_HEADER.size + record["cap_len"]]
            out.append(record)
        return out

    yield read
    reader.close()


def test_the_ring_reader_returns_every_record_whole_in_order_across_wraps(dp, events):
    """The datapath's own records, twice the ring's size and more: each drain returns exactly
    the records written since the last, none lost, none cut (lengths mod 8: test_ringbuf.py)."""
    ctx = SkBuff(ifindex=IFINDEX_A, ingress_ifindex=IFINDEX_A)
    passed = 0
    for round_ in range(220):
        packet = ether(HOST_A, MAC_A, 0x0800) + ipv4(POD_A, "10.9.0.77", udp(round_, 9, b"x" * (round_ % 97)),
                                                      proto=17)
        assert libbpf.test_run(dp.dispatch_fds["from-container"], packet, ctx, repeat=300)[0] == TC_ACT_SHOT
        records = events()
        assert len(records) == 300 and all(r["packet"] == packet[:monitor.PYLIUM_CAPTURE_LEN] for r in records)
        passed += 300 * (EVENT_HEADER.size + min(len(packet), monitor.PYLIUM_CAPTURE_LEN) + 8)
    assert passed > 2 * monitor.PYLIUM_EVENTS_BYTES
    assert sum(dp.maps["events_lost"].get(ct.c_uint32(0))) == 0


def _source_line(dp, record) -> str:
    source = dp.source_files[record["file"]]
    return (Path(BPF_DIR) / source).read_text().splitlines()[record["line"] - 1]


def test_a_drop_record_names_reason_place_endpoints_and_packet(dp, events):
    packet = from_a("10.9.0.77")
    assert run(dp, "from-container", packet)[0] == TC_ACT_SHOT
    (drop,) = [r for r in events() if r["type"] == monitor.MSG_DROP]
    assert drop["subtype"] == 151 and drop["dir"] == 2 and drop["src_ep"] == 1 and drop["src_identity"] == 5
    assert drop["orig_len"] == len(packet) and drop["packet"] == packet
    assert drop["flags"] == 0  # is_reply of a drop is left to the reader (no lookups on the drop path)
    assert "DROP_UNROUTABLE" in _source_line(dp, drop), "file and line point at the DROP() that dropped it"


def test_traces_are_aggregated_per_connection_at_medium(dp, events):
    def to_b(flags: int) -> bytes:
        return ether(HOST_A, MAC_A, 0x0800) + ipv4(POD_A, POD_B, tcp(41000, 80, flags), proto=6)

    syn, ack, psh_ack, fin_ack = 0x02, 0x10, 0x18, 0x11
    seen = []
    for flags in (syn, ack, ack, ack, psh_ack, psh_ack, fin_ack, fin_ack):
        assert run(dp, "from-container", to_b(flags))[0] == TC_ACT_REDIRECT
        traces = [r for r in events() if r["type"] == monitor.MSG_TRACE]
        assert all(r["subtype"] == 0 and r["dst_ep"] == 2 for r in traces), "only to-endpoint at medium"
        seen.append([monitor.TRACE_REASONS[r["trace_reason"]] for r in traces])
    # reported: the first packet, then a packet that shows a flag of the default
    # monitorAggregationFlags (syn, fin, rst) not seen before: here the first FIN
    assert seen == [["NEW"], [], [], [], [], [], ["ESTABLISHED"], []]


def test_a_closed_connection_leaves_the_monitor_and_its_last_ack_is_not_a_new_one(dp, events):
    """At medium the state of a TCP connection goes when it closes (the second FIN, or a RST):
    under connection churn inserts then reuse freed entries instead of evicting from a full map."""
    def a_to_b(sport: int, flags: int, data: bytes = b"") -> bytes:
        return ether(HOST_A, MAC_A, 0x0800) + ipv4(POD_A, POD_B, tcp(sport, 80, flags) + data, proto=6)

    def b_to_a(sport: int, flags: int, data: bytes = b"") -> bytes:
        return ether(MAC_A, HOST_A, 0x0800) + ipv4(POD_B, POD_A, tcp(80, sport, flags) + data, proto=6)

    def reported(attach: str, packet: bytes) -> list[str]:
        run(dp, attach, packet)
        return [monitor.TRACE_REASONS[r["trace_reason"]] for r in events() if r["type"] == monitor.MSG_TRACE]

    syn, syn_ack, ack, psh_ack, fin_ack, rst = 0x02, 0x12, 0x10, 0x18, 0x11, 0x04
    port = 41100
    key = flow_key(a_to_b(port, syn))[0]
    steps = [("from-container", a_to_b(port, syn)), ("to-container", b_to_a(port, syn_ack)),
             ("from-container", a_to_b(port, psh_ack, b"GET")), ("to-container", b_to_a(port, psh_ack, b"OK")),
             ("from-container", a_to_b(port, fin_ack)), ("to-container", b_to_a(port, fin_ack))]
    seen = [reported(attach, packet) for attach, packet in steps]
    assert seen == [["NEW"], ["REPLY"], [], [], ["ESTABLISHED"], ["REPLY"]], "each direction's FIN is reported"
    assert dp.maps["trace_flows"].get(key) is None, "gone after the second FIN"
    assert reported("from-container", a_to_b(port, ack)) == [], "the last ACK is no new connection"
    assert dp.maps["trace_flows"].get(key) is None
    # a segment with payload of a connection the monitor does not know (started before it) is one
    assert reported("from-container", a_to_b(port, psh_ack, b"more")) == ["NEW"]
    assert dp.maps["trace_flows"].get(key) is not None
    assert reported("to-container", b_to_a(port, rst)) == ["REPLY"], "a RST is reported, then the state goes"
    assert dp.maps["trace_flows"].get(key) is None


def test_a_reply_is_recognised_from_the_opposite_direction(dp, events):
    outside = "192.0.2.50"
    request = ether(HOST_A, MAC_A, 0x0800) + ipv4(POD_A, outside, udp(5353, 53), proto=17)
    reply = ether(MAC_A, HOST_A, 0x0800) + ipv4(outside, POD_A, udp(53, 5353), proto=17)
    run(dp, "from-container", request)
    (out,) = [r for r in events() if r["type"] == monitor.MSG_TRACE]
    assert out["subtype"] == 3 and out["trace_reason"] == 1  # to-stack, new
    run(dp, "to-container", reply)
    (back,) = [r for r in events() if r["type"] == monitor.MSG_TRACE]
    assert back["subtype"] == 0 and back["trace_reason"] == 3  # to-endpoint, reply
    assert back["flags"] == monitor.EVENT_F_REPLY_KNOWN | monitor.EVENT_F_REPLY
    assert back["src_identity"] == 2 and back["dst_ep"] == 1  # world (not in the ipcache) to endpoint 1
    # one entry for both directions, found by the reader's key (drops' is_reply)
    key, direction = flow_key(reply)
    state = dp.maps["trace_flows"].get(key)
    assert state is not None and state.origin != direction and state.last_report[direction] > 0
    assert flow_key(request)[0].sport == key.sport and flow_key(request)[1] != direction


def test_the_reader_finds_the_monitors_entry_of_an_echo_request_and_its_reply(dp, events):
    """flow_key() in the plugin mirrors flow_of() + flow_normalize(): the echo identifier as
    both ports, for requests and replies alike (drops' is_reply depends on it)."""
    outside = "192.0.2.51"
    request = ether(HOST_A, MAC_A, 0x0800) + ipv4(POD_A, outside, icmp_echo(ident=4242))
    reply = ether(MAC_A, HOST_A, 0x0800) + ipv4(outside, POD_A, b"\x00" + icmp_echo(ident=4242)[1:])
    run(dp, "from-container", request)
    events()
    key, direction = flow_key(request)
    state = dp.maps["trace_flows"].get(key)
    assert state is not None and state.origin == direction
    reply_key, reply_direction = flow_key(reply)
    assert bytes(reply_key) == bytes(key) and reply_direction != direction

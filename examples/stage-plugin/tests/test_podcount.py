"""The podcount stage in the kernel, one packet at a time, with pylium.testing's fixtures
(pylium's pytest plugin: loaded wherever pylium is installed). Run as root: `pytest tests`."""

from __future__ import annotations

import ctypes as ct
from pathlib import Path

import pylium_podcount
from pylium.testing.layout import check_layout
from pylium.testing.packets import ether, icmp_echo, ipv4
from pylium.testing.stage import TC_ACT_OK
from pylium_podcount.maps import PodCount, totals
from pylium_podcount.plugin import PodCountPlugin

POD, PEER = "10.9.0.2", "192.0.2.9"
POD_MAC, GATEWAY_MAC = "02:00:00:00:00:0a", "02:00:00:00:00:a0"


def test_the_mirror_matches_the_c_struct():
    header = Path(pylium_podcount.__file__).parent / "bpf" / "podcount_maps.h"
    assert check_layout([header], {"pod_count": PodCount}) == []


def test_a_pods_packets_are_counted_both_ways_and_passed_on(pylium_stage):
    stage = pylium_stage(PodCountPlugin())
    stage.endpoint(ep_id=7, ip=POD, mac=POD_MAC, host_mac=GATEWAY_MAC)
    sent = ether(GATEWAY_MAC, POD_MAC, 0x0800) + ipv4(POD, PEER, icmp_echo())
    for _ in range(3):
        result = stage.run("from-container", sent)
        assert result.verdict == TC_ACT_OK and result.packet == sent, "counted, then on to the host's stack"
    received = ether(POD_MAC, GATEWAY_MAC, 0x0800) + ipv4(PEER, POD, icmp_echo())
    assert stage.run("to-container", received).verdict == TC_ACT_OK
    counts = totals(stage.maps["pod_counts"].get(ct.c_uint32(7)))
    assert counts == {"tx_packets": 3, "tx_bytes": 3 * len(sent), "rx_packets": 1, "rx_bytes": len(received)}


def test_the_slot_comes_from_the_config(pylium_stage):
    stage = pylium_stage(PodCountPlugin(), sets=["podcount.slot=3"])
    assert {(s.attach, s.slot) for s in stage.declared.stages} == {("from-container", 3), ("to-container", 3)}
    stage.endpoint(ep_id=2, ip=POD)
    stage.run("from-container", ether(GATEWAY_MAC, POD_MAC, 0x0800) + ipv4(POD, PEER, icmp_echo()))
    assert totals(stage.maps["pod_counts"].get(ct.c_uint32(2)))["tx_packets"] == 1

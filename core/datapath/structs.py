"""Python mirrors of bpf/include/pylium_structs.h and the core's map declarations
(bpf/include/pylium_maps.h). Tests compile the C and compare sizes with these."""

from __future__ import annotations

import ctypes as ct
import ipaddress
import struct

from pylium.core.datapath import libbpf
from pylium.core.datapath.consts import (ATTACH_FROM_CONTAINER, ATTACH_TO_CONTAINER, FAST_ENTRIES, METRICS_ENTRIES,
                                         PYLIUM_CAPTURE_LEN, PYLIUM_EVENTS_BYTES, PYLIUM_SLOTS, Slot)
from pylium.core.datapath.maps import MapSpec

SLOTS = PYLIUM_SLOTS
ATTACH_POINTS = {"from-container": ATTACH_FROM_CONTAINER, "to-container": ATTACH_TO_CONTAINER}
EVENTS_BYTES = PYLIUM_EVENTS_BYTES


def free_slots(attach: str) -> tuple[int, ...]:
    """The slots of an attach point that no built-in stage is assigned (`Slot`): third-party
    stages go there."""
    taken = {s.index for s in Slot if s.attach == attach}
    return tuple(i for i in range(SLOTS) if i not in taken)


class EndpointKey(ct.Structure):
    _fields_ = [("addr", ct.c_uint8 * 16), ("family", ct.c_uint8), ("pad", ct.c_uint8 * 3)]

    @classmethod
    def of(cls, ip: str) -> EndpointKey:
        addr = ipaddress.ip_address(ip)
        key = cls(family=addr.version)
        ct.memmove(key.addr, addr.packed, len(addr.packed))
        return key

    @property
    def ip(self) -> str:
        raw = bytes(self.addr)
        return str(ipaddress.ip_address(raw[:4] if self.family == 4 else raw))


class EndpointInfo(ct.Structure):
    _fields_ = [("ifindex", ct.c_uint32), ("ep_id", ct.c_uint16), ("flags", ct.c_uint16),
                ("mac", ct.c_uint8 * 6), ("host_mac", ct.c_uint8 * 6), ("identity", ct.c_uint32),
                ("pad", ct.c_uint32)]


class LxcInfo(ct.Structure):
    _fields_ = [("ep_id", ct.c_uint16), ("flags", ct.c_uint16), ("identity", ct.c_uint32),
                ("ip4", ct.c_uint8 * 4), ("ip6", ct.c_uint8 * 16), ("mac", ct.c_uint8 * 6),
                ("host_mac", ct.c_uint8 * 6)]


class IpcacheKey(ct.Structure):
    _fields_ = [("prefixlen", ct.c_uint32), ("family", ct.c_uint8), ("pad", ct.c_uint8 * 3),
                ("addr", ct.c_uint8 * 16)]

    @classmethod
    def of(cls, cidr: str) -> IpcacheKey:
        net = ipaddress.ip_network(cidr, strict=False)
        key = cls(prefixlen=32 + net.prefixlen, family=net.version)
        ct.memmove(key.addr, net.network_address.packed, len(net.network_address.packed))
        return key

    @property
    def cidr(self) -> str:
        raw = bytes(self.addr)
        addr = ipaddress.ip_address(raw[:4] if self.family == 4 else raw)
        return f"{addr}/{self.prefixlen - 32}"


class IpcacheInfo(ct.Structure):
    _fields_ = [("identity", ct.c_uint32), ("tunnel_ip4", ct.c_uint8 * 4), ("encrypt_key", ct.c_uint8),
                ("flags", ct.c_uint8), ("owner", ct.c_uint16)]


def metrics_index(reason: int, direction: int) -> int:
    """METRICS_INDEX in pylium_consts.h (a function-like macro, so written here again): the
    metrics array slot of (reason, direction)."""
    return (reason << 2) | (direction & 3)


class MetricsValue(ct.Structure):
    _fields_ = [("count", ct.c_uint64), ("bytes", ct.c_uint64)]


CAPTURE_LEN = PYLIUM_CAPTURE_LEN


class Event(ct.Structure):
    """One record of the events ring buffer (struct pylium_event)."""

    _fields_ = [("ts", ct.c_uint64), ("type", ct.c_uint8), ("subtype", ct.c_uint8), ("dir", ct.c_uint8),
                ("trace_reason", ct.c_uint8), ("src_ep", ct.c_uint16), ("dst_ep", ct.c_uint16),
                ("flags", ct.c_uint16), ("line", ct.c_uint16), ("ifindex", ct.c_uint32), ("hash", ct.c_uint32),
                ("src_identity", ct.c_uint32), ("dst_identity", ct.c_uint32), ("orig_len", ct.c_uint32),
                ("cap_len", ct.c_uint16), ("file", ct.c_uint8), ("pad", ct.c_uint8), ("rule_ids", ct.c_uint32 * 2),
                ("pad2", ct.c_uint32), ("data", ct.c_uint8 * CAPTURE_LEN)]


# The record's header, for decoding from raw bytes without a ctypes object per record (the hot
# path): ts, type, subtype, dir, trace_reason, src_ep, dst_ep, flags, line, ifindex, hash,
# src_identity, dst_identity, orig_len, cap_len, file, rule_ids[0], rule_ids[1].
EVENT_HEADER = struct.Struct("=QBBBBHHHHIIIIIHBxIIxxxx")
assert EVENT_HEADER.size == Event.data.offset


class FlowKey(ct.Structure):
    """struct flow_key: a connection, lower address (then port) first (the trace_flows map)."""

    _fields_ = [("saddr", ct.c_uint8 * 16), ("daddr", ct.c_uint8 * 16), ("sport", ct.c_uint16),
                ("dport", ct.c_uint16), ("proto", ct.c_uint8), ("family", ct.c_uint8), ("pad", ct.c_uint8 * 2)]


class FlowState(ct.Structure):
    _fields_ = [("last_report", ct.c_uint64 * 2), ("flags_seen", ct.c_uint8 * 2), ("origin", ct.c_uint8),
                ("pad", ct.c_uint8 * 5)]


class FastKey(ct.Structure):
    """struct fast_key: one direction of a local IPv4 connection, by the device it enters by."""

    _fields_ = [("ifindex", ct.c_uint32), ("saddr", ct.c_uint8 * 4), ("daddr", ct.c_uint8 * 4),
                ("sport", ct.c_uint16), ("dport", ct.c_uint16), ("proto", ct.c_uint8), ("pad", ct.c_uint8 * 3)]


class FastEntry(ct.Structure):
    _fields_ = [("expires", ct.c_uint64), ("generation", ct.c_uint32), ("ifindex", ct.c_uint32),
                ("mac", ct.c_uint8 * 6), ("host_mac", ct.c_uint8 * 6), ("pad", ct.c_uint32)]


class FastState(ct.Structure):
    _fields_ = [("generation", ct.c_uint32), ("enabled", ct.c_uint32)]


def mac_bytes(mac: str) -> ct.Array:
    return (ct.c_uint8 * 6)(*bytes.fromhex(mac.replace(":", "")))


def mac_str(raw) -> str:
    return ":".join(f"{b:02x}" for b in bytes(raw))


def core_maps(events_bytes: int = EVENTS_BYTES) -> list[MapSpec]:
    """The core's maps; the events ring buffer's size is configurable (bpf.events.ringBufferSize)."""
    return [
        MapSpec("endpoints", libbpf.MAP_HASH, EndpointKey, EndpointInfo, 65536),
        MapSpec("lxc_by_ifindex", libbpf.MAP_HASH, ct.c_uint32, LxcInfo, 65536),
        MapSpec("ipcache", libbpf.MAP_LPM_TRIE, IpcacheKey, IpcacheInfo, 512000, flags=libbpf.F_NO_PREALLOC),
        MapSpec("metrics", libbpf.MAP_PERCPU_ARRAY, ct.c_uint32, MetricsValue, METRICS_ENTRIES, version=2),
        MapSpec("calls_from_container", libbpf.MAP_PROG_ARRAY, ct.c_uint32, ct.c_uint32, SLOTS),
        MapSpec("calls_to_container", libbpf.MAP_PROG_ARRAY, ct.c_uint32, ct.c_uint32, SLOTS),
        MapSpec("slot_mask", libbpf.MAP_ARRAY, ct.c_uint32, ct.c_uint32, 2),
        MapSpec("trace_flows", libbpf.MAP_LRU_HASH, FlowKey, FlowState, 65536, version=2),
        MapSpec("fast_flows", libbpf.MAP_LRU_HASH, FastKey, FastEntry, FAST_ENTRIES),
        MapSpec("fast_state", libbpf.MAP_ARRAY, ct.c_uint32, FastState, 1, flags=libbpf.F_MMAPABLE),
        MapSpec("events_lost", libbpf.MAP_PERCPU_ARRAY, ct.c_uint32, ct.c_uint64, 1),
        MapSpec("events_unsignalled", libbpf.MAP_PERCPU_ARRAY, ct.c_uint32, ct.c_uint32, 1),
        MapSpec("events", libbpf.MAP_RINGBUF, None, None, events_bytes, version=2),
    ]


CORE_MAPS = core_maps()

"""Python mirrors of bpf/include/pylium_structs.h and the core's map declarations
(bpf/include/pylium_maps.h). Tests compile the C and compare sizes with these."""

from __future__ import annotations

import ctypes as ct
import ipaddress

from pylium.core.bpf import libbpf
from pylium.core.bpf.maps import MapSpec

SLOTS = 8
ATTACH_FROM_CONTAINER, ATTACH_TO_CONTAINER = 0, 1
ATTACH_POINTS = {"from-container": ATTACH_FROM_CONTAINER, "to-container": ATTACH_TO_CONTAINER}
EVENTS_BYTES = 1 << 22

# Cilium's drop reasons (codes and metric label strings) used by our programs.
DROP_REASONS = {
    132: "Invalid source ip", 133: "Policy denied", 134: "Invalid packet", 140: "Missed tail call",
    141: "Error writing to packet", 151: "Stale or unroutable IP", 158: "Service backend not found",
    181: "Policy denied by denylist", 196: "TTL exceeded",
}
METRIC_DIRECTIONS = {1: "INGRESS", 2: "EGRESS"}


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
                ("flags", ct.c_uint8), ("pad", ct.c_uint16)]


def metrics_index(reason: int, direction: int) -> int:
    """METRICS_INDEX in pylium_consts.h: the metrics array slot of (reason, direction)."""
    return (reason << 2) | (direction & 3)


class MetricsValue(ct.Structure):
    _fields_ = [("count", ct.c_uint64), ("bytes", ct.c_uint64)]


class Event(ct.Structure):
    """One record of the events ring buffer (struct pylium_event)."""

    _fields_ = [("type", ct.c_uint8), ("subtype", ct.c_uint8), ("src_ep", ct.c_uint16), ("dst_ep", ct.c_uint16),
                ("dir", ct.c_uint8), ("flags", ct.c_uint8), ("ifindex", ct.c_uint32), ("hash", ct.c_uint32),
                ("src_identity", ct.c_uint32), ("dst_identity", ct.c_uint32), ("orig_len", ct.c_uint32),
                ("cap_len", ct.c_uint16), ("line", ct.c_uint16), ("rule_ids", ct.c_uint32 * 2),
                ("ts", ct.c_uint64), ("data", ct.c_uint8 * 128)]


def mac_bytes(mac: str) -> ct.Array:
    return (ct.c_uint8 * 6)(*bytes.fromhex(mac.replace(":", "")))


def mac_str(raw) -> str:
    return ":".join(f"{b:02x}" for b in bytes(raw))


CORE_MAPS = [
    MapSpec("endpoints", libbpf.MAP_HASH, EndpointKey, EndpointInfo, 65536),
    MapSpec("lxc_by_ifindex", libbpf.MAP_HASH, ct.c_uint32, LxcInfo, 65536),
    MapSpec("ipcache", libbpf.MAP_LPM_TRIE, IpcacheKey, IpcacheInfo, 512000, flags=libbpf.F_NO_PREALLOC),
    MapSpec("metrics", libbpf.MAP_PERCPU_ARRAY, ct.c_uint32, MetricsValue, 1024, version=2),
    MapSpec("calls_from_container", libbpf.MAP_PROG_ARRAY, ct.c_uint32, ct.c_uint32, SLOTS),
    MapSpec("calls_to_container", libbpf.MAP_PROG_ARRAY, ct.c_uint32, ct.c_uint32, SLOTS),
    MapSpec("slot_mask", libbpf.MAP_ARRAY, ct.c_uint32, ct.c_uint32, 2),
    MapSpec("events", libbpf.MAP_RINGBUF, None, None, EVENTS_BYTES),
]

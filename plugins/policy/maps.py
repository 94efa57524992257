"""ctypes mirrors of bpf/policy_maps.h and the encoding of rules into trie keys."""

from __future__ import annotations

import ctypes as ct

from pylium.core.api_for_plugins import FlowKey, MapSpec, libbpf
from pylium.plugins.policy import consts as c

PREFIX_ANY_PROTO, PREFIX_ANY_PORT = c.POLICY_PREFIX_ANY_PROTO, c.POLICY_PREFIX_ANY_PORT
PREFIX_FULL = c.POLICY_PREFIX_FULL
F_DENY, F_AUDIT = c.POLICY_F_DENY, c.POLICY_F_AUDIT
ENFORCE, AUDIT, LOCKDOWN, AUDIT_DEFAULT, OPEN = (c.POLICY_ENFORCE, c.POLICY_AUDIT, c.POLICY_LOCKDOWN,
                                                  c.POLICY_AUDIT_DEFAULT, c.POLICY_OPEN)
CHECK_EGRESS, CHECK_INGRESS = c.CT_CHECK_EGRESS, c.CT_CHECK_INGRESS
RULES_MAX_ENTRIES = 1 << 20


class PolicyKey(ct.Structure):
    _fields_ = [("prefixlen", ct.c_uint32), ("ep_id", ct.c_uint16), ("egress", ct.c_uint8), ("pad", ct.c_uint8),
                ("identity", ct.c_uint32), ("proto", ct.c_uint8), ("pad2", ct.c_uint8), ("port", ct.c_uint16)]


class PolicyEntry(ct.Structure):
    _fields_ = [("flags", ct.c_uint8), ("match", ct.c_uint8), ("proxy_port", ct.c_uint16),
                ("rule_ids", ct.c_uint32 * 2)]


class PolicyEndpoint(ct.Structure):
    _fields_ = [("flags", ct.c_uint8 * 2), ("pad", ct.c_uint8 * 2), ("revision", ct.c_uint32),
                ("default_rules", (ct.c_uint32 * 2) * 2)]


class CtEntry(ct.Structure):
    _fields_ = [("last_seen", ct.c_uint64), ("origin", ct.c_uint8), ("passed", ct.c_uint8), ("needed", ct.c_uint8),
                ("pad", ct.c_uint8), ("revision", ct.c_uint32 * 2), ("proxy_port", ct.c_uint16), ("pad2", ct.c_uint16)]


class PolicySettings(ct.Structure):
    _fields_ = [("ct_tcp_timeout_ns", ct.c_uint64), ("ct_any_timeout_ns", ct.c_uint64)]


POLICY_RULES = MapSpec("policy_rules", libbpf.MAP_LPM_TRIE, PolicyKey, PolicyEntry, RULES_MAX_ENTRIES,
                       flags=libbpf.F_NO_PREALLOC)
POLICY_ENDPOINTS = MapSpec("policy_endpoints", libbpf.MAP_HASH, ct.c_uint32, PolicyEndpoint, 65536)
POLICY_SETTINGS = MapSpec("policy_settings", libbpf.MAP_ARRAY, ct.c_uint32, PolicySettings, 1)


def policy_maps(ct_max: int) -> tuple[MapSpec, ...]:
    """The plugin's maps; ct_max: connections policy_ct holds (an LRU: when full, the least
    recently seen connection makes room, and its next packet is decided by policy again)."""
    return (POLICY_RULES, POLICY_ENDPOINTS, MapSpec("policy_ct", libbpf.MAP_LRU_HASH, FlowKey, CtEntry, ct_max),
            POLICY_SETTINGS)


def port_prefixes(first: int, last: int) -> list[tuple[int, int]]:
    """A port range as (port, prefix bits) blocks, like a CIDR split: 80-80 -> [(80, 16)],
    0-65535 -> [(0, 0)], 1024-2047 -> [(1024, 6)]."""
    out = []
    while first <= last:
        bits = 16
        while bits > 0:
            size = 1 << (16 - bits + 1)
            if first % size or first + size - 1 > last:
                break
            bits -= 1
        out.append((first, bits))
        first += 1 << (16 - bits)
    return out

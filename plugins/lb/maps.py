"""ctypes mirrors of bpf/lb_structs.h and the plugin's map declarations (sizes from config)."""

from __future__ import annotations

import ctypes as ct
import socket
import struct

from pylium.core.api_for_plugins import MapSpec, libbpf
from pylium.plugins.lb import consts as c

SCOPE_INTERNAL, SCOPE_EXTERNAL = c.LB_SCOPE_INTERNAL, c.LB_SCOPE_EXTERNAL
F_EXTERNAL, F_NODEPORT, F_AFFINITY, F_LOCAL_EXT = c.SVC_F_EXTERNAL, c.SVC_F_NODEPORT, c.SVC_F_AFFINITY, c.SVC_F_LOCAL_EXT
ALGORITHMS = {"random": c.ALG_RANDOM, "round_robin": c.ALG_ROUND_ROBIN, "source_hash": c.ALG_SOURCE_HASH,
              "maglev": c.ALG_MAGLEV}
STATES = {"active": c.BACKEND_ACTIVE, "terminating": c.BACKEND_TERMINATING, "quarantined": c.BACKEND_QUARANTINED}
PROTOCOLS = {"TCP": socket.IPPROTO_TCP, "UDP": socket.IPPROTO_UDP, "SCTP": socket.IPPROTO_SCTP}
PROTOCOL_NAMES = {v: k for k, v in PROTOCOLS.items()}
CT_MAX = c.LB_CT_MAX


class Lb4Key(ct.Structure):
    _fields_ = [("address", ct.c_uint8 * 4), ("dport", ct.c_uint16), ("slot", ct.c_uint16), ("proto", ct.c_uint8),
                ("scope", ct.c_uint8), ("pad", ct.c_uint8 * 2)]


class Lb4Service(ct.Structure):
    _fields_ = [("backend_id", ct.c_uint32), ("affinity_timeout", ct.c_uint32), ("count", ct.c_uint16),
                ("qcount", ct.c_uint16), ("rev_nat_index", ct.c_uint16), ("flags", ct.c_uint8),
                ("algorithm", ct.c_uint8)]


class Lb4Backend(ct.Structure):
    _fields_ = [("address", ct.c_uint8 * 4), ("port", ct.c_uint16), ("proto", ct.c_uint8), ("state", ct.c_uint8)]


class Lb4ReverseNat(ct.Structure):
    _fields_ = [("address", ct.c_uint8 * 4), ("port", ct.c_uint16), ("pad", ct.c_uint16)]


class LbAffinityKey(ct.Structure):
    _fields_ = [("client", ct.c_uint64), ("rev_nat_index", ct.c_uint32), ("netns", ct.c_uint8),
                ("pad", ct.c_uint8 * 3)]


class LbAffinityVal(ct.Structure):
    _fields_ = [("last_used", ct.c_uint64), ("backend_id", ct.c_uint32), ("pad", ct.c_uint32)]


class Lb4SkKey(ct.Structure):
    _fields_ = [("cookie", ct.c_uint64), ("address", ct.c_uint8 * 4), ("port", ct.c_uint16), ("pad", ct.c_uint16)]


class Lb4SkVal(ct.Structure):
    _fields_ = [("address", ct.c_uint8 * 4), ("port", ct.c_uint16), ("rev_nat_index", ct.c_uint16)]


class Lb4CtKey(ct.Structure):
    _fields_ = [("saddr", ct.c_uint8 * 4), ("daddr", ct.c_uint8 * 4), ("sport", ct.c_uint16), ("dport", ct.c_uint16),
                ("proto", ct.c_uint8), ("dir", ct.c_uint8), ("pad", ct.c_uint8 * 2)]


class Lb4CtEntry(ct.Structure):
    _fields_ = [("last_seen", ct.c_uint64), ("addr", ct.c_uint8 * 4), ("addr2", ct.c_uint8 * 4),
                ("port", ct.c_uint16), ("port2", ct.c_uint16), ("backend_id", ct.c_uint32), ("ifindex", ct.c_uint32),
                ("rev_nat_index", ct.c_uint16), ("pad", ct.c_uint16)]


class LbDevice(ct.Structure):
    _fields_ = [("address", ct.c_uint8 * 4), ("pad", ct.c_uint32)]


def maglev_struct(m: int) -> type[ct.Structure]:
    return type("LbMaglev", (ct.Structure,), {"_fields_": [("backend_ids", ct.c_uint32 * m)]})


def lb_maps(map_max: int, maglev_m: int, ct_max: int = CT_MAX) -> tuple[MapSpec, ...]:
    return (
        MapSpec("lb4_services", libbpf.MAP_HASH, Lb4Key, Lb4Service, map_max),
        MapSpec("lb4_backends", libbpf.MAP_HASH, ct.c_uint32, Lb4Backend, map_max),
        MapSpec("lb4_reverse_nat", libbpf.MAP_HASH, ct.c_uint32, Lb4ReverseNat, map_max),
        MapSpec("lb4_maglev", libbpf.MAP_HASH, ct.c_uint32, maglev_struct(maglev_m), map_max,
                flags=libbpf.F_NO_PREALLOC),
        MapSpec("lb_rr", libbpf.MAP_ARRAY, ct.c_uint32, ct.c_uint32, 65536),
        MapSpec("lb_affinity", libbpf.MAP_LRU_HASH, LbAffinityKey, LbAffinityVal, map_max),
        MapSpec("lb4_reverse_sk", libbpf.MAP_LRU_HASH, Lb4SkKey, Lb4SkVal, map_max),
        MapSpec("lb4_ct", libbpf.MAP_LRU_HASH, Lb4CtKey, Lb4CtEntry, ct_max),
        MapSpec("lb_netns", libbpf.MAP_HASH, ct.c_uint64, ct.c_uint32, 65536),
        MapSpec("lb_devices", libbpf.MAP_HASH, ct.c_uint32, LbDevice, 256),
    )


# ---- packing (struct is much cheaper than ctypes objects for bulk writes) ----------------------

_KEY = struct.Struct("=4sHHBB2x")
_SERVICE = struct.Struct("=IIHHHBB")
_BACKEND = struct.Struct("=4sHBB")
_REVNAT = struct.Struct("=4sH2x")


def ip4(address: str) -> bytes:
    return socket.inet_pton(socket.AF_INET, address)


def pack_key(address: str | None, port: int, proto: int, slot: int, scope: int) -> bytes:
    return _KEY.pack(ip4(address) if address else b"\0\0\0\0", socket.htons(port), slot, proto, scope)


def pack_service(backend_id: int = 0, timeout: int = 0, count: int = 0, qcount: int = 0, rev: int = 0,
                 flags: int = 0, algorithm: int = 0) -> bytes:
    return _SERVICE.pack(backend_id, timeout, count, qcount, rev, flags, algorithm)


def pack_backend(address: str, port: int, proto: int, state: int) -> bytes:
    return _BACKEND.pack(ip4(address), socket.htons(port), proto, state)


def pack_revnat(address: str | None, port: int) -> bytes:
    return _REVNAT.pack(ip4(address) if address else b"\0\0\0\0", socket.htons(port))


def u32(n: int) -> bytes:
    return struct.pack("=I", n)


def addr_str(raw) -> str:
    return socket.inet_ntop(socket.AF_INET, bytes(raw))


def port_of(raw: int) -> int:
    return socket.ntohs(raw)

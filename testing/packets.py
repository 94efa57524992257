"""Packet builders for BPF_PROG_TEST_RUN tables (Ethernet, IPv4/IPv6, ICMP, UDP, TCP, ARP), and the
test run's `struct __sk_buff` context."""

from __future__ import annotations

import ctypes as ct
import ipaddress
import struct


def mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ether(dst: str, src: str, proto: int) -> bytes:
    return mac(dst) + mac(src) + struct.pack("!H", proto)


def ipv4(src: str, dst: str, payload: bytes, proto: int = 1, ttl: int = 64) -> bytes:
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, 0, ttl, proto, 0,
                         ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed)
    header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
    return header + payload


def icmp_echo(ident: int = 7, seq: int = 1) -> bytes:
    body = struct.pack("!BBHHH", 8, 0, 0, ident, seq) + b"pylium-test-data"
    return body[:2] + struct.pack("!H", checksum(body)) + body[4:]


def udp(sport: int, dport: int, data: bytes = b"hello") -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data


def tcp(sport: int, dport: int, flags: int, seq: int = 1) -> bytes:
    """A TCP header without options (checksum left 0: programs here do not check it)."""
    return struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 5 << 4, flags, 65535, 0, 0)


def ipv6(src: str, dst: str, payload: bytes, next_header: int = 17, hop_limit: int = 64) -> bytes:
    return (struct.pack("!IHBB", 6 << 28, len(payload), next_header, hop_limit) + ipaddress.ip_address(src).packed
            + ipaddress.ip_address(dst).packed + payload)


def arp_request(sender_mac: str, sender_ip: str, target_ip: str) -> bytes:
    return (ether("ff:ff:ff:ff:ff:ff", sender_mac, 0x0806) + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1)
            + mac(sender_mac) + ipaddress.ip_address(sender_ip).packed + b"\0" * 6
            + ipaddress.ip_address(target_ip).packed)


class SkBuff(ct.Structure):
    """struct __sk_buff (uapi), for the ctx of a test run (only some fields may be set)."""

    _fields_ = [("len", ct.c_uint32), ("pkt_type", ct.c_uint32), ("mark", ct.c_uint32),
                ("queue_mapping", ct.c_uint32), ("protocol", ct.c_uint32), ("vlan_present", ct.c_uint32),
                ("vlan_tci", ct.c_uint32), ("vlan_proto", ct.c_uint32), ("priority", ct.c_uint32),
                ("ingress_ifindex", ct.c_uint32), ("ifindex", ct.c_uint32), ("tc_index", ct.c_uint32),
                ("cb", ct.c_uint32 * 5), ("hash", ct.c_uint32), ("tc_classid", ct.c_uint32), ("data", ct.c_uint32),
                ("data_end", ct.c_uint32), ("napi_id", ct.c_uint32), ("family", ct.c_uint32),
                ("remote_ip4", ct.c_uint32), ("local_ip4", ct.c_uint32), ("remote_ip6", ct.c_uint32 * 4),
                ("local_ip6", ct.c_uint32 * 4), ("remote_port", ct.c_uint32), ("local_port", ct.c_uint32),
                ("data_meta", ct.c_uint32), ("flow_keys", ct.c_uint64), ("tstamp", ct.c_uint64),
                ("wire_len", ct.c_uint32), ("gso_segs", ct.c_uint32), ("sk", ct.c_uint64), ("gso_size", ct.c_uint32),
                ("tstamp_type", ct.c_uint8), ("pad", ct.c_uint8 * 3), ("hwtstamp", ct.c_uint64)]


assert ct.sizeof(SkBuff) == 192

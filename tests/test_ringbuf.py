"""The ring buffer reader against a real BPF ring: records of every length mod 8 (the kernel
pads each to 8 bytes), wrapping around a one-page ring many times."""

from __future__ import annotations

import pytest

from pylium.core.datapath import libbpf
from pylium.core.datapath.ringbuf import RingReader
from pylium.testing.lab import require_datapath, skip_or_fail

# A socket filter that writes one record per run: its length is the packet's (after the
# Ethernet header) mod 64, its first byte that length.
SOURCE = rb"""
BPF_RINGBUF_OUTPUT(records, 1);
int emit(struct __sk_buff *skb) {
    struct { u8 b[64]; } d = {};
    u32 n = skb->len & 63;
    d.b[0] = n;
    records.ringbuf_output(&d, n, 0);
    return 0;
}
"""


@pytest.fixture
def emitter():
    reason = require_datapath()
    if reason:
        skip_or_fail(reason)
    from bcc import BPF

    bpf = BPF(text=SOURCE)
    try:
        yield bpf.load_func(b"emit", BPF.SOCKET_FILTER).fd, bpf[b"records"].map_fd
    finally:
        bpf.cleanup()


def test_every_record_comes_out_whole_and_in_order_across_wraps(emitter):
    prog, ring = emitter
    reader = RingReader(ring)
    try:
        passed = 0
        for i in range(1500):
            packet = bytes(14 + 64 + i % 64)
            libbpf.test_run(prog, packet, repeat=3)
            n = (len(packet) - 14) & 63
            assert reader.drain() == [(bytes([n]) + bytes(63))[:n]] * 3, f"run {i}: {n}-byte records"
            passed += 3 * ((8 + n + 7) // 8 * 8)
        assert passed > 40 * 4096  # the one-page ring wrapped many times
        assert reader.drain() == []
    finally:
        reader.close()

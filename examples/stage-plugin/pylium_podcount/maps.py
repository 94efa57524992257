"""ctypes mirror of bpf/podcount_maps.h (tests/test_podcount.py checks it against the C)."""

from __future__ import annotations

import ctypes as ct

from pylium.core.api_for_plugins import MapSpec, libbpf

MAX_ENDPOINTS = 4096


class PodCount(ct.Structure):
    _fields_ = [("tx_packets", ct.c_uint64), ("tx_bytes", ct.c_uint64), ("rx_packets", ct.c_uint64),
                ("rx_bytes", ct.c_uint64)]


POD_COUNTS = MapSpec("pod_counts", libbpf.MAP_PERCPU_ARRAY, ct.c_uint32, PodCount, MAX_ENDPOINTS)


def totals(per_cpu) -> dict[str, int]:
    """One endpoint's counters summed over CPUs (a per-CPU map's lookup gives one per CPU)."""
    return {name: sum(getattr(c, name) for c in per_cpu) for name, _ in PodCount._fields_}

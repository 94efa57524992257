/* The podcount plugin's map, pinned under <bpf-root>/<node>/podcount/ (PYLIUM_PIN). Its
 * mirror is ../maps.py. */
#pragma once

/* What one pod sent (from-container) and received (to-container). */
struct pod_count {
    __u64 tx_packets;
    __u64 tx_bytes;
    __u64 rx_packets;
    __u64 rx_bytes;
};

/* Counters by endpoint id (the core's ids are 1..4095), one copy per CPU: no atomics needed. */
BPF_TABLE_PINNED("percpu_array", __u32, struct pod_count, pod_counts, 4096, PYLIUM_PIN "/pod_counts_v1");

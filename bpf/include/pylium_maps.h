/* The core's shared maps, pinned under <bpf-root>/<node>/core/. PYLIUM_CORE_PIN is set by the
 * agent at compile time. Their Python mirrors are in pylium/core/datapath/structs.py (CORE_MAPS). */
#pragma once

/* Local endpoints by address: where a packet for a pod on this node is delivered. */
BPF_TABLE_PINNED("hash", struct endpoint_key, struct endpoint_info, endpoints, 65536,
                 PYLIUM_CORE_PIN "/endpoints_v1");

/* Local endpoints by host-side ifindex: who sent a packet that enters the datapath. */
BPF_TABLE_PINNED("hash", __u32, struct lxc_info, lxc_by_ifindex, 65536, PYLIUM_CORE_PIN "/lxc_by_ifindex_v1");

/* Address prefixes to security identities (and tunnel endpoint, encryption key). */
BPF_TABLE_PINNED("lpm_trie", struct ipcache_key, struct ipcache_info, ipcache, 512000,
                 PYLIUM_CORE_PIN "/ipcache_v1");

/* Forwarded (reason 0) and dropped packets and bytes, per CPU, at METRICS_INDEX(reason, dir). */
BPF_TABLE_PINNED("percpu_array", __u32, struct metrics_value, metrics, METRICS_ENTRIES,
                 PYLIUM_CORE_PIN "/metrics_v2");

/* Stage programs of the from-container attach point, by slot (tail calls). */
BPF_TABLE_PINNED("prog", __u32, __u32, calls_from_container, PYLIUM_SLOTS,
                 PYLIUM_CORE_PIN "/calls_from_container_v1");

/* Stage programs of the to-container attach point, by slot. */
BPF_TABLE_PINNED("prog", __u32, __u32, calls_to_container, PYLIUM_SLOTS,
                 PYLIUM_CORE_PIN "/calls_to_container_v1");

/* Which slots hold a program, per attach point: an empty slot falls through, a failed tail
 * call into an occupied one is a counted drop. */
BPF_TABLE_PINNED("array", __u32, __u32, slot_mask, 2, PYLIUM_CORE_PIN "/slot_mask_v1");

/* Connections the monitor has seen, one entry for both directions (trace aggregation, is_reply). */
BPF_TABLE_PINNED("lru_hash", struct flow_key, struct flow_state, trace_flows, 65536,
                 PYLIUM_CORE_PIN "/trace_flows_v2");

/* The fast path: established local connections, forwarded without the stages while the
 * generation they were decided under holds (fast_key -> fast_entry). */
BPF_TABLE_PINNED("lru_hash", struct fast_key, struct fast_entry, fast_flows, FAST_ENTRIES, PYLIUM_CORE_PIN "/fast_flows_v1");

/* The fast path's generation and whether it may be used at all (one entry). */
BPF_TABLE_PINNED("array", __u32, struct fast_state, fast_state, 1, PYLIUM_CORE_PIN "/fast_state_v1");

/* Records the events ring buffer had no room for, per CPU (reported as lost events). */
BPF_TABLE_PINNED("percpu_array", __u32, __u64, events_lost, 1, PYLIUM_CORE_PIN "/events_lost_v1");

/* Records a CPU wrote since it last woke the events reader (EVENTS_WAKEUP_BATCH). */
BPF_TABLE_PINNED("percpu_array", __u32, __u32, events_unsignalled, 1, PYLIUM_CORE_PIN "/events_unsignalled_v1");

/* Drop, trace and policy-verdict records for the observability plugin (a ring buffer). */
struct events_table_t {
    int key;
    __u32 leaf;
    int (*ringbuf_output)(void *, u64, u64);
    void *(*ringbuf_reserve)(u64);
    void (*ringbuf_discard)(void *, u64);
    void (*ringbuf_submit)(void *, u64);
    __u32 max_entries;
};
__attribute__((section("maps/ringbuf:" PYLIUM_CORE_PIN "/events_v2")))
struct events_table_t events = {.max_entries = PYLIUM_EVENTS_BYTES};

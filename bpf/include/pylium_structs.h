/* Keys and values of the core's shared maps; mirrored in pylium/core/datapath/structs.py. */
#pragma once

/* An IPv4 (first 4 bytes of addr) or IPv6 address. */
struct endpoint_key {
    __u8 addr[16];
    __u8 family; /* 4 or 6 */
    __u8 pad[3];
};

/* A local endpoint, found by one of its addresses. */
struct endpoint_info {
    __u32 ifindex;    /* host-side veth */
    __u16 ep_id;
    __u16 flags;
    __u8 mac[6];      /* the pod's interface */
    __u8 host_mac[6]; /* the host-side veth: the pod's gateway */
    __u32 identity;
    __u32 pad;
};

/* A local endpoint, found by the ifindex of its host-side veth. */
struct lxc_info {
    __u16 ep_id;
    __u16 flags;
    __u32 identity;
    __u32 ip4;        /* network order; 0 when none */
    __u8 ip6[16];
    __u8 mac[6];
    __u8 host_mac[6];
};

/* LPM key: prefixlen counts the 32 bits of family + pad before the address bits. */
struct ipcache_key {
    __u32 prefixlen;
    __u8 family;
    __u8 pad[3];
    __u8 addr[16];
};

struct ipcache_info {
    __u32 identity;
    __u32 tunnel_ip4; /* node to tunnel to; 0 = local or direct */
    __u8 encrypt_key;
    __u8 flags;
    __u16 owner; /* who wrote the entry (the agent's ipcache owner id): restarts give it back */
};

struct metrics_value {
    __u64 count;
    __u64 bytes;
};

/* One record in the events ring buffer (drop, trace or policy verdict). */
struct pylium_event {
    __u64 ts;           /* bpf_ktime_get_ns() */
    __u8 type;          /* MSG_DROP, MSG_TRACE, MSG_POLICY_VERDICT */
    __u8 subtype;       /* drop reason, trace observation point, or policy match type */
    __u8 dir;           /* METRIC_INGRESS or METRIC_EGRESS */
    __u8 trace_reason;  /* TRACE_REASON_* */
    __u16 src_ep;
    __u16 dst_ep;
    __u16 flags;        /* EVENT_F_* */
    __u16 line;         /* source line that produced the record */
    __u32 ifindex;
    __u32 hash;         /* skb hash: groups packets of one flow */
    __u32 src_identity;
    __u32 dst_identity;
    __u32 orig_len;
    __u16 cap_len;
    __u8 file;          /* PYLIUM_FILE_ID of the source file */
    __u8 pad;
    __u32 rule_ids[2];  /* policy verdicts and policy drops: the rules that decided (0: none) */
    __u32 pad2;
    __u8 data[PYLIUM_CAPTURE_LEN];
};

/* A connection as the monitor sees it: the key is a packet's addresses and ports with the
 * lower address (then port) first, so both directions share one entry (flow_normalize). */
struct flow_key {
    __u8 saddr[16];
    __u8 daddr[16];
    __be16 sport;       /* ICMP echo: the identifier, in both ports */
    __be16 dport;
    __u8 proto;
    __u8 family;        /* 4 or 6 */
    __u8 pad[2];
};

/* Per direction (index: flow_normalize's result): when a trace was last reported (0: never)
 * and the TCP flags reported so far. `origin`: the direction seen first; the other one replies. */
struct flow_state {
    __u64 last_report[2];
    __u8 flags_seen[2];
    __u8 origin;
    __u8 pad[5];
};

/* The fast path (docs/datapath.md): one direction of an IPv4 TCP or UDP connection between two
 * local pods, by the host-side device it enters through. */
struct fast_key {
    __u32 ifindex;
    __be32 saddr;
    __be32 daddr;
    __be16 sport;
    __be16 dport;
    __u8 proto;
    __u8 pad[3];
};

/* What the slow path did with that direction's last packet, while nothing it depends on changed. */
struct fast_entry {
    __u64 expires;     /* packet_clock(): from then on the stages decide again */
    __u32 generation;  /* fast_state's when they decided */
    __u32 ifindex;     /* delivered to: the destination's host-side veth (bpf_redirect_peer) */
    __u8 mac[6];       /* the MACs delivery wrote: the destination pod's */
    __u8 host_mac[6];  /* and its gateway's */
    __u32 pad;
};

/* generation: bumped by the agent after each change to a map the stages read; enabled: every
 * stage installed (and not bypassed) keeps the fast path's contract. */
struct fast_state {
    __u32 generation;
    __u32 enabled;
};

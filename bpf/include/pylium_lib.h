/* Helpers shared by the dispatchers and the stages. The agent splices this file into each
 * program's text (bcc rewrites map calls only in the main text, not in #included files). */
#pragma once

#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>
#include <uapi/linux/pkt_cls.h>
#include <uapi/linux/tcp.h>
#include <uapi/linux/udp.h>
#include <uapi/linux/in.h>
#include <uapi/linux/in6.h>

#include "pylium_consts.h"
#include "pylium_structs.h"
#include "pylium_maps.h"

/* bcc 0.26 declares bpf_redirect_neigh with three arguments; the kernel's takes four. */
static long (*redirect_neigh)(__u32 ifindex, void *params, int plen, __u64 flags) = (void *)BPF_FUNC_redirect_neigh;

/* ---- skb->cb -------------------------------------------------------------------------- */

static __always_inline void cb_reset(struct __sk_buff *skb, __u16 src_ep, __u16 dst_ep, __u32 src_id,
                                     __u32 dst_id) {
    skb->cb[CB_FLAGS] = PYLIUM_CB_MAGIC;
    skb->cb[CB_ENDPOINTS] = src_ep | ((__u32)dst_ep << 16);
    skb->cb[CB_DELIVER] = 0;
    skb->cb[CB_SRC_ID] = src_id;
    skb->cb[CB_DST_ID] = dst_id;
}

static __always_inline __u16 cb_src_ep(struct __sk_buff *skb) { return skb->cb[CB_ENDPOINTS] & 0xffff; }
static __always_inline __u16 cb_dst_ep(struct __sk_buff *skb) { return skb->cb[CB_ENDPOINTS] >> 16; }

/* ---- metrics -------------------------------------------------------------------------- */

static __always_inline void count(struct __sk_buff *skb, __u8 reason, __u8 dir) {
    __u32 index = METRICS_INDEX(reason, dir);
    struct metrics_value *v = metrics.lookup(&index);
    if (v) {
        v->count += 1;
        v->bytes += skb->len;
    }
}

/* ---- flows (the monitor's view of connections) ---------------------------------------- */

#define FLOW_TCP_DATA 2 /* flow_of(): a TCP segment that carries payload */

/* The packet's direction of a connection: addresses, protocol, ports (ICMP echo: the id in
 * both). Returns 0 for what is not IP, FLOW_TCP_DATA for a TCP segment with payload, else 1. */
static __always_inline int flow_of(struct __sk_buff *skb, struct flow_key *k, __u8 *tcp_flags) {
    void *data = (void *)(long)skb->data, *data_end = (void *)(long)skb->data_end;
    struct ethhdr *eth = data;
    __u32 l4, l3_payload;
    __builtin_memset(k, 0, sizeof(*k));
    *tcp_flags = 0;
    if ((void *)(eth + 1) > data_end)
        return 0;
    if (eth->h_proto == bpf_htons(ETH_P_IP)) {
        struct iphdr *ip = (void *)(eth + 1);
        if ((void *)(ip + 1) > data_end)
            return 0;
        __builtin_memcpy(k->saddr, &ip->saddr, 4);
        __builtin_memcpy(k->daddr, &ip->daddr, 4);
        k->proto = ip->protocol;
        k->family = 4;
        if (ip->frag_off & bpf_htons(0x1fff))
            return 1; /* a later fragment: no ports */
        l4 = ETH_HLEN + ip->ihl * 4;
        l3_payload = bpf_ntohs(ip->tot_len) - ip->ihl * 4;
    } else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
        struct ipv6hdr *ip6 = (void *)(eth + 1);
        if ((void *)(ip6 + 1) > data_end)
            return 0;
        __builtin_memcpy(k->saddr, &ip6->saddr, 16);
        __builtin_memcpy(k->daddr, &ip6->daddr, 16);
        k->proto = ip6->nexthdr;
        k->family = 6;
        l4 = ETH_HLEN + sizeof(struct ipv6hdr);
        l3_payload = bpf_ntohs(ip6->payload_len);
    } else {
        return 0;
    }
    __u8 *l4h = data + (l4 & 0x7f); /* direct access: no helper call on the per-packet path */
    if (k->proto == IPPROTO_TCP) {
        if ((void *)(l4h + 14) > data_end)
            return 1;
        __builtin_memcpy(&k->sport, l4h, 4); /* source and destination port */
        *tcp_flags = l4h[13];
        return l3_payload > (__u32)(l4h[12] >> 4) * 4 ? FLOW_TCP_DATA : 1;
    } else if (k->proto == IPPROTO_UDP || k->proto == IPPROTO_SCTP) {
        if ((void *)(l4h + 4) > data_end)
            return 1;
        __builtin_memcpy(&k->sport, l4h, 4);
    } else if (k->proto == IPPROTO_ICMP || k->proto == IPPROTO_ICMPV6) {
        if ((void *)(l4h + 6) > data_end)
            return 1;
        /* echo request and reply: the identifier in both ports (they share a connection);
         * other messages: their type and code, so that each is a connection of its own */
        __u8 type = l4h[0];
        __builtin_memcpy(&k->sport, (type == 8 || type == 0 || type == 128 || type == 129) ? l4h + 4 : l4h, 2);
        k->dport = k->sport;
    }
    return 1;
}

/* Order a packet's key so that both directions of a connection have the same one: lower
 * address first, then lower port. Returns the packet's direction index in flow_state (0 or 1). */
static __always_inline __u8 flow_normalize(struct flow_key *k) {
    __u64 s0, s1, d0, d1;
    __builtin_memcpy(&s0, k->saddr, 8);
    __builtin_memcpy(&s1, k->saddr + 8, 8);
    __builtin_memcpy(&d0, k->daddr, 8);
    __builtin_memcpy(&d1, k->daddr + 8, 8);
    if (s0 < d0 || (s0 == d0 && (s1 < d1 || (s1 == d1 && k->sport <= k->dport))))
        return 0;
    __builtin_memcpy(k->saddr, &d0, 8);
    __builtin_memcpy(k->saddr + 8, &d1, 8);
    __builtin_memcpy(k->daddr, &s0, 8);
    __builtin_memcpy(k->daddr + 8, &s1, 8);
    __be16 port = k->sport;
    k->sport = k->dport;
    k->dport = port;
    return 1;
}

/* EVENT_F_REPLY_KNOWN | EVENT_F_REPLY, without changing state: a packet is a reply when the
 * monitor saw the connection's other direction first. */
static __always_inline __u16 reply_flags(struct flow_key *k) {
    __u8 d = flow_normalize(k);
    struct flow_state *s = trace_flows.lookup(k);
    return EVENT_F_REPLY_KNOWN | (s && s->origin != d ? EVENT_F_REPLY : 0);
}

/* ---- events --------------------------------------------------------------------------- */

static __always_inline void emit_rules(struct __sk_buff *skb, __u8 type, __u8 subtype, __u8 dir, __u8 reason,
                                       __u16 flags, __u32 ifindex, __u8 file, __u16 line, __u32 rule0,
                                       __u32 rule1) {
    struct pylium_event *e = events.ringbuf_reserve(sizeof(struct pylium_event));
    if (!e) {
        __u32 zero = 0;
        __u64 *lost = events_lost.lookup(&zero);
        if (lost)
            *lost += 1;
        return;
    }
    __u32 len = skb->len;
    e->ts = bpf_ktime_get_ns();
    e->type = type;
    e->subtype = subtype;
    e->dir = dir;
    e->trace_reason = reason;
    e->src_ep = cb_src_ep(skb);
    e->dst_ep = cb_dst_ep(skb);
    e->flags = flags;
    e->line = line;
    e->ifindex = ifindex;
    e->hash = skb->hash;
    e->src_identity = skb->cb[CB_SRC_ID];
    e->dst_identity = skb->cb[CB_DST_ID];
    e->orig_len = len;
    e->file = file;
    e->pad = 0;
    e->rule_ids[0] = rule0;
    e->rule_ids[1] = rule1;
    e->pad2 = 0;
    if (len > PYLIUM_CAPTURE_LEN)
        len = PYLIUM_CAPTURE_LEN;
    if (len < 1 || bpf_skb_load_bytes(skb, 0, e->data, len) < 0)
        len = 0;
    e->cap_len = len;
    /* The reader drains every 10 ms; a CPU wakes it only after EVENTS_WAKEUP_BATCH records, so
     * that a burst does not fill the ring. A wake-up is an inter-processor interrupt, a trap to
     * the hypervisor in a VM: at one per 64 records they took 2% of a CPU under TCP_CRR. */
    __u32 zero = 0;
    __u32 *unsignalled = events_unsignalled.lookup(&zero);
    __u64 wake = RB_NO_WAKEUP;
    if (unsignalled && ++*unsignalled >= EVENTS_WAKEUP_BATCH) {
        *unsignalled = 0;
        wake = RB_FORCE_WAKEUP;
    }
    events.ringbuf_submit(e, wake);
}

static __always_inline void emit(struct __sk_buff *skb, __u8 type, __u8 subtype, __u8 dir, __u8 reason,
                                 __u16 flags, __u32 ifindex, __u8 file, __u16 line) {
    emit_rules(skb, type, subtype, dir, reason, flags, ifindex, file, line, 0, 0);
}

/* The clock of per-packet decisions (report intervals, the fast path's lifetime): the coarse
 * monotonic clock, a tick behind at most (4 ms at HZ=250), read without the TSC. Reading the TSC
 * cost ~30 ns of the fast path's ~190 a packet here (bpf_stats under TCP_RR); events keep the
 * precise clock. */
static __always_inline __u64 packet_clock(void) { return bpf_ktime_get_coarse_ns(); }

static __always_inline int rx_point(__u8 obs) {
    return obs == TRACE_FROM_LXC || obs == TRACE_FROM_HOST || obs == TRACE_FROM_STACK;
}

/* Report a packet at an observation point, as bpf.monitorAggregation allows: at medium and
 * above a direction of a connection is reported on its first packet, on TCP flags (of
 * MONITOR_FLAGS) not reported before, and once per MONITOR_INTERVAL_NS; never per packet.
 * At medium and above a TCP connection's state goes when it closes (RST, or the second
 * direction's FIN while FIN is a reported flag), and what follows without payload (the last
 * ACK) is not a new one. Under TCP_CRR the map stays nearly empty instead of full, and the
 * client node's programs ran ~140 ns per packet faster (bpf_stats): an insert that must evict
 * costs about 1 us. Returns until when the fast path may forward this direction's packets
 * without new TCP flags (0: not at all): never past the direction's next report. */
static __always_inline __u64 trace(struct __sk_buff *skb, __u8 obs, __u8 dir, __u32 ifindex, __u8 file,
                                   __u16 line) {
#if PYLIUM_TRACE_EVENTS
    if (MONITOR_AGGREGATION >= AGGREGATE_LOWEST && rx_point(obs))
        return 0;
    struct flow_key k;
    __u8 tcp_flags;
    int parsed = flow_of(skb, &k, &tcp_flags);
    if (!parsed) {
        if (MONITOR_AGGREGATION < AGGREGATE_MEDIUM)
            emit(skb, MSG_TRACE, obs, dir, TRACE_REASON_UNKNOWN, 0, ifindex, file, line);
        return 0;
    }
    if (rx_point(obs)) { /* aggregation none: report, the transmit point keeps the state */
        emit(skb, MSG_TRACE, obs, dir, TRACE_REASON_UNKNOWN, reply_flags(&k), ifindex, file, line);
        return 0;
    }
    __u8 d = flow_normalize(&k);
    __u64 now = packet_clock();
    __u8 flags = tcp_flags & MONITOR_FLAGS;
    struct flow_state *s = trace_flows.lookup(&k);
    __u8 tcp_aggregated = k.proto == IPPROTO_TCP && MONITOR_AGGREGATION >= AGGREGATE_MEDIUM;
    if (!s && tcp_aggregated && !(tcp_flags & 0x02) && parsed != FLOW_TCP_DATA)
        return 0; /* the tail of a connection already closed (or never seen) */
    if (!s || (tcp_flags & 0x12) == 0x02) { /* unseen, or a SYN: a new connection on this tuple */
        struct flow_state fresh = {.origin = d};
        if (d) { /* constant indexes: the verifier rejects variable offsets into the stack */
            fresh.last_report[1] = now;
            fresh.flags_seen[1] = flags;
        } else {
            fresh.last_report[0] = now;
            fresh.flags_seen[0] = flags;
        }
        trace_flows.update(&k, &fresh);
        emit(skb, MSG_TRACE, obs, dir, TRACE_REASON_NEW, EVENT_F_REPLY_KNOWN, ifindex, file, line);
        return 0;
    }
    __u8 is_reply = d != s->origin;
    __u64 *last = &s->last_report[d & 1];
    __u8 *seen = &s->flags_seen[d & 1];
    __u8 fresh_flags = flags & ~*seen;
    __u8 closing = tcp_aggregated && ((tcp_flags & 0x04) ||                   /* RST */
                                      ((tcp_flags & 0x01) && (s->flags_seen[!(d & 1)] & 0x01))); /* 2nd FIN */
    /* the first packet of a direction, and below medium every packet, is reported */
    if (!*last || MONITOR_AGGREGATION < AGGREGATE_MEDIUM || fresh_flags || now - *last >= MONITOR_INTERVAL_NS) {
        *seen |= fresh_flags;
        *last = now;
        emit(skb, MSG_TRACE, obs, dir, is_reply ? TRACE_REASON_REPLY : TRACE_REASON_ESTABLISHED,
             EVENT_F_REPLY_KNOWN | (is_reply ? EVENT_F_REPLY : 0), ifindex, file, line);
    }
    if (closing) {
        trace_flows.delete(&k);
        return 0;
    }
    /* the fast path may forward this direction until its next report (or for its lifetime),
     * once the last report is FAST_MIN_AGE_NS old: fresh connections (TCP_CRR's) would cost
     * an insert each and rarely be looked up again */
    if (MONITOR_AGGREGATION < AGGREGATE_MEDIUM || now - *last < FAST_MIN_AGE_NS)
        return 0;
    __u64 until = *last + MONITOR_INTERVAL_NS;
    return until < now + FAST_LIFETIME_NS ? until : now + FAST_LIFETIME_NS;
#else
    return ~0ULL; /* no reports: the fast path's lifetime alone */
#endif
}
/* TRACE: at the packet's device; TRACE_DEV: naming another device (where it is delivered).
 * The agent writes each call site's file and line in (the _AT forms). */
#define TRACE_AT(file, line, skb, obs, dir) trace(skb, obs, dir, skb->ifindex, file, line)
#define TRACE(skb, obs, dir) TRACE_AT(PYLIUM_FILE_ID, __LINE__, skb, obs, dir)
#define TRACE_DEV_AT(file, line, skb, obs, dir, ifindex) trace(skb, obs, dir, ifindex, file, line)
#define TRACE_DEV(skb, obs, dir, ifindex) TRACE_DEV_AT(PYLIUM_FILE_ID, __LINE__, skb, obs, dir, ifindex)

/* Count and report a drop; returns the verdict to return. Policy drops name the rules that
 * denied (0: none); is_reply is left to the reader (no lookups on the drop path). */
static __always_inline int drop(struct __sk_buff *skb, __u8 reason, __u8 dir, __u32 rule0, __u32 rule1, __u8 file,
                                __u16 line) {
    count(skb, reason, dir);
#if PYLIUM_DROP_EVENTS
    emit_rules(skb, MSG_DROP, reason, dir, TRACE_REASON_UNKNOWN, 0, skb->ifindex, file, line, rule0, rule1);
#endif
    return TC_ACT_SHOT;
}
#define DROP_AT(file, line, skb, reason, dir) drop(skb, reason, dir, 0, 0, file, line)
#define DROP(skb, reason, dir) DROP_AT(PYLIUM_FILE_ID, __LINE__, skb, reason, dir)
#define POLICY_DROP_AT(file, line, skb, reason, dir, r0, r1) drop(skb, reason, dir, r0, r1, file, line)
#define POLICY_DROP(skb, reason, dir, r0, r1) POLICY_DROP_AT(PYLIUM_FILE_ID, __LINE__, skb, reason, dir, r0, r1)

/* A policy verdict for a connection the policy just decided on (allowed, audited). */
static __always_inline void policy_verdict(struct __sk_buff *skb, __u8 match, __u8 dir, __u16 flags, __u32 rule0,
                                           __u32 rule1, __u8 file, __u16 line) {
#if PYLIUM_POLICY_VERDICT_EVENTS
    emit_rules(skb, MSG_POLICY_VERDICT, match, dir, TRACE_REASON_NEW, flags, skb->ifindex, file, line, rule0, rule1);
#endif
}
#define POLICY_VERDICT_AT(file, line, skb, match, dir, flags, r0, r1) \
    policy_verdict(skb, match, dir, flags, r0, r1, file, line)
#define POLICY_VERDICT(skb, match, dir, flags, r0, r1) \
    POLICY_VERDICT_AT(PYLIUM_FILE_ID, __LINE__, skb, match, dir, flags, r0, r1)

/* ---- tail-call chains ------------------------------------------------------------------ */

/* One tail call per slot, each with a constant key, which the JIT patches into a direct jump.
 * Left to itself, LLVM merges a chain's calls into one with a variable slot, which the JIT can
 * only make an indirect jump (a retpoline here); an asm statement that differs per slot stops
 * the merge (one whose operand is the slot trips an LLVM 14 bug). */
static __always_inline void tail_call_to_container(struct __sk_buff *skb, const int slot) {
    switch (slot) {
    case 0: calls_to_container.call(skb, 0); asm volatile("/* 0 */"); break;
    case 1: calls_to_container.call(skb, 1); asm volatile("/* 1 */"); break;
    case 2: calls_to_container.call(skb, 2); asm volatile("/* 2 */"); break;
    case 3: calls_to_container.call(skb, 3); asm volatile("/* 3 */"); break;
    case 4: calls_to_container.call(skb, 4); asm volatile("/* 4 */"); break;
    case 5: calls_to_container.call(skb, 5); asm volatile("/* 5 */"); break;
    case 6: calls_to_container.call(skb, 6); asm volatile("/* 6 */"); break;
    case 7: calls_to_container.call(skb, 7); asm volatile("/* 7 */"); break;
    }
}

static __always_inline void tail_call_from_container(struct __sk_buff *skb, const int slot) {
    switch (slot) {
    case 0: calls_from_container.call(skb, 0); asm volatile("/* 0 */"); break;
    case 1: calls_from_container.call(skb, 1); asm volatile("/* 1 */"); break;
    case 2: calls_from_container.call(skb, 2); asm volatile("/* 2 */"); break;
    case 3: calls_from_container.call(skb, 3); asm volatile("/* 3 */"); break;
    case 4: calls_from_container.call(skb, 4); asm volatile("/* 4 */"); break;
    case 5: calls_from_container.call(skb, 5); asm volatile("/* 5 */"); break;
    case 6: calls_from_container.call(skb, 6); asm volatile("/* 6 */"); break;
    case 7: calls_from_container.call(skb, 7); asm volatile("/* 7 */"); break;
    }
}

static __always_inline __u32 slots_taken(__u32 attach) {
    __u32 *mask = slot_mask.lookup(&attach);
    return mask ? *mask : 0;
}

/* Run the to-container stages from slot `from` on. Only occupied slots are called; a tail
 * call returns only when it failed, which is a counted drop. Empty slots fall through. */
static __always_inline int to_chain(struct __sk_buff *skb, int from) {
    __u32 taken = slots_taken(ATTACH_TO_CONTAINER);
#pragma unroll
    for (int i = 0; i < PYLIUM_SLOTS; i++) {
        if (i < from || !(taken & (1u << i)))
            continue;
        tail_call_to_container(skb, i);
        return DROP(skb, DROP_MISSED_TAIL_CALL, METRIC_INGRESS);
    }
    return TC_ACT_OK;
}

static __always_inline int from_chain(struct __sk_buff *skb, int from) {
    __u32 taken = slots_taken(ATTACH_FROM_CONTAINER);
#pragma unroll
    for (int i = 0; i < PYLIUM_SLOTS; i++) {
        if (i < from || !(taken & (1u << i)))
            continue;
        tail_call_from_container(skb, i);
        return DROP(skb, DROP_MISSED_TAIL_CALL, METRIC_EGRESS);
    }
    return TC_ACT_OK;
}

/* ---- the fast path ---------------------------------------------------------------------- */

/* The TTL of an IPv4 header goes down by one (RFC 1624 incremental checksum update: the TTL
 * is the high byte of its 16-bit word). The caller checked it is above 1. */
static __always_inline void ip4_ttl_decrement(struct iphdr *ip) {
    __u32 sum = (__u16)~ip->check + (__u16)~bpf_htons(ip->ttl << 8) + bpf_htons((ip->ttl - 1) << 8);
    sum = (sum & 0xffff) + (sum >> 16);
    ip->check = ~((sum & 0xffff) + (sum >> 16));
    ip->ttl -= 1;
}

/* The fast path's key of a packet from a pod, when the fast path may take it: IPv4 without
 * options or fragments, TTL above 1, TCP without SYN, FIN or RST (nor another flag the monitor
 * reports on first sight), or UDP. Returns the IPv4 header, or 0. */
static __always_inline struct iphdr *fast_tuple(struct __sk_buff *skb, struct fast_key *k) {
    void *data = (void *)(long)skb->data, *data_end = (void *)(long)skb->data_end;
    struct ethhdr *eth = data;
    struct iphdr *ip = (void *)(eth + 1);
    if ((void *)(ip + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP) || ip->ihl != 5 ||
        (ip->frag_off & bpf_htons(0x3fff)) || ip->ttl <= 1)
        return 0;
    __u8 *l4 = (void *)(ip + 1);
    if (ip->protocol == IPPROTO_TCP) {
        if ((void *)(l4 + 14) > data_end || (l4[13] & (0x07 | MONITOR_FLAGS)))
            return 0;
    } else if (ip->protocol != IPPROTO_UDP || (void *)(l4 + 4) > data_end) {
        return 0;
    }
    k->ifindex = skb->ifindex;
    k->saddr = ip->saddr;
    k->daddr = ip->daddr;
    __builtin_memcpy(&k->sport, l4, 4); /* source and destination port */
    k->proto = ip->protocol;
    k->pad[0] = k->pad[1] = k->pad[2] = 0;
    return ip;
}

static __always_inline struct fast_state *fast_settings(void) {
    __u32 zero = 0;
    return fast_state.lookup(&zero);
}

/* The stages may let delivery remember the flow; the generation they start under goes along. */
static __always_inline void fast_allow(struct __sk_buff *skb, struct fast_state *st) {
#if PYLIUM_FAST_PATH
    skb->cb[CB_FLAGS] |= CB_F_FAST_OK | ((st->generation & 0xffff) << FAST_CB_GEN_SHIFT);
#endif
}

/* A stage that did per-packet work (a translation) keeps delivery from remembering the flow. */
static __always_inline void fast_forbid(struct __sk_buff *skb) { skb->cb[CB_FLAGS] &= ~CB_F_FAST_OK; }

/* from-container, first: a packet of a connection the stages delivered to a local pod, under
 * the generation still in force, goes the way they sent it (MACs, TTL, counters, redirect)
 * without them. -1: not such a packet; the stages decide. */
static __always_inline int fast_forward(struct __sk_buff *skb, struct fast_state *st) {
#if PYLIUM_FAST_PATH
    struct fast_key k;
    struct iphdr *ip = fast_tuple(skb, &k);
    if (!ip)
        return -1;
    struct fast_entry *e = fast_flows.lookup(&k);
    if (!e || e->generation != st->generation || packet_clock() >= e->expires)
        return -1;
    __u32 ifindex = e->ifindex;
    struct ethhdr *eth = (struct ethhdr *)ip - 1; /* checked by fast_tuple() */
    __builtin_memcpy(eth->h_dest, e->mac, 6);
    __builtin_memcpy(eth->h_source, e->host_mac, 6);
    ip4_ttl_decrement(ip);
    count(skb, 0, METRIC_EGRESS);
    count(skb, 0, METRIC_INGRESS);
    return bpf_redirect_peer(ifindex, 0);
#else
    return -1;
#endif
}

/* to-container delivery of a packet from a local pod: remember what the stages did until
 * `until` (trace()'s answer), when no stage did per-packet work and nothing changed since they
 * started (the generation in skb->cb). */
static __always_inline void fast_remember(struct __sk_buff *skb, __u64 until) {
#if PYLIUM_FAST_PATH
    __u32 flags = skb->cb[CB_FLAGS];
    if (!until || !(flags & CB_F_FAST_OK))
        return;
    struct fast_state *st = fast_settings();
    if (!st || !st->enabled || ((flags >> FAST_CB_GEN_SHIFT) & 0xffff) != (st->generation & 0xffff))
        return;
    struct fast_key k;
    struct iphdr *ip = fast_tuple(skb, &k);
    if (!ip)
        return;
    struct ethhdr *eth = (struct ethhdr *)ip - 1;
    struct fast_entry e = {.expires = until, .generation = st->generation, .ifindex = skb->cb[CB_DELIVER]};
    if (until == ~0ULL)
        e.expires = packet_clock() + FAST_LIFETIME_NS;
    __builtin_memcpy(e.mac, eth->h_dest, 6);
    __builtin_memcpy(e.host_mac, eth->h_source, 6);
    fast_flows.update(&k, &e);
#endif
}

/* ---- parsing --------------------------------------------------------------------------- */

static __always_inline void key_v4(struct endpoint_key *k, __be32 addr) {
    __builtin_memset(k, 0, sizeof(*k));
    __builtin_memcpy(k->addr, &addr, 4);
    k->family = 4;
}

static __always_inline void key_v6(struct endpoint_key *k, const struct in6_addr *addr) {
    __builtin_memset(k, 0, sizeof(*k));
    __builtin_memcpy(k->addr, addr, 16);
    k->family = 6;
}

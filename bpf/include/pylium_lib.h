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

#include "pylium_consts.h"
#include "pylium_structs.h"
#include "pylium_maps.h"

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

/* ---- metrics and events --------------------------------------------------------------- */

static __always_inline void count(struct __sk_buff *skb, __u8 reason, __u8 dir) {
    __u32 index = METRICS_INDEX(reason, dir);
    struct metrics_value *v = metrics.lookup(&index);
    if (v) {
        v->count += 1;
        v->bytes += skb->len;
    }
}

static __always_inline void emit(struct __sk_buff *skb, __u8 type, __u8 subtype, __u8 dir, __u16 line) {
    struct pylium_event *e = events.ringbuf_reserve(sizeof(struct pylium_event));
    if (!e)
        return; /* ring full: userspace counts the loss from the kernel's drop counter */
    __u32 len = skb->len;
    e->type = type;
    e->subtype = subtype;
    e->src_ep = cb_src_ep(skb);
    e->dst_ep = cb_dst_ep(skb);
    e->dir = dir;
    e->flags = 0;
    e->ifindex = skb->ifindex;
    e->hash = skb->hash;
    e->src_identity = skb->cb[CB_SRC_ID];
    e->dst_identity = skb->cb[CB_DST_ID];
    e->orig_len = len;
    e->line = line;
    e->rule_ids[0] = 0;
    e->rule_ids[1] = 0;
    e->ts = bpf_ktime_get_ns();
    if (len > PYLIUM_CAPTURE_LEN)
        len = PYLIUM_CAPTURE_LEN;
    if (len < 1 || bpf_skb_load_bytes(skb, 0, e->data, len) < 0)
        len = 0;
    e->cap_len = len;
    events.ringbuf_submit(e, 0);
}

/* Count and report a drop; returns the verdict to return. */
static __always_inline int drop(struct __sk_buff *skb, __u8 reason, __u8 dir, __u16 line) {
    count(skb, reason, dir);
    emit(skb, MSG_DROP, reason, dir, line);
    return TC_ACT_SHOT;
}
#define DROP(skb, reason, dir) drop(skb, reason, dir, __LINE__)

/* ---- tail-call chains ------------------------------------------------------------------ */

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
        calls_to_container.call(skb, i);
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
        calls_from_container.call(skb, i);
        return DROP(skb, DROP_MISSED_TAIL_CALL, METRIC_EGRESS);
    }
    return TC_ACT_OK;
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

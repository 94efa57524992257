/* Load-balancing helpers shared by the tc programs (lb.c, nodeport.c) and the socket hooks
 * (sock.c). Spliced into each program's text by the agent. */
#pragma once

#include "lb_maps.h"

#include <uapi/linux/icmp.h>


static __always_inline __u32 mix32(__u32 h) {
    h ^= h >> 16;
    h *= 0x85ebca6b;
    h ^= h >> 13;
    h *= 0xc2b2ae35;
    h ^= h >> 16;
    return h;
}

/* Hash of a connection's tuple (maglev's key), seeded the same on every node so that every
 * node picks the same backend. */
static __always_inline __u32 hash_tuple(__be32 saddr, __be32 daddr, __be16 sport, __be16 dport, __u8 proto) {
    __u32 h = mix32(saddr ^ LB_HASH_SEED);
    h = mix32(h ^ daddr);
    return mix32(h ^ (((__u32)sport << 16) | dport) ^ ((__u32)proto << 8));
}

static __always_inline struct lb4_service *svc_lookup(struct lb4_key *k, __be32 addr, __be16 port, __u8 proto,
                                                      __u8 scope) {
    __builtin_memset(k, 0, sizeof(*k));
    k->address = addr;
    k->dport = port;
    k->proto = proto;
    k->scope = scope;
    return lb4_services.lookup(k);
}

static __always_inline int backend_usable(__u32 id) {
    struct lb4_backend *b = lb4_backends.lookup(&id);
    return b && b->state == BACKEND_ACTIVE;
}

/* The backend for a new connection of a frontend (k: its slot-0 key), or 0 when it has none
 * to offer. `client`: who sticks to a backend under session affinity and whom source_hash
 * hashes; `hash`: maglev's key (the connection). Active backends first; terminating ones
 * only when none is active. */
static __always_inline __u32 select_backend(struct lb4_key *k, struct lb4_service *svc, __u64 client, __u8 netns,
                                            __u32 hash) {
    __u32 n = svc->count, rev = svc->rev_nat_index, id = 0;
    __u8 algorithm = svc->algorithm, affinity = svc->flags & SVC_F_AFFINITY;
    __u64 timeout_ns = (__u64)svc->affinity_timeout * 1000000000ULL;
    if (!n) /* the terminating backends: slots 1..qcount when no backend is active */
        n = svc->qcount;
    if (!n)
        return 0;
    struct lb_affinity_key ak = {.client = client, .rev_nat_index = rev, .netns = netns};
    __u64 now = bpf_ktime_get_ns();
    if (affinity) {
        struct lb_affinity_val *a = lb_affinity.lookup(&ak);
        if (a && now - a->last_used < timeout_ns && backend_usable(a->backend_id)) {
            a->last_used = now;
            return a->backend_id;
        }
    }
    __u32 index;
    if (algorithm == ALG_ROUND_ROBIN) {
        __u32 *next = lb_rr.lookup(&rev);
        index = 0;
        if (next) {
            __sync_fetch_and_add(next, 1);
            index = *next % n;
        }
    } else if (algorithm == ALG_SOURCE_HASH) {
        index = mix32((__u32)client ^ (__u32)(client >> 32) ^ LB_HASH_SEED) % n;
    } else if (algorithm == ALG_MAGLEV && svc->count) {
        struct lb_maglev *table = lb4_maglev.lookup(&rev);
        __u32 at = hash % LB_MAGLEV_M;
        asm volatile("" : "+r"(at)); /* keep the bounds check below: the verifier needs it */
        if (table && at < LB_MAGLEV_M)
            id = table->backend_ids[at];
        index = hash % n;
    } else {
        index = bpf_get_prandom_u32() % n;
    }
    if (!id) {
        k->slot = 1 + index;
        struct lb4_service *slot = lb4_services.lookup(k);
        k->slot = 0;
        if (!slot)
            return 0;
        id = slot->backend_id;
    }
    if (affinity) {
        struct lb_affinity_val v = {.last_used = now, .backend_id = id};
        lb_affinity.update(&ak, &v);
    }
    return id;
}

/* ---- per-packet translation (tc) ----------------------------------------------------------- */

/* The IPv4 header and ports of a TCP or UDP packet without IP options; 0 otherwise. */
struct l4_tuple {
    __be32 saddr, daddr;
    __be16 sport, dport;
    __u8 proto, tcp_flags;
};

static __always_inline int parse_tuple(struct __sk_buff *skb, struct l4_tuple *t) {
    void *data = (void *)(long)skb->data, *data_end = (void *)(long)skb->data_end;
    struct ethhdr *eth = data;
    struct iphdr *ip = (void *)(eth + 1);
    if ((void *)(ip + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP) || ip->ihl != 5)
        return 0;
    if (ip->protocol != IPPROTO_TCP && ip->protocol != IPPROTO_UDP)
        return 0;
    if (ip->frag_off & bpf_htons(0x1fff))
        return 0;
    __u8 *l4 = (void *)(ip + 1);
    if ((void *)(l4 + 14) > data_end && (ip->protocol == IPPROTO_TCP || (void *)(l4 + 8) > data_end))
        return 0;
    t->saddr = ip->saddr;
    t->daddr = ip->daddr;
    __builtin_memcpy(&t->sport, l4, 2);
    __builtin_memcpy(&t->dport, l4 + 2, 2);
    t->proto = ip->protocol;
    t->tcp_flags = ip->protocol == IPPROTO_TCP ? l4[13] : 0;
    return 1;
}

#define IP_OFF ETH_HLEN
#define L4_OFF (ETH_HLEN + sizeof(struct iphdr))

/* Rewrite the source (or destination) address and port, with incremental checksum updates. */
static __always_inline int nat4(struct __sk_buff *skb, __u8 proto, int source, __be32 old_addr, __be32 new_addr,
                                __be16 old_port, __be16 new_port) {
    int addr_off = IP_OFF + (source ? offsetof(struct iphdr, saddr) : offsetof(struct iphdr, daddr));
    int port_off = L4_OFF + (source ? 0 : 2);
    int csum_off = L4_OFF + (proto == IPPROTO_TCP ? 16 : 6);
    __u64 mangled = proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;
    if (old_addr != new_addr) {
        if (bpf_l4_csum_replace(skb, csum_off, old_addr, new_addr, BPF_F_PSEUDO_HDR | mangled | 4) < 0 ||
            bpf_l3_csum_replace(skb, IP_OFF + offsetof(struct iphdr, check), old_addr, new_addr, 4) < 0 ||
            bpf_skb_store_bytes(skb, addr_off, &new_addr, 4, 0) < 0)
            return -1;
    }
    if (old_port != new_port) {
        if (bpf_l4_csum_replace(skb, csum_off, old_port, new_port, mangled | 2) < 0 ||
            bpf_skb_store_bytes(skb, port_off, &new_port, 2, 0) < 0)
            return -1;
    }
    return 0;
}

static __always_inline __u16 csum_fold(__u32 sum) {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    return ~sum;
}

struct icmp_reject {
    struct iphdr ip;
    struct icmphdr icmp;
    struct iphdr inner;
    __u8 inner_l4[8];
} __attribute__((packed));

/* Answer a packet for a service without backends with ICMP port unreachable, sent back out of
 * the device it came in on: TCP connects fail with ECONNREFUSED, connected UDP sockets see it. */
static __always_inline int reject4(struct __sk_buff *skb) {
    struct icmp_reject r = {};
    __u8 macs[12], swapped[12];
    if (bpf_skb_load_bytes(skb, 0, macs, 12) < 0 || bpf_skb_load_bytes(skb, IP_OFF, &r.inner, 20) < 0 ||
        bpf_skb_load_bytes(skb, L4_OFF, r.inner_l4, 8) < 0)
        return TC_ACT_SHOT;
    __builtin_memcpy(swapped, macs + 6, 6);
    __builtin_memcpy(swapped + 6, macs, 6);
    r.ip.version = 4;
    r.ip.ihl = 5;
    r.ip.ttl = 64;
    r.ip.protocol = IPPROTO_ICMP;
    r.ip.tot_len = bpf_htons(sizeof(r));
    r.ip.saddr = r.inner.daddr;
    r.ip.daddr = r.inner.saddr;
    r.icmp.type = ICMP_DEST_UNREACH;
    r.icmp.code = ICMP_PORT_UNREACH;
    r.ip.check = csum_fold(bpf_csum_diff(0, 0, (__be32 *)&r.ip, sizeof(r.ip), 0));
    r.icmp.checksum = csum_fold(bpf_csum_diff(0, 0, (__be32 *)&r.icmp, sizeof(r) - sizeof(r.ip), 0));
    if (bpf_skb_change_tail(skb, ETH_HLEN + sizeof(r), 0) < 0 ||
        bpf_skb_store_bytes(skb, 0, swapped, 12, 0) < 0 ||
        bpf_skb_store_bytes(skb, IP_OFF, &r, sizeof(r), BPF_F_INVALIDATE_HASH) < 0)
        return TC_ACT_SHOT;
    return bpf_redirect(skb->ifindex, 0);
}

/* Record both directions of a new translated connection. */
static __always_inline void ct_create(struct l4_tuple *t, struct lb4_backend *b, __u32 backend_id, __u16 rev,
                                      __be32 snat_addr, __be16 snat_port, __u32 reply_ifindex) {
    __u64 now = bpf_ktime_get_ns();
    struct lb4_ct_key fk = {.saddr = t->saddr, .daddr = t->daddr, .sport = t->sport, .dport = t->dport,
                            .proto = t->proto, .dir = CT_FORWARD};
    struct lb4_ct_entry fe = {.last_seen = now, .addr2 = snat_addr, .port2 = snat_port, .backend_id = backend_id,
                              .rev_nat_index = rev};
    lb4_ct.update(&fk, &fe);
    struct lb4_ct_key rk = {.saddr = b->address, .daddr = snat_addr ? snat_addr : t->saddr, .sport = b->port,
                            .dport = snat_addr ? snat_port : t->sport, .proto = t->proto, .dir = CT_REVERSE};
    struct lb4_ct_entry re = {.last_seen = now, .addr = t->daddr, .port = t->dport,
                              .addr2 = snat_addr ? t->saddr : 0, .port2 = snat_addr ? t->sport : 0,
                              .backend_id = backend_id, .ifindex = reply_ifindex, .rev_nat_index = rev};
    lb4_ct.update(&rk, &re);
}

/* A reply of a translated connection: give it the frontend's address as source (and the
 * client's as destination when its source was replaced). Returns 1 when translated and sets
 * *ifindex to the device the reply must leave by (0: continue here); -1 on a write error. */
static __always_inline int ct_reverse(struct __sk_buff *skb, struct l4_tuple *t, __u32 *ifindex) {
    struct lb4_ct_key rk = {.saddr = t->saddr, .daddr = t->daddr, .sport = t->sport, .dport = t->dport,
                            .proto = t->proto, .dir = CT_REVERSE};
    struct lb4_ct_entry *e = lb4_ct.lookup(&rk);
    if (!e)
        return 0;
    struct lb4_ct_entry r = *e;
    e->last_seen = bpf_ktime_get_ns();
    *ifindex = r.ifindex;
    if (nat4(skb, t->proto, 1, t->saddr, r.addr, t->sport, r.port) < 0)
        return -1;
    if (r.addr2 && nat4(skb, t->proto, 0, t->daddr, r.addr2, t->dport, r.port2) < 0)
        return -1;
    return 1;
}

/* The backend of an established translated connection, if it still exists; 0 otherwise
 * (and for a new TCP connection on an old tuple: a SYN). */
static __always_inline __u32 ct_forward(struct l4_tuple *t) {
    if ((t->tcp_flags & 0x12) == 0x02)
        return 0;
    struct lb4_ct_key fk = {.saddr = t->saddr, .daddr = t->daddr, .sport = t->sport, .dport = t->dport,
                            .proto = t->proto, .dir = CT_FORWARD};
    struct lb4_ct_entry *e = lb4_ct.lookup(&fk);
    if (!e)
        return 0;
    e->last_seen = bpf_ktime_get_ns();
    __u32 id = e->backend_id;
    return lb4_backends.lookup(&id) ? id : 0;
}

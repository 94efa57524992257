/* Connectivity stages: deliver a pod's packet to another local pod (BPF redirect, no trip
 * through the host's stack), to a pod on another node (into the tunnel, or in native routing
 * straight out of the device the FIB names), or hand it to the stack; answer ARP for the
 * pod's gateway. */
#include "pylium_lib.h"
#include "connectivity_maps.h"
#include "connectivity_lib.h"

#include <uapi/linux/if_arp.h>

#ifndef CONN_TUNNEL
#define CONN_TUNNEL 0 /* routingMode tunnel: pods on other nodes are reached through the tunnel device */
#endif

struct arp_eth {
    __u8 sha[6];
    __be32 sip;
    __u8 tha[6];
    __be32 tip;
} __attribute__((packed));

/* Answer every ARP request of a pod (except for its own address) with the gateway's MAC. */
static __always_inline int arp_reply(struct __sk_buff *skb, struct lxc_info *lxc) {
    void *data = (void *)(long)skb->data, *data_end = (void *)(long)skb->data_end;
    struct ethhdr *eth = data;
    struct arphdr *arp = (void *)(eth + 1);
    struct arp_eth *body = (void *)(arp + 1);
    if ((void *)(body + 1) > data_end || arp->ar_op != bpf_htons(ARPOP_REQUEST) || body->tip == lxc->ip4)
        return TC_ACT_OK;
    __u8 requester[6];
    __be32 sip = body->sip, tip = body->tip;
    __builtin_memcpy(requester, body->sha, 6);
    __builtin_memcpy(eth->h_dest, requester, 6);
    __builtin_memcpy(eth->h_source, lxc->host_mac, 6);
    arp->ar_op = bpf_htons(ARPOP_REPLY);
    __builtin_memcpy(body->sha, lxc->host_mac, 6);
    body->sip = tip;
    __builtin_memcpy(body->tha, requester, 6);
    body->tip = sip;
    return bpf_redirect(skb->ifindex, 0);
}

/* In this node's pod blocks, yet neither an endpoint nor a host address (the gateway). */
static __always_inline int unroutable(struct endpoint_key *dst) {
    struct ipcache_key k = {.prefixlen = 32 + (dst->family == 4 ? 32 : 128), .family = dst->family};
    __builtin_memcpy(k.addr, dst->addr, 16);
    if (!local_blocks.lookup(&k))
        return 0;
    struct ipcache_info *info = ipcache.lookup(&k);
    return !(info && info->identity == ID_HOST);
}

/* A routed packet's TTL (hop limit) goes down by one; -1 when it may not be forwarded. */
static __always_inline int ttl_decrement(struct __sk_buff *skb, int v6) {
    void *data = (void *)(long)skb->data, *data_end = (void *)(long)skb->data_end;
    struct ethhdr *eth = data;
    if (v6) {
        struct ipv6hdr *ip6 = (void *)(eth + 1);
        if ((void *)(ip6 + 1) > data_end || ip6->hop_limit <= 1)
            return -1;
        ip6->hop_limit -= 1;
        return 0;
    }
    struct iphdr *ip = (void *)(eth + 1);
    if ((void *)(ip + 1) > data_end || ip->ttl <= 1)
        return -1;
    ip4_ttl_decrement(ip);
    return 0;
}

/* Route to a local endpoint: rewrite MACs, decrement the TTL, then run the destination's
 * to-container stages, which end in to_delivery below. */
static __always_inline int deliver_local(struct __sk_buff *skb, struct endpoint_info *ep, int v6) {
    if (ttl_decrement(skb, v6) < 0)
        return DROP(skb, DROP_TTL_EXCEEDED, METRIC_EGRESS);
    void *data = (void *)(long)skb->data, *data_end = (void *)(long)skb->data_end;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > data_end)
        return DROP(skb, DROP_INVALID, METRIC_EGRESS);
    __builtin_memcpy(eth->h_dest, ep->mac, 6);
    __builtin_memcpy(eth->h_source, ep->host_mac, 6);
    skb->cb[CB_FLAGS] |= CB_F_LOCAL;
    skb->cb[CB_ENDPOINTS] = cb_src_ep(skb) | ((__u32)ep->ep_id << 16);
    skb->cb[CB_DELIVER] = ep->ifindex;
    skb->cb[CB_DST_ID] = ep->identity;
    count(skb, 0, METRIC_EGRESS);
    return to_chain(skb, 0);
}

#if CONN_TUNNEL
/* A destination behind another node (its ipcache entry names a tunnel endpoint): the TTL goes
 * down, the source's security identity goes in the VNI, and the tunnel device sends it.
 * -1: the destination is not behind another node. */
static __always_inline int deliver_remote(struct __sk_buff *skb, struct endpoint_key *dst) {
    struct ipcache_key k = {.prefixlen = 32 + 32, .family = 4};
    __builtin_memcpy(k.addr, dst->addr, 4);
    struct ipcache_info *info = ipcache.lookup(&k);
    if (!info || !info->tunnel_ip4)
        return -1;
    __u32 zero = 0;
    struct tunnel_config *tunnel = tunnel_config.lookup(&zero);
    if (!tunnel || !tunnel->ifindex)
        return DROP(skb, DROP_NO_TUNNEL_OR_ENCAPSULATION_ENDPOINT, METRIC_EGRESS);
    if (ttl_decrement(skb, 0) < 0)
        return DROP(skb, DROP_TTL_EXCEEDED, METRIC_EGRESS);
    struct bpf_tunnel_key key = {};
    key.remote_ipv4 = bpf_ntohl(info->tunnel_ip4);
    key.tunnel_id = skb->cb[CB_SRC_ID];
    key.tunnel_ttl = 64;
    if (bpf_skb_set_tunnel_key(skb, &key, sizeof(key), BPF_F_ZERO_CSUM_TX) < 0)
        return DROP(skb, DROP_NO_TUNNEL_OR_ENCAPSULATION_ENDPOINT, METRIC_EGRESS);
    count(skb, 0, METRIC_EGRESS);
    TRACE(skb, TRACE_TO_OVERLAY, METRIC_EGRESS);
    return bpf_redirect(tunnel->ifindex, 0);
}
#else
/* A pod of another node (the ipcache names its node) in native routing: routed by the FIB and
 * sent straight out of the device towards it, not through this node's stack. -1: not such a
 * destination, or no route: the stack decides. */
static __always_inline int deliver_routed(struct __sk_buff *skb, struct endpoint_key *dst) {
    struct ipcache_key k = {.prefixlen = 32 + 32, .family = 4};
    __builtin_memcpy(k.addr, dst->addr, 4);
    struct ipcache_info *info = ipcache.lookup(&k);
    if (!info || !info->tunnel_ip4)
        return -1;
    void *data = (void *)(long)skb->data, *data_end = (void *)(long)skb->data_end;
    struct ethhdr *eth = data;
    struct iphdr *ip = (void *)(eth + 1);
    if ((void *)(ip + 1) > data_end)
        return -1;
    struct bpf_fib_lookup fib = {.family = 2 /* AF_INET */, .ipv4_src = ip->saddr, .ipv4_dst = ip->daddr,
                                 .tos = ip->tos, .l4_protocol = ip->protocol, .ifindex = skb->ifindex};
    int found = bpf_fib_lookup(skb, &fib, sizeof(fib), 0);
    if (found != BPF_FIB_LKUP_RET_SUCCESS && found != BPF_FIB_LKUP_RET_NO_NEIGH)
        return -1;
    if (ttl_decrement(skb, 0) < 0)
        return DROP(skb, DROP_TTL_EXCEEDED, METRIC_EGRESS);
    count(skb, 0, METRIC_EGRESS);
    TRACE(skb, TRACE_TO_NETWORK, METRIC_EGRESS);
    if (found == BPF_FIB_LKUP_RET_NO_NEIGH)
        return redirect_neigh(fib.ifindex, 0, 0, 0);
    data = (void *)(long)skb->data, data_end = (void *)(long)skb->data_end;
    eth = data;
    if ((void *)(eth + 1) > data_end)
        return DROP(skb, DROP_INVALID, METRIC_EGRESS);
    __builtin_memcpy(eth->h_dest, fib.dmac, 6);
    __builtin_memcpy(eth->h_source, fib.smac, 6);
    return bpf_redirect(fib.ifindex, 0);
}
#endif

/* from-container, last slot: where a pod's packet goes next. */
int from_delivery(struct __sk_buff *skb) {
    void *data = (void *)(long)skb->data, *data_end = (void *)(long)skb->data_end;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > data_end)
        return DROP(skb, DROP_INVALID, METRIC_EGRESS);
    struct endpoint_key dst;
    int v6 = 0;
    if (eth->h_proto == bpf_htons(ETH_P_ARP)) {
        __u32 ifindex = skb->ifindex;
        struct lxc_info *lxc = lxc_by_ifindex.lookup(&ifindex);
        return lxc ? arp_reply(skb, lxc) : TC_ACT_OK;
    } else if (eth->h_proto == bpf_htons(ETH_P_IP)) {
        struct iphdr *ip = (void *)(eth + 1);
        if ((void *)(ip + 1) > data_end)
            return DROP(skb, DROP_INVALID, METRIC_EGRESS);
        key_v4(&dst, ip->daddr);
    } else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
        struct ipv6hdr *ip6 = (void *)(eth + 1);
        if ((void *)(ip6 + 1) > data_end)
            return DROP(skb, DROP_INVALID, METRIC_EGRESS);
        if (ip6->daddr.in6_u.u6_addr8[0] == 0xff)
            return TC_ACT_OK; /* multicast (neighbour discovery): the stack's */
        key_v6(&dst, &ip6->daddr);
        v6 = 1;
    } else {
        return TC_ACT_OK;
    }
    struct endpoint_info *ep = endpoints.lookup(&dst);
    if (ep)
        return deliver_local(skb, ep, v6);
    if (unroutable(&dst))
        return DROP(skb, DROP_UNROUTABLE, METRIC_EGRESS);
    if (!v6) {
#if CONN_TUNNEL
        int sent = deliver_remote(skb, &dst);
#else
        int sent = deliver_routed(skb, &dst);
#endif
        if (sent >= 0)
            return sent;
    }
    count(skb, 0, METRIC_EGRESS);
    TRACE(skb, TRACE_TO_STACK, METRIC_EGRESS);
    return TC_ACT_OK; /* the host, or beyond it (routed, masqueraded) */
}

/* to-container, last slot: hand the packet to the pod. */
int to_delivery(struct __sk_buff *skb) {
    count(skb, 0, METRIC_INGRESS);
    if (skb->cb[CB_FLAGS] & CB_F_LOCAL) {
        __u64 fast_until = TRACE_DEV(skb, TRACE_TO_LXC, METRIC_INGRESS, skb->cb[CB_DELIVER]);
        fast_remember(skb, fast_until);
        return bpf_redirect_peer(skb->cb[CB_DELIVER], 0);
    }
    TRACE(skb, TRACE_TO_LXC, METRIC_INGRESS);
    return TC_ACT_OK;
}

/* tc ingress of the node's device in native routing (not a stage: attached by the plugin): a
 * packet for a local pod, from a pod of another node routed by the network, goes through the
 * pod's to-container stages and straight into the pod, not through this node's stack;
 * anything else goes on (to the stack). */
int from_netdev(struct __sk_buff *skb) {
    void *data = (void *)(long)skb->data, *data_end = (void *)(long)skb->data_end;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
        return TC_ACT_UNSPEC;
    struct iphdr *ip = (void *)(eth + 1);
    if ((void *)(ip + 1) > data_end)
        return TC_ACT_UNSPEC;
    struct endpoint_key dst;
    key_v4(&dst, ip->daddr);
    struct endpoint_info *ep = endpoints.lookup(&dst);
    if (!ep)
        return TC_ACT_UNSPEC;
    struct ipcache_key k = {.prefixlen = 32 + 32, .family = 4};
    __builtin_memcpy(k.addr, &ip->saddr, 4);
    struct ipcache_info *info = ipcache.lookup(&k);
    __u32 src_id = info ? info->identity : ID_WORLD;
    if (ttl_decrement(skb, 0) < 0)
        return TC_ACT_UNSPEC; /* the stack answers: time exceeded */
    return enter_pod(skb, ep, src_id, TRACE_FROM_NETWORK);
}

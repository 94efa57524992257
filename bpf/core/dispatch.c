/* The core's dispatch programs, one per attach point: identify the endpoint, set the skb->cb
 * facts, then run the stage programs plugins put in the attach point's slots. */
#include "pylium_lib.h"

/* tc ingress of an endpoint's host-side veth: a packet from the pod. */
int from_container(struct __sk_buff *skb) {
    struct fast_state *fast = fast_settings();
    if (fast && fast->enabled) {
        int verdict = fast_forward(skb, fast);
        if (verdict >= 0)
            return verdict;
    }
    __u32 ifindex = skb->ifindex;
    struct lxc_info *lxc = lxc_by_ifindex.lookup(&ifindex);
    if (!lxc)
        return TC_ACT_OK; /* not (or no longer) an endpoint of ours */
    cb_reset(skb, lxc->ep_id, 0, lxc->identity, 0);
    if (fast && fast->enabled)
        fast_allow(skb, fast);

    void *data = (void *)(long)skb->data, *data_end = (void *)(long)skb->data_end;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > data_end)
        return DROP(skb, DROP_INVALID, METRIC_EGRESS);
    if (eth->h_proto == bpf_htons(ETH_P_IP)) {
        struct iphdr *ip = (void *)(eth + 1);
        if ((void *)(ip + 1) > data_end)
            return DROP(skb, DROP_INVALID, METRIC_EGRESS);
        if (ip->saddr != lxc->ip4) /* a pod speaks only from its own address */
            return DROP(skb, DROP_INVALID_SOURCE_IP, METRIC_EGRESS);
    } else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
        struct ipv6hdr *ip6 = (void *)(eth + 1);
        if ((void *)(ip6 + 1) > data_end)
            return DROP(skb, DROP_INVALID, METRIC_EGRESS);
        /* link-local and unspecified sources serve neighbour discovery */
        __u8 first = ip6->saddr.in6_u.u6_addr8[0], second = ip6->saddr.in6_u.u6_addr8[1];
        int link_local = first == 0xfe && (second & 0xc0) == 0x80;
        int unspecified = ip6->saddr.in6_u.u6_addr32[0] == 0 && ip6->saddr.in6_u.u6_addr32[1] == 0 &&
                          ip6->saddr.in6_u.u6_addr32[2] == 0 && ip6->saddr.in6_u.u6_addr32[3] == 0;
        __u32 *own = (__u32 *)lxc->ip6;
        int same = ip6->saddr.in6_u.u6_addr32[0] == own[0] && ip6->saddr.in6_u.u6_addr32[1] == own[1] &&
                   ip6->saddr.in6_u.u6_addr32[2] == own[2] && ip6->saddr.in6_u.u6_addr32[3] == own[3];
        if (!link_local && !unspecified && !same)
            return DROP(skb, DROP_INVALID_SOURCE_IP, METRIC_EGRESS);
    }
    TRACE(skb, TRACE_FROM_LXC, METRIC_EGRESS);
    return from_chain(skb, 0);
}

/* Who sent a packet that reaches a pod through the host's stack: the ipcache's identity of its
 * source address; reserved:world when the ipcache does not know it, reserved:host for non-IP. */
static __always_inline __u32 stack_source_identity(struct __sk_buff *skb) {
    void *data = (void *)(long)skb->data, *data_end = (void *)(long)skb->data_end;
    struct ethhdr *eth = data;
    struct ipcache_key k = {};
    if ((void *)(eth + 1) > data_end)
        return ID_HOST;
    if (eth->h_proto == bpf_htons(ETH_P_IP)) {
        struct iphdr *ip = (void *)(eth + 1);
        if ((void *)(ip + 1) > data_end)
            return ID_WORLD;
        k.prefixlen = 32 + 32;
        k.family = 4;
        __builtin_memcpy(k.addr, &ip->saddr, 4);
    } else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
        struct ipv6hdr *ip6 = (void *)(eth + 1);
        if ((void *)(ip6 + 1) > data_end)
            return ID_WORLD;
        __u32 first = bpf_ntohl(ip6->saddr.in6_u.u6_addr32[0]);
        if ((first & 0xffc00000) == 0xfe800000 || (first == 0 && ip6->saddr.in6_u.u6_addr32[3] == 0))
            return ID_HOST; /* link-local or unspecified: the host's own neighbour discovery */
        k.prefixlen = 32 + 128;
        k.family = 6;
        __builtin_memcpy(k.addr, &ip6->saddr, 16);
    } else {
        return ID_HOST;
    }
    struct ipcache_info *info = ipcache.lookup(&k);
    return info ? info->identity : ID_WORLD;
}

/* tc egress of an endpoint's host-side veth: a packet from the host's stack to the pod. */
int to_container(struct __sk_buff *skb) {
    __u32 ifindex = skb->ifindex;
    struct lxc_info *lxc = lxc_by_ifindex.lookup(&ifindex);
    if (!lxc)
        return TC_ACT_OK;
    __u32 magic = skb->mark & MARK_MAGIC_MASK;
    if (magic == MARK_MAGIC_INGRESS_PROXY || magic == MARK_MAGIC_EGRESS_PROXY) {
        /* an L7 proxy's upstream connection: the identity it speaks for is in the mark */
        __u32 identity = (skb->mark >> 16) | ((skb->mark & 0xff) << 16);
        cb_reset(skb, 0, lxc->ep_id, identity, lxc->identity);
        skb->cb[CB_FLAGS] |= CB_F_TC_EGRESS | (magic == MARK_MAGIC_INGRESS_PROXY ? CB_F_FROM_PROXY : 0);
        TRACE(skb, TRACE_FROM_PROXY, METRIC_INGRESS);
        return to_chain(skb, 0);
    }
    cb_reset(skb, 0, lxc->ep_id, stack_source_identity(skb), lxc->identity);
    skb->cb[CB_FLAGS] |= CB_F_TC_EGRESS;
    TRACE(skb, TRACE_FROM_STACK, METRIC_INGRESS);
    return to_chain(skb, 0);
}

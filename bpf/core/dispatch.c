/* The core's dispatch programs, one per attach point: identify the endpoint, set the skb->cb
 * facts, then run the stage programs plugins put in the attach point's slots. */
#include "pylium_lib.h"

/* tc ingress of an endpoint's host-side veth: a packet from the pod. */
int from_container(struct __sk_buff *skb) {
    __u32 ifindex = skb->ifindex;
    struct lxc_info *lxc = lxc_by_ifindex.lookup(&ifindex);
    if (!lxc)
        return TC_ACT_OK; /* not (or no longer) an endpoint of ours */
    cb_reset(skb, lxc->ep_id, 0, lxc->identity, 0);

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
    return from_chain(skb, 0);
}

/* tc egress of an endpoint's host-side veth: a packet from the host's stack to the pod. */
int to_container(struct __sk_buff *skb) {
    __u32 ifindex = skb->ifindex;
    struct lxc_info *lxc = lxc_by_ifindex.lookup(&ifindex);
    if (!lxc)
        return TC_ACT_OK;
    cb_reset(skb, 0, lxc->ep_id, ID_HOST, lxc->identity);
    return to_chain(skb, 0);
}

/* The tunnel device's programs (routingMode tunnel): packets between nodes travel in VXLAN
 * with the sender's security identity in the VNI, so the receiving node enforces policy
 * without another lookup. */
#include "pylium_lib.h"
#include "connectivity_maps.h"
#include "connectivity_lib.h"

/* tc ingress of the tunnel device: a packet from another node, decapsulated. To a local pod it
 * goes through the pod's to-container stages (policy with the VNI's identity) and straight
 * into the pod; anything else goes on to the hook's next program, then this node's stack. */
int from_overlay(struct __sk_buff *skb) {
    struct bpf_tunnel_key key = {};
    if (bpf_skb_get_tunnel_key(skb, &key, sizeof(key), 0) < 0)
        return DROP(skb, DROP_ERROR_RETRIEVING_TUNNEL_KEY, METRIC_INGRESS);
    __u32 src_id = key.tunnel_id;
    if (src_id == ID_HOST) /* a node sends its host's packets as remote-node: this one lies */
        return DROP(skb, DROP_INVALID_IDENTITY, METRIC_INGRESS);
    void *data = (void *)(long)skb->data, *data_end = (void *)(long)skb->data_end;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > data_end)
        return DROP(skb, DROP_INVALID, METRIC_INGRESS);
    struct endpoint_info *ep = 0;
    if (eth->h_proto == bpf_htons(ETH_P_IP)) {
        struct iphdr *ip = (void *)(eth + 1);
        if ((void *)(ip + 1) > data_end)
            return DROP(skb, DROP_INVALID, METRIC_INGRESS);
        struct endpoint_key dst;
        key_v4(&dst, ip->daddr);
        ep = endpoints.lookup(&dst);
    }
    if (!ep) {
        cb_reset(skb, 0, 0, src_id, ID_HOST);
        TRACE(skb, TRACE_FROM_OVERLAY, METRIC_INGRESS);
        /* the inner frame is addressed to the sender's device: make it this host's */
        bpf_skb_change_type(skb, 0 /* PACKET_HOST */);
        return TC_ACT_UNSPEC; /* the next program on this hook (the load balancer's), then the stack */
    }
    return enter_pod(skb, ep, src_id, TRACE_FROM_OVERLAY);
}

/* tc egress of the tunnel device. A pod's packet was given its tunnel key by the delivery
 * stage; the host's own packets (routed to other nodes' pod CIDRs through this device) get
 * one here, from the ipcache, with the remote-node identity. */
int to_overlay(struct __sk_buff *skb) {
    struct bpf_tunnel_key key = {};
    if (bpf_skb_get_tunnel_key(skb, &key, sizeof(key), 0) == 0)
        return TC_ACT_OK;
    void *data = (void *)(long)skb->data, *data_end = (void *)(long)skb->data_end;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
        return DROP(skb, DROP_NO_TUNNEL_OR_ENCAPSULATION_ENDPOINT, METRIC_EGRESS);
    struct iphdr *ip = (void *)(eth + 1);
    if ((void *)(ip + 1) > data_end)
        return DROP(skb, DROP_INVALID, METRIC_EGRESS);
    struct ipcache_key k = {.prefixlen = 32 + 32, .family = 4};
    __builtin_memcpy(k.addr, &ip->daddr, 4);
    struct ipcache_info *info = ipcache.lookup(&k);
    if (!info || !info->tunnel_ip4)
        return DROP(skb, DROP_NO_TUNNEL_OR_ENCAPSULATION_ENDPOINT, METRIC_EGRESS);
    key.remote_ipv4 = bpf_ntohl(info->tunnel_ip4);
    key.tunnel_id = ID_REMOTE_NODE;
    key.tunnel_ttl = 64;
    if (bpf_skb_set_tunnel_key(skb, &key, sizeof(key), BPF_F_ZERO_CSUM_TX) < 0)
        return DROP(skb, DROP_NO_TUNNEL_OR_ENCAPSULATION_ENDPOINT, METRIC_EGRESS);
    return TC_ACT_OK;
}

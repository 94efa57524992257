/* Helpers of the connectivity plugin's programs (spliced into each). */
#pragma once

/* A packet that reached this node for a local pod (from the tunnel or the network): addressed
 * to the pod, then through its to-container stages (policy with `src_id`) and into it. */
static __always_inline int enter_pod(struct __sk_buff *skb, struct endpoint_info *ep, __u32 src_id, __u8 obs) {
    void *data = (void *)(long)skb->data, *data_end = (void *)(long)skb->data_end;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > data_end)
        return DROP(skb, DROP_INVALID, METRIC_INGRESS);
    __builtin_memcpy(eth->h_dest, ep->mac, 6);
    __builtin_memcpy(eth->h_source, ep->host_mac, 6);
    cb_reset(skb, 0, ep->ep_id, src_id, ep->identity);
    skb->cb[CB_FLAGS] |= CB_F_LOCAL;
    skb->cb[CB_DELIVER] = ep->ifindex;
    TRACE(skb, obs, METRIC_INGRESS);
    return to_chain(skb, 0);
}

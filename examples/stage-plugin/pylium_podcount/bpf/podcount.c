/* Count every packet a pod sends or receives, then go on with the next slot. The core's
 * dispatcher has already found the endpoint: its id is in skb->cb (cb_src_ep / cb_dst_ep).
 * PODCOUNT_SLOT comes from the plugin (declare.bpf_defines), so C and Python agree on it. */
#include "pylium_lib.h"
#include "podcount_maps.h"

int podcount_from(struct __sk_buff *skb) {
    __u32 ep = cb_src_ep(skb);
    struct pod_count *c = pod_counts.lookup(&ep);
    if (c) {
        c->tx_packets += 1;
        c->tx_bytes += skb->len;
    }
    /* Returning TC_ACT_OK here would end the chain: the packet would skip the slots after
     * this one (local delivery among them) and go to the host's stack. */
    return from_chain(skb, PODCOUNT_SLOT + 1);
}

int podcount_to(struct __sk_buff *skb) {
    __u32 ep = cb_dst_ep(skb);
    struct pod_count *c = pod_counts.lookup(&ep);
    if (c) {
        c->rx_packets += 1;
        c->rx_bytes += skb->len;
    }
    return to_chain(skb, PODCOUNT_SLOT + 1);
}

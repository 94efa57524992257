/* tc ingress of the node's devices: NodePort, externalIPs and LoadBalancer addresses for
 * clients outside the node. The packet's destination becomes a backend, its source the
 * device's address (loadBalancer.mode snat) unless externalTrafficPolicy is Local; the
 * backend's reply is translated back by lb.c and sent out of this device. Anything else goes
 * on (TC_ACT_UNSPEC) to the device's next program (connectivity's, a later priority), then
 * the stack. */
#include "pylium_lib.h"
#include "lb_lib.h"

/* A source port for the node's address towards a backend that no other translated
 * connection uses: the client's own if free, else one derived from the tuple. */
static __always_inline __be16 snat_port(struct l4_tuple *t, struct lb4_backend *b, __be32 snat) {
    struct lb4_ct_key rk = {.saddr = b->address, .daddr = snat, .sport = b->port, .proto = t->proto,
                            .dir = CT_REVERSE};
    __u32 h = hash_tuple(t->saddr, t->daddr, t->sport, t->dport, t->proto);
    __be16 port = t->sport;
#pragma unroll
    for (int i = 0; i < 8; i++) {
        rk.dport = port;
        if (!lb4_ct.lookup(&rk))
            return port;
        port = bpf_htons(32768 + (mix32(h + i) % 28232)); /* 32768-60999 */
    }
    return 0;
}

/* Hand a translated packet to a local backend pod (its to-container stages) or route it. */
static __always_inline int forward(struct __sk_buff *skb, __be32 backend) {
    struct endpoint_key ek;
    key_v4(&ek, backend);
    struct endpoint_info *ep = endpoints.lookup(&ek);
    if (ep) {
        __u8 macs[12];
        __builtin_memcpy(macs, ep->mac, 6);
        __builtin_memcpy(macs + 6, ep->host_mac, 6);
        if (bpf_skb_store_bytes(skb, 0, macs, 12, 0) < 0)
            return DROP(skb, DROP_WRITE_ERROR, METRIC_INGRESS);
        cb_reset(skb, 0, ep->ep_id, ID_WORLD, ep->identity);
        skb->cb[CB_FLAGS] |= CB_F_LOCAL;
        skb->cb[CB_DELIVER] = ep->ifindex;
        return to_chain(skb, 0);
    }
    /* routed as a forwarded packet (an output lookup bound to this device would take any
     * address as on-link here, and a backend behind the tunnel is not) */
    struct bpf_fib_lookup fib = {.family = 2 /* AF_INET */, .ipv4_dst = backend, .ifindex = skb->ifindex};
    int found = bpf_fib_lookup(skb, &fib, sizeof(fib), 0);
    if (found != BPF_FIB_LKUP_RET_SUCCESS && found != BPF_FIB_LKUP_RET_NO_NEIGH)
        return DROP(skb, DROP_UNROUTABLE, METRIC_INGRESS);
    return redirect_neigh(fib.ifindex, 0, 0, 0);
}

int lb_nodeport(struct __sk_buff *skb) {
    struct l4_tuple t;
    if (!parse_tuple(skb, &t))
        return TC_ACT_UNSPEC;
    __u32 ifindex = skb->ifindex;
    struct lb_device *dev = lb_devices.lookup(&ifindex);
    if (!dev)
        return TC_ACT_UNSPEC;
    __be32 node_addr = dev->address;

    /* the reply of a backend beyond the node (forward() routed the request to it) */
    __u32 out = 0;
    int replied = ct_reverse(skb, &t, &out);
    if (replied < 0)
        return DROP(skb, DROP_WRITE_ERROR, METRIC_INGRESS);
    if (replied)
        return out ? redirect_neigh(out, 0, 0, 0) : TC_ACT_OK;

    struct lb4_key k;
    struct lb4_service *svc = svc_lookup(&k, t.daddr, t.dport, t.proto, LB_SCOPE_EXTERNAL);
    if (!svc)
        svc = svc_lookup(&k, t.daddr, t.dport, t.proto, LB_SCOPE_INTERNAL);
    if (!svc && t.daddr == node_addr) {
        svc = svc_lookup(&k, 0, t.dport, t.proto, LB_SCOPE_EXTERNAL);
        if (!svc)
            svc = svc_lookup(&k, 0, t.dport, t.proto, LB_SCOPE_INTERNAL);
    }
    if (!svc || !(svc->flags & SVC_F_EXTERNAL))
        return TC_ACT_UNSPEC; /* not a service of ours: the device's next program, or the stack */
    cb_reset(skb, 0, 0, ID_WORLD, 0);

    struct lb4_ct_key fk = {.saddr = t.saddr, .daddr = t.daddr, .sport = t.sport, .dport = t.dport,
                            .proto = t.proto, .dir = CT_FORWARD};
    struct lb4_ct_entry *known = lb4_ct.lookup(&fk);
    __u32 id = ct_forward(&t);
    __be32 snat = 0;
    __be16 sport = 0;
    if (id && known) {
        snat = known->addr2;
        sport = known->port2;
    } else {
        id = select_backend(&k, svc, t.saddr, 0, hash_tuple(t.saddr, t.daddr, t.sport, t.dport, t.proto));
    }
    if (!id) {
        int verdict = DROP(skb, DROP_NO_SERVICE, METRIC_INGRESS);
        return LB_REJECT ? reject4(skb) : verdict;
    }
    struct lb4_backend *found = lb4_backends.lookup(&id);
    if (!found)
        return DROP(skb, DROP_NO_SERVICE, METRIC_INGRESS);
    struct lb4_backend b = *found;
    if (!sport) {
        if (!(svc->flags & SVC_F_LOCAL_EXT)) {
            snat = node_addr;
            sport = snat_port(&t, &b, snat);
            if (!sport)
                return DROP(skb, DROP_NO_SERVICE, METRIC_INGRESS);
        }
        ct_create(&t, &b, id, svc->rev_nat_index, snat, sport, ifindex);
    }
    if (nat4(skb, t.proto, 0, t.daddr, b.address, t.dport, b.port) < 0 ||
        (snat && nat4(skb, t.proto, 1, t.saddr, snat, t.sport, sport) < 0))
        return DROP(skb, DROP_WRITE_ERROR, METRIC_INGRESS);
    return forward(skb, b.address);
}

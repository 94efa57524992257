/* Load-balancing stages of the endpoints' datapath (slot 0): translate a pod's packets to a
 * service's frontend into packets to one of its backends, and the replies back. Socket LB
 * (sock.c) does this once per connection for most traffic; these stages see what it cannot:
 * socketLB.enabled=false, services without backends (reject or drop, reason 158), replies of
 * connections NodePort translated (nodeport.c). */
#include "pylium_lib.h"
#include "lb_lib.h"

static __always_inline int reply_out(struct __sk_buff *skb, struct l4_tuple *t, int from_pod) {
    __u32 ifindex = 0;
    int done = ct_reverse(skb, t, &ifindex);
    if (done < 0)
        return DROP(skb, DROP_WRITE_ERROR, from_pod ? METRIC_EGRESS : METRIC_INGRESS);
    if (done)
        fast_forbid(skb); /* translated back: each packet must be */
    if (done && ifindex) { /* the reply of a NodePort/external connection: out of its device */
        count(skb, 0, METRIC_EGRESS);
        TRACE_DEV(skb, TRACE_TO_STACK, METRIC_EGRESS, ifindex);
        return redirect_neigh(ifindex, 0, 0, 0);
    }
    return -1; /* carry on */
}

/* from-container, slot 0. */
int lb_from_container(struct __sk_buff *skb) {
    struct l4_tuple t;
    if (!parse_tuple(skb, &t))
        return from_chain(skb, SLOT_FROM_LB + 1);
    int verdict = reply_out(skb, &t, 1);
    if (verdict >= 0)
        return verdict;

    struct lb4_key k;
    struct lb4_service *svc = svc_lookup(&k, t.daddr, t.dport, t.proto, LB_SCOPE_INTERNAL);
    if (!svc)
        return from_chain(skb, SLOT_FROM_LB + 1);
    __u32 id = ct_forward(&t);
    int fresh = !id;
    if (fresh)
        id = select_backend(&k, svc, t.saddr, 0, hash_tuple(t.saddr, t.daddr, t.sport, t.dport, t.proto));
    if (!id) {
        verdict = DROP(skb, DROP_NO_SERVICE, METRIC_EGRESS);
        return LB_REJECT ? reject4(skb) : verdict;
    }
    struct lb4_backend *found = lb4_backends.lookup(&id);
    if (!found)
        return DROP(skb, DROP_NO_SERVICE, METRIC_EGRESS);
    struct lb4_backend b = *found;
    fast_forbid(skb); /* translated: each packet must be */
    /* a pod reaching itself through a service: the reply must come back through here */
    __be32 snat = b.address == t.saddr ? LB_LOOPBACK_IP4 : 0;
    if (fresh)
        ct_create(&t, &b, id, svc->rev_nat_index, snat, snat ? t.sport : 0, 0);
    if (nat4(skb, t.proto, 0, t.daddr, b.address, t.dport, b.port) < 0 ||
        (snat && nat4(skb, t.proto, 1, t.saddr, snat, t.sport, t.sport) < 0))
        return DROP(skb, DROP_WRITE_ERROR, METRIC_EGRESS);
    return from_chain(skb, SLOT_FROM_LB + 1);
}

/* to-container, slot 0: replies from backends beyond the node, back to the client pod. */
int lb_to_container(struct __sk_buff *skb) {
    struct l4_tuple t;
    if (parse_tuple(skb, &t)) {
        int verdict = reply_out(skb, &t, 0);
        if (verdict >= 0)
            return verdict;
    }
    return to_chain(skb, SLOT_TO_LB + 1);
}

/* Policy stages: egress policy of a pod's packets (from-container slot 2) and ingress policy
 * of packets to a pod (to-container slot 2). A packet passes when its connection was already
 * allowed (policy_ct), else the endpoint's rules in policy_rules decide: a deny match drops
 * (181), an allow match passes, no match drops only where the direction enforces (133). */
#include "pylium_lib.h"
#include "policy_maps.h"

/* The ICMP type in network byte order's first byte, as the agent writes ICMP rules. */
static __always_inline __be16 icmp_port(struct __sk_buff *skb, struct flow_key *k) {
    void *data = (void *)(long)skb->data, *data_end = (void *)(long)skb->data_end;
    __u32 l4 = ETH_HLEN + sizeof(struct ipv6hdr);
    if (k->family == 4) {
        struct iphdr *ip = data + ETH_HLEN;
        if ((void *)(ip + 1) > data_end)
            return 0;
        l4 = ETH_HLEN + ip->ihl * 4;
    }
    __u8 *type = data + (l4 & 0x7f);
    if ((void *)(type + 1) > data_end)
        return 0;
    return bpf_htons((__u16)*type << 8);
}

static __always_inline struct policy_entry *rule_lookup(__u16 ep, __u8 egress, __u32 identity, __u8 proto,
                                                        __be16 port) {
    struct policy_key key = {.prefixlen = POLICY_PREFIX_FULL, .ep_id = ep, .egress = egress,
                             .identity = identity, .proto = proto, .port = port};
    return policy_rules.lookup(&key);
}

/* An endpoint's policy; NULL when it has none to enforce (POLICY_OPEN) or is not programmed. */
static __always_inline struct policy_endpoint *endpoint_policy(__u16 ep) {
    __u32 key = ep;
    struct policy_endpoint *pe = policy_endpoints.lookup(&key);
    return pe && !(pe->flags[0] & POLICY_OPEN) ? pe : 0;
}

/* Who a pod's packet goes to: a local endpoint (its id in `local`), else the ipcache's
 * identity, else world. */
static __always_inline __u32 destination_identity(struct __sk_buff *skb, __u16 *local) {
    void *data = (void *)(long)skb->data, *data_end = (void *)(long)skb->data_end;
    struct ethhdr *eth = data;
    struct endpoint_key dst;
    struct ipcache_key k = {};
    *local = 0;
    if ((void *)(eth + 1) > data_end)
        return ID_WORLD;
    if (eth->h_proto == bpf_htons(ETH_P_IP)) {
        struct iphdr *ip = (void *)(eth + 1);
        if ((void *)(ip + 1) > data_end)
            return ID_WORLD;
        key_v4(&dst, ip->daddr);
        k.prefixlen = 32 + 32;
    } else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
        struct ipv6hdr *ip6 = (void *)(eth + 1);
        if ((void *)(ip6 + 1) > data_end)
            return ID_WORLD;
        key_v6(&dst, &ip6->daddr);
        k.prefixlen = 32 + 128;
    } else {
        return ID_WORLD;
    }
    struct endpoint_info *ep = endpoints.lookup(&dst);
    if (ep) {
        *local = ep->ep_id;
        return ep->identity;
    }
    k.family = dst.family;
    __builtin_memcpy(k.addr, dst.addr, 16);
    struct ipcache_info *info = ipcache.lookup(&k);
    return info ? info->identity : ID_WORLD;
}

#define POLICY_TO_PROXY 1000 /* enforce(): the packet was assigned to a proxy socket */

/* Hand a packet to the local L7 proxy listening on `port` (Cilium's BPF TPROXY): the
 * connection's own socket when the proxy has accepted it already, else the listener (bound to
 * loopback, IP_TRANSPARENT). The packet is not rewritten: the proxy reads the original
 * destination from its socket. Only at tc ingress: the kernel assigns sockets nowhere else. */
static __always_inline int to_proxy(struct __sk_buff *skb, struct flow_key *t, __be16 port, __u8 dir) {
    if (skb->cb[CB_FLAGS] & CB_F_TC_EGRESS)
        return DROP(skb, DROP_PROXY_REDIRECTION_NOT_SUPPORTED_FOR_PROTOCOL, dir);
    struct bpf_sock_tuple tuple = {};
    __u32 len;
    if (t->family == 4) {
        __builtin_memcpy(&tuple.ipv4.saddr, t->saddr, 4);
        __builtin_memcpy(&tuple.ipv4.daddr, t->daddr, 4);
        tuple.ipv4.sport = t->sport;
        tuple.ipv4.dport = t->dport;
        len = sizeof(tuple.ipv4);
    } else {
        __builtin_memcpy(tuple.ipv6.saddr, t->saddr, 16);
        __builtin_memcpy(tuple.ipv6.daddr, t->daddr, 16);
        tuple.ipv6.sport = t->sport;
        tuple.ipv6.dport = t->dport;
        len = sizeof(tuple.ipv6);
    }
    struct bpf_sock *sk = 0;
    if (t->proto == IPPROTO_TCP) {
        sk = bpf_skc_lookup_tcp(skb, &tuple, len, BPF_F_CURRENT_NETNS, 0);
        if (sk && (sk->state == BPF_TCP_LISTEN || sk->state == BPF_TCP_TIME_WAIT)) {
            bpf_sk_release(sk);
            sk = 0;
        }
    }
    if (!sk) { /* the listener: loopback first, then any address */
        __builtin_memset(&tuple, 0, sizeof(tuple));
        if (t->family == 4) {
            tuple.ipv4.daddr = bpf_htonl(0x7f000001);
            tuple.ipv4.dport = port;
        } else {
            tuple.ipv6.daddr[3] = bpf_htonl(1);
            tuple.ipv6.dport = port;
        }
        if (t->proto == IPPROTO_TCP)
            sk = bpf_skc_lookup_tcp(skb, &tuple, len, BPF_F_CURRENT_NETNS, 0);
        else
            sk = bpf_sk_lookup_udp(skb, &tuple, len, BPF_F_CURRENT_NETNS, 0);
        if (!sk) {
            if (t->family == 4)
                tuple.ipv4.daddr = 0;
            else
                tuple.ipv6.daddr[3] = 0;
            if (t->proto == IPPROTO_TCP)
                sk = bpf_skc_lookup_tcp(skb, &tuple, len, BPF_F_CURRENT_NETNS, 0);
            else
                sk = bpf_sk_lookup_udp(skb, &tuple, len, BPF_F_CURRENT_NETNS, 0);
        }
    }
    if (!sk)
        return DROP(skb, DROP_SOCKET_LOOKUP_FAILED, dir);
    int err = bpf_sk_assign(skb, sk, 0);
    bpf_sk_release(sk);
    if (err)
        return DROP(skb, DROP_SOCKET_ASSIGN_FAILED, dir);
    skb->mark = MARK_MAGIC_TO_PROXY;
    TRACE(skb, TRACE_TO_PROXY, dir);
    return POLICY_TO_PROXY;
}

/* Decide on a packet at one endpoint's check (`check`: CT_CHECK_EGRESS of the sender or
 * CT_CHECK_INGRESS of the receiver). Packets of known connections are decided by the
 * connection table alone; only new ones look up who the peer is and the rules. Returns
 * TC_ACT_OK to go on, POLICY_TO_PROXY when an L7 proxy takes the packet, else the drop verdict. */
static __always_inline int enforce(struct __sk_buff *skb, __u8 check) {
    __u8 egress = check == CT_CHECK_EGRESS;
    __u8 dir = egress ? METRIC_EGRESS : METRIC_INGRESS;
    __u16 ep = egress ? cb_src_ep(skb) : cb_dst_ep(skb);
    struct policy_endpoint *pe = endpoint_policy(ep);
    if (!pe)
        return TC_ACT_OK; /* open, or not programmed (yet): nothing to enforce */
    __u8 flags = egress ? pe->flags[1] : pe->flags[0];
    __u32 revision = pe->revision;
    __u32 default0 = egress ? pe->default_rules[1][0] : pe->default_rules[0][0];
    __u32 default1 = egress ? pe->default_rules[1][1] : pe->default_rules[0][1];
    if (flags & POLICY_LOCKDOWN)
        return POLICY_DROP(skb, DROP_POLICY, dir, 0, 0);
    struct flow_key k;
    __u8 tcp_flags;
    if (!flow_of(skb, &k, &tcp_flags))
        return TC_ACT_OK; /* not IP (ARP): not policy's */
    __be16 port = k.dport;
    if (k.proto == IPPROTO_ICMP || k.proto == IPPROTO_ICMPV6) {
        port = icmp_port(skb, &k);
        __u8 type = bpf_ntohs(port) >> 8;
        if (k.proto == IPPROTO_ICMPV6 && type >= 133 && type <= 136)
            return TC_ACT_OK; /* neighbour discovery: IPv6 does not work without it */
    }
    __u8 proto = k.proto;
    struct flow_key packet = k; /* as sent: the proxy's socket lookup needs it */
    __u8 d = flow_normalize(&k);
    int proxied = !(skb->cb[CB_FLAGS] & CB_F_FROM_PROXY); /* the proxy's own packets are not redirected again */

    __u32 zero = 0;
    struct policy_settings *cfg = policy_settings.lookup(&zero);
    __u64 timeout = cfg ? (proto == IPPROTO_TCP ? cfg->ct_tcp_timeout_ns : cfg->ct_any_timeout_ns) : 0;
    __u64 now = bpf_ktime_get_ns();
    struct ct_entry *ct = policy_ct.lookup(&k);
    if (ct && now - ct->last_seen < timeout) {
        int pass = 0;
        if (ct->origin != d)
            pass = (ct->passed & ct->needed) == ct->needed; /* a reply of an allowed connection */
        else if (ct->passed & check)
            pass = (egress ? ct->revision[1] : ct->revision[0]) == revision; /* decided under this policy */
        if (pass) {
            if (now - ct->last_seen > 1000000000ULL) /* refresh at most once a second: fewer writes */
                ct->last_seen = now;
            if (ct->proxy_port && ct->origin == d && proxied)
                return to_proxy(skb, &packet, ct->proxy_port, dir);
            return TC_ACT_OK;
        }
    } else {
        ct = 0;
    }

    /* the peer, and the checks the connection goes through on this node: the other end's too
     * when it is a local pod that enforces something */
    __u16 local = 0;
    __u32 peer = egress ? destination_identity(skb, &local) : skb->cb[CB_SRC_ID];
    __u8 needed = check;
    if (egress && local && endpoint_policy(local))
        needed |= CT_CHECK_INGRESS;
    if (!egress && cb_src_ep(skb) && endpoint_policy(cb_src_ep(skb)))
        needed |= CT_CHECK_EGRESS;

    /* copies, not pointers: the compiler turns a choice between two map values into pointer
     * arithmetic the verifier rejects */
    struct policy_entry deny = {}, allow = {};
    int denied = 0, allowed = 0;
    struct policy_entry *exact = rule_lookup(ep, egress, peer, proto, port);
    if (exact) {
        if (exact->flags & POLICY_F_DENY) {
            __builtin_memcpy(&deny, exact, sizeof(deny));
            denied = 1;
        } else {
            __builtin_memcpy(&allow, exact, sizeof(allow));
            allowed = 1;
        }
    }
    struct policy_entry *any = rule_lookup(ep, egress, 0, proto, port);
    if (any) {
        if (any->flags & POLICY_F_DENY) {
            if (!denied || (deny.flags & POLICY_F_AUDIT)) /* an enforced deny wins over an audited one */
                __builtin_memcpy(&deny, any, sizeof(deny));
            denied = 1;
        } else if (!allowed) {
            __builtin_memcpy(&allow, any, sizeof(allow));
            allowed = 1;
        }
    }
    if (denied) {
        if (!(deny.flags & POLICY_F_AUDIT) && !(flags & POLICY_AUDIT)) {
            if (ct)
                policy_ct.delete(&k); /* revoked: its replies no longer pass either */
            return POLICY_DROP(skb, DROP_POLICY_DENY, dir, deny.rule_ids[0], deny.rule_ids[1]);
        }
        POLICY_VERDICT(skb, deny.match, dir, EVENT_F_AUDIT, deny.rule_ids[0], deny.rule_ids[1]);
    } else if (allowed) {
        if (!proxied)
            allow.proxy_port = 0;
        if (!ct || ct->origin != d || !(ct->passed & check)) /* a new connection: report it */
            POLICY_VERDICT(skb, allow.match, dir, EVENT_F_ALLOWED | (allow.proxy_port ? EVENT_F_REDIRECT : 0),
                           allow.rule_ids[0], allow.rule_ids[1]);
    } else if (flags & POLICY_ENFORCE) {
        if (!(flags & (POLICY_AUDIT | POLICY_AUDIT_DEFAULT))) {
            if (ct)
                policy_ct.delete(&k);
            return POLICY_DROP(skb, DROP_POLICY, dir, default0, default1);
        }
        POLICY_VERDICT(skb, 0, dir, EVENT_F_AUDIT, default0, default1);
    }

    /* allowed (or not enforced): remember the connection */
    if (ct && ct->origin == d) {
        ct->passed |= check;
        if (egress)
            ct->revision[1] = revision;
        else
            ct->revision[0] = revision;
        ct->proxy_port = allow.proxy_port;
        ct->last_seen = now;
    } else {
        struct ct_entry fresh = {.last_seen = now, .origin = d, .passed = check, .needed = needed,
                                 .proxy_port = allow.proxy_port};
        if (egress)
            fresh.revision[1] = revision;
        else
            fresh.revision[0] = revision;
        policy_ct.update(&k, &fresh);
    }
    if (allow.proxy_port)
        return to_proxy(skb, &packet, allow.proxy_port, dir);
    return TC_ACT_OK;
}

int policy_egress(struct __sk_buff *skb) {
    int verdict = enforce(skb, CT_CHECK_EGRESS);
    if (verdict == POLICY_TO_PROXY)
        return TC_ACT_OK; /* up the node's stack to the proxy's socket */
    if (verdict != TC_ACT_OK)
        return verdict;
    return from_chain(skb, SLOT_FROM_POLICY + 1);
}

int policy_ingress(struct __sk_buff *skb) {
    int verdict = enforce(skb, CT_CHECK_INGRESS);
    if (verdict == POLICY_TO_PROXY)
        return TC_ACT_OK; /* up the node's stack to the proxy's socket */
    if (verdict != TC_ACT_OK)
        return verdict;
    return to_chain(skb, SLOT_TO_POLICY + 1);
}

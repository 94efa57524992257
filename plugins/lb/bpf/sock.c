/* Socket LB: cgroup hooks that translate a service's frontend into a backend once per
 * connect() (or per sendmsg() of an unconnected UDP socket), and show the frontend again to
 * recvmsg() and getpeername(). They act only on sockets in the network namespaces of this
 * node's endpoints and of the node itself (lb_netns): several agents may share a kernel. */
#include "pylium_lib.h"
#include "lb_lib.h"

static __always_inline int sock4_forward(struct bpf_sock_addr *ctx) {
    __u64 netns = bpf_get_netns_cookie(ctx);
    if (!lb_netns.lookup(&netns))
        return 1;
    __u8 proto = ctx->protocol;
    __be32 vip = ctx->user_ip4;
    __be16 vport = ctx->user_port;
    struct lb4_key k;
    struct lb4_service *svc = svc_lookup(&k, vip, vport, proto, LB_SCOPE_INTERNAL);
    if (!svc || !(svc->count + svc->qcount))
        return 1; /* not a service, or none to offer: the packet path rejects or drops (158) */
    __u16 rev = svc->rev_nat_index;
    /* maglev keys on the connection, unknown before connect(): a random table slot here, as
     * Cilium's socket LB does for traffic inside the cluster */
    __u32 id = select_backend(&k, svc, netns, 1, bpf_get_prandom_u32());
    struct lb4_backend *b = lb4_backends.lookup(&id);
    if (!b)
        return 1;
    struct lb4_sk_key sk = {.cookie = bpf_get_socket_cookie(ctx), .address = b->address, .port = b->port};
    struct lb4_sk_val v = {.address = vip, .port = vport, .rev_nat_index = rev};
    lb4_reverse_sk.update(&sk, &v);
    ctx->user_ip4 = b->address;
    ctx->user_port = b->port;
    return 1;
}

/* The backend a socket talks to, shown as the frontend it asked for. */
static __always_inline int sock4_reverse(struct bpf_sock_addr *ctx) {
    __u64 netns = bpf_get_netns_cookie(ctx);
    if (!lb_netns.lookup(&netns))
        return 1;
    struct lb4_sk_key sk = {.cookie = bpf_get_socket_cookie(ctx), .address = ctx->user_ip4,
                            .port = ctx->user_port};
    struct lb4_sk_val *v = lb4_reverse_sk.lookup(&sk);
    if (v) {
        ctx->user_ip4 = v->address;
        ctx->user_port = v->port;
    }
    return 1;
}

int sock4_connect(struct bpf_sock_addr *ctx) { return sock4_forward(ctx); }
int sock4_sendmsg(struct bpf_sock_addr *ctx) { return sock4_forward(ctx); }
int sock4_recvmsg(struct bpf_sock_addr *ctx) { return sock4_reverse(ctx); }
int sock4_getpeername(struct bpf_sock_addr *ctx) { return sock4_reverse(ctx); }

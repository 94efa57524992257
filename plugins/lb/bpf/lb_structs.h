/* Keys and values of the load-balancing maps; mirrored in ../maps.py. */
#pragma once

/* A frontend (address, port, protocol) and one of its slots: slot 0 describes the service,
 * slots 1..count its active backends, count+1..count+qcount its terminating ones. */
struct lb4_key {
    __be32 address; /* 0: any node address (NodePort) */
    __be16 dport;
    __u16 slot;
    __u8 proto;
    __u8 scope; /* LB_SCOPE_* */
    __u8 pad[2];
};

struct lb4_service {
    __u32 backend_id;       /* slots > 0 */
    __u32 affinity_timeout; /* seconds (slot 0) */
    __u16 count;            /* active backends (slot 0) */
    __u16 qcount;           /* terminating backends, after the active ones (slot 0) */
    __u16 rev_nat_index;    /* the frontend's id */
    __u8 flags;             /* SVC_F_* */
    __u8 algorithm;         /* ALG_* */
};

struct lb4_backend {
    __be32 address;
    __be16 port;
    __u8 proto;
    __u8 state; /* BACKEND_* */
};

/* The frontend a translated reply must seem to come from. */
struct lb4_reverse_nat {
    __be32 address;
    __be16 port;
    __u16 pad;
};

/* sessionAffinity: a client (netns cookie for socket LB, address otherwise) of a frontend. */
struct lb_affinity_key {
    __u64 client;
    __u32 rev_nat_index;
    __u8 netns; /* client is a netns cookie */
    __u8 pad[3];
};

struct lb_affinity_val {
    __u64 last_used; /* ns */
    __u32 backend_id;
    __u32 pad;
};

/* Socket LB: a socket's backend, to show the service address to recvmsg and getpeername. */
struct lb4_sk_key {
    __u64 cookie;
    __be32 address;
    __be16 port;
    __u16 pad;
};

struct lb4_sk_val {
    __be32 address;
    __be16 port;
    __u16 rev_nat_index;
};

/* A connection translated per packet, by its addresses and ports as seen on the wire. */
struct lb4_ct_key {
    __be32 saddr;
    __be32 daddr;
    __be16 sport;
    __be16 dport;
    __u8 proto;
    __u8 dir; /* CT_FORWARD, CT_REVERSE */
    __u8 pad[2];
};

/* Forward: the backend chosen and the source NAT applied (addr2/port2, 0: none).
 * Reverse: the new source (addr/port: the frontend), the new destination (addr2/port2: the
 * client, when its address was replaced) and the device to send the reply out of (0: on). */
struct lb4_ct_entry {
    __u64 last_seen;
    __be32 addr;
    __be32 addr2;
    __be16 port;
    __be16 port2;
    __u32 backend_id;
    __u32 ifindex;
    __u16 rev_nat_index;
    __u16 pad;
};

/* A device the node's NodePort and external services are served on. */
struct lb_device {
    __be32 address; /* NodePort address, source of NAT towards backends */
    __u32 pad;
};

struct lb_maglev {
    __u32 backend_ids[LB_MAGLEV_M];
};

/* The load-balancing plugin's maps, pinned under <bpf-root>/<node>/lb/ (PYLIUM_PIN). */
#pragma once

#include "lb_consts.h"
#include "lb_structs.h"

/* Frontends and their backend slots: the O(1) service lookup. */
BPF_TABLE_PINNED("hash", struct lb4_key, struct lb4_service, lb4_services, LB_MAP_MAX, PYLIUM_PIN "/lb4_services_v1");

/* Backends by id. */
BPF_TABLE_PINNED("hash", __u32, struct lb4_backend, lb4_backends, LB_MAP_MAX, PYLIUM_PIN "/lb4_backends_v1");

/* Frontends by id (rev_nat_index), for reverse translation and the CLI. */
BPF_TABLE_PINNED("hash", __u32, struct lb4_reverse_nat, lb4_reverse_nat, LB_MAP_MAX,
                 PYLIUM_PIN "/lb4_reverse_nat_v1");

/* Maglev lookup tables by frontend id (only for maglev services; not preallocated). */
BPF_TABLE_PINNED("hash", __u32, struct lb_maglev, lb4_maglev, LB_MAP_MAX, PYLIUM_PIN "/lb4_maglev_v1",
                   BPF_F_NO_PREALLOC);

/* Round-robin position by frontend id. */
BPF_TABLE_PINNED("array", __u32, __u32, lb_rr, 65536, PYLIUM_PIN "/lb_rr_v1");

/* Session affinity: the backend a client last used, per frontend. */
BPF_TABLE_PINNED("lru_hash", struct lb_affinity_key, struct lb_affinity_val, lb_affinity, LB_MAP_MAX,
                 PYLIUM_PIN "/lb_affinity_v1");

/* Socket LB: socket and backend -> frontend (recvmsg, getpeername). */
BPF_TABLE_PINNED("lru_hash", struct lb4_sk_key, struct lb4_sk_val, lb4_reverse_sk, LB_MAP_MAX,
                 PYLIUM_PIN "/lb4_reverse_sk_v1");

/* Per-packet translations, both directions of each connection. */
BPF_TABLE_PINNED("lru_hash", struct lb4_ct_key, struct lb4_ct_entry, lb4_ct, LB_CT_MAX, PYLIUM_PIN "/lb4_ct_v1");

/* Network namespaces (cookies) of this node's endpoints and of the node: the only sockets the
 * socket hooks translate (several agents can share a kernel). */
BPF_TABLE_PINNED("hash", __u64, __u32, lb_netns, 65536, PYLIUM_PIN "/lb_netns_v1");

/* The node's devices serving NodePort and external services, by ifindex. */
BPF_TABLE_PINNED("hash", __u32, struct lb_device, lb_devices, 256, PYLIUM_PIN "/lb_devices_v1");

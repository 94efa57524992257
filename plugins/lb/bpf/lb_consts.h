/* Numbers of the load-balancing plugin; ../consts.py is generated from this file (`make consts`). */
#pragma once

#ifndef LB_MAP_MAX
#define LB_MAP_MAX 65536 /* bpf.lbMapMax: services, backends, affinity, reverse NAT entries */
#endif
#ifndef LB_CT_MAX
#define LB_CT_MAX 262144 /* connections translated by the tc path (both directions) */
#endif
#ifndef LB_MAGLEV_M
#define LB_MAGLEV_M 16381 /* maglev.tableSize */
#endif
#ifndef LB_HASH_SEED
#define LB_HASH_SEED 0 /* from maglev.hashSeed: the same on every node */
#endif
#ifndef LB_REJECT
#define LB_REJECT 1 /* serviceNoBackendResponse: reject (ICMP port unreachable) or drop */
#endif

/* lb4_key.scope: the backends for clients inside the cluster (internalTrafficPolicy) or,
 * when they differ, for clients outside it (externalTrafficPolicy). */
#define LB_SCOPE_INTERNAL 0
#define LB_SCOPE_EXTERNAL 1

/* lb4_service.flags (of the slot-0 entry) */
#define SVC_F_EXTERNAL 0x1  /* reachable from outside: NodePort, externalIPs, LoadBalancer */
#define SVC_F_NODEPORT 0x2  /* a NodePort frontend: any node address (address 0 in the key) */
#define SVC_F_AFFINITY 0x4  /* sessionAffinity: ClientIP */
#define SVC_F_LOCAL_EXT 0x8 /* externalTrafficPolicy Local: external clients keep their address */

#define ALG_RANDOM 0
#define ALG_ROUND_ROBIN 1
#define ALG_SOURCE_HASH 2
#define ALG_MAGLEV 3

/* lb4_backend.state: EndpointSlice conditions */
#define BACKEND_ACTIVE 0      /* ready */
#define BACKEND_TERMINATING 1 /* terminating and serving: only when nothing is active */
#define BACKEND_QUARANTINED 2 /* neither: kept for existing connections, never chosen */

#define CT_FORWARD 0 /* lb4_ct_key.dir: client -> frontend */
#define CT_REVERSE 1 /* backend -> client (as translated) */

/* Source address of a pod reaching itself through a service (hairpin): 169.254.42.1, as
 * Cilium's ipv4-service-loopback-address. */
#define LB_LOOPBACK_IP4 bpf_htonl(0xa9fe2a01)

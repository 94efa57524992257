"""The load-balancing plugin's numbers generated from plugins/lb/bpf/lb_consts.h by `make consts`: do not edit."""

from __future__ import annotations

LB_MAP_MAX = 65536  # bpf.lbMapMax: services, backends, affinity, reverse NAT entries
LB_CT_MAX = 262144  # connections translated by the tc path (both directions)
LB_MAGLEV_M = 16381  # maglev.tableSize
LB_HASH_SEED = 0  # from maglev.hashSeed: the same on every node
LB_REJECT = 1  # serviceNoBackendResponse: reject (ICMP port unreachable) or drop
LB_SCOPE_INTERNAL = 0
LB_SCOPE_EXTERNAL = 1
SVC_F_EXTERNAL = 0x1  # reachable from outside: NodePort, externalIPs, LoadBalancer
SVC_F_NODEPORT = 0x2  # a NodePort frontend: any node address (address 0 in the key)
SVC_F_AFFINITY = 0x4  # sessionAffinity: ClientIP
SVC_F_LOCAL_EXT = 0x8  # externalTrafficPolicy Local: external clients keep their address
ALG_RANDOM = 0
ALG_ROUND_ROBIN = 1
ALG_SOURCE_HASH = 2
ALG_MAGLEV = 3
BACKEND_ACTIVE = 0  # ready
BACKEND_TERMINATING = 1  # terminating and serving: only when nothing is active
BACKEND_QUARANTINED = 2  # neither: kept for existing connections, never chosen
CT_FORWARD = 0  # lb4_ct_key.dir: client -> frontend
CT_REVERSE = 1  # backend -> client (as translated)

/* Numbers shared by every pylium BPF program and by the agent. The one source of truth:
 * pylium/core/datapath/consts.py is generated from this file (`make consts`; a test fails when
 * it is stale). Comments after a define are read by the generator where a table needs them
 * (names of drop reasons, observation points, ...): keep their form. */
#pragma once

/* ---- Attach points and their tail-call slots (docs/datapath.md) ------------------------- */
#define PYLIUM_SLOTS 8
#define ATTACH_FROM_CONTAINER 0 /* tc ingress of an endpoint's host-side veth: packets from the pod */
#define ATTACH_TO_CONTAINER 1   /* tc egress of that veth, or local delivery: packets to the pod */

/* Slots 1, 3, 5 and 6 are free for third-party stages. */
#define SLOT_FROM_LB 0          /* service translation (load balancing plugin) */
#define SLOT_FROM_POLICY 2      /* egress policy */
#define SLOT_FROM_ENCRYPTION 4  /* encryption mark */
#define SLOT_FROM_DELIVERY 7    /* connectivity: local delivery, else to the stack */
#define SLOT_TO_LB 0            /* reverse translation of replies from beyond the node */
#define SLOT_TO_POLICY 2        /* ingress policy */
#define SLOT_TO_DELIVERY 7      /* connectivity: hand the packet to the pod */

/* ---- skb->cb: facts passed between the stages of one packet ------------------------------ */
#define CB_FLAGS 0     /* PYLIUM_CB_MAGIC | CB_F_* */
#define CB_ENDPOINTS 1 /* source endpoint id (low 16 bits), destination endpoint id (high 16 bits) */
#define CB_DELIVER 2   /* host-side ifindex of the destination endpoint (local delivery) */
#define CB_SRC_ID 3    /* source security identity */
#define CB_DST_ID 4    /* destination security identity */

#define PYLIUM_CB_MAGIC 0xd1500000
#define CB_F_LOCAL 0x1      /* delivered from another local endpoint: finish with redirect_peer */
#define CB_F_FROM_PROXY 0x2 /* sent by this node's ingress proxy, which decided on it: no redirect */
#define CB_F_TC_EGRESS 0x4  /* the stages run at tc egress (from the stack): no socket can be assigned */
#define CB_F_FAST_OK 0x8    /* no stage did per-packet work (a translation): delivery may remember the flow */

/* ---- skb->mark: L7 proxy redirection (Cilium's values) ------------------------------------ */
#define MARK_MAGIC_MASK 0x0f00
#define MARK_MAGIC_TO_PROXY 0x0200      /* assigned to a proxy socket: routed locally (PROXY_ROUTE_TABLE) */
#define MARK_MAGIC_INGRESS_PROXY 0x0a00 /* sent by the ingress proxy: its peer's identity in the other bits */
#define MARK_MAGIC_EGRESS_PROXY 0x0b00  /* sent by the egress proxy: the pod's identity in the other bits */
#define PROXY_ROUTE_TABLE 2004          /* local 0.0.0.0/0 dev lo: packets marked to-proxy stay on the node */
#define PROXY_RULE_PREF 9               /* ip rule fwmark MARK_MAGIC_TO_PROXY/MARK_MAGIC_MASK lookup PROXY_ROUTE_TABLE */

/* ---- Drop reasons: Cilium's numbers; comment: flow.proto DropReason name: monitor text ---- */
#define DROP_INVALID_SOURCE_MAC 130 /* INVALID_SOURCE_MAC: Invalid source mac */
#define DROP_INVALID_DESTINATION_MAC 131 /* INVALID_DESTINATION_MAC: Invalid destination mac */
#define DROP_INVALID_SOURCE_IP 132 /* INVALID_SOURCE_IP: Invalid source ip */
#define DROP_POLICY 133 /* POLICY_DENIED: Policy denied */
#define DROP_INVALID 134 /* INVALID_PACKET_DROPPED: Invalid packet */
#define DROP_CT_TRUNCATED_OR_INVALID_HEADER 135 /* CT_TRUNCATED_OR_INVALID_HEADER: CT: Truncated or invalid header */
#define DROP_CT_MISSING_TCP_ACK_FLAG 136 /* CT_MISSING_TCP_ACK_FLAG: Fragmentation needed */
#define DROP_CT_UNKNOWN_L4_PROTOCOL 137 /* CT_UNKNOWN_L4_PROTOCOL: CT: Unknown L4 protocol */
#define DROP_UNSUPPORTED_L3_PROTOCOL 139 /* UNSUPPORTED_L3_PROTOCOL: Unsupported L3 protocol */
#define DROP_MISSED_TAIL_CALL 140 /* MISSED_TAIL_CALL: Missed tail call */
#define DROP_WRITE_ERROR 141 /* ERROR_WRITING_TO_PACKET: Error writing to packet */
#define DROP_UNKNOWN_L4_PROTOCOL 142 /* UNKNOWN_L4_PROTOCOL: Unknown L4 protocol */
#define DROP_UNKNOWN_ICMPV4_CODE 143 /* UNKNOWN_ICMPV4_CODE: Unknown ICMPv4 code */
#define DROP_UNKNOWN_ICMPV4_TYPE 144 /* UNKNOWN_ICMPV4_TYPE: Unknown ICMPv4 type */
#define DROP_UNKNOWN_ICMPV6_CODE 145 /* UNKNOWN_ICMPV6_CODE: Unknown ICMPv6 code */
#define DROP_UNKNOWN_ICMPV6_TYPE 146 /* UNKNOWN_ICMPV6_TYPE: Unknown ICMPv6 type */
#define DROP_ERROR_RETRIEVING_TUNNEL_KEY 147 /* ERROR_RETRIEVING_TUNNEL_KEY: Error retrieving tunnel key */
#define DROP_UNKNOWN_L3_TARGET_ADDRESS 150 /* UNKNOWN_L3_TARGET_ADDRESS: Unknown L3 target address */
#define DROP_UNROUTABLE 151 /* STALE_OR_UNROUTABLE_IP: Stale or unroutable IP */
#define DROP_ERROR_WHILE_CORRECTING_L3_CHECKSUM 153 /* ERROR_WHILE_CORRECTING_L3_CHECKSUM: Error while correcting L3 checksum */
#define DROP_ERROR_WHILE_CORRECTING_L4_CHECKSUM 154 /* ERROR_WHILE_CORRECTING_L4_CHECKSUM: Error while correcting L4 checksum */
#define DROP_CT_MAP_INSERTION_FAILED 155 /* CT_MAP_INSERTION_FAILED: CT: Map insertion failed */
#define DROP_INVALID_IPV6_EXTENSION_HEADER 156 /* INVALID_IPV6_EXTENSION_HEADER: Invalid IPv6 extension header */
#define DROP_IP_FRAGMENTATION_NOT_SUPPORTED 157 /* IP_FRAGMENTATION_NOT_SUPPORTED: IP fragmentation not supported */
#define DROP_NO_SERVICE 158 /* SERVICE_BACKEND_NOT_FOUND: Service backend not found */
#define DROP_NO_TUNNEL_OR_ENCAPSULATION_ENDPOINT 160 /* NO_TUNNEL_OR_ENCAPSULATION_ENDPOINT: No tunnel/encapsulation endpoint (datapath BUG!) */
#define DROP_REACHED_EDT_RATE_LIMITING_DROP_HORIZON 162 /* REACHED_EDT_RATE_LIMITING_DROP_HORIZON: Reached EDT rate-limiting drop horizon */
#define DROP_UNKNOWN_CONNECTION_TRACKING_STATE 163 /* UNKNOWN_CONNECTION_TRACKING_STATE: Unknown connection tracking state */
#define DROP_LOCAL_HOST_IS_UNREACHABLE 164 /* LOCAL_HOST_IS_UNREACHABLE: Local host is unreachable */
#define DROP_UNSUPPORTED_L2_PROTOCOL 166 /* UNSUPPORTED_L2_PROTOCOL: Unsupported L2 protocol */
#define DROP_NO_MAPPING_FOR_NAT_MASQUERADE 167 /* NO_MAPPING_FOR_NAT_MASQUERADE: No mapping for NAT masquerade */
#define DROP_UNSUPPORTED_PROTOCOL_FOR_NAT_MASQUERADE 168 /* UNSUPPORTED_PROTOCOL_FOR_NAT_MASQUERADE: Unsupported protocol for NAT masquerade */
#define DROP_FIB_LOOKUP_FAILED 169 /* FIB_LOOKUP_FAILED: FIB lookup failed */
#define DROP_ENCAPSULATION_TRAFFIC_IS_PROHIBITED 170 /* ENCAPSULATION_TRAFFIC_IS_PROHIBITED: Encapsulation traffic is prohibited */
#define DROP_INVALID_IDENTITY 171 /* INVALID_IDENTITY: Invalid identity */
#define DROP_UNKNOWN_SENDER 172 /* UNKNOWN_SENDER: Unknown sender */
#define DROP_NAT_NOT_NEEDED 173 /* NAT_NOT_NEEDED: NAT not needed */
#define DROP_IS_A_CLUSTERIP 174 /* IS_A_CLUSTERIP: Is a ClusterIP */
#define DROP_FIRST_LOGICAL_DATAGRAM_FRAGMENT_NOT_FOUND 175 /* FIRST_LOGICAL_DATAGRAM_FRAGMENT_NOT_FOUND: First logical datagram fragment not found */
#define DROP_FORBIDDEN_ICMPV6_MESSAGE 176 /* FORBIDDEN_ICMPV6_MESSAGE: Forbidden ICMPv6 message */
#define DROP_DENIED_BY_LB_SRC_RANGE_CHECK 177 /* DENIED_BY_LB_SRC_RANGE_CHECK: Denied by LB src range check */
#define DROP_SOCKET_LOOKUP_FAILED 178 /* SOCKET_LOOKUP_FAILED: Socket lookup failed */
#define DROP_SOCKET_ASSIGN_FAILED 179 /* SOCKET_ASSIGN_FAILED: Socket assign failed */
#define DROP_PROXY_REDIRECTION_NOT_SUPPORTED_FOR_PROTOCOL 180 /* PROXY_REDIRECTION_NOT_SUPPORTED_FOR_PROTOCOL: Proxy redirection not supported for protocol */
#define DROP_POLICY_DENY 181 /* POLICY_DENY: Policy denied by denylist */
#define DROP_VLAN_FILTERED 182 /* VLAN_FILTERED: VLAN traffic disallowed by VLAN filter */
#define DROP_INVALID_VNI 183 /* INVALID_VNI: Incorrect VNI from VTEP */
#define DROP_INVALID_TC_BUFFER 184 /* INVALID_TC_BUFFER: Failed to update or lookup TC buffer */
#define DROP_NO_SID 185 /* NO_SID: No SID was found for the IP address */
#define DROP_NAT46 187 /* NAT46: Failed to perform NAT46 */
#define DROP_NAT64 188 /* NAT64: Failed to perform NAT64 */
#define DROP_AUTH_REQUIRED 189 /* AUTH_REQUIRED: Authentication required */
#define DROP_CT_NO_MAP_FOUND 190 /* CT_NO_MAP_FOUND: No conntrack map found */
#define DROP_SNAT_NO_MAP_FOUND 191 /* SNAT_NO_MAP_FOUND: No nat map found */
#define DROP_INVALID_CLUSTER_ID 192 /* INVALID_CLUSTER_ID: Invalid ClusterID */
#define DROP_UNSUPPORTED_PROTOCOL_FOR_DSR_ENCAP 193 /* UNSUPPORTED_PROTOCOL_FOR_DSR_ENCAP: Unsupported packet protocol for DSR encapsulation */
#define DROP_NO_EGRESS_GATEWAY 194 /* NO_EGRESS_GATEWAY: No egress gateway found */
#define DROP_UNENCRYPTED_TRAFFIC 195 /* UNENCRYPTED_TRAFFIC: Traffic is unencrypted */
#define DROP_TTL_EXCEEDED 196 /* TTL_EXCEEDED: TTL exceeded */
#define DROP_NO_NODE_ID 197 /* NO_NODE_ID: No node ID found */
#define DROP_RATE_LIMITED 198 /* DROP_RATE_LIMITED: Rate limited */

/* ---- Monitor message types (pkg/monitor/api/types.go); comment: the name `-t` filters use -- */
#define MSG_DROP 1           /* drop */
#define MSG_TRACE 4          /* trace */
#define MSG_POLICY_VERDICT 5 /* policy-verdict */
#define MSG_L7 129           /* l7 */

/* ---- Trace observation points; comment: monitor name: flow.proto name -------------------- */
#define TRACE_TO_LXC 0        /* to-endpoint: TO_ENDPOINT */
#define TRACE_TO_PROXY 1      /* to-proxy: TO_PROXY */
#define TRACE_TO_HOST 2       /* to-host: TO_HOST */
#define TRACE_TO_STACK 3      /* to-stack: TO_STACK */
#define TRACE_TO_OVERLAY 4    /* to-overlay: TO_OVERLAY */
#define TRACE_FROM_LXC 5      /* from-endpoint: FROM_ENDPOINT */
#define TRACE_FROM_PROXY 6    /* from-proxy: FROM_PROXY */
#define TRACE_FROM_HOST 7     /* from-host: FROM_HOST */
#define TRACE_FROM_STACK 8    /* from-stack: FROM_STACK */
#define TRACE_FROM_OVERLAY 9  /* from-overlay: FROM_OVERLAY */
#define TRACE_FROM_NETWORK 10 /* from-network: FROM_NETWORK */
#define TRACE_TO_NETWORK 11   /* to-network: TO_NETWORK */
#define TRACE_FROM_CRYPTO 12  /* from-crypto: FROM_CRYPTO */
#define TRACE_TO_CRYPTO 13    /* to-crypto: TO_CRYPTO */

/* Why a trace was reported; comment: flow.proto TraceReason name. */
#define TRACE_REASON_UNKNOWN 0     /* TRACE_REASON_UNKNOWN */
#define TRACE_REASON_NEW 1         /* NEW */
#define TRACE_REASON_ESTABLISHED 2 /* ESTABLISHED */
#define TRACE_REASON_REPLY 3       /* REPLY */

/* Policy verdict match types (pylium_event.subtype of MSG_POLICY_VERDICT); comment: Hubble's
 * policy_match_type name. */
#define POLICY_MATCH_NONE 0       /* none */
#define POLICY_MATCH_L3_ONLY 1    /* L3-Only */
#define POLICY_MATCH_L3_L4 2      /* L3-L4 */
#define POLICY_MATCH_L4_ONLY 3    /* L4-Only */
#define POLICY_MATCH_ALL 4        /* all */
#define POLICY_MATCH_L3_PROTO 5   /* L3-Proto */
#define POLICY_MATCH_PROTO_ONLY 6 /* Proto-Only */

/* pylium_event.flags */
#define EVENT_F_REPLY_KNOWN 0x1 /* is_reply below is meaningful */
#define EVENT_F_REPLY 0x2       /* the packet goes against its connection's first direction */
#define EVENT_F_ALLOWED 0x4     /* policy verdicts: the packet was allowed */
#define EVENT_F_AUDIT 0x8       /* policy verdicts: denied by policy, let through (audit mode) */
#define EVENT_F_REDIRECT 0x10   /* policy verdicts: redirected to a proxy */

/* ---- Monitor aggregation (bpf.monitorAggregation, as Cilium's datapath) ------------------- */
#define AGGREGATE_NONE 0      /* a trace at every observation point */
#define AGGREGATE_LOWEST 1    /* no traces at receive (from-*) points */
#define AGGREGATE_LOW 2       /* as lowest */
#define AGGREGATE_MEDIUM 3    /* per connection: first packet, new TCP flags, every interval */
#define AGGREGATE_MAXIMUM 4   /* as medium */

#ifndef MONITOR_AGGREGATION
#define MONITOR_AGGREGATION AGGREGATE_MEDIUM
#endif
#ifndef MONITOR_INTERVAL_NS
#define MONITOR_INTERVAL_NS 5000000000ULL
#endif
#ifndef MONITOR_FLAGS
#define MONITOR_FLAGS 0x07 /* TCP flags whose first appearance is reported: FIN 0x01, SYN 0x02, RST 0x04 */
#endif
#ifndef PYLIUM_TRACE_EVENTS
#define PYLIUM_TRACE_EVENTS 1 /* bpf.events.trace.enabled */
#endif
#ifndef PYLIUM_DROP_EVENTS
#define PYLIUM_DROP_EVENTS 1 /* bpf.events.drop.enabled */
#endif
#ifndef PYLIUM_POLICY_VERDICT_EVENTS
#define PYLIUM_POLICY_VERDICT_EVENTS 1 /* bpf.events.policyVerdict.enabled: for the policy stages */
#endif
#ifndef PYLIUM_FAST_PATH
#define PYLIUM_FAST_PATH 1 /* bpf.fastPath.enabled, and traces aggregated at medium or above (or off) */
#endif
#define FAST_CB_GEN_SHIFT 4 /* bits 4-19 of CB_FLAGS: the fast path generation the stages started under */
#define FAST_LIFETIME_NS 1000000000ULL /* a fast path entry's longest life: the stages see each flow once a second */
#define FAST_ENTRIES 8192 /* fast_flows: few buckets, so that a lookup that misses stays in the cache */
#define FAST_MIN_AGE_NS 1000000ULL     /* remembered once a direction was first (or last) reported this long ago */

#ifndef PYLIUM_FILE_ID
#define PYLIUM_FILE_ID 0 /* source file of a record when call sites are not numbered by the agent */
#endif

/* ---- Metrics directions (pkg/maps/metricsmap); comment: the label ----------------------- */
#define METRIC_INGRESS 1 /* INGRESS */
#define METRIC_EGRESS 2  /* EGRESS */

/* The metrics map is a per-CPU array indexed by reason and direction. */
#define METRICS_INDEX(reason, dir) (((__u32)(reason) << 2) | ((dir) & 3))
#define METRICS_ENTRIES 1024

/* ---- Reserved identities (Cilium's numbers); comment: the label ------------------------- */
#define ID_HOST 1           /* reserved:host */
#define ID_WORLD 2          /* reserved:world */
#define ID_UNMANAGED 3      /* reserved:unmanaged */
#define ID_HEALTH 4         /* reserved:health */
#define ID_INIT 5           /* reserved:init */
#define ID_REMOTE_NODE 6    /* reserved:remote-node */
#define ID_KUBE_APISERVER 7 /* reserved:kube-apiserver */
#define ID_INGRESS 8        /* reserved:ingress */

/* Identity ranges: label sets through the cluster store, CIDR (and FQDN) peers on the node. */
#define IDENTITY_ALLOCATED_MIN 256
#define IDENTITY_ALLOCATED_MAX 65535
#define IDENTITY_LOCAL_MIN 0x1000000

#define PYLIUM_CAPTURE_LEN 128 /* packet bytes copied into drop and trace records */

#define RB_NO_WAKEUP 1    /* BPF_RB_NO_WAKEUP */
#define RB_FORCE_WAKEUP 2 /* BPF_RB_FORCE_WAKEUP */
#define EVENTS_WAKEUP_BATCH 4096 /* records a CPU writes before it wakes the reader (it also drains every 10 ms) */

#ifndef PYLIUM_EVENTS_BYTES
#define PYLIUM_EVENTS_BYTES 0x400000 /* events ring buffer: 4 MiB (bpf.events.ringBufferSize) */
#endif

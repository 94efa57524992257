/* Numbers shared by every pylium BPF program and by the agent (pylium.core.bpf.consts). */
#pragma once

/* ---- Attach points and their tail-call slots (docs/datapath.md) ------------------------- */
#define PYLIUM_SLOTS 8
#define ATTACH_FROM_CONTAINER 0 /* tc ingress of an endpoint's host-side veth: packets from the pod */
#define ATTACH_TO_CONTAINER 1   /* tc egress of that veth, or local delivery: packets to the pod */

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
#define CB_F_LOCAL 0x1 /* delivered from another local endpoint: finish with redirect_peer */

/* ---- Drop reasons: Cilium's numbers and names (pkg/monitor/api/drop.go) ------------------ */
#define DROP_INVALID_SOURCE_IP 132 /* "Invalid source ip" */
#define DROP_POLICY 133            /* "Policy denied" */
#define DROP_INVALID 134           /* "Invalid packet" */
#define DROP_MISSED_TAIL_CALL 140  /* "Missed tail call" */
#define DROP_WRITE_ERROR 141       /* "Error writing to packet" */
#define DROP_UNROUTABLE 151        /* "Stale or unroutable IP" */
#define DROP_POLICY_DENY 181       /* "Policy denied by denylist" */
#define DROP_TTL_EXCEEDED 196      /* "TTL exceeded" */

/* ---- Monitor message types and trace observation points (pkg/monitor/api/types.go) ------- */
#define MSG_DROP 1
#define MSG_TRACE 4
#define MSG_POLICY_VERDICT 5

#define TRACE_TO_LXC 0     /* "to-endpoint" */
#define TRACE_TO_HOST 2
#define TRACE_TO_STACK 3
#define TRACE_FROM_LXC 5   /* "from-endpoint" */
#define TRACE_FROM_HOST 7
#define TRACE_FROM_STACK 8

/* Why a trace was reported (flow.proto TraceReason). */
#define TRACE_REASON_UNKNOWN 0
#define TRACE_REASON_NEW 1
#define TRACE_REASON_ESTABLISHED 2
#define TRACE_REASON_REPLY 3

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
#ifndef PYLIUM_FILE_ID
#define PYLIUM_FILE_ID 0 /* source file of a record when call sites are not numbered by the agent */
#endif

/* ---- Metrics directions (pkg/maps/metricsmap) -------------------------------------------- */
#define METRIC_INGRESS 1 /* towards an endpoint */
#define METRIC_EGRESS 2  /* from an endpoint */

/* The metrics map is a per-CPU array indexed by reason and direction. */
#define METRICS_INDEX(reason, dir) (((__u32)(reason) << 2) | ((dir) & 3))
#define METRICS_ENTRIES 1024

/* ---- Reserved identities (Cilium's numbers) ---------------------------------------------- */
#define ID_HOST 1
#define ID_WORLD 2
#define ID_INIT 5

#define PYLIUM_CAPTURE_LEN 128 /* packet bytes copied into drop and trace records */

#define RB_NO_WAKEUP 1    /* BPF_RB_NO_WAKEUP */
#define RB_FORCE_WAKEUP 2 /* BPF_RB_FORCE_WAKEUP */
#define EVENTS_WAKEUP_BATCH 64 /* records a CPU writes before it wakes the reader */

#ifndef PYLIUM_EVENTS_BYTES
#define PYLIUM_EVENTS_BYTES (1 << 22) /* events ring buffer: 4 MiB */
#endif

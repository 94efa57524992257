/* Maps of the policy plugin, pinned under <bpf-root>/<node>/policy/. Mirrors in ../maps.py
 * (../consts.py is generated from the defines: make consts). */
#pragma once

/* What an endpoint may exchange with a peer (all endpoints in one trie; the agent keeps each
 * within bpf.policyMapMax entries): an LPM trie over (endpoint, direction, peer
 * identity, protocol, port); the prefix length wildcards the protocol or the low bits of the
 * port (a port range is a few prefixes). Identity 0 stands for any peer. */
struct policy_key {
    __u32 prefixlen;
    __u16 ep_id;
    __u8 egress;    /* 0 ingress, 1 egress */
    __u8 pad;
    __u32 identity; /* the peer; 0: any */
    __u8 proto;     /* with prefixlen 64: any protocol */
    __u8 pad2;
    __be16 port;    /* ICMP: the type in the first byte */
};

#define POLICY_PREFIX_ANY_PROTO 64
#define POLICY_PREFIX_ANY_PORT 72
#define POLICY_PREFIX_FULL 96

#define POLICY_F_DENY 0x1  /* a deny rule matched */
#define POLICY_F_AUDIT 0x2 /* the deciding rule is in audit mode: report, do not drop */

struct policy_entry {
    __u8 flags;        /* POLICY_F_* */
    __u8 match;        /* policy verdict match type: 1 L3-only, 2 L3-L4, 3 L4-only, 4 all */
    __be16 proxy_port; /* L7: redirect to this proxy port (0: none) */
    __u32 rule_ids[2]; /* the rules that decided (policy ids the agent names) */
};

/* Per endpoint and direction (index 0 ingress, 1 egress). */
#define POLICY_ENFORCE 0x1       /* unmatched traffic is denied (default deny) */
#define POLICY_AUDIT 0x2         /* denials are reported, not enforced */
#define POLICY_LOCKDOWN 0x4      /* the policy did not fit the map: deny everything */
#define POLICY_AUDIT_DEFAULT 0x8 /* default-deny drops are reported, not enforced */
#define POLICY_OPEN 0x10         /* flags[0]: no rules, nothing enforced either way: no checks, and its
                                  * connections need no record (the peer does not wait for its check) */

struct policy_endpoint {
    __u8 flags[2];
    __u8 pad[2];
    __u32 revision;            /* changes whenever the endpoint's policy does */
    __u32 default_rules[2][2]; /* per direction: rules that put it in default deny (named by drops 133) */
};

/* Connections policy let through, both directions in one entry (key: flow_normalize). A
 * reply passes when every check its connection needed passed; a packet of the connection's
 * own direction passes a check again without lookups while the revision is unchanged. */
#define CT_CHECK_EGRESS 0x1
#define CT_CHECK_INGRESS 0x2

struct ct_entry {
    __u64 last_seen;
    __u8 origin; /* direction index of the first packet */
    __u8 passed; /* CT_CHECK_* */
    __u8 needed; /* CT_CHECK_* the connection must pass for replies to pass */
    __u8 pad;
    __u32 revision[2]; /* endpoint policy revision at the last check: [0] ingress, [1] egress */
    __be16 proxy_port; /* L7: the first direction's packets go to this proxy port (0: none) */
    __u16 pad2;
};

struct policy_settings {
    __u64 ct_tcp_timeout_ns;
    __u64 ct_any_timeout_ns;
};

BPF_TABLE_PINNED("lpm_trie", struct policy_key, struct policy_entry, policy_rules, 1048576,
                 PYLIUM_PIN "/policy_rules_v1", BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("hash", __u32, struct policy_endpoint, policy_endpoints, 65536, PYLIUM_PIN "/policy_endpoints_v1");
BPF_TABLE_PINNED("lru_hash", struct flow_key, struct ct_entry, policy_ct, POLICY_CT_MAX, PYLIUM_PIN "/policy_ct_v1");
BPF_TABLE_PINNED("array", __u32, struct policy_settings, policy_settings, 1, PYLIUM_PIN "/policy_settings_v1");

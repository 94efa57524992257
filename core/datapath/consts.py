"""The datapath's shared numbers generated from bpf/include/pylium_consts.h by `make consts`: do not edit."""

from __future__ import annotations

from enum import Enum, IntEnum, IntFlag

PYLIUM_SLOTS = 8
ATTACH_FROM_CONTAINER = 0  # tc ingress of an endpoint's host-side veth: packets from the pod
ATTACH_TO_CONTAINER = 1  # tc egress of that veth, or local delivery: packets to the pod
SLOT_FROM_LB = 0  # service translation (load balancing plugin)
SLOT_FROM_POLICY = 2  # egress policy
SLOT_FROM_ENCRYPTION = 4  # encryption mark
SLOT_FROM_DELIVERY = 7  # connectivity: local delivery, else to the stack
SLOT_TO_LB = 0  # reverse translation of replies from beyond the node
SLOT_TO_POLICY = 2  # ingress policy
SLOT_TO_DELIVERY = 7  # connectivity: hand the packet to the pod
CB_FLAGS = 0  # PYLIUM_CB_MAGIC | CB_F_*
CB_ENDPOINTS = 1  # source endpoint id (low 16 bits), destination endpoint id (high 16 bits)
CB_DELIVER = 2  # host-side ifindex of the destination endpoint (local delivery)
CB_SRC_ID = 3  # source security identity
CB_DST_ID = 4  # destination security identity
PYLIUM_CB_MAGIC = 0xd1500000
CB_F_LOCAL = 0x1  # delivered from another local endpoint: finish with redirect_peer
CB_F_FROM_PROXY = 0x2  # sent by this node's ingress proxy, which decided on it: no redirect
CB_F_TC_EGRESS = 0x4  # the stages run at tc egress (from the stack): no socket can be assigned
CB_F_FAST_OK = 0x8  # no stage did per-packet work (a translation): delivery may remember the flow
MARK_MAGIC_MASK = 0x0f00
MARK_MAGIC_TO_PROXY = 0x0200  # assigned to a proxy socket: routed locally (PROXY_ROUTE_TABLE)
MARK_MAGIC_INGRESS_PROXY = 0x0a00  # sent by the ingress proxy: its peer's identity in the other bits
MARK_MAGIC_EGRESS_PROXY = 0x0b00  # sent by the egress proxy: the pod's identity in the other bits
PROXY_ROUTE_TABLE = 2004  # local 0.0.0.0/0 dev lo: packets marked to-proxy stay on the node
PROXY_RULE_PREF = 9  # ip rule fwmark MARK_MAGIC_TO_PROXY/MARK_MAGIC_MASK lookup PROXY_ROUTE_TABLE
DROP_INVALID_SOURCE_MAC = 130  # INVALID_SOURCE_MAC: Invalid source mac
DROP_INVALID_DESTINATION_MAC = 131  # INVALID_DESTINATION_MAC: Invalid destination mac
DROP_INVALID_SOURCE_IP = 132  # INVALID_SOURCE_IP: Invalid source ip
DROP_POLICY = 133  # POLICY_DENIED: Policy denied
DROP_INVALID = 134  # INVALID_PACKET_DROPPED: Invalid packet
DROP_CT_TRUNCATED_OR_INVALID_HEADER = 135  # CT_TRUNCATED_OR_INVALID_HEADER: CT: Truncated or invalid header
DROP_CT_MISSING_TCP_ACK_FLAG = 136  # CT_MISSING_TCP_ACK_FLAG: Fragmentation needed
DROP_CT_UNKNOWN_L4_PROTOCOL = 137  # CT_UNKNOWN_L4_PROTOCOL: CT: Unknown L4 protocol
DROP_UNSUPPORTED_L3_PROTOCOL = 139  # UNSUPPORTED_L3_PROTOCOL: Unsupported L3 protocol
DROP_MISSED_TAIL_CALL = 140  # MISSED_TAIL_CALL: Missed tail call
DROP_WRITE_ERROR = 141  # ERROR_WRITING_TO_PACKET: Error writing to packet
DROP_UNKNOWN_L4_PROTOCOL = 142  # UNKNOWN_L4_PROTOCOL: Unknown L4 protocol
DROP_UNKNOWN_ICMPV4_CODE = 143  # UNKNOWN_ICMPV4_CODE: Unknown ICMPv4 code
DROP_UNKNOWN_ICMPV4_TYPE = 144  # UNKNOWN_ICMPV4_TYPE: Unknown ICMPv4 type
DROP_UNKNOWN_ICMPV6_CODE = 145  # UNKNOWN_ICMPV6_CODE: Unknown ICMPv6 code
DROP_UNKNOWN_ICMPV6_TYPE = 146  # UNKNOWN_ICMPV6_TYPE: Unknown ICMPv6 type
DROP_ERROR_RETRIEVING_TUNNEL_KEY = 147  # ERROR_RETRIEVING_TUNNEL_KEY: Error retrieving tunnel key
DROP_UNKNOWN_L3_TARGET_ADDRESS = 150  # UNKNOWN_L3_TARGET_ADDRESS: Unknown L3 target address
DROP_UNROUTABLE = 151  # STALE_OR_UNROUTABLE_IP: Stale or unroutable IP
DROP_ERROR_WHILE_CORRECTING_L3_CHECKSUM = 153  # ERROR_WHILE_CORRECTING_L3_CHECKSUM: Error while correcting L3 checksum
DROP_ERROR_WHILE_CORRECTING_L4_CHECKSUM = 154  # ERROR_WHILE_CORRECTING_L4_CHECKSUM: Error while correcting L4 checksum
DROP_CT_MAP_INSERTION_FAILED = 155  # CT_MAP_INSERTION_FAILED: CT: Map insertion failed
DROP_INVALID_IPV6_EXTENSION_HEADER = 156  # INVALID_IPV6_EXTENSION_HEADER: Invalid IPv6 extension header
DROP_IP_FRAGMENTATION_NOT_SUPPORTED = 157  # IP_FRAGMENTATION_NOT_SUPPORTED: IP fragmentation not supported
DROP_NO_SERVICE = 158  # SERVICE_BACKEND_NOT_FOUND: Service backend not found
DROP_NO_TUNNEL_OR_ENCAPSULATION_ENDPOINT = 160  # NO_TUNNEL_OR_ENCAPSULATION_ENDPOINT: No tunnel/encapsulation endpoint (datapath BUG!)
DROP_REACHED_EDT_RATE_LIMITING_DROP_HORIZON = 162  # REACHED_EDT_RATE_LIMITING_DROP_HORIZON: Reached EDT rate-limiting drop horizon
DROP_UNKNOWN_CONNECTION_TRACKING_STATE = 163  # UNKNOWN_CONNECTION_TRACKING_STATE: Unknown connection tracking state
DROP_LOCAL_HOST_IS_UNREACHABLE = 164  # LOCAL_HOST_IS_UNREACHABLE: Local host is unreachable
DROP_UNSUPPORTED_L2_PROTOCOL = 166  # UNSUPPORTED_L2_PROTOCOL: Unsupported L2 protocol
DROP_NO_MAPPING_FOR_NAT_MASQUERADE = 167  # NO_MAPPING_FOR_NAT_MASQUERADE: No mapping for NAT masquerade
DROP_UNSUPPORTED_PROTOCOL_FOR_NAT_MASQUERADE = 168  # UNSUPPORTED_PROTOCOL_FOR_NAT_MASQUERADE: Unsupported protocol for NAT masquerade
DROP_FIB_LOOKUP_FAILED = 169  # FIB_LOOKUP_FAILED: FIB lookup failed
DROP_ENCAPSULATION_TRAFFIC_IS_PROHIBITED = 170  # ENCAPSULATION_TRAFFIC_IS_PROHIBITED: Encapsulation traffic is prohibited
DROP_INVALID_IDENTITY = 171  # INVALID_IDENTITY: Invalid identity
DROP_UNKNOWN_SENDER = 172  # UNKNOWN_SENDER: Unknown sender
DROP_NAT_NOT_NEEDED = 173  # NAT_NOT_NEEDED: NAT not needed
DROP_IS_A_CLUSTERIP = 174  # IS_A_CLUSTERIP: Is a ClusterIP
DROP_FIRST_LOGICAL_DATAGRAM_FRAGMENT_NOT_FOUND = 175  # FIRST_LOGICAL_DATAGRAM_FRAGMENT_NOT_FOUND: First logical datagram fragment not found
DROP_FORBIDDEN_ICMPV6_MESSAGE = 176  # FORBIDDEN_ICMPV6_MESSAGE: Forbidden ICMPv6 message
DROP_DENIED_BY_LB_SRC_RANGE_CHECK = 177  # DENIED_BY_LB_SRC_RANGE_CHECK: Denied by LB src range check
DROP_SOCKET_LOOKUP_FAILED = 178  # SOCKET_LOOKUP_FAILED: Socket lookup failed
DROP_SOCKET_ASSIGN_FAILED = 179  # SOCKET_ASSIGN_FAILED: Socket assign failed
DROP_PROXY_REDIRECTION_NOT_SUPPORTED_FOR_PROTOCOL = 180  # PROXY_REDIRECTION_NOT_SUPPORTED_FOR_PROTOCOL: Proxy redirection not supported for protocol
DROP_POLICY_DENY = 181  # POLICY_DENY: Policy denied by denylist
DROP_VLAN_FILTERED = 182  # VLAN_FILTERED: VLAN traffic disallowed by VLAN filter
DROP_INVALID_VNI = 183  # INVALID_VNI: Incorrect VNI from VTEP
DROP_INVALID_TC_BUFFER = 184  # INVALID_TC_BUFFER: Failed to update or lookup TC buffer
DROP_NO_SID = 185  # NO_SID: No SID was found for the IP address
DROP_NAT46 = 187  # NAT46: Failed to perform NAT46
DROP_NAT64 = 188  # NAT64: Failed to perform NAT64
DROP_AUTH_REQUIRED = 189  # AUTH_REQUIRED: Authentication required
DROP_CT_NO_MAP_FOUND = 190  # CT_NO_MAP_FOUND: No conntrack map found
DROP_SNAT_NO_MAP_FOUND = 191  # SNAT_NO_MAP_FOUND: No nat map found
DROP_INVALID_CLUSTER_ID = 192  # INVALID_CLUSTER_ID: Invalid ClusterID
DROP_UNSUPPORTED_PROTOCOL_FOR_DSR_ENCAP = 193  # UNSUPPORTED_PROTOCOL_FOR_DSR_ENCAP: Unsupported packet protocol for DSR encapsulation
DROP_NO_EGRESS_GATEWAY = 194  # NO_EGRESS_GATEWAY: No egress gateway found
DROP_UNENCRYPTED_TRAFFIC = 195  # UNENCRYPTED_TRAFFIC: Traffic is unencrypted
DROP_TTL_EXCEEDED = 196  # TTL_EXCEEDED: TTL exceeded
DROP_NO_NODE_ID = 197  # NO_NODE_ID: No node ID found
DROP_RATE_LIMITED = 198  # DROP_RATE_LIMITED: Rate limited
MSG_DROP = 1  # drop
MSG_TRACE = 4  # trace
MSG_POLICY_VERDICT = 5  # policy-verdict
MSG_L7 = 129  # l7
TRACE_TO_LXC = 0  # to-endpoint: TO_ENDPOINT
TRACE_TO_PROXY = 1  # to-proxy: TO_PROXY
TRACE_TO_HOST = 2  # to-host: TO_HOST
TRACE_TO_STACK = 3  # to-stack: TO_STACK
TRACE_TO_OVERLAY = 4  # to-overlay: TO_OVERLAY
TRACE_FROM_LXC = 5  # from-endpoint: FROM_ENDPOINT
TRACE_FROM_PROXY = 6  # from-proxy: FROM_PROXY
TRACE_FROM_HOST = 7  # from-host: FROM_HOST
TRACE_FROM_STACK = 8  # from-stack: FROM_STACK
TRACE_FROM_OVERLAY = 9  # from-overlay: FROM_OVERLAY
TRACE_FROM_NETWORK = 10  # from-network: FROM_NETWORK
TRACE_TO_NETWORK = 11  # to-network: TO_NETWORK
TRACE_FROM_CRYPTO = 12  # from-crypto: FROM_CRYPTO
TRACE_TO_CRYPTO = 13  # to-crypto: TO_CRYPTO
TRACE_REASON_UNKNOWN = 0  # TRACE_REASON_UNKNOWN
TRACE_REASON_NEW = 1  # NEW
TRACE_REASON_ESTABLISHED = 2  # ESTABLISHED
TRACE_REASON_REPLY = 3  # REPLY
POLICY_MATCH_NONE = 0  # none
POLICY_MATCH_L3_ONLY = 1  # L3-Only
POLICY_MATCH_L3_L4 = 2  # L3-L4
POLICY_MATCH_L4_ONLY = 3  # L4-Only
POLICY_MATCH_ALL = 4  # all
POLICY_MATCH_L3_PROTO = 5  # L3-Proto
POLICY_MATCH_PROTO_ONLY = 6  # Proto-Only
EVENT_F_REPLY_KNOWN = 0x1  # is_reply below is meaningful
EVENT_F_REPLY = 0x2  # the packet goes against its connection's first direction
EVENT_F_ALLOWED = 0x4  # policy verdicts: the packet was allowed
EVENT_F_AUDIT = 0x8  # policy verdicts: denied by policy, let through (audit mode)
EVENT_F_REDIRECT = 0x10  # policy verdicts: redirected to a proxy
AGGREGATE_NONE = 0  # a trace at every observation point
AGGREGATE_LOWEST = 1  # no traces at receive (from-*) points
AGGREGATE_LOW = 2  # as lowest
AGGREGATE_MEDIUM = 3  # per connection: first packet, new TCP flags, every interval
AGGREGATE_MAXIMUM = 4  # as medium
MONITOR_INTERVAL_NS = 5000000000
MONITOR_FLAGS = 0x07  # TCP flags whose first appearance is reported: FIN 0x01, SYN 0x02, RST 0x04
PYLIUM_TRACE_EVENTS = 1  # bpf.events.trace.enabled
PYLIUM_DROP_EVENTS = 1  # bpf.events.drop.enabled
PYLIUM_POLICY_VERDICT_EVENTS = 1  # bpf.events.policyVerdict.enabled: for the policy stages
PYLIUM_FAST_PATH = 1  # bpf.fastPath.enabled, and traces aggregated at medium or above (or off)
FAST_CB_GEN_SHIFT = 4  # bits 4-19 of CB_FLAGS: the fast path generation the stages started under
FAST_LIFETIME_NS = 1000000000  # a fast path entry's longest life: the stages see each flow once a second
FAST_ENTRIES = 8192  # fast_flows: few buckets, so that a lookup that misses stays in the cache
FAST_MIN_AGE_NS = 1000000  # remembered once a direction was first (or last) reported this long ago
PYLIUM_FILE_ID = 0  # source file of a record when call sites are not numbered by the agent
METRIC_INGRESS = 1  # INGRESS
METRIC_EGRESS = 2  # EGRESS
METRICS_ENTRIES = 1024
ID_HOST = 1  # reserved:host
ID_WORLD = 2  # reserved:world
ID_UNMANAGED = 3  # reserved:unmanaged
ID_HEALTH = 4  # reserved:health
ID_INIT = 5  # reserved:init
ID_REMOTE_NODE = 6  # reserved:remote-node
ID_KUBE_APISERVER = 7  # reserved:kube-apiserver
ID_INGRESS = 8  # reserved:ingress
IDENTITY_ALLOCATED_MIN = 256
IDENTITY_ALLOCATED_MAX = 65535
IDENTITY_LOCAL_MIN = 0x1000000
PYLIUM_CAPTURE_LEN = 128  # packet bytes copied into drop and trace records
RB_NO_WAKEUP = 1  # BPF_RB_NO_WAKEUP
RB_FORCE_WAKEUP = 2  # BPF_RB_FORCE_WAKEUP
EVENTS_WAKEUP_BATCH = 4096  # records a CPU writes before it wakes the reader (it also drains every 10 ms)
PYLIUM_EVENTS_BYTES = 0x400000  # events ring buffer: 4 MiB (bpf.events.ringBufferSize)


class Slot(Enum):
    """A tail-call slot of an attach point: declare.bpf_stage(Slot.FROM_POLICY, ...)."""

    FROM_LB = ("from-container", 0)
    FROM_POLICY = ("from-container", 2)
    FROM_ENCRYPTION = ("from-container", 4)
    FROM_DELIVERY = ("from-container", 7)
    TO_LB = ("to-container", 0)
    TO_POLICY = ("to-container", 2)
    TO_DELIVERY = ("to-container", 7)

    @property
    def attach(self) -> str:
        return self.value[0]

    @property
    def index(self) -> int:
        return self.value[1]


class CbFlag(IntFlag):
    """Bits of skb->cb[CB_FLAGS]."""

    LOCAL = CB_F_LOCAL
    FROM_PROXY = CB_F_FROM_PROXY
    TC_EGRESS = CB_F_TC_EGRESS
    FAST_OK = CB_F_FAST_OK


class Cb(IntEnum):
    """skb->cb indices: facts passed between the stages of one packet."""

    FLAGS = CB_FLAGS
    ENDPOINTS = CB_ENDPOINTS
    DELIVER = CB_DELIVER
    SRC_ID = CB_SRC_ID
    DST_ID = CB_DST_ID


class DropReason(IntEnum):
    """Drop reasons (Cilium's numbers); DROP_REASONS: code -> (flow.proto name, monitor text)."""

    INVALID_SOURCE_MAC = DROP_INVALID_SOURCE_MAC
    INVALID_DESTINATION_MAC = DROP_INVALID_DESTINATION_MAC
    INVALID_SOURCE_IP = DROP_INVALID_SOURCE_IP
    POLICY = DROP_POLICY
    INVALID = DROP_INVALID
    CT_TRUNCATED_OR_INVALID_HEADER = DROP_CT_TRUNCATED_OR_INVALID_HEADER
    CT_MISSING_TCP_ACK_FLAG = DROP_CT_MISSING_TCP_ACK_FLAG
    CT_UNKNOWN_L4_PROTOCOL = DROP_CT_UNKNOWN_L4_PROTOCOL
    UNSUPPORTED_L3_PROTOCOL = DROP_UNSUPPORTED_L3_PROTOCOL
    MISSED_TAIL_CALL = DROP_MISSED_TAIL_CALL
    WRITE_ERROR = DROP_WRITE_ERROR
    UNKNOWN_L4_PROTOCOL = DROP_UNKNOWN_L4_PROTOCOL
    UNKNOWN_ICMPV4_CODE = DROP_UNKNOWN_ICMPV4_CODE
    UNKNOWN_ICMPV4_TYPE = DROP_UNKNOWN_ICMPV4_TYPE
    UNKNOWN_ICMPV6_CODE = DROP_UNKNOWN_ICMPV6_CODE
    UNKNOWN_ICMPV6_TYPE = DROP_UNKNOWN_ICMPV6_TYPE
    ERROR_RETRIEVING_TUNNEL_KEY = DROP_ERROR_RETRIEVING_TUNNEL_KEY
    UNKNOWN_L3_TARGET_ADDRESS = DROP_UNKNOWN_L3_TARGET_ADDRESS
    UNROUTABLE = DROP_UNROUTABLE
    ERROR_WHILE_CORRECTING_L3_CHECKSUM = DROP_ERROR_WHILE_CORRECTING_L3_CHECKSUM
    ERROR_WHILE_CORRECTING_L4_CHECKSUM = DROP_ERROR_WHILE_CORRECTING_L4_CHECKSUM
    CT_MAP_INSERTION_FAILED = DROP_CT_MAP_INSERTION_FAILED
    INVALID_IPV6_EXTENSION_HEADER = DROP_INVALID_IPV6_EXTENSION_HEADER
    IP_FRAGMENTATION_NOT_SUPPORTED = DROP_IP_FRAGMENTATION_NOT_SUPPORTED
    NO_SERVICE = DROP_NO_SERVICE
    NO_TUNNEL_OR_ENCAPSULATION_ENDPOINT = DROP_NO_TUNNEL_OR_ENCAPSULATION_ENDPOINT
    REACHED_EDT_RATE_LIMITING_DROP_HORIZON = DROP_REACHED_EDT_RATE_LIMITING_DROP_HORIZON
    UNKNOWN_CONNECTION_TRACKING_STATE = DROP_UNKNOWN_CONNECTION_TRACKING_STATE
    LOCAL_HOST_IS_UNREACHABLE = DROP_LOCAL_HOST_IS_UNREACHABLE
    UNSUPPORTED_L2_PROTOCOL = DROP_UNSUPPORTED_L2_PROTOCOL
    NO_MAPPING_FOR_NAT_MASQUERADE = DROP_NO_MAPPING_FOR_NAT_MASQUERADE
    UNSUPPORTED_PROTOCOL_FOR_NAT_MASQUERADE = DROP_UNSUPPORTED_PROTOCOL_FOR_NAT_MASQUERADE
    FIB_LOOKUP_FAILED = DROP_FIB_LOOKUP_FAILED
    ENCAPSULATION_TRAFFIC_IS_PROHIBITED = DROP_ENCAPSULATION_TRAFFIC_IS_PROHIBITED
    INVALID_IDENTITY = DROP_INVALID_IDENTITY
    UNKNOWN_SENDER = DROP_UNKNOWN_SENDER
    NAT_NOT_NEEDED = DROP_NAT_NOT_NEEDED
    IS_A_CLUSTERIP = DROP_IS_A_CLUSTERIP
    FIRST_LOGICAL_DATAGRAM_FRAGMENT_NOT_FOUND = DROP_FIRST_LOGICAL_DATAGRAM_FRAGMENT_NOT_FOUND
    FORBIDDEN_ICMPV6_MESSAGE = DROP_FORBIDDEN_ICMPV6_MESSAGE
    DENIED_BY_LB_SRC_RANGE_CHECK = DROP_DENIED_BY_LB_SRC_RANGE_CHECK
    SOCKET_LOOKUP_FAILED = DROP_SOCKET_LOOKUP_FAILED
    SOCKET_ASSIGN_FAILED = DROP_SOCKET_ASSIGN_FAILED
    PROXY_REDIRECTION_NOT_SUPPORTED_FOR_PROTOCOL = DROP_PROXY_REDIRECTION_NOT_SUPPORTED_FOR_PROTOCOL
    POLICY_DENY = DROP_POLICY_DENY
    VLAN_FILTERED = DROP_VLAN_FILTERED
    INVALID_VNI = DROP_INVALID_VNI
    INVALID_TC_BUFFER = DROP_INVALID_TC_BUFFER
    NO_SID = DROP_NO_SID
    NAT46 = DROP_NAT46
    NAT64 = DROP_NAT64
    AUTH_REQUIRED = DROP_AUTH_REQUIRED
    CT_NO_MAP_FOUND = DROP_CT_NO_MAP_FOUND
    SNAT_NO_MAP_FOUND = DROP_SNAT_NO_MAP_FOUND
    INVALID_CLUSTER_ID = DROP_INVALID_CLUSTER_ID
    UNSUPPORTED_PROTOCOL_FOR_DSR_ENCAP = DROP_UNSUPPORTED_PROTOCOL_FOR_DSR_ENCAP
    NO_EGRESS_GATEWAY = DROP_NO_EGRESS_GATEWAY
    UNENCRYPTED_TRAFFIC = DROP_UNENCRYPTED_TRAFFIC
    TTL_EXCEEDED = DROP_TTL_EXCEEDED
    NO_NODE_ID = DROP_NO_NODE_ID
    RATE_LIMITED = DROP_RATE_LIMITED


DROP_REASONS: dict[int, tuple[str, str]] = {
    DROP_INVALID_SOURCE_MAC: ("INVALID_SOURCE_MAC", "Invalid source mac"),
    DROP_INVALID_DESTINATION_MAC: ("INVALID_DESTINATION_MAC", "Invalid destination mac"),
    DROP_INVALID_SOURCE_IP: ("INVALID_SOURCE_IP", "Invalid source ip"),
    DROP_POLICY: ("POLICY_DENIED", "Policy denied"),
    DROP_INVALID: ("INVALID_PACKET_DROPPED", "Invalid packet"),
    DROP_CT_TRUNCATED_OR_INVALID_HEADER: ("CT_TRUNCATED_OR_INVALID_HEADER", "CT: Truncated or invalid header"),
    DROP_CT_MISSING_TCP_ACK_FLAG: ("CT_MISSING_TCP_ACK_FLAG", "Fragmentation needed"),
    DROP_CT_UNKNOWN_L4_PROTOCOL: ("CT_UNKNOWN_L4_PROTOCOL", "CT: Unknown L4 protocol"),
    DROP_UNSUPPORTED_L3_PROTOCOL: ("UNSUPPORTED_L3_PROTOCOL", "Unsupported L3 protocol"),
    DROP_MISSED_TAIL_CALL: ("MISSED_TAIL_CALL", "Missed tail call"),
    DROP_WRITE_ERROR: ("ERROR_WRITING_TO_PACKET", "Error writing to packet"),
    DROP_UNKNOWN_L4_PROTOCOL: ("UNKNOWN_L4_PROTOCOL", "Unknown L4 protocol"),
    DROP_UNKNOWN_ICMPV4_CODE: ("UNKNOWN_ICMPV4_CODE", "Unknown ICMPv4 code"),
    DROP_UNKNOWN_ICMPV4_TYPE: ("UNKNOWN_ICMPV4_TYPE", "Unknown ICMPv4 type"),
    DROP_UNKNOWN_ICMPV6_CODE: ("UNKNOWN_ICMPV6_CODE", "Unknown ICMPv6 code"),
    DROP_UNKNOWN_ICMPV6_TYPE: ("UNKNOWN_ICMPV6_TYPE", "Unknown ICMPv6 type"),
    DROP_ERROR_RETRIEVING_TUNNEL_KEY: ("ERROR_RETRIEVING_TUNNEL_KEY", "Error retrieving tunnel key"),
    DROP_UNKNOWN_L3_TARGET_ADDRESS: ("UNKNOWN_L3_TARGET_ADDRESS", "Unknown L3 target address"),
    DROP_UNROUTABLE: ("STALE_OR_UNROUTABLE_IP", "Stale or unroutable IP"),
    DROP_ERROR_WHILE_CORRECTING_L3_CHECKSUM: ("ERROR_WHILE_CORRECTING_L3_CHECKSUM", "Error while correcting L3 checksum"),
    DROP_ERROR_WHILE_CORRECTING_L4_CHECKSUM: ("ERROR_WHILE_CORRECTING_L4_CHECKSUM", "Error while correcting L4 checksum"),
    DROP_CT_MAP_INSERTION_FAILED: ("CT_MAP_INSERTION_FAILED", "CT: Map insertion failed"),
    DROP_INVALID_IPV6_EXTENSION_HEADER: ("INVALID_IPV6_EXTENSION_HEADER", "Invalid IPv6 extension header"),
    DROP_IP_FRAGMENTATION_NOT_SUPPORTED: ("IP_FRAGMENTATION_NOT_SUPPORTED", "IP fragmentation not supported"),
    DROP_NO_SERVICE: ("SERVICE_BACKEND_NOT_FOUND", "Service backend not found"),
    DROP_NO_TUNNEL_OR_ENCAPSULATION_ENDPOINT: ("NO_TUNNEL_OR_ENCAPSULATION_ENDPOINT", "No tunnel/encapsulation endpoint (datapath BUG!)"),
    DROP_REACHED_EDT_RATE_LIMITING_DROP_HORIZON: ("REACHED_EDT_RATE_LIMITING_DROP_HORIZON", "Reached EDT rate-limiting drop horizon"),
    DROP_UNKNOWN_CONNECTION_TRACKING_STATE: ("UNKNOWN_CONNECTION_TRACKING_STATE", "Unknown connection tracking state"),
    DROP_LOCAL_HOST_IS_UNREACHABLE: ("LOCAL_HOST_IS_UNREACHABLE", "Local host is unreachable"),
    DROP_UNSUPPORTED_L2_PROTOCOL: ("UNSUPPORTED_L2_PROTOCOL", "Unsupported L2 protocol"),
    DROP_NO_MAPPING_FOR_NAT_MASQUERADE: ("NO_MAPPING_FOR_NAT_MASQUERADE", "No mapping for NAT masquerade"),
    DROP_UNSUPPORTED_PROTOCOL_FOR_NAT_MASQUERADE: ("UNSUPPORTED_PROTOCOL_FOR_NAT_MASQUERADE", "Unsupported protocol for NAT masquerade"),
    DROP_FIB_LOOKUP_FAILED: ("FIB_LOOKUP_FAILED", "FIB lookup failed"),
    DROP_ENCAPSULATION_TRAFFIC_IS_PROHIBITED: ("ENCAPSULATION_TRAFFIC_IS_PROHIBITED", "Encapsulation traffic is prohibited"),
    DROP_INVALID_IDENTITY: ("INVALID_IDENTITY", "Invalid identity"),
    DROP_UNKNOWN_SENDER: ("UNKNOWN_SENDER", "Unknown sender"),
    DROP_NAT_NOT_NEEDED: ("NAT_NOT_NEEDED", "NAT not needed"),
    DROP_IS_A_CLUSTERIP: ("IS_A_CLUSTERIP", "Is a ClusterIP"),
    DROP_FIRST_LOGICAL_DATAGRAM_FRAGMENT_NOT_FOUND: ("FIRST_LOGICAL_DATAGRAM_FRAGMENT_NOT_FOUND", "First logical datagram fragment not found"),
    DROP_FORBIDDEN_ICMPV6_MESSAGE: ("FORBIDDEN_ICMPV6_MESSAGE", "Forbidden ICMPv6 message"),
    DROP_DENIED_BY_LB_SRC_RANGE_CHECK: ("DENIED_BY_LB_SRC_RANGE_CHECK", "Denied by LB src range check"),
    DROP_SOCKET_LOOKUP_FAILED: ("SOCKET_LOOKUP_FAILED", "Socket lookup failed"),
    DROP_SOCKET_ASSIGN_FAILED: ("SOCKET_ASSIGN_FAILED", "Socket assign failed"),
    DROP_PROXY_REDIRECTION_NOT_SUPPORTED_FOR_PROTOCOL: ("PROXY_REDIRECTION_NOT_SUPPORTED_FOR_PROTOCOL", "Proxy redirection not supported for protocol"),
    DROP_POLICY_DENY: ("POLICY_DENY", "Policy denied by denylist"),
    DROP_VLAN_FILTERED: ("VLAN_FILTERED", "VLAN traffic disallowed by VLAN filter"),
    DROP_INVALID_VNI: ("INVALID_VNI", "Incorrect VNI from VTEP"),
    DROP_INVALID_TC_BUFFER: ("INVALID_TC_BUFFER", "Failed to update or lookup TC buffer"),
    DROP_NO_SID: ("NO_SID", "No SID was found for the IP address"),
    DROP_NAT46: ("NAT46", "Failed to perform NAT46"),
    DROP_NAT64: ("NAT64", "Failed to perform NAT64"),
    DROP_AUTH_REQUIRED: ("AUTH_REQUIRED", "Authentication required"),
    DROP_CT_NO_MAP_FOUND: ("CT_NO_MAP_FOUND", "No conntrack map found"),
    DROP_SNAT_NO_MAP_FOUND: ("SNAT_NO_MAP_FOUND", "No nat map found"),
    DROP_INVALID_CLUSTER_ID: ("INVALID_CLUSTER_ID", "Invalid ClusterID"),
    DROP_UNSUPPORTED_PROTOCOL_FOR_DSR_ENCAP: ("UNSUPPORTED_PROTOCOL_FOR_DSR_ENCAP", "Unsupported packet protocol for DSR encapsulation"),
    DROP_NO_EGRESS_GATEWAY: ("NO_EGRESS_GATEWAY", "No egress gateway found"),
    DROP_UNENCRYPTED_TRAFFIC: ("UNENCRYPTED_TRAFFIC", "Traffic is unencrypted"),
    DROP_TTL_EXCEEDED: ("TTL_EXCEEDED", "TTL exceeded"),
    DROP_NO_NODE_ID: ("NO_NODE_ID", "No node ID found"),
    DROP_RATE_LIMITED: ("DROP_RATE_LIMITED", "Rate limited"),
}


class MessageType(IntEnum):
    """Record types of the events ring buffer."""

    DROP = MSG_DROP
    TRACE = MSG_TRACE
    POLICY_VERDICT = MSG_POLICY_VERDICT
    L7 = MSG_L7


MESSAGE_TYPES: dict[int, str] = {
    MSG_DROP: "drop",
    MSG_TRACE: "trace",
    MSG_POLICY_VERDICT: "policy-verdict",
    MSG_L7: "l7",
}


class TraceReason(IntEnum):
    """Why a trace was reported."""

    UNKNOWN = TRACE_REASON_UNKNOWN
    NEW = TRACE_REASON_NEW
    ESTABLISHED = TRACE_REASON_ESTABLISHED
    REPLY = TRACE_REASON_REPLY


TRACE_REASONS: dict[int, str] = {
    TRACE_REASON_UNKNOWN: "TRACE_REASON_UNKNOWN",
    TRACE_REASON_NEW: "NEW",
    TRACE_REASON_ESTABLISHED: "ESTABLISHED",
    TRACE_REASON_REPLY: "REPLY",
}


class TracePoint(IntEnum):
    """Trace observation points; OBSERVATION_POINTS: number -> (monitor name, flow.proto name)."""

    TO_LXC = TRACE_TO_LXC
    TO_PROXY = TRACE_TO_PROXY
    TO_HOST = TRACE_TO_HOST
    TO_STACK = TRACE_TO_STACK
    TO_OVERLAY = TRACE_TO_OVERLAY
    FROM_LXC = TRACE_FROM_LXC
    FROM_PROXY = TRACE_FROM_PROXY
    FROM_HOST = TRACE_FROM_HOST
    FROM_STACK = TRACE_FROM_STACK
    FROM_OVERLAY = TRACE_FROM_OVERLAY
    FROM_NETWORK = TRACE_FROM_NETWORK
    TO_NETWORK = TRACE_TO_NETWORK
    FROM_CRYPTO = TRACE_FROM_CRYPTO
    TO_CRYPTO = TRACE_TO_CRYPTO


OBSERVATION_POINTS: dict[int, tuple[str, str]] = {
    TRACE_TO_LXC: ("to-endpoint", "TO_ENDPOINT"),
    TRACE_TO_PROXY: ("to-proxy", "TO_PROXY"),
    TRACE_TO_HOST: ("to-host", "TO_HOST"),
    TRACE_TO_STACK: ("to-stack", "TO_STACK"),
    TRACE_TO_OVERLAY: ("to-overlay", "TO_OVERLAY"),
    TRACE_FROM_LXC: ("from-endpoint", "FROM_ENDPOINT"),
    TRACE_FROM_PROXY: ("from-proxy", "FROM_PROXY"),
    TRACE_FROM_HOST: ("from-host", "FROM_HOST"),
    TRACE_FROM_STACK: ("from-stack", "FROM_STACK"),
    TRACE_FROM_OVERLAY: ("from-overlay", "FROM_OVERLAY"),
    TRACE_FROM_NETWORK: ("from-network", "FROM_NETWORK"),
    TRACE_TO_NETWORK: ("to-network", "TO_NETWORK"),
    TRACE_FROM_CRYPTO: ("from-crypto", "FROM_CRYPTO"),
    TRACE_TO_CRYPTO: ("to-crypto", "TO_CRYPTO"),
}


class PolicyMatch(IntEnum):
    """Policy verdict match types."""

    NONE = POLICY_MATCH_NONE
    L3_ONLY = POLICY_MATCH_L3_ONLY
    L3_L4 = POLICY_MATCH_L3_L4
    L4_ONLY = POLICY_MATCH_L4_ONLY
    ALL = POLICY_MATCH_ALL
    L3_PROTO = POLICY_MATCH_L3_PROTO
    PROTO_ONLY = POLICY_MATCH_PROTO_ONLY


POLICY_MATCH_TYPES: dict[int, str] = {
    POLICY_MATCH_NONE: "none",
    POLICY_MATCH_L3_ONLY: "L3-Only",
    POLICY_MATCH_L3_L4: "L3-L4",
    POLICY_MATCH_L4_ONLY: "L4-Only",
    POLICY_MATCH_ALL: "all",
    POLICY_MATCH_L3_PROTO: "L3-Proto",
    POLICY_MATCH_PROTO_ONLY: "Proto-Only",
}


class EventFlag(IntFlag):
    """pylium_event.flags."""

    REPLY_KNOWN = EVENT_F_REPLY_KNOWN
    REPLY = EVENT_F_REPLY
    ALLOWED = EVENT_F_ALLOWED
    AUDIT = EVENT_F_AUDIT
    REDIRECT = EVENT_F_REDIRECT


class Aggregation(IntEnum):
    """bpf.monitorAggregation levels."""

    NONE = AGGREGATE_NONE
    LOWEST = AGGREGATE_LOWEST
    LOW = AGGREGATE_LOW
    MEDIUM = AGGREGATE_MEDIUM
    MAXIMUM = AGGREGATE_MAXIMUM


class MetricDirection(IntEnum):
    """Directions of the metrics map."""

    INGRESS = METRIC_INGRESS
    EGRESS = METRIC_EGRESS


METRIC_DIRECTIONS: dict[int, str] = {
    METRIC_INGRESS: "INGRESS",
    METRIC_EGRESS: "EGRESS",
}


class ReservedIdentity(IntEnum):
    """Reserved security identities."""

    HOST = ID_HOST
    WORLD = ID_WORLD
    UNMANAGED = ID_UNMANAGED
    HEALTH = ID_HEALTH
    INIT = ID_INIT
    REMOTE_NODE = ID_REMOTE_NODE
    KUBE_APISERVER = ID_KUBE_APISERVER
    INGRESS = ID_INGRESS


RESERVED_IDENTITIES: dict[int, str] = {
    ID_HOST: "reserved:host",
    ID_WORLD: "reserved:world",
    ID_UNMANAGED: "reserved:unmanaged",
    ID_HEALTH: "reserved:health",
    ID_INIT: "reserved:init",
    ID_REMOTE_NODE: "reserved:remote-node",
    ID_KUBE_APISERVER: "reserved:kube-apiserver",
    ID_INGRESS: "reserved:ingress",
}

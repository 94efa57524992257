"""Names of what the datapath reports, as Cilium names them (pkg/monitor/api, flow.proto):
drop reasons, message types, observation points, trace reasons, metric directions."""

from __future__ import annotations

# code -> (flow.proto DropReason name, the text of Cilium's metric label and monitor output)
DROP_REASONS: dict[int, tuple[str, str]] = {
    130: ("INVALID_SOURCE_MAC", "Invalid source mac"),
    131: ("INVALID_DESTINATION_MAC", "Invalid destination mac"),
    132: ("INVALID_SOURCE_IP", "Invalid source ip"),
    133: ("POLICY_DENIED", "Policy denied"),
    134: ("INVALID_PACKET_DROPPED", "Invalid packet"),
    135: ("CT_TRUNCATED_OR_INVALID_HEADER", "CT: Truncated or invalid header"),
    136: ("CT_MISSING_TCP_ACK_FLAG", "Fragmentation needed"),
    137: ("CT_UNKNOWN_L4_PROTOCOL", "CT: Unknown L4 protocol"),
    139: ("UNSUPPORTED_L3_PROTOCOL", "Unsupported L3 protocol"),
    140: ("MISSED_TAIL_CALL", "Missed tail call"),
    141: ("ERROR_WRITING_TO_PACKET", "Error writing to packet"),
    142: ("UNKNOWN_L4_PROTOCOL", "Unknown L4 protocol"),
    143: ("UNKNOWN_ICMPV4_CODE", "Unknown ICMPv4 code"),
    144: ("UNKNOWN_ICMPV4_TYPE", "Unknown ICMPv4 type"),
    145: ("UNKNOWN_ICMPV6_CODE", "Unknown ICMPv6 code"),
    146: ("UNKNOWN_ICMPV6_TYPE", "Unknown ICMPv6 type"),
    147: ("ERROR_RETRIEVING_TUNNEL_KEY", "Error retrieving tunnel key"),
    150: ("UNKNOWN_L3_TARGET_ADDRESS", "Unknown L3 target address"),
    151: ("STALE_OR_UNROUTABLE_IP", "Stale or unroutable IP"),
    153: ("ERROR_WHILE_CORRECTING_L3_CHECKSUM", "Error while correcting L3 checksum"),
    154: ("ERROR_WHILE_CORRECTING_L4_CHECKSUM", "Error while correcting L4 checksum"),
    155: ("CT_MAP_INSERTION_FAILED", "CT: Map insertion failed"),
    156: ("INVALID_IPV6_EXTENSION_HEADER", "Invalid IPv6 extension header"),
    157: ("IP_FRAGMENTATION_NOT_SUPPORTED", "IP fragmentation not supported"),
    158: ("SERVICE_BACKEND_NOT_FOUND", "Service backend not found"),
    160: ("NO_TUNNEL_OR_ENCAPSULATION_ENDPOINT", "No tunnel/encapsulation endpoint (datapath BUG!)"),
    162: ("REACHED_EDT_RATE_LIMITING_DROP_HORIZON", "Reached EDT rate-limiting drop horizon"),
    163: ("UNKNOWN_CONNECTION_TRACKING_STATE", "Unknown connection tracking state"),
    164: ("LOCAL_HOST_IS_UNREACHABLE", "Local host is unreachable"),
    166: ("UNSUPPORTED_L2_PROTOCOL", "Unsupported L2 protocol"),
    167: ("NO_MAPPING_FOR_NAT_MASQUERADE", "No mapping for NAT masquerade"),
    168: ("UNSUPPORTED_PROTOCOL_FOR_NAT_MASQUERADE", "Unsupported protocol for NAT masquerade"),
    169: ("FIB_LOOKUP_FAILED", "FIB lookup failed"),
    170: ("ENCAPSULATION_TRAFFIC_IS_PROHIBITED", "Encapsulation traffic is prohibited"),
    171: ("INVALID_IDENTITY", "Invalid identity"),
    172: ("UNKNOWN_SENDER", "Unknown sender"),
    173: ("NAT_NOT_NEEDED", "NAT not needed"),
    174: ("IS_A_CLUSTERIP", "Is a ClusterIP"),
    175: ("FIRST_LOGICAL_DATAGRAM_FRAGMENT_NOT_FOUND", "First logical datagram fragment not found"),
    176: ("FORBIDDEN_ICMPV6_MESSAGE", "Forbidden ICMPv6 message"),
    177: ("DENIED_BY_LB_SRC_RANGE_CHECK", "Denied by LB src range check"),
    178: ("SOCKET_LOOKUP_FAILED", "Socket lookup failed"),
    179: ("SOCKET_ASSIGN_FAILED", "Socket assign failed"),
    180: ("PROXY_REDIRECTION_NOT_SUPPORTED_FOR_PROTOCOL", "Proxy redirection not supported for protocol"),
    181: ("POLICY_DENY", "Policy denied by denylist"),
    182: ("VLAN_FILTERED", "VLAN traffic disallowed by VLAN filter"),
    183: ("INVALID_VNI", "Incorrect VNI from VTEP"),
    184: ("INVALID_TC_BUFFER", "Failed to update or lookup TC buffer"),
    185: ("NO_SID", "No SID was found for the IP address"),
    187: ("NAT46", "Failed to perform NAT46"),
    188: ("NAT64", "Failed to perform NAT64"),
    189: ("AUTH_REQUIRED", "Authentication required"),
    190: ("CT_NO_MAP_FOUND", "No conntrack map found"),
    191: ("SNAT_NO_MAP_FOUND", "No nat map found"),
    192: ("INVALID_CLUSTER_ID", "Invalid ClusterID"),
    193: ("UNSUPPORTED_PROTOCOL_FOR_DSR_ENCAP", "Unsupported packet protocol for DSR encapsulation"),
    194: ("NO_EGRESS_GATEWAY", "No egress gateway found"),
    195: ("UNENCRYPTED_TRAFFIC", "Traffic is unencrypted"),
    196: ("TTL_EXCEEDED", "TTL exceeded"),
    197: ("NO_NODE_ID", "No node ID found"),
    198: ("DROP_RATE_LIMITED", "Rate limited"),
}


def drop_reason(code: int) -> tuple[str, str]:
    return DROP_REASONS.get(code, ("DROP_REASON_UNKNOWN", f"Unknown drop reason {code}"))


# Monitor message types (pkg/monitor/api/types.go) and the names `-t` filters use.
MSG_DROP, MSG_TRACE, MSG_POLICY_VERDICT = 1, 4, 5
MESSAGE_TYPES = {MSG_DROP: "drop", MSG_TRACE: "trace", MSG_POLICY_VERDICT: "policy-verdict"}

# Observation points: monitor number -> (monitor name, flow.proto TraceObservationPoint name)
OBSERVATION_POINTS: dict[int, tuple[str, str]] = {
    0: ("to-endpoint", "TO_ENDPOINT"), 1: ("to-proxy", "TO_PROXY"), 2: ("to-host", "TO_HOST"),
    3: ("to-stack", "TO_STACK"), 4: ("to-overlay", "TO_OVERLAY"), 5: ("from-endpoint", "FROM_ENDPOINT"),
    6: ("from-proxy", "FROM_PROXY"), 7: ("from-host", "FROM_HOST"), 8: ("from-stack", "FROM_STACK"),
    9: ("from-overlay", "FROM_OVERLAY"), 10: ("from-network", "FROM_NETWORK"), 11: ("to-network", "TO_NETWORK"),
    12: ("from-crypto", "FROM_CRYPTO"), 13: ("to-crypto", "TO_CRYPTO"),
}
TRACE_REASONS = {0: "TRACE_REASON_UNKNOWN", 1: "NEW", 2: "ESTABLISHED", 3: "REPLY"}

# Policy verdict match types (monitor PolicyMatch*): Hubble's policy_match_type values
POLICY_MATCH_TYPES = {0: "none", 1: "L3-Only", 2: "L3-L4", 3: "L4-Only", 4: "all", 5: "L3-Proto", 6: "Proto-Only"}

# pylium_event.flags
EVENT_F_REPLY_KNOWN, EVENT_F_REPLY, EVENT_F_ALLOWED, EVENT_F_AUDIT, EVENT_F_REDIRECT = 0x1, 0x2, 0x4, 0x8, 0x10

METRIC_DIRECTIONS = {1: "INGRESS", 2: "EGRESS"}  # the metrics map's direction (pkg/maps/metricsmap)

# bpf.monitorAggregation values, Cilium's spellings
AGGREGATION_LEVELS = {"none": 0, "disabled": 0, "lowest": 1, "low": 2, "medium": 3, "max": 4, "maximum": 4}
TCP_FLAGS = {"fin": 0x01, "syn": 0x02, "rst": 0x04, "psh": 0x08, "ack": 0x10, "urg": 0x20, "ece": 0x40, "cwr": 0x80}

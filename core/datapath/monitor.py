"""Lookups of what the datapath reports (the numbers and names are written once, in
bpf/include/pylium_consts.h: see consts.py) and the spellings of configuration values."""

from __future__ import annotations

from pylium.core.datapath.consts import DROP_REASONS, Aggregation


def drop_reason(code: int) -> tuple[str, str]:
    """(flow.proto DropReason name, the text of Cilium's metric label and monitor output)."""
    return DROP_REASONS.get(code, ("DROP_REASON_UNKNOWN", f"Unknown drop reason {code}"))


# bpf.monitorAggregation values, Cilium's spellings
AGGREGATION_LEVELS = {"none": Aggregation.NONE, "disabled": Aggregation.NONE, "lowest": Aggregation.LOWEST,
                      "low": Aggregation.LOW, "medium": Aggregation.MEDIUM, "max": Aggregation.MAXIMUM,
                      "maximum": Aggregation.MAXIMUM}
TCP_FLAGS = {"fin": 0x01, "syn": 0x02, "rst": 0x04, "psh": 0x08, "ack": 0x10, "urg": 0x20, "ece": 0x40, "cwr": 0x80}

"""Text forms of flows and monitor events, shared by the CLI and the agent: Hubble's compact
and table lines, cilium-dbg monitor lines. Works on the JSON (dict) forms, stdlib only."""

from __future__ import annotations

from pylium.core.api_for_plugins import MessageType

_POINT_NAMES = {"TO_ENDPOINT": "to-endpoint", "TO_PROXY": "to-proxy", "TO_HOST": "to-host", "TO_STACK": "to-stack",
                "TO_OVERLAY": "to-overlay", "FROM_ENDPOINT": "from-endpoint", "FROM_PROXY": "from-proxy",
                "FROM_HOST": "from-host", "FROM_STACK": "from-stack", "FROM_OVERLAY": "from-overlay",
                "FROM_NETWORK": "from-network", "TO_NETWORK": "to-network", "FROM_CRYPTO": "from-crypto",
                "TO_CRYPTO": "to-crypto"}
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def stamp(rfc3339: str) -> str:
    """'2026-11-26T14:10:53.123456789Z' -> 'Nov 26 14:10:53.123' (Hubble's StampMilli, UTC)."""
    if len(rfc3339) < 23:
        return rfc3339
    month = _MONTHS[int(rfc3339[5:7]) - 1]
    return f"{month} {int(rfc3339[8:10]):2d} {rfc3339[11:23]}"


def _ports(flow: dict) -> tuple[int | None, int | None]:
    l4 = flow.get("l4") or {}
    x = l4.get("TCP") or l4.get("UDP")
    if x is None:
        return None, None
    return x.get("source_port", 0), x.get("destination_port", 0)


def _host(ep: dict | None, ip: str) -> str:
    if ep and ep.get("pod_name"):
        return f"{ep.get('namespace', '')}/{ep['pod_name']}"
    return f"[{ip}]" if ":" in ip else ip


def endpoints(flow: dict) -> tuple[str, str]:
    ip = flow.get("IP") or {}
    sport, dport = _ports(flow)
    src = _host(flow.get("source"), ip.get("source", ""))
    dst = _host(flow.get("destination"), ip.get("destination", ""))
    if sport is not None:
        src, dst = f"{src}:{sport}", f"{dst}:{dport}"
    return src, dst


def description(flow: dict) -> str:
    """What happened: the observation point, the drop reason's text, or the policy verdict."""
    from pylium.core.api_for_plugins import POLICY_MATCH_TYPES, drop_reason

    l7 = flow.get("l7")
    if l7 is not None:  # Hubble: <protocol>-<type>, and where DNS was seen
        kind = "http" if "http" in l7 else "dns" if "dns" in l7 else "l7"
        return f"{kind}-{l7.get('type', 'unknown').lower()}" + (" proxy" if kind == "dns" else "")
    if flow.get("verdict") == "DROPPED":
        return drop_reason(flow.get("drop_reason", 0))[1]
    et = flow.get("event_type") or {}
    if et.get("type") == MessageType.POLICY_VERDICT:
        return f"policy-verdict:{POLICY_MATCH_TYPES.get(flow.get('policy_match_type', 0), 'none')}"
    return _POINT_NAMES.get(flow.get("trace_observation_point", ""), "unknown")


def compact(record: dict) -> str:
    if "lost_events" in record:
        lost = record["lost_events"]
        return f"{stamp(record.get('time', ''))}: EVENTS LOST: {lost['source']} {lost['num_events_lost']}"
    flow = record["flow"]
    src, dst = endpoints(flow)
    arrow = "->"
    if "is_reply" not in flow:
        arrow = "<>"
    elif flow["is_reply"]:
        src, dst, arrow = dst, src, "<-"
    summary = flow.get("Summary", "")
    return (f"{stamp(flow['time'])}: {src} {arrow} {dst} {description(flow)} {flow['verdict']}"
            + (f" ({summary})" if summary else ""))


TABLE_HEADER = ("TIMESTAMP", "SOURCE", "DESTINATION", "TYPE", "VERDICT", "SUMMARY")
_WIDTHS = (19, 34, 34, 22, 10, 0)


def table_row(values: tuple[str, ...]) -> str:
    return "  ".join(v.ljust(w) if w else v for v, w in zip(values, _WIDTHS)).rstrip()


def table(record: dict) -> str:
    if "lost_events" in record:
        lost = record["lost_events"]
        return table_row((stamp(record.get("time", "")), "", "", "lost-events", "", f"{lost['source']} "
                          f"{lost['num_events_lost']}"))
    flow = record["flow"]
    src, dst = endpoints(flow)
    return table_row((stamp(flow["time"]), src, dst, description(flow), flow["verdict"], flow.get("Summary", "")))


def packet_summary(flow: dict) -> str:
    """'10.0.0.2:40000 -> 10.0.0.3:80 tcp SYN' (monitor style)."""
    ip = flow.get("IP") or {}
    sport, dport = _ports(flow)
    src, dst = ip.get("source", "?"), ip.get("destination", "?")
    if sport is not None:
        src, dst = f"{src}:{sport}", f"{dst}:{dport}"
    l4 = flow.get("l4") or {}
    if "TCP" in l4:
        flags = [k for k, v in (l4["TCP"].get("flags") or {}).items() if v]
        return f"{src} -> {dst} tcp {', '.join(flags)}".rstrip()
    if "UDP" in l4:
        return f"{src} -> {dst} udp"
    summary = flow.get("Summary", "")
    return f"{src} -> {dst} {summary}".rstrip() if ip else summary


def monitor_line(ev: dict) -> str:
    """One event as `cilium-dbg monitor` prints it."""
    if ev["type"] == "lost":
        return f"CPU --: {ev['lost']} events LOST ({ev['source']})"
    ident = f"identity {ev['srcIdentity']}->{ev['dstIdentity']}"
    ifname = ev.get("ifname") or ev.get("ifindex", 0)
    if ev["type"] == "drop":
        where = f"to endpoint {ev['destination']}" if ev["destination"] else f"from endpoint {ev['source']}"
        return (f"xx drop ({ev['reasonDesc']}) flow {ev['hash']:#x} {where}, ifindex {ev['ifindex']}, "
                f"file {ev['file']}:{ev['line']}, {ident}: {ev['summary']}")
    if ev["type"] == "policy-verdict":
        return (f"Policy verdict log: flow {ev['hash']:#x} local EP ID {ev['destination'] or ev['source']}, "
                f"remote ID {ev['srcIdentity']}, {ev['direction'].lower()}, action {ev['action']}, "
                f"match {ev['match']}, {ev['summary']}")
    point = ev["observationPoint"]
    head = "->" if point.startswith("to-") else "<-"
    what = point.split("-", 1)[-1]  # an unknown point is its number
    target = f" {ev['destination'] if head == '->' else ev['source']}" if what == "endpoint" else ""
    return (f"{head} {what}{target} flow {ev['hash']:#x} , {ident} state {ev['state']} ifindex {ifname} "
            f"orig-len {ev['origLen']}: {ev['summary']}")

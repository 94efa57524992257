"""Hubble's metrics (names and labels as Cilium's Hubble serves them) and pylium's opt-in
per-endpoint drop counters, counted in plain dicts on the flow path and exported when scraped."""

from __future__ import annotations

import collections

from prometheus_client.core import CounterMetricFamily

from pylium.core.api_for_plugins import (OBSERVATION_POINTS, POLICY_MATCH_TYPES, DropReason, MessageType, consts,
                                         drop_reason)
from pylium.plugins.observability.flow import Endpoint, Flow

_TYPE_NAMES = {consts.MSG_DROP: "Drop", consts.MSG_TRACE: "Trace", consts.MSG_POLICY_VERDICT: "PolicyVerdict",
               consts.MSG_L7: "L7"}  # Hubble's spellings in metric labels
LOST_SOURCES = ("PERF_EVENT_RING_BUFFER", "OBSERVER_EVENTS_QUEUE", "HUBBLE_RING_BUFFER")
OTHER = "other"

POLICY_DROPS = (DropReason.POLICY, DropReason.POLICY_DENY)


def protocol_name(flow: Flow) -> str:
    l4 = flow.l4
    if l4 is None:
        return "Unknown"
    return "TCP" if l4.TCP else "UDP" if l4.UDP else "ICMPv4" if l4.ICMPv4 else "ICMPv6" if l4.ICMPv6 else "Unknown"


def endpoint_name(ep: Endpoint | None) -> str:
    if ep is None:
        return ""
    if ep.pod_name:
        return f"{ep.namespace}/{ep.pod_name}"
    return f"endpoint-{ep.ID}" if ep.ID else ""


class HubbleMetrics:
    def __init__(self, enabled: list[str], endpoint_drops: bool, max_endpoints: int):
        self.flow_enabled = "flow" in enabled
        self.drop_enabled = "drop" in enabled
        self.policy_enabled = "policy" in enabled
        self.endpoint_drops = endpoint_drops
        self.max_endpoints = max_endpoints
        self.processed: collections.Counter = collections.Counter()
        self.drops: collections.Counter = collections.Counter()
        self.lost: collections.Counter = collections.Counter({s: 0 for s in LOST_SOURCES})
        self.by_endpoint: collections.Counter = collections.Counter()
        self.verdicts: collections.Counter = collections.Counter()
        self._endpoints: set[str] = set()

    def count(self, flow: Flow) -> None:
        for counter, key in self.keys(flow):
            counter[key] += 1
        if flow.verdict == "DROPPED":
            if self.drop_enabled:
                self.drops[(flow.drop_reason_desc, protocol_name(flow))] += 1
            if self.endpoint_drops:
                self._count_endpoint_drop(flow)

    def keys(self, flow: Flow) -> list[tuple[collections.Counter, tuple]]:
        """The flow and policy counters a flow adds one to (drops count more: see count())."""
        et, keys = flow.event_type, []
        if self.flow_enabled:
            subtype = OBSERVATION_POINTS.get(et.sub_type, ("",))[0] if et.type == MessageType.TRACE else ""
            keys.append((self.processed, (_TYPE_NAMES.get(et.type, "Unknown"), subtype, flow.verdict)))
        is_verdict = et.type == MessageType.POLICY_VERDICT
        if self.policy_enabled and (is_verdict or flow.drop_reason in POLICY_DROPS):
            action = {"FORWARDED": "forwarded", "AUDIT": "audit", "REDIRECTED": "redirected"}.get(flow.verdict,
                                                                                                   "dropped")
            match = POLICY_MATCH_TYPES.get(flow.policy_match_type, "none") if is_verdict else "none"
            keys.append((self.verdicts, (flow.traffic_direction.lower(), match, action)))
        return keys

    def _count_endpoint_drop(self, flow: Flow) -> None:
        # the endpoint whose traffic was dropped: the sender for egress, the receiver for ingress
        ep = flow.source if flow.traffic_direction == "EGRESS" else flow.destination
        name = endpoint_name(ep)
        if not name:
            return
        if name not in self._endpoints:
            if len(self._endpoints) >= self.max_endpoints:
                name = OTHER  # the cardinality cap: every further endpoint shares one series
            else:
                self._endpoints.add(name)
        self.by_endpoint[(name, drop_reason(flow.drop_reason)[1], flow.traffic_direction)] += 1

    def forget_endpoint(self, name: str) -> None:
        """A deleted endpoint's series go away and free their place under the cap."""
        if name in self._endpoints:
            self._endpoints.discard(name)
            for key in [k for k in self.by_endpoint if k[0] == name]:
                del self.by_endpoint[key]

    def collect(self):
        lost = CounterMetricFamily("hubble_lost_events", "Number of lost events", labels=["source"])
        for source, n in self.lost.items():
            lost.add_metric([source.lower()], n)
        yield lost
        if self.flow_enabled:
            f = CounterMetricFamily("hubble_flows_processed", "Total number of flows processed",
                                    labels=["type", "subtype", "verdict"])
            for labels, n in self.processed.items():
                f.add_metric(list(labels), n)
            yield f
        if self.drop_enabled:
            d = CounterMetricFamily("hubble_drop", "Number of drops", labels=["reason", "protocol"])
            for labels, n in self.drops.items():
                d.add_metric(list(labels), n)
            yield d
        if self.policy_enabled:
            v = CounterMetricFamily("hubble_policy_verdicts", "Number of policy verdicts",
                                    labels=["direction", "match", "action"])
            for labels, n in self.verdicts.items():
                v.add_metric(list(labels), n)
            yield v
        if self.endpoint_drops:
            e = CounterMetricFamily("pylium_endpoint_drop_count",
                                    "Dropped packets per endpoint (opt-in, at most maxEndpoints endpoints, the "
                                    "rest as endpoint=\"other\")", labels=["endpoint", "reason", "direction"])
            for labels, n in self.by_endpoint.items():
                e.add_metric(list(labels), n)
            yield e

"""Hubble's metrics (names and labels as Cilium's Hubble serves them) and pylium's opt-in
per-endpoint drop counters, counted in plain dicts on the flow path and exported when scraped."""

from __future__ import annotations

import collections

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

from pylium.core.api_for_plugins import (OBSERVATION_POINTS, POLICY_MATCH_TYPES, DropReason, MessageType, consts,
                                         drop_reason)
from pylium.plugins.observability.flow import Endpoint, Flow

_TYPE_NAMES = {consts.MSG_DROP: "Drop", consts.MSG_TRACE: "Trace", consts.MSG_POLICY_VERDICT: "PolicyVerdict",
               consts.MSG_L7: "L7"}  # Hubble's spellings in metric labels
LOST_SOURCES = ("PERF_EVENT_RING_BUFFER", "OBSERVER_EVENTS_QUEUE", "HUBBLE_RING_BUFFER")
OTHER = "other"

POLICY_DROPS = (DropReason.POLICY, DropReason.POLICY_DENY)
DNS_RCODES = {0: "No Error", 1: "Format Error", 2: "Server Failure", 3: "Non-Existent Domain", 4: "Not Implemented",
              5: "Query Refused"}  # Hubble's rcode label values
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)  # Prometheus' defaults


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
        self.http_enabled = "httpV2" in enabled
        self.dns_enabled = "dns" in enabled
        self.dns_queries: collections.Counter = collections.Counter()
        self.dns_responses: collections.Counter = collections.Counter()
        self.http_requests: collections.Counter = collections.Counter()
        self.http_durations: dict[tuple, list[int]] = {}  # (method, reporter) -> bucket counts, then the sum
        self.l7_policy: collections.Counter = collections.Counter()  # cilium_policy_l7_total

    def count_l7(self, flow: Flow) -> None:
        """L7 flows: the proxy's policy counters, and HTTP requests by their response."""
        l7 = flow.l7
        if l7 is None:
            return
        if l7.dns is not None:
            self._count_dns(flow, l7)
            return
        if l7.http is None:
            return
        if l7.type == "REQUEST":
            self.l7_policy[("received", "envoy")] += 1
            self.l7_policy[("forwarded" if flow.verdict == "FORWARDED" else "denied", "envoy")] += 1
            return
        if not self.http_enabled:
            return
        reporter = "server" if flow.traffic_direction == "INGRESS" else "client"
        http = l7.http
        self.http_requests[(http.method, http.protocol, str(http.code), reporter)] += 1
        counts = self.http_durations.setdefault((http.method, reporter), [0] * (len(DURATION_BUCKETS) + 1) + [0])
        seconds = l7.latency_ns / 1e9
        for i, bound in enumerate(DURATION_BUCKETS):
            if seconds <= bound:
                counts[i] += 1
        counts[len(DURATION_BUCKETS)] += 1  # +Inf
        counts[-1] += l7.latency_ns  # the sum, in nanoseconds

    def count(self, flow: Flow) -> None:
        for counter, key in self.keys(flow):
            counter[key] += 1
        if flow.verdict == "DROPPED":
            if self.drop_enabled:
                self.drops[(flow.drop_reason_desc, protocol_name(flow))] += 1
            if self.endpoint_drops:
                self._count_endpoint_drop(flow)

    def _count_dns(self, flow: Flow, l7) -> None:
        dns = l7.dns
        qtypes = ",".join(dns.qtypes)
        if l7.type == "REQUEST":
            self.l7_policy[("received", "fqdn")] += 1
            denied = flow.verdict == "DROPPED"
            self.l7_policy[("denied" if denied else "forwarded", "fqdn")] += 1
            if self.dns_enabled:
                self.dns_queries[("Policy denied" if denied else "", qtypes, "0")] += 1
        elif self.dns_enabled:
            self.dns_responses[(DNS_RCODES.get(dns.rcode, str(dns.rcode)), qtypes, str(len(dns.ips)))] += 1

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
        l7 = CounterMetricFamily("cilium_policy_l7", "Number of total L7 requests/responses",
                                 labels=["rule", "proxy_type"])
        for labels, n in self.l7_policy.items():
            l7.add_metric(list(labels), n)
        yield l7
        if self.http_enabled:
            r = CounterMetricFamily("hubble_http_requests", "Count of HTTP requests",
                                    labels=["method", "protocol", "status", "reporter"])
            for labels, n in self.http_requests.items():
                r.add_metric(list(labels), n)
            yield r
            h = HistogramMetricFamily("hubble_http_request_duration_seconds", "Quantiles of HTTP request duration",
                                      labels=["method", "reporter"])
            for labels, counts in self.http_durations.items():
                buckets = [(str(b), counts[i]) for i, b in enumerate(DURATION_BUCKETS)]
                buckets.append(("+Inf", counts[len(DURATION_BUCKETS)]))
                h.add_metric(list(labels), buckets, counts[-1] / 1e9)
            yield h
        if self.dns_enabled:
            for name, doc, counter in (("hubble_dns_queries", "Number of DNS queries observed", self.dns_queries),
                                       ("hubble_dns_responses", "Number of DNS responses observed",
                                        self.dns_responses)):
                m = CounterMetricFamily(name, doc, labels=["rcode", "qtypes", "ips_returned"])
                for labels, n in counter.items():
                    m.add_metric(list(labels), n)
                yield m
        if self.endpoint_drops:
            e = CounterMetricFamily("pylium_endpoint_drop_count",
                                    "Dropped packets per endpoint (opt-in, at most maxEndpoints endpoints, the "
                                    "rest as endpoint=\"other\")", labels=["endpoint", "reason", "direction"])
            for labels, n in self.by_endpoint.items():
                e.add_metric(list(labels), n)
            yield e

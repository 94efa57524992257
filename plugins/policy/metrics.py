"""The policy plugin's Prometheus metrics, read from its state at scrape time."""

from __future__ import annotations

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily


class PolicyCollector:
    """cilium_policy, cilium_policy_max_revision, cilium_policy_change_total, cilium_identity,
    cilium_policy_l3_l4_denied_total."""

    def __init__(self, plugin):
        self.plugin = plugin

    def collect(self):
        p = self.plugin
        yield GaugeMetricFamily("cilium_policy", "Number of policies currently loaded", value=len(p.policies))
        yield GaugeMetricFamily("cilium_policy_max_revision", "Highest policy revision number in the agent",
                                value=p.revision)
        changes = CounterMetricFamily("cilium_policy_change", "Number of policy changes by source, operation "
                                      "and outcome", labels=["source", "operation", "outcome"])
        for (source, operation, outcome), n in sorted(p.changes.items()):
            changes.add_metric([source, operation, outcome], n)
        yield changes
        kinds: dict[str, int] = {}
        for ident in (p.identities.known.values() if p.identities else ()):
            kinds[ident.kind] = kinds.get(ident.kind, 0) + 1
        identity = GaugeMetricFamily("cilium_identity", "Number of identities currently allocated", labels=["type"])
        for kind, n in sorted(kinds.items()):
            identity.add_metric([kind], n)
        yield identity
        denied = CounterMetricFamily("cilium_policy_l3_l4_denied", "Packets dropped by L3/L4 policy (reasons "
                                     "133 and 181)", labels=["direction"])
        dp = p.ctx.datapath if p.ctx else None
        if dp is not None:
            from pylium.core.api_for_plugins import METRIC_DIRECTIONS, DropReason
            from pylium.core.api_for_plugins import read_bpf_metrics

            totals = {name: 0 for name in METRIC_DIRECTIONS.values()}
            for reason, direction, packets, _ in read_bpf_metrics(dp.maps["metrics"]):
                if reason in (DropReason.POLICY, DropReason.POLICY_DENY) and direction in METRIC_DIRECTIONS:
                    totals[METRIC_DIRECTIONS[direction]] += packets
            for name, n in totals.items():
                denied.add_metric([name], n)
        yield denied


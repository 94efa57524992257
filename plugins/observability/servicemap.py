"""The service map: flows aggregated into edges between workloads (Hubble UI's service map).

A workload is a pod's `app` label (or `app.kubernetes.io/name`, `k8s-app`), else its pod name,
within its namespace; addresses outside the cluster are `world`, the node is `host`. Replies
count on the edge of the connection they answer. L7 flows make HTTP and DNS edges; an HTTP
edge also counts its requests by method, path and status."""

from __future__ import annotations

from urllib.parse import urlsplit

import msgspec

from pylium.plugins.observability.flow import Endpoint, Flow
from pylium.plugins.observability.metrics import protocol_name

_APP_LABELS = ("k8s:app", "k8s:app.kubernetes.io/name", "k8s:k8s-app")
MAX_HTTP_KEYS = 100  # distinct requests remembered per HTTP edge


def workload(ep: Endpoint | None) -> str:
    if ep is None:
        return "unknown"
    for label in ep.labels:
        key, _, value = label.partition("=")
        if key in _APP_LABELS and value:
            return f"{ep.namespace}/{value}" if ep.namespace else value
        if key.startswith("reserved:"):
            return key.split(":", 1)[1]
    if ep.pod_name:
        return f"{ep.namespace}/{ep.pod_name}"
    return f"endpoint-{ep.ID}" if ep.ID else f"identity-{ep.identity}"


class Edge(msgspec.Struct):
    source: str
    destination: str
    port: int
    protocol: str
    flows: int = 0
    verdicts: dict[str, int] = {}
    http: dict[str, int] = {}  # HTTP edges: "METHOD /path STATUS" -> responses


class ServiceMap:
    def __init__(self, max_edges: int):
        self.max_edges = max_edges
        self.edges: dict[tuple, Edge] = {}
        self.overflow = 0
        self._names: dict[Endpoint, str] = {}

    def _name(self, ep: Endpoint | None) -> str:
        if ep is None:
            return "unknown"
        name = self._names.get(ep)
        if name is None:
            if len(self._names) > 4096:
                self._names.clear()
            name = self._names[ep] = workload(ep)
        return name

    def forget(self, ep: Endpoint) -> None:
        """An endpoint that went: its cached name would keep it alive."""
        self._names.pop(ep, None)

    def add(self, flow: Flow) -> None:
        if flow.l7 is not None:
            self._add_l7(flow)
            return
        edge = self.edge_of(flow)
        if edge is not None:
            self.count(*edge)

    def _add_l7(self, flow: Flow) -> None:
        """An HTTP or DNS edge, counted once per exchange (on the response, which carries its
        outcome; a denied DNS query has none, so DNS requests that were dropped count too)."""
        l7 = flow.l7
        if l7.type != "RESPONSE" and not (l7.dns is not None and flow.verdict == "DROPPED"):
            return
        key, verdict = self.edge_of(flow)
        protocol = "HTTP" if l7.http is not None else "DNS"
        edge = self.count((*key[:3], protocol), verdict)
        if edge is not None and l7.http is not None and (len(edge.http) < MAX_HTTP_KEYS or
                                                         self._http_key(l7.http) in edge.http):
            detail = self._http_key(l7.http)
            edge.http[detail] = edge.http.get(detail, 0) + 1

    @staticmethod
    def _http_key(http) -> str:
        return f"{http.method} {urlsplit(http.url).path} {http.code}"

    def edge_of(self, flow: Flow) -> tuple[tuple, str] | None:
        """The edge (source, destination, port, protocol) a flow counts on, and its verdict."""
        point = flow.trace_observation_point
        if point.startswith("FROM_"):
            return None  # the same packet is counted where it is handed on (to-endpoint, to-stack)
        src, dst = self._name(flow.source), self._name(flow.destination)
        l4 = (flow.l4.TCP or flow.l4.UDP) if flow.l4 is not None else None
        port = (l4.source_port if flow.is_reply else l4.destination_port) if l4 is not None else 0
        if flow.is_reply:
            src, dst = dst, src
        return (src, dst, port, protocol_name(flow)), flow.verdict

    def count(self, key: tuple, verdict: str) -> Edge | None:
        edge = self.edges.get(key)
        if edge is None:
            if len(self.edges) >= self.max_edges:
                self.overflow += 1
                return None
            edge = self.edges[key] = Edge(*key, 0, {}, {})
        edge.flows += 1
        edge.verdicts[verdict] = edge.verdicts.get(verdict, 0) + 1
        return edge

    def snapshot(self) -> dict:
        edges = sorted(self.edges.values(), key=lambda e: (e.source, e.destination, e.port, e.protocol))
        nodes = sorted({e.source for e in edges} | {e.destination for e in edges})
        return {"nodes": nodes, "edges": msgspec.to_builtins(edges), "dropped_edges": self.overflow}


def to_dot(snapshot: dict) -> str:
    """Graphviz: one node per workload, one arrow per edge labelled port/protocol and counts."""
    lines = ["digraph service_map {", "  rankdir=LR;", "  node [shape=box];"]
    for n in snapshot["nodes"]:
        lines.append(f'  "{n}";')
    for e in snapshot["edges"]:
        verdicts = " ".join(f"{k.lower()}={v}" for k, v in sorted(e["verdicts"].items()))
        verdicts += "".join(f"\\n{k} x{v}" for k, v in sorted(e.get("http", {}).items()))
        where = f"{e['port']}/{e['protocol']}" if e["port"] else e["protocol"]
        color = ', color="red"' if "DROPPED" in e["verdicts"] else ""
        lines.append(f'  "{e["source"]}" -> "{e["destination"]}" [label="{where} {verdicts}"{color}];')
    lines.append("}")
    return "\n".join(lines) + "\n"

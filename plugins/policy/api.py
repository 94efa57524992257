"""The policy plugin's control API (`pylium policy ...`, `identity ...`, `bpf policy|ct`),
a mixin of PolicyPlugin: the handlers read and change the plugin's repository and maps."""

from __future__ import annotations

import dataclasses
import ipaddress
import socket
import time
from typing import Any

import anyio

from pylium.core.api_for_plugins import ApiError, DropReason
from pylium.plugins.policy import maps
from pylium.plugins.policy.identity import Identity
from pylium.plugins.policy.model import NAMESPACE_LABEL, Policy, PolicyError, parse_documents
from pylium.plugins.policy.resolve import DIRECTIONS, EGRESS, INGRESS, EndpointPolicy, Key

TRACE_IDENTITIES = {"src": 0xFFFFFFF0, "dst": 0xFFFFFFF1}  # provisional identities of `policy trace` labels
POLICY_KINDS = ("CiliumNetworkPolicy", "CiliumClusterwideNetworkPolicy", "NetworkPolicy")


class PolicyApi:
    """Handlers; PolicyPlugin declares the routes."""

    def _summary(self, key: tuple) -> dict:
        p = self.policies[key]
        return {"kind": p.kind, "name": p.name, "namespace": p.namespace, "id": self.policy_ids[key],
                "origin": p.origin, "audit": p.audit}

    async def api_get(self, req):
        return {"revision": self.revision, "policies": [
            {**self._summary(k), "document": self.documents[k]} for k in sorted(self.policies)]}

    @staticmethod
    def _parse(body: Any) -> list[tuple[Policy, dict]]:
        body = body if isinstance(body, dict) else {}
        docs = body.get("documents")
        if not isinstance(docs, list) or not docs:
            raise ApiError(400, "policy: the body needs `documents`, a non-empty list of policy objects")
        origin = str(body.get("origin") or "import")
        try:
            policies = parse_documents(docs, origin)
        except PolicyError as e:
            raise ApiError(400, str(e)) from None
        if not policies:
            raise ApiError(400, f"{origin}: no CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy or "
                                f"NetworkPolicy in it")
        # each policy with its document as written (`policy get -o yaml`)
        by_key = {(d["kind"], "" if d["kind"] == "CiliumClusterwideNetworkPolicy"
                   else (d.get("metadata") or {}).get("namespace") or "default", d["metadata"]["name"]): d
                  for d in docs if isinstance(d, dict) and d.get("kind") in POLICY_KINDS}
        return [(p, by_key[p.key]) for p in policies]

    async def api_validate(self, req):
        parsed = self._parse(req.body)
        return {"valid": True, "policies": [p.display_name for p, _ in parsed]}

    async def api_import(self, req):
        try:
            parsed = self._parse(req.body)
        except ApiError:
            self._count("custom-resource", "update", "fail")
            raise
        for policy, doc in parsed:
            policy = dataclasses.replace(policy, origin="import")
            self.imported[policy.key] = doc
            self._put(policy, doc)
        self._save_imported()
        self._count("custom-resource", "update", "success", len(parsed))
        self.revision += 1
        revision = self.revision
        await self.regenerate()
        return {"revision": revision, "policies": [p.display_name for p, _ in parsed]}

    async def api_delete(self, req):
        q = req.query
        if q.get("all") in ("1", "true"):
            keys = [k for k, p in self.policies.items() if p.origin == "import"]
        else:
            name = q.get("name")
            if not name:
                raise ApiError(400, "policy delete: give a policy name or all=true")
            namespace = q.get("namespace", "default")
            keys = [k for k, p in self.policies.items() if p.origin == "import" and p.name == name
                    and p.namespace == ("" if p.kind == "CiliumClusterwideNetworkPolicy" else namespace)]
            if not keys:
                raise ApiError(404, f"policy delete: no imported policy {name!r} in namespace {namespace!r} "
                                    f"(policies of the manifests directory are removed by deleting their file)")
        for key in keys:
            self._remove(key)
            self.imported.pop(key, None)
        self._save_imported()
        self._count("custom-resource", "delete", "success", len(keys))
        self.revision += 1
        revision = self.revision
        await self.regenerate()
        return {"revision": revision, "deleted": len(keys)}

    async def api_wait(self, req):
        try:
            want = int(req.query.get("revision", "0"))
            timeout = float(req.query.get("timeout", "30"))
            if not 0 <= timeout <= 3600:
                raise ValueError
        except ValueError:
            raise ApiError(400, "policy wait: revision must be an integer, timeout 0-3600 seconds") from None
        with anyio.move_on_after(timeout):
            while self.realized_revision < want:
                await self._realized_event.wait()
        if self.realized_revision < want:
            raise ApiError(504, f"revision {want} not realized after {timeout:g}s "
                                f"(realized: {self.realized_revision})")
        return {"revision": self.realized_revision}

    def _side(self, body: dict, side: str) -> tuple[dict[str, str], int | None, str]:
        """Labels, identity (None: labels no identity has yet) and name of a trace's side."""
        ep_id, identity, labels = (body.get(f"{side}_{x}") for x in ("endpoint", "identity", "labels"))
        if ep_id is not None:
            ep = self.endpoints.get(_number(ep_id, f"{side}_endpoint"))
            if ep is None:
                raise ApiError(404, f"policy trace: no endpoint {ep_id} on this node")
            return self._subject_labels(ep), ep.identity, f"endpoint {ep.id}"
        if identity is not None:
            known = self.identities.known.get(_number(identity, f"{side}_identity"))
            if known is None:
                raise ApiError(404, f"policy trace: identity {identity} is not known")
            return dict(known.labels), known.id, f"identity {known.id}"
        if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
            raise ApiError(400, f"policy trace: give --{side}-endpoint, --{side}-labels or --{side}-identity")
        parsed = {NAMESPACE_LABEL: "default"}  # a pod of `default` unless the labels say otherwise
        for item in labels:
            k, _, v = item.partition("=")
            parsed[k if ":" in k else f"k8s:{k}"] = v
        known = self.identities.known_labels(parsed)
        labels_of = dict(known.labels) if known else self.identities.filter.relevant(parsed)
        return labels_of, known.id if known else None, "labels " + ",".join(labels)

    async def api_trace(self, req):
        """The verdict for src -> dst:port/proto, by the Resolver that fills the maps. Labels
        no identity has get a provisional one for the trace only (nothing is allocated)."""
        body = req.body if isinstance(req.body, dict) else {}
        src_labels, src_id, src_name = self._side(body, "src")
        dst_labels, dst_id, dst_name = self._side(body, "dst")
        port_text = str(body.get("dport") or "0/ANY")
        port, _, proto_name = port_text.partition("/")
        protos = {"TCP": 6, "UDP": 17, "SCTP": 132, "ANY": 6, "": 6}
        if not port.isdigit() or int(port) > 65535 or proto_name.upper() not in protos:
            raise ApiError(400, f"policy trace: --dport {port_text!r} must be PORT[/TCP|UDP|SCTP]")
        proto = protos[proto_name.upper()]
        http = _trace_request(body)
        provisional = {}
        if src_id is None:
            src_id = TRACE_IDENTITIES["src"]
            provisional[src_id] = Identity(src_id, src_labels, "trace")
        if dst_id is None:
            dst_id = TRACE_IDENTITIES["dst"]
            provisional[dst_id] = Identity(dst_id, dst_labels, "trace")
        resolver = self._resolver(provisional)
        steps, final = [], "allowed"
        for direction, subject, subject_labels, peer in ((EGRESS, src_name, src_labels, dst_id),
                                                         (INGRESS, dst_name, dst_labels, src_id)):
            ep_policy = resolver.endpoint(subject_labels)
            verdict, entry, reason = ep_policy.decide(direction, peer, proto, int(port))
            deciding = (entry.rule_ids if entry else
                        ep_policy.default_by[direction] if reason == DropReason.POLICY else [])
            rules = [self.rule_names.get(r, str(r)) for r in deciding]
            step = {"direction": DIRECTIONS[direction], "endpoint": subject, "verdict": verdict,
                    "enforced": ep_policy.enforce[direction], "drop_reason": reason,
                    "rules": rules, "selected_by": [self.rule_names[r] for r in ep_policy.selected_by[direction]]}
            if entry is not None and entry.proxy_port and verdict == "allowed":
                step["proxy_port"] = entry.proxy_port
                if http is not None:  # the request, as the proxy decides it
                    allowed, ids = ep_policy.decide_http(direction, peer, int(port), *http)
                    step["l7"] = {"verdict": "allowed" if allowed else "denied",
                                  "rules": [self.rule_names.get(r, str(r)) for r in ids]}
                    if not allowed:
                        verdict = "denied"
            steps.append(step)
            if verdict == "denied":
                final = "denied"
        return {"verdict": final, "src_identity": src_id, "dst_identity": dst_id, "steps": steps}

    async def api_identities(self, req):
        return [i.as_dict() for _, i in sorted(self.identities.known.items())]

    async def api_identity(self, req):
        try:
            number = int(req.path_params["id"])
        except ValueError:
            raise ApiError(400, f"identity {req.path_params['id']!r} is not a number") from None
        ident = self.identities.known.get(number)
        if ident is None:
            raise ApiError(404, f"identity {number} is not known")
        return ident.as_dict()

    async def api_endpoints(self, req):
        out = []
        for ep_id, ep in sorted(self.endpoints.items()):
            p = self.realized.get(ep_id, EndpointPolicy())
            out.append({"id": ep_id, "identity": ep.identity,
                        "ingress": _enforcement(p, INGRESS), "egress": _enforcement(p, EGRESS),
                        "entries": len(p.entries), "overflow": self.overflows.get(ep_id, "")})
        return out

    async def api_endpoint_config(self, req):
        """Per-endpoint options; PolicyAuditMode=Enabled reports what this endpoint's policy would
        deny instead of dropping it (Cilium's `endpoint config ID PolicyAuditMode=Enabled`)."""
        ep_id = int(req.path_params["id"]) if req.path_params["id"].isdigit() else -1
        if ep_id not in self.endpoints:
            raise ApiError(404, f"endpoint {req.path_params['id']} does not exist on this node")
        body = req.body or {}
        unknown = set(body) - {"PolicyAuditMode"}
        if unknown:
            raise ApiError(400, f"endpoint config: unknown option {', '.join(sorted(unknown))} "
                                f"(known: PolicyAuditMode)")
        if "PolicyAuditMode" in body:
            value = body["PolicyAuditMode"]
            if value not in ("Enabled", "Disabled"):
                raise ApiError(400, f"endpoint config: PolicyAuditMode={value!r} must be Enabled or Disabled")
            self.endpoint_audit[ep_id] = value == "Enabled"
            self._save_endpoint_audit()
            self.revision += 1
            await self.regenerate()
        return {"id": ep_id, "PolicyAuditMode": "Enabled" if self.endpoint_audit.get(ep_id) else "Disabled"}

    async def api_bpf_policy(self, req):
        wanted = req.query.get("endpoint")
        if wanted is not None:
            _number(wanted, "endpoint")
        rows = []
        for key, entry in self.ctx.bpf_maps["policy_rules"].items():
            if wanted and str(key.ep_id) != wanted:
                continue
            k = Key.from_bpf(key)
            rows.append({"endpoint": key.ep_id, "direction": DIRECTIONS[key.egress],
                         "identity": key.identity, "labels": self._identity_labels(key.identity),
                         "port": _port_text(k), "action": "deny" if entry.flags & maps.F_DENY else "allow",
                         "audit": bool(entry.flags & maps.F_AUDIT),
                         "rules": [self.rule_names.get(r, str(r)) for r in entry.rule_ids if r]})
        if wanted and not rows and int(wanted) not in self.endpoints:
            raise ApiError(404, f"endpoint {wanted} has no policy on this node")
        return sorted(rows, key=lambda r: (r["endpoint"], r["direction"], r["identity"], r["port"]))

    def _identity_labels(self, number: int) -> list[str]:
        if number == 0:
            return ["(any)"]
        ident = self.identities.known.get(number)
        return ident.as_dict()["labels"] if ident else [f"(unknown {number})"]

    async def api_bpf_ct(self, req):
        now = time.monotonic_ns()
        rows = []
        for key, value in self.ctx.bpf_maps["policy_ct"].items():
            size = 4 if key.family == 4 else 16
            a, b = (str(ipaddress.ip_address(bytes(x)[:size])) for x in (key.saddr, key.daddr))
            pa, pb = socket.ntohs(key.sport), socket.ntohs(key.dport)
            if value.origin:
                a, b, pa, pb = b, a, pb, pa
            rows.append({"source": a, "source_port": pa, "destination": b, "destination_port": pb,
                         "protocol": {6: "TCP", 17: "UDP", 1: "ICMP", 58: "ICMPv6", 132: "SCTP"}.get(key.proto,
                                                                                              str(key.proto)),
                         "idle_seconds": round((now - value.last_seen) / 1e9, 1),
                         "checks": [n for bit, n in ((maps.CHECK_EGRESS, "egress"), (maps.CHECK_INGRESS, "ingress"))
                                    if value.passed & bit]})
        return rows


def _number(value: Any, field: str) -> int:
    if isinstance(value, bool) or not str(value).isdigit():
        raise ApiError(400, f"{field} {value!r} is not a number")
    return int(value)


def _enforcement(p: EndpointPolicy, direction: int) -> str:
    if p.audit[direction] and p.enforce[direction]:
        return "Audit"
    return "Enabled" if p.enforce[direction] else "Disabled"


def _port_text(key: Key) -> str:
    if key.prefixlen <= maps.PREFIX_ANY_PROTO:
        return "ANY"
    proto = {6: "TCP", 17: "UDP", 132: "SCTP", 1: "ICMP", 58: "ICMPv6"}.get(key.proto, str(key.proto))
    if key.proto in (1, 58):
        return f"type {key.port >> 8}/{proto}"
    if key.prefixlen == maps.PREFIX_ANY_PORT:
        return f"ANY/{proto}"
    bits = key.prefixlen - 80
    last = key.port + (1 << (16 - bits)) - 1
    return f"{key.port}/{proto}" if last == key.port else f"{key.port}-{last}/{proto}"


def _trace_request(body: dict) -> tuple[str, str, str, dict[str, str]] | None:
    """The HTTP request of a trace (method, path, host, headers), if one was given."""
    if not any(body.get(k) for k in ("http_method", "http_path", "http_host", "http_headers")):
        return None
    headers = {}
    for text in body.get("http_headers") or []:
        name, sep, value = str(text).partition(":")
        if not sep or not name.strip():
            raise ApiError(400, f"policy trace: --http-header {text!r} must be Name: value")
        headers[name.strip().lower()] = value.strip()
    path = str(body.get("http_path") or "/")
    if not path.startswith("/"):
        raise ApiError(400, f"policy trace: --http-path {path!r} must start with /")
    return str(body.get("http_method") or "GET").upper(), path, str(body.get("http_host") or ""), headers

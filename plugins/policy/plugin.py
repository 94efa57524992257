"""The policy plugin: identities for endpoints, the policy repository (manifests directory and
`pylium policy import`), and per-endpoint policy in BPF (bpf/policy.c).

Every change (a policy, an endpoint, an identity) bumps the revision and regenerates: each
local endpoint's entries are computed by the Resolver and written to the maps, then its
flags and revision, so established connections are checked again under the new policy."""

from __future__ import annotations

import collections
import ctypes as ct
import dataclasses
import ipaddress
import json
import time
from pathlib import Path
from typing import Any

import anyio

from pylium.core.api_for_plugins import (ApiError, EndpointContribution, Health, PluginManifests, Slot, Source, events,
                                         hookimpl, parse_duration)
from pylium.plugins.policy import maps
from pylium.plugins.policy.api import POLICY_KINDS, PolicyApi
from pylium.plugins.policy.config import PolicyConfig
from pylium.plugins.policy.fqdn import FqdnCache
from pylium.plugins.policy.identity import Identity, IdentityAllocator, LabelFilter
from pylium.plugins.policy.l7 import match_pattern
from pylium.plugins.policy.metrics import PolicyCollector
from pylium.plugins.policy.model import Policy, PolicyError, parse_policy
from pylium.plugins.policy.proxy import supervisor
from pylium.plugins.policy.proxy.policy import snapshot
from pylium.plugins.policy.resolve import ALLOW_LOCALHOST_RULE, EGRESS, INGRESS, EndpointPolicy, Key, Resolver

STAGES = (Slot.FROM_POLICY, Slot.TO_POLICY)
CIDR = "cidr"  # ipcache owner: identities of peers policies name by address
FQDN = "fqdn"  # ipcache owner: addresses pods looked up under names toFQDNs selects


class PolicyPlugin(PolicyApi):
    def __init__(self) -> None:
        self.ctx: Any = None
        self.identities: IdentityAllocator | None = None
        self.policies: dict[tuple, Policy] = {}
        self.documents: dict[tuple, dict] = {}  # as written, for `policy get`
        self._cidrs_of: dict[tuple, set[str]] = {}  # policy -> the CIDR peers it names
        self._cidr_refs: collections.Counter[str] = collections.Counter()  # prefix -> policies naming it
        self.imported: dict[tuple, dict] = {}  # documents from `policy import` (persisted)
        self.policy_ids: dict[tuple, int] = {}
        self.rule_names: dict[int, str] = {ALLOW_LOCALHOST_RULE: "allow-localhost"}
        self.endpoints: dict[int, Any] = {}  # local endpoints (the core's, with the identity given here)
        self.realized: dict[int, EndpointPolicy] = {}
        self.revision = 1
        self._pinned: dict[int, set[Key]] = {}
        self.realized_revision = 0
        self.changes: dict[tuple[str, str, str], int] = {}
        self.overflows: dict[int, str] = {}
        self.endpoint_audit: dict[int, bool] = {}  # `pylium endpoint config ID PolicyAuditMode=Enabled`
        self._lock: anyio.Lock | None = None
        self._realized_event: anyio.Event | None = None
        self._dirty: anyio.Event | None = None
        self.proxy_ports: dict[str, int] = {}
        self.proxy: supervisor.ProxyProcess | None = None
        self._l7_wanted = False
        self.fqdns: FqdnCache | None = None
        self._fqdn_ips: dict[str, int] = {}  # address -> its fqdn identity in the ipcache

    # ---- hooks ------------------------------------------------------------------------------

    @hookimpl
    def pylium_config_model(self):
        return PolicyConfig

    @hookimpl
    def pylium_declare(self, declare):
        declare.after("connectivity")
        bpf = declare.settings.bpf
        ct_max = bpf.ctTcpMax + bpf.ctAnyMax  # one table for every protocol
        declare.bpf_maps(*maps.policy_maps(ct_max))
        declare.bpf_defines(POLICY_CT_MAX=ct_max)
        declare.bpf_stage(Slot.FROM_POLICY, "bpf/policy.c", "policy_egress", fast_path=True)
        declare.bpf_stage(Slot.TO_POLICY, "bpf/policy.c", "policy_ingress", fast_path=True)
        declare.endpoint_fields("identity")
        declare.ipcache_owner(CIDR, Source.GENERATED)
        declare.ipcache_owner(FQDN, Source.GENERATED)
        declare.api_routes(
            ("GET", "/v1/policy", self.api_get), ("POST", "/v1/policy", self.api_import),
            ("DELETE", "/v1/policy", self.api_delete), ("POST", "/v1/policy/validate", self.api_validate),
            ("GET", "/v1/policy/wait", self.api_wait), ("POST", "/v1/policy/trace", self.api_trace),
            ("GET", "/v1/identity", self.api_identities), ("GET", "/v1/identity/{id}", self.api_identity),
            ("GET", "/v1/bpf/policy", self.api_bpf_policy), ("GET", "/v1/bpf/ct", self.api_bpf_ct),
            ("GET", "/v1/policy/endpoints", self.api_endpoints),
            ("POST", "/v1/policy/endpoints/{id}/config", self.api_endpoint_config),
            ("POST", "/v1/fqdn/observe", self.api_fqdn_observe), ("GET", "/v1/fqdn/cache", self.api_fqdn_cache))

    @hookimpl
    def pylium_status_details(self, ctx):
        return {"Policy": f"{len(self.policies)} policies, revision {self.revision} "
                          f"(realized {self.realized_revision}), mode {ctx.settings.policyEnforcementMode}"}

    @hookimpl
    async def pylium_lifespan(self, ctx):
        self.ctx = ctx
        self._lock = anyio.Lock()
        self._realized_event = anyio.Event()
        self._dirty = anyio.Event()
        self.identities = IdentityAllocator(ctx.store, LabelFilter(ctx.settings.policy.identityLabels),
                                            ctx.node.local.ipv4 or ctx.node_name, self._new_identity, ctx.log)
        ctx.start_task("identities", self.identities.run)
        await self.identities.mirror.synced.wait()
        bpf = ctx.settings.bpf
        settings = maps.PolicySettings(ct_tcp_timeout_ns=int(parse_duration(bpf.ctTcpTimeout) * 1e9),
                                       ct_any_timeout_ns=int(parse_duration(bpf.ctAnyTimeout) * 1e9))
        ctx.bpf_maps["policy_settings"].put(ct.c_uint32(0), settings)
        proxy_cfg = ctx.settings.proxy
        self.proxy_ports = supervisor.allocate_ports(ctx.plugin_state_dir, proxy_cfg.portRangeMin,
                                                     proxy_cfg.portRangeMax)
        self.proxy = supervisor.ProxyProcess(ctx.node_name, ctx.run_dir, ctx.plugin_state_dir,
                                             ctx.bpf_dir.parent.parent, proxy_cfg.maxRequestBytes, ctx.log)
        self.fqdns = FqdnCache(ctx.plugin_state_dir, ctx.settings.dnsProxy.minTtl)
        self._read_pinned()
        self._load_imported()
        audit_file = ctx.plugin_state_dir / "endpoint_audit.json"
        if audit_file.exists():
            self.endpoint_audit = {int(k): v for k, v in json.loads(audit_file.read_text()).items()}
        manifests = ctx.manifests
        self._load_directory(manifests)
        ctx.metrics.register(PolicyCollector(self))
        manifests.on_change(lambda: self._directory_changed(manifests))
        ctx.start_task("ct-gc", self._ct_gc)
        ctx.start_task("regenerate", self._regenerator)
        ctx.start_task("prune", self._prune_after_restore)
        await self.regenerate()
        ctx.start_task("l7-proxy", self._supervise_proxy)
        ctx.start_task("fqdn-expiry", self._expire_fqdns)
        ctx.set_health(Health.OK)
        try:
            yield
        finally:
            self.ctx = None  # maps stay: the datapath keeps enforcing while the agent is away

    @hookimpl
    def pylium_cleanup(self, ctx):
        proxy = supervisor.ProxyProcess(ctx.node_name, ctx.run_dir, ctx.plugin_state_dir, ctx.bpf_dir.parent.parent, 0,
                                         ctx.log)
        pid = proxy.stop()
        return ([f"L7 proxy process {pid}"] if pid else []) + supervisor.remove_routes()

    @hookimpl
    async def pylium_endpoint_plug(self, ctx, endpoint):
        return await self._adopt(endpoint)

    @hookimpl
    async def pylium_endpoint_restore(self, ctx, endpoint):
        return await self._adopt(endpoint)

    @hookimpl
    async def pylium_endpoint_update(self, ctx, endpoint, changed):
        if "labels" in changed:
            return await self._adopt(endpoint)
        return None

    @hookimpl
    async def pylium_endpoint_unplug(self, ctx, endpoint):
        async with self._lock:
            self.endpoints.pop(endpoint.id, None)
            if self.endpoint_audit.pop(endpoint.id, None) is not None:
                self._save_endpoint_audit()
            old = self.realized.pop(endpoint.id, None)
            self._forget(endpoint.id, old.entries if old else self._pinned.pop(endpoint.id, ()))
            self._sync_proxy()
            if self.fqdns.forget_endpoint(endpoint.id):
                self._dirty.set()  # its lookups no longer allow anything

    def _forget(self, ep_id: int, keys) -> None:
        rules = self.ctx.bpf_maps["policy_rules"]
        for key in keys:
            rules.delete(key.bpf(ep_id))
        self.ctx.bpf_maps["policy_endpoints"].delete(ct.c_uint32(ep_id))
        if self.ctx.datapath is not None:
            self.ctx.datapath.set_pressure(f"policy_{ep_id:05d}", None)

    async def _adopt(self, endpoint) -> EndpointContribution:
        """The endpoint's identity from its labels and its policy, now (before it can send);
        a new identity may be a peer in other endpoints' rules: they follow in the background."""
        async with self._lock:
            labels = endpoint.labels or {"reserved:init": ""}
            new = self.identities.known_labels(labels) is None
            endpoint = endpoint.replace(identity=(await self.identities.allocate(labels)).id)
            self.endpoints[endpoint.id] = endpoint
            self.revision += 1  # connections of this endpoint are checked again
            self._write(endpoint.id, self._resolver().endpoint(self._subject_labels(endpoint),
                                                               self.endpoint_audit.get(endpoint.id, False)),
                        self.revision)
            self._bypass_when_open()
            self._sync_proxy()
        if new:
            self._dirty.set()
        return EndpointContribution(identity=endpoint.identity)

    def _bypass_when_open(self) -> None:
        """While no endpoint has policy, packets skip the policy stages altogether."""
        if self.ctx.datapath is None:
            return
        idle = all(p.open for p in self.realized.values()) and not self.overflows
        for slot in STAGES:
            self.ctx.datapath.bypass(slot, idle)

    def _subject_labels(self, endpoint) -> dict[str, str]:
        """What rules select on: the endpoint's identity's labels (identity-relevant only)."""
        identity = self.identities.known.get(endpoint.identity)
        return dict(identity.labels) if identity else {"reserved:init": ""}

    def _read_pinned(self) -> None:
        """What the previous run left in the maps: rules by endpoint (deleted when they are not
        wanted any more) and the highest revision (ours continue above it)."""
        self._pinned: dict[int, set[Key]] = {}
        for key, _ in self.ctx.bpf_maps["policy_rules"].items():
            self._pinned.setdefault(key.ep_id, set()).add(Key.from_bpf(key))
        revisions = [v.revision for _, v in self.ctx.bpf_maps["policy_endpoints"].items()]
        self.revision = max(revisions, default=0) + 1

    async def _prune_after_restore(self) -> None:
        """Once the agent has restored its endpoints (agent.ready), remove the policy of those
        that did not come back."""
        async with self.ctx.bus.subscribe("agent.ready") as events:
            async for e in events:
                if e.topic != "agent.ready":
                    continue
                async with self._lock:
                    for key, _ in list(self.ctx.bpf_maps["policy_endpoints"].items()):
                        if key.value not in self.endpoints:
                            self._forget(key.value, self._pinned.pop(key.value, ()))
                    for ep_id, keys in list(self._pinned.items()):
                        if ep_id not in self.endpoints:
                            self._forget(ep_id, self._pinned.pop(ep_id))
                return

    def _new_identity(self, identity: Identity) -> None:
        """An identity allocated on another node may be a peer in our endpoints' rules."""
        if self._dirty is not None:
            self.revision += 1
            self._dirty.set()

    async def _regenerator(self) -> None:
        """Regenerations asked for in the background, coalesced."""
        while True:
            await self._dirty.wait()
            self._dirty = anyio.Event()
            await self.regenerate()

    # ---- the repository ---------------------------------------------------------------------

    def _state_file(self) -> Path:
        return self.ctx.plugin_state_dir / "imported.json"

    def _load_imported(self) -> None:
        path = self._state_file()
        if not path.exists():
            return
        for doc in json.loads(path.read_text()):
            try:
                policy = parse_policy(doc, "import")
            except PolicyError as e:  # written by us after validation: only a format change gets here
                self.ctx.log.error("an imported policy no longer parses; dropped", error=str(e))
                continue
            self.imported[policy.key] = doc
            self._put(policy, doc)

    def _save_imported(self) -> None:
        path = self._state_file()
        partial = path.with_suffix(".tmp")
        partial.write_text(json.dumps(list(self.imported.values())))
        partial.replace(path)

    def _save_endpoint_audit(self) -> None:
        path = self.ctx.plugin_state_dir / "endpoint_audit.json"
        path.with_suffix(".tmp").write_text(json.dumps(self.endpoint_audit))
        path.with_suffix(".tmp").replace(path)

    def _put(self, policy: Policy, doc: dict) -> None:
        self.policies[policy.key] = policy
        self.documents[policy.key] = doc
        if policy.key not in self.policy_ids:
            number = len(self.policy_ids) + ALLOW_LOCALHOST_RULE + 1
            self.policy_ids[policy.key] = number
            self.rule_names[number] = f"{policy.kind}/{policy.display_name}"
        self._cidr_peers(policy.key, {
            prefix for rule in policy.rules for element in (*rule.ingress, *rule.ingress_deny, *rule.egress,
                                                            *rule.egress_deny)
            for cidr in element.cidrs for prefix in (cidr.cidr, *cidr.excepts)})

    def _remove(self, key: tuple) -> None:
        self.policies.pop(key, None)
        self.documents.pop(key, None)
        self._cidr_peers(key, set())

    def _count(self, source: str, operation: str, outcome: str, n: int = 1) -> None:
        k = (source, operation, outcome)
        self.changes[k] = self.changes.get(k, 0) + n

    def _load_directory(self, manifests: PluginManifests) -> bool:
        """Policies of the manifests directory; a bad one is logged and its previous version
        (if any) stays in force."""
        changed = False
        seen = set()
        for kind in POLICY_KINDS:
            for (ns, name), doc in manifests.objects(kind).items():
                key = (kind, "" if kind == "CiliumClusterwideNetworkPolicy" else ns, name)
                seen.add(key)
                if self.documents.get(key) == doc:
                    continue
                try:
                    policy = parse_policy(doc, "directory")
                except PolicyError as e:
                    self.ctx.log.error("policy not loaded; its previous version stays in force", error=str(e))
                    self._count("directory", "update", "fail")
                    continue
                self._put(policy, doc)
                self._count("directory", "update", "success")
                changed = True
        for key in [k for k, p in self.policies.items() if p.origin == "directory" and k not in seen]:
            self._remove(key)
            self._count("directory", "delete", "success")
            changed = True
        return changed

    async def _directory_changed(self, manifests: PluginManifests) -> None:
        if self._load_directory(manifests):
            self.revision += 1
            await self.regenerate()

    # ---- regeneration -----------------------------------------------------------------------

    def _resolver(self, extra: dict[int, Identity] | None = None) -> Resolver:
        cfg = self.ctx.settings
        identities = {**self.identities.known, **extra} if extra else self.identities.known
        return Resolver(list(self.policies.values()), identities, self.policy_ids,
                        cfg.policyEnforcementMode, cfg.policyAuditMode, cfg.policy.allowLocalhost == "always",
                        self.proxy_ports)

    # ---- the L7 proxy -----------------------------------------------------------------------

    def _sync_proxy(self) -> None:
        """Give the proxy the L7 policy of every endpoint that has some (before the caller's
        policy counts as realized, it is in the file; the proxy re-reads it on SIGHUP)."""
        endpoints = {ep_id: ([a["ip"] for a in self.endpoints[ep_id].addresses], self.endpoints[ep_id].identity,
                             policy)
                     for ep_id, policy in self.realized.items() if ep_id in self.endpoints}
        dns = self.ctx.settings.dnsProxy
        doc = snapshot(endpoints, self.proxy_ports, self.ctx.settings.proxy.http403Message,
                       {"dnsRejectRcode": 3 if dns.rejectResponseCode == "nameError" else 5,
                        "dnsMaxDelay": parse_duration(dns.proxyResponseMaxDelay),
                        "tracing": self.ctx.settings.tracing.model_dump()})
        self._l7_wanted = bool(doc["endpoints"])
        if supervisor.write_policy(self.ctx.plugin_state_dir, doc):
            self.proxy.reload()

    def _apply_fqdns(self) -> None:
        """Each cached address gets the identity of the toFQDNs selectors its names match (in
        the ipcache, before policies are computed); addresses no selector wants leave it."""
        selectors = list({name.text: name for policy in self.policies.values() for rule in policy.rules
                          for element in rule.egress for name in element.fqdns}.values())
        wanted = {}
        for ip, names in self.fqdns.addresses().items():
            labels = self.fqdns.labels_of(names, selectors)
            if labels:
                wanted[ip] = self.identities.local(labels).id
        for ip in set(self._fqdn_ips) - set(wanted):
            self.ctx.ipcache.release(ip, FQDN)
        for ip, identity in wanted.items():
            if self._fqdn_ips.get(ip) != identity:
                self.ctx.ipcache.upsert(ip, identity, FQDN)
        self._fqdn_ips = wanted

    async def api_fqdn_observe(self, req):
        """The DNS proxy saw `name` answered with `ips`: allow them (toFQDNs) now, before the
        answer reaches the pod."""
        body = req.body if isinstance(req.body, dict) else {}
        try:
            endpoint, name, ttl = int(body["endpoint"]), str(body["name"]), int(body["ttl"])
            ips = [str(ipaddress.ip_address(ip)) for ip in body["ips"]]
        except (KeyError, TypeError, ValueError) as e:
            raise ApiError(400, f"fqdn observe: {e}") from None
        if self.fqdns.observe(endpoint, name, ips, ttl):  # new addresses: allow them before the answer goes
            self.revision += 1
            await self.regenerate()
        return {"revision": self.realized_revision}

    async def api_fqdn_cache(self, req):
        rows = [lookup.row() for lookup in self.fqdns.lookups.values()]
        endpoint, pattern = req.query.get("endpoint"), req.query.get("matchpattern")
        if endpoint:
            rows = [r for r in rows if str(r["endpoint-id"]) == endpoint]
        if pattern:
            try:
                rule = match_pattern(pattern)
            except ValueError as e:
                raise ApiError(400, str(e)) from None
            rows = [r for r in rows if rule.allows(r["fqdn"])]
        return sorted(rows, key=lambda r: (r["endpoint-id"], r["fqdn"]))

    async def _expire_fqdns(self) -> None:
        while True:
            await anyio.sleep(1.0)
            if self.fqdns.expire():
                self.revision += 1
                await self.regenerate()

    async def _supervise_proxy(self) -> None:
        """Run the proxy while some endpoint has L7 rules (and once started, keep it: connections
        through it outlive policy changes); start it again when it dies."""
        routed = False
        while True:
            if self._l7_wanted or self.proxy.pid() is not None:
                if not routed:
                    await anyio.to_thread.run_sync(supervisor.install_routes)
                    routed = True
                self.proxy.ensure()
            await anyio.sleep(0.2 if self._l7_wanted and self.proxy.pid() is None else 1.0)

    def _cidr_peers(self, key: tuple, prefixes: set[str]) -> None:
        """The CIDR peers a policy names are identities in the ipcache while some policy names
        them. Generated records rank below the node's own (endpoints, host addresses): an
        endpoint's address keeps its identity."""
        before = self._cidrs_of.pop(key, set())
        if prefixes:
            self._cidrs_of[key] = prefixes
        for prefix in prefixes - before:
            identity, _ = self.identities.cidr(prefix)
            self._cidr_refs[prefix] += 1
            if self._cidr_refs[prefix] == 1 and self.ctx.ipcache is not None:
                self.ctx.ipcache.upsert(prefix, identity.id, CIDR)
        for prefix in before - prefixes:
            self._cidr_refs[prefix] -= 1
            if self._cidr_refs[prefix] == 0:
                del self._cidr_refs[prefix]
                if self.ctx.ipcache is not None:
                    self.ctx.ipcache.release(prefix, CIDR)

    async def regenerate(self) -> None:
        async with self._lock:
            self._apply_fqdns()
            revision = self.revision
            resolver = self._resolver()
            for ep_id, endpoint in list(self.endpoints.items()):
                wanted = resolver.endpoint(self._subject_labels(endpoint), self.endpoint_audit.get(ep_id, False))
                self._write(ep_id, wanted, revision)
            self._bypass_when_open()
            self._sync_proxy()
            self.realized_revision = revision
            self.ctx.bus.publish(events.PolicyChanged(node=self.ctx.node_name, revision=revision,
                                               rules={str(k): v for k, v in self.rule_names.items()}))
            self._realized_event.set()
            self._realized_event = anyio.Event()

    def _write(self, ep_id: int, wanted: EndpointPolicy, revision: int) -> None:
        old = self.realized.get(ep_id)
        cfg = self.ctx.settings
        lockdown = False
        if self.ctx.datapath is not None:
            self.ctx.datapath.set_pressure(f"policy_{ep_id:05d}", len(wanted.entries) / cfg.bpf.policyMapMax)
        if len(wanted.entries) > cfg.bpf.policyMapMax:
            message = (f"endpoint {ep_id}: policy needs {len(wanted.entries)} entries, more than "
                       f"bpf.policyMapMax {cfg.bpf.policyMapMax}")
            self.overflows[ep_id] = message
            # without lockdown the previous policy stays; with none, the directions it would
            # enforce deny everything (never half a policy)
            keep = not cfg.endpointLockdownOnMapOverflow and old is not None
            self.ctx.log.error("policy map overflow", endpoint=ep_id, entries=len(wanted.entries),
                               max=cfg.bpf.policyMapMax, action="previous policy kept" if keep else "lockdown")
            if keep:
                return
            lockdown, wanted = cfg.endpointLockdownOnMapOverflow, dataclasses.replace(wanted, entries={})
        else:
            self.overflows.pop(ep_id, None)
        if old is not None and old == wanted and not lockdown:
            return
        rules = self.ctx.bpf_maps["policy_rules"]
        before = old.entries if old is not None else dict.fromkeys(self._pinned.pop(ep_id, ()))
        changed = [(key, entry) for key, entry in wanted.entries.items() if old is None or old.entries.get(key) != entry]
        try:
            rules.put_many(b"".join(k.packed(ep_id) for k, _ in changed), b"".join(e.packed() for _, e in changed))
        except OSError as e:  # the trie is full (all endpoints together): this endpoint keeps what it had
            self.overflows[ep_id] = f"endpoint {ep_id}: policy not written: {e}"
            self.ctx.log.error("policy not written", endpoint=ep_id, error=str(e))
            return
        for key in before:
            if key not in wanted.entries:
                rules.delete(key.bpf(ep_id))
        info = maps.PolicyEndpoint(revision=revision)
        info.flags[INGRESS] = maps.OPEN if wanted.open and not lockdown else 0
        for direction in (INGRESS, EGRESS):
            info.flags[direction] |= wanted.flags(direction) | (maps.LOCKDOWN if lockdown else 0)
            for i, rule in enumerate(wanted.default_by[direction][:2]):
                info.default_rules[direction][i] = rule
        self.ctx.bpf_maps["policy_endpoints"].put(ct.c_uint32(ep_id), info)
        self.realized[ep_id] = wanted

    async def _ct_gc(self) -> None:
        """Expired connections go (the LRU only evicts when full)."""
        bpf = self.ctx.settings.bpf
        tcp, other = parse_duration(bpf.ctTcpTimeout) * 1e9, parse_duration(bpf.ctAnyTimeout) * 1e9
        table = self.ctx.bpf_maps["policy_ct"]
        full = False
        while True:
            await anyio.sleep(min(60.0, other / 2e9))
            now = time.monotonic_ns()  # CLOCK_MONOTONIC: bpf_ktime_get_ns's clock
            entries = list(table.items())
            for key, value in entries:
                if now - value.last_seen > (tcp if key.proto == 6 else other):
                    table.delete(key)
            if (len(entries) >= 0.9 * table.spec.max_entries) != full:
                full = not full
                say = self.ctx.log.warning if full else self.ctx.log.info
                say("policy conntrack map nearly full: the least recently seen connections make room, their next "
                    "packets are decided by policy again; raise bpf.ctTcpMax/bpf.ctAnyMax" if full
                    else "policy conntrack map has room again", map="policy_ct", entries=len(entries),
                    max=table.spec.max_entries)

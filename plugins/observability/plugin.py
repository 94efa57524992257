"""Observability plugin: reads the datapath's events ring buffer and turns records into
flows: kept in the observer ring, published on the bus (`flow`, and `batch.flow` many to a
message), counted in Hubble's metrics, aggregated into the service map, and served to
`pylium observe` / `pylium monitor`.

Pipeline, all on the agent's event loop: the ring buffer's fd (woken every 64 records of a
CPU) and a 10 ms timer call `_readable`, which copies
every available record out of the kernel at once (freeing its ring) into a bounded queue
(`hubble.eventQueueSize`; overflow is counted as OBSERVER_EVENTS_QUEUE loss); `_process`
decodes them in batches, yielding to the loop between batches so the API stays responsive.
Records the kernel had no room for are counted in BPF (`events_lost`) and reported as
PERF_EVENT_RING_BUFFER losses."""

from __future__ import annotations

import asyncio
import collections
import ctypes as ct
import struct
import time
from typing import Any

import anyio
import msgspec

from pylium.core.api_for_plugins import (ApiError, EVENT_HEADER, FlowKey, Health, IpcacheKey, ReservedIdentity,
                                         RingReader, consts, events, drop_reason, hookimpl)
from pylium.plugins.observability import render
from pylium.plugins.observability.config import ObservabilityConfig
from pylium.plugins.observability.decode import Decoder, Shape
from pylium.plugins.observability.filters import FilterError, FlowFilter, compile_lists
from pylium.plugins.observability.flow import (Policy as FlowPolicy, Endpoint, Flow, FlowBatch, FlowRecord,
                                               LostEvents)
from pylium.plugins.observability.l7flows import l7_flow
from pylium.plugins.observability.metrics import HubbleMetrics, endpoint_name
from pylium.plugins.observability.observer import Follower, Observer
from pylium.plugins.observability.remote import RemoteEndpoints
from pylium.plugins.observability.servicemap import ServiceMap

BATCH = 512  # records decoded per turn of the event loop (and at most the flows of one batch.flow)
DRAIN_SECONDS = 0.01  # the datapath wakes the reader only every 4096 records of a CPU: drain on a timer
LOSS_POLL_SECONDS = 0.5
IDENTITY_CACHE_SECONDS = 5.0


class GetFlows(msgspec.Struct, forbid_unknown_fields=True):
    """Body of POST /v1/flows (Hubble's GetFlowsRequest)."""

    number: int = 20  # 0 with follow: only new flows; 0 without: all
    first: bool = False
    follow: bool = False
    since: str = ""  # RFC 3339
    until: str = ""
    whitelist: list[FlowFilter] = []
    blacklist: list[FlowFilter] = []


class MonitorRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Body of POST /v1/monitor."""

    types: list[str] = []  # drop, trace, policy-verdict, l7; empty: all
    from_: list[int] = msgspec.field(default_factory=list, name="from")  # source endpoint ids
    to: list[int] = []  # destination endpoint ids


class ObservabilityPlugin:
    def __init__(self) -> None:
        self.ctx: Any = None
        self.observer: Observer | None = None
        self.metrics: HubbleMetrics | None = None
        self.service_map: ServiceMap | None = None
        self.decoder: Decoder | None = None
        self.reader: RingReader | None = None
        self.pending: collections.deque = collections.deque()
        self._scheduled = False
        self._batch: list[Flow] = []  # the flows for the next batch.flow message, and their bus payloads
        self._batch_payloads: list[bytes] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._identities: dict[str, int] = {}
        self._identities_at = 0.0
        self.started = time.time()

    # ---- hooks ------------------------------------------------------------------------------

    @hookimpl
    def pylium_config_model(self):
        return ObservabilityConfig

    @hookimpl
    def pylium_declare(self, declare):
        declare.after("connectivity")
        declare.event_type("flow", Flow)
        declare.event_type("flow.lost", LostEvents)
        declare.event_type("batch.flow", FlowBatch)
        declare.api_routes(("POST", "/v1/flows", self.api_flows), ("POST", "/v1/monitor", self.api_monitor),
                           ("GET", "/v1/service-map", self.api_service_map), ("GET", "/v1/observer", self.api_observer))

    @hookimpl
    def pylium_status_details(self, ctx):
        if self.observer is None:
            return None
        o = self.observer
        lost = sum(self.metrics.lost.values())
        return {"Hubble": f"Ok   Current/Max Flows: {len(o.ring)}/{o.capacity} "
                          f"({100 * len(o.ring) / o.capacity:.2f}%), Flows seen: {o.seen}, Lost events: {lost}"}

    # ---- running ----------------------------------------------------------------------------

    @hookimpl
    async def pylium_lifespan(self, ctx):
        self.ctx = ctx
        hubble = ctx.settings.hubble
        self.metrics = HubbleMetrics(hubble.metrics.enabled, hubble.metrics.endpointDrops.enabled,
                                     hubble.metrics.endpointDrops.maxEndpoints)
        ctx.metrics.register(self.metrics)
        try:
            if not hubble.enabled or ctx.datapath is None:
                ctx.set_health(Health.OK, "hubble.enabled is false" if not hubble.enabled
                               else "no datapath (no plugin declared BPF stages): no flows")
                yield
                return
            dp = ctx.datapath
            self.observer = Observer(hubble.eventBufferCapacity, self._count_loss)
            self.service_map = ServiceMap(hubble.serviceMapMaxEdges)
            self.remote = RemoteEndpoints(ctx.store, ctx.config.cluster.name, ctx.log, self._remote_changed)
            ctx.start_task("remote-endpoints", self.remote.run)
            self.decoder = Decoder(ctx.node_name, self.identity_of, dp.source_files, self.reply_of,
                                   self.remote.endpoint, lambda identity: self.remote.labels.get(identity, ()))
            self.queue_size = hubble.eventQueueSize
            self.reader = RingReader(dp.maps["events"].fd)
            self._loop = asyncio.get_running_loop()
            ctx.start_task("endpoints", self._follow_endpoints)
            ctx.start_task("policy", self._follow_policy)
            ctx.start_task("l7", self._follow_l7)
            ctx.start_task("kernel-losses", self._watch_kernel_losses, dp.maps["events_lost"])
            ctx.start_task("drain-timer", self._drain_timer)
            self._loop.add_reader(self.reader.fileno(), self._readable)
            try:
                yield
            finally:
                self._loop.remove_reader(self.reader.fileno())
                self.reader.close()
                self.reader = None  # a _process already scheduled finds nothing to do
                self.pending.clear()
        finally:
            self.ctx = None

    def _readable(self) -> None:
        try:
            records = self.reader.drain()
        except OSError as e:
            self.ctx.log.error("reading the events ring buffer failed", error=str(e))
            return
        room = self.queue_size - len(self.pending)
        if len(records) > room:
            self._count_loss("OBSERVER_EVENTS_QUEUE", len(records) - max(room, 0))
            records = records[:max(room, 0)]
        self.pending.extend(records)
        if not self._scheduled and self.pending:
            self._scheduled = True
            self._loop.call_soon(self._process)

    async def _drain_timer(self) -> None:
        while True:
            await anyio.sleep(DRAIN_SECONDS)
            self._readable()
            now = time.monotonic()
            if now - self._identities_at > IDENTITY_CACHE_SECONDS:  # the ipcache may have changed
                self._identities.clear()
                self._identities_at = now
                self.decoder.invalidate()  # flows of known shapes carry identities read earlier

    def _process(self) -> None:
        self._scheduled = False
        if self.reader is None:
            return
        pending, decode, emit = self.pending, self.decoder.decode_record, self._emit
        wanted = self._wanted()  # once a pass: asking the bus cost ~4% of the loop per record
        for _ in range(min(BATCH, len(pending))):
            raw = pending.popleft()
            try:
                flow, shape = decode(raw)
            except Exception as e:  # a record we cannot read is a lost event, never a crash
                self.ctx.log.warning("undecodable datapath event", error=repr(e), size=len(raw))
                self._count_loss("OBSERVER_EVENTS_QUEUE", 1)
                continue
            emit(flow, raw, shape, wanted)
        if pending and self.reader is not None:
            self._scheduled = True
            self._loop.call_soon(self._process)

    def _wanted(self) -> tuple[bool, bool]:
        """Whether some subscriber takes flows one each (`flow`), many to a message (`batch.flow`)."""
        bus = self.ctx.bus
        return bus.wants("flow"), bus.wants("batch.flow")

    def _emit(self, flow: Flow, raw: bytes, shape: Shape | None, wanted: tuple[bool, bool]) -> None:
        self.observer.add(flow)
        if shape is None:
            self.metrics.count(flow)
            self.service_map.add(flow)
        else:  # what flows of this shape count is worked out once
            if shape.counts is None:
                shape.counts = (self.metrics.keys(flow), self.service_map.edge_of(flow))
            keys, edge = shape.counts
            for counter, key in keys:
                counter[key] += 1
            if edge is not None:
                self.service_map.count(*edge)
        single, bulk = wanted
        if single or bulk:  # nobody subscribed: nothing is encoded
            payload = shape.payload(flow) if shape is not None else events.encode(flow)
            if single:
                self.ctx.bus.publish(flow, encoded=payload)
            if bulk:
                if not self._batch:
                    self._loop.call_soon(self._send_batch)  # after this pass over the ring
                self._batch.append(flow)
                self._batch_payloads.append(payload)
                if len(self._batch) >= BATCH:
                    self._send_batch()
        if raw:  # (L7 flows have no datapath record for the monitor)
            for follower in self.observer.monitor_followers:
                follower.offer((flow, raw))

    def _send_batch(self) -> None:
        flows, payloads = tuple(self._batch), self._batch_payloads
        self._batch, self._batch_payloads = [], []
        if flows and self.ctx is not None:  # the flows' payloads are joined as they are: not encoded again
            self.ctx.bus.publish(FlowBatch(flows=flows), encoded=b'{"flows":[' + b",".join(payloads) + b"]}")

    def _count_loss(self, source: str, count: int) -> None:
        """Losses are counted and also appear in the flow stream, the bus and the monitor."""
        if count <= 0:
            return
        self.metrics.lost[source] += count
        if source == "HUBBLE_RING_BUFFER":
            return  # one follower fell behind: it alone is told (observer.follow)
        record = LostEvents(source=source, num_events_lost=count)
        self.observer.add(record)
        self.ctx.bus.publish(record)
        for follower in self.observer.monitor_followers:
            follower.offer((record, None))

    async def _watch_kernel_losses(self, lost_map) -> None:
        """The BPF side counts records the ring had no room for; report what grew. The count
        already reported survives restarts in the plugin's state directory."""
        state = self.ctx.plugin_state_dir / "events_lost_reported"
        try:
            reported = int(state.read_text())
        except (OSError, ValueError):
            reported = 0
        while True:
            values = lost_map.get(ct.c_uint32(0))
            total = sum(values) if values is not None else 0
            if total < reported:  # the map was recreated
                reported = 0
            if total > reported:
                self._count_loss("PERF_EVENT_RING_BUFFER", total - reported)
                reported = total
                partial = state.with_suffix(".tmp")
                partial.write_text(str(reported))
                partial.replace(state)
            await anyio.sleep(LOSS_POLL_SECONDS)

    async def _follow_policy(self) -> None:
        """The policy plugin names the rules whose ids policy records carry."""
        async with self.ctx.bus.subscribe("policy.changed") as events:
            async for e in events:
                if e.topic != "policy.changed" or e.event.node != self.ctx.node_name:
                    continue
                rules = {}
                for number, name in e.event.rules.items():
                    kind, _, rest = name.partition("/")
                    namespace, _, policy = rest.rpartition("/")
                    rules[int(number)] = FlowPolicy(name=policy or kind, namespace=namespace,
                                                    kind=kind if policy else "", revision=e.event.revision)
                self.decoder.rules = rules
                self.decoder.invalidate()

    async def _follow_l7(self) -> None:
        """The L7 proxy's records become flows of type L7."""
        async with self.ctx.bus.subscribe("l7") as events:
            async for e in events:
                if e.topic != "l7" or e.event.node != self.ctx.node_name:
                    continue
                flow = l7_flow(e.event, self.decoder.endpoint)
                self.metrics.count_l7(flow)
                self._emit(flow, b"", None, self._wanted())

    async def _follow_endpoints(self) -> None:
        """Endpoint events keep the decoder's view of local endpoints current."""
        async with self.ctx.bus.subscribe("endpoint.") as events:
            async for e in events:
                if not e.topic.startswith("endpoint.") or e.topic.endswith(".synced"):
                    continue
                ev = e.event
                old = self.decoder.endpoint_by_id.pop(ev.id, None)
                if old is not None and self.service_map is not None:
                    self.service_map.forget(old)
                for ip in [ip for ip, x in self.decoder.endpoint_by_ip.items() if x is old]:
                    del self.decoder.endpoint_by_ip[ip]
                self.decoder.forget_interface(ev.host_ifindex)
                self.decoder.invalidate()  # known flows name the old endpoint (no await until it is set)
                if e.topic == "endpoint.deleted":
                    if old is not None:
                        self.metrics.forget_endpoint(endpoint_name(old))
                    continue
                ep = Endpoint(ID=ev.id, identity=ev.identity, cluster_name=self.ctx.config.cluster.name,
                              namespace=ev.namespace, labels=tuple(ev.labels), pod_name=ev.pod_name)
                self.decoder.endpoint_by_id[ev.id] = ep
                for a in ev.addresses:
                    self.decoder.endpoint_by_ip[a.ip] = ep
                if ev.host_ifindex:
                    self.decoder.ifnames[ev.host_ifindex] = ev.host_ifname

    def _remote_changed(self) -> None:
        if self.decoder is not None:
            self.decoder.invalidate()

    def identity_of(self, ip: str) -> int:
        """Identity of an address that is no local endpoint: the ipcache's (longest prefix;
        it holds the node's own addresses as reserved:host), else reserved:world."""
        identity = self._identities.get(ip)
        if identity is None:
            identity = ReservedIdentity.WORLD
            dp = self.ctx.datapath if self.ctx is not None else None
            if dp is not None:
                info = dp.maps["ipcache"].get(IpcacheKey.of(ip))
                if info is not None and info.identity:
                    identity = info.identity
            self._identities[ip] = identity
        return identity

    def reply_of(self, packet: bytes) -> bool | None:
        """Is a dropped packet a reply? The monitor's connection table says (trace_flows): it
        is when the connection's other direction was seen first; a connection the monitor never
        saw starts with this packet (Hubble prints such drops as `src -> dst`)."""
        flows = self.ctx.datapath.maps["trace_flows"] if self.ctx and self.ctx.datapath else None
        found = flow_key(packet) if flows is not None else None
        if found is None:
            return None
        key, direction = found
        state = flows.get(key)
        return state is not None and state.origin != direction

    # ---- API --------------------------------------------------------------------------------

    def _observer(self) -> Observer:
        if self.observer is None:
            raise ApiError(503, "no flows: the observer is not running (hubble.enabled is false, or no datapath)")
        return self.observer

    async def api_flows(self, req):
        observer = self._observer()
        try:
            q = msgspec.convert(req.body or {}, GetFlows)
            match = compile_lists(q.whitelist, q.blacklist)
        except (msgspec.ValidationError, FilterError) as e:
            raise ApiError(400, f"flow request: {e}") from None
        node = self.ctx.node_name

        def line(r) -> bytes:
            if isinstance(r, Flow):
                return msgspec.json.encode(FlowRecord(node_name=node, time=r.time, flow=r)) + b"\n"
            return msgspec.json.encode(FlowRecord(node_name=node, time=_now(), lost_events=r)) + b"\n"

        def accept(r) -> bool:
            return isinstance(r, LostEvents) or ((not q.since or r.time >= q.since) and match(r))

        async def stream():
            # follow first, then read the history, with no await between: nothing falls in a gap
            follower = Follower(accept) if q.follow else None
            if follower is not None:
                observer.flow_followers.add(follower)
            try:
                records = [] if q.follow and not q.number else observer.query(
                    match, number=q.number, first=q.first, since=q.since, until=q.until)
                if records:
                    yield b"".join(line(r) for r in records)
                if follower is not None:
                    async for batch in observer.follow(observer.flow_followers, accept, req.disconnected, q.until,
                                                       follower=follower):
                        yield b"".join(line(r) for r in batch)
            finally:
                observer.flow_followers.discard(follower)

        return stream()

    async def api_monitor(self, req):
        observer = self._observer()
        try:
            q = msgspec.convert(req.body or {}, MonitorRequest)
        except msgspec.ValidationError as e:
            raise ApiError(400, f"monitor request: {e}") from None
        unknown = set(q.types) - set(consts.MESSAGE_TYPES.values())
        if unknown:
            raise ApiError(400, f"monitor request: unknown type {', '.join(sorted(unknown))} "
                                f"(known: {', '.join(consts.MESSAGE_TYPES.values())})")
        names = consts.MESSAGE_TYPES
        types = {t for t, name in names.items() if name in q.types} if q.types else set(names)
        src, dst = set(q.from_), set(q.to)

        def accept(item) -> bool:
            record, raw = item
            if raw is None:
                return True  # lost events
            head = EVENT_HEADER.unpack_from(raw)
            return head[1] in types and (not src or head[5] in src) and (not dst or head[6] in dst)

        async def stream():
            async for batch in observer.follow(observer.monitor_followers, accept, req.disconnected,
                                               wrap_lost=lambda r: (r, None)):
                yield b"".join(msgspec.json.encode(_monitor_event(r, raw)) + b"\n" for r, raw in batch)

        return stream()

    async def api_service_map(self, req):
        self._observer()
        return self.service_map.snapshot()

    async def api_observer(self, req):
        o = self._observer()
        return {"num_flows": len(o.ring), "max_flows": o.capacity, "seen_flows": o.seen,
                "lost_events": dict(self.metrics.lost), "queue": len(self.pending),
                "followers": len(o.flow_followers) + len(o.monitor_followers),
                "uptime_seconds": round(time.time() - self.started, 1)}


def flow_key(packet: bytes) -> tuple[FlowKey, int] | None:
    """The datapath's struct flow_key of a captured packet and the packet's direction index,
    as flow_of() and flow_normalize() in pylium_lib.h compute them; None for what is not IP."""
    ethertype = packet[12:14]
    if ethertype == b"\x08\x00" and len(packet) >= 34:
        src, dst, proto, family = packet[26:30], packet[30:34], packet[23], 4
        fragment = struct.unpack_from("!H", packet, 20)[0] & 0x1FFF
        l4 = 14 + (packet[14] & 0x0F) * 4
    elif ethertype == b"\x86\xdd" and len(packet) >= 54:
        src, dst, proto, family, fragment, l4 = packet[22:38], packet[38:54], packet[20], 6, 0, 54
    else:
        return None
    ports = b"\0\0\0\0"
    if fragment:
        pass  # a later fragment: no ports
    elif proto in (6, 17) and len(packet) >= l4 + (14 if proto == 6 else 4):
        ports = packet[l4:l4 + 4]
    elif proto in (1, 58) and len(packet) >= l4 + 6:  # echo: the identifier in both ports; else type, code
        ports = (packet[l4 + 4:l4 + 6] if packet[l4] in (0, 8, 128, 129) else packet[l4:l4 + 2]) * 2
    sport, dport = struct.unpack("=HH", ports)  # as stored: network order, compared as loaded
    direction = int((struct.unpack("<QQ", src.ljust(16, b"\0")), sport) >
                    (struct.unpack("<QQ", dst.ljust(16, b"\0")), dport))
    if direction:
        src, dst, sport, dport = dst, src, dport, sport
    key = FlowKey(sport=sport, dport=dport, proto=proto, family=family)
    ct.memmove(key.saddr, src, len(src))
    ct.memmove(key.daddr, dst, len(dst))
    return key, direction


def _now() -> str:
    ns = time.time_ns()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // 10**9)) + f".{ns % 10**9:09d}Z"


def _monitor_event(record: Any, raw: bytes | None) -> dict:
    """A monitor event (`pylium monitor -j`): the record's own fields, little enrichment."""
    if raw is None:
        return {"type": "lost", "source": record.source, "lost": record.num_events_lost, "time": _now()}
    (_ts, mtype, subtype, direction, reason, src_ep, dst_ep, flags, line, ifindex, hsh, src_id, dst_id, orig_len,
     _cap, _file, rule0, rule1) = EVENT_HEADER.unpack_from(raw)
    flow = msgspec.to_builtins(record)
    ev = {"type": consts.MESSAGE_TYPES.get(mtype, str(mtype)), "time": record.time, "source": src_ep,
          "destination": dst_ep,
          "srcIdentity": src_id or (record.source.identity if record.source else 0),
          "dstIdentity": dst_id or (record.destination.identity if record.destination else 0),
          "ifindex": ifindex, "ifname": record.interface.name if record.interface else "", "hash": hsh,
          "origLen": orig_len, "direction": record.traffic_direction, "summary": render.packet_summary(flow)}
    if record.is_reply is not None:
        ev["isReply"] = record.is_reply
    if mtype == consts.MSG_DROP:
        ev.update(reason=subtype, reasonDesc=drop_reason(subtype)[1],
                  file=record.file.name if record.file else "", line=line)
    elif mtype == consts.MSG_TRACE:
        ev.update(observationPoint=consts.OBSERVATION_POINTS.get(subtype, (str(subtype),))[0],
                  state=consts.TRACE_REASONS.get(reason, "unknown").lower().replace("trace_reason_", ""))
    elif mtype == consts.MSG_POLICY_VERDICT:
        action = ("redirect" if flags & consts.EVENT_F_REDIRECT else "audit" if flags & consts.EVENT_F_AUDIT
                  else "allow" if flags & consts.EVENT_F_ALLOWED else "deny")
        ev.update(action=action, match=consts.POLICY_MATCH_TYPES.get(subtype, "none"), ruleIds=[r for r in (rule0, rule1) if r])
    return ev

"""The event bus the core runs: a ZeroMQ XSUB/XPUB proxy and a gate for outside publishers.
(Requests go through the broker in bus_broker.py.)

    in-process publishers ─inproc://bus-in─┐
                                           ├─ XSUB ══ C proxy (GIL-free thread) ══ XPUB ─┬─ inproc://bus      (plugins)
    outside publishers ─ipc bus-pub.sock─ gate ┘        (subscriptions flow back up)      ├─ ipc <run>/bus.sock (0660)
                        (validates, counts)                                              └─ tcp (CURVE, optional)

The hot path (in-process publishers to every subscriber) never runs Python in the agent: the
proxy is libzmq's. A slow or stuck subscriber only loses its own messages (XPUB high-water
mark); it never blocks the proxy or anyone else, and detects its loss from sequence gaps.
Publishers own their state families and answer new subscriptions with a replay
(see ``bus_client.Publisher``).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
import msgspec
import zmq

from pylium.core.bus import events as ev
from pylium.core.agent.log import get as get_logger

# In-process endpoints (inproc names are private to each agent's zmq.Context).
PROXY_IN = "inproc://bus-in"
PROXY_OUT = "inproc://bus"
GATE_OUT = "inproc://bus-gate"
CONTROL = "inproc://bus-control"
ANCHOR = b"\x00anchor"  # a topic no event has: see BusCore.start
GATE_CONTROL = "inproc://bus-gate-control"


@dataclass(frozen=True)
class BusPaths:
    run_dir: Path

    @property
    def subscribe(self) -> str:
        return f"ipc://{self.run_dir}/bus.sock"

    @property
    def publish(self) -> str:
        return f"ipc://{self.run_dir}/bus-pub.sock"

    @property
    def rpc(self) -> str:
        return f"ipc://{self.run_dir}/rpc.sock"

    @property
    def rpc_service(self) -> str:
        return f"ipc://{self.run_dir}/rpc-svc.sock"


class RejectLog:
    """Counts rejected input and logs it once per (source, reason), so a hostile or broken
    peer cannot flood the log."""

    def __init__(self, counter, log):
        self._counter = counter
        self._log = log
        self._seen: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def reject(self, source: str, reason: str, detail: str) -> None:
        self._counter.labels(reason).inc()
        with self._lock:
            first = (source, reason) not in self._seen
            if first:
                self._seen.add((source, reason))
        if first:
            self._log.warning("bus message rejected (logged once per source and reason)",
                              source=source, reason=reason, detail=detail[:200])


def bind_private(sock: zmq.Socket, endpoint: str) -> None:
    """Bind; an ipc socket file is created root-only (0660) and replaces a stale one."""
    if not endpoint.startswith("ipc://"):
        sock.bind(endpoint)
        return
    path = Path(endpoint[len("ipc://"):])
    if path.exists():
        path.unlink()
    old = os.umask(0o117)
    try:
        sock.bind(endpoint)
    finally:
        os.umask(old)
    os.chmod(path, 0o660)


class BusCore:
    """Owns the proxy and gate threads and the bus sockets' files."""

    def __init__(self, *, node: str, paths: BusPaths, registry: ev.Registry, metrics, settings):
        self.node = node
        self.paths = paths
        self.registry = registry
        self.settings = settings
        self.metrics = metrics
        self.log = get_logger(node=node, component="bus")
        self.ctx: zmq.Context | None = None  # set in start()
        self.rejects = RejectLog(metrics.bus_rejected, self.log)
        self._threads: list[threading.Thread] = []
        self._proxy_ctl: zmq.Socket | None = None
        self._anchor: zmq.Socket | None = None
        self._gate_ctl: zmq.Socket | None = None
        self._auth = None
        self._stats_lock = threading.Lock()
        self.tcp_endpoint: str | None = None

    # ----------------------------------------------------------------------------------------

    def start(self, context: zmq.Context) -> None:
        # Threads need plain sockets; a shadow shares the context (and its inproc names).
        context = self.ctx = zmq.Context.shadow(context.underlying)
        s = self.settings
        front = context.socket(zmq.XSUB)
        front.bind(PROXY_IN)
        front.bind(GATE_OUT)
        back = context.socket(zmq.XPUB)
        # Every subscription reaches the publishers (replays), and every unsubscription too, so
        # the count in front (XSUB) falls to zero, and publishers hear of it, when the last goes.
        back.setsockopt(zmq.XPUB_VERBOSER, 1)
        back.setsockopt(zmq.SNDHWM, s.subscriberQueue)
        back.setsockopt(zmq.LINGER, 0)
        back.bind(PROXY_OUT)
        bind_private(back, self.paths.subscribe)
        # A subscription that always exists: every publisher, in or out of the process, receives
        # it on connecting, which tells it the proxy knows it (no slow-joiner loss).
        self._anchor = context.socket(zmq.SUB)
        self._anchor.setsockopt(zmq.LINGER, 0)
        self._anchor.connect(PROXY_OUT)
        self._anchor.subscribe(ANCHOR)
        if s.tcp.address:
            self._bind_curve(back, s)
        ctl_here, ctl_there = self._pair(CONTROL)
        self._proxy_ctl = ctl_here
        self._spawn("bus-proxy", self._run_proxy, front, back, ctl_there)

        gate_ctl_here, gate_ctl_there = self._pair(GATE_CONTROL)
        self._gate_ctl = gate_ctl_here
        sockets = self._gate_sockets(context)
        self._spawn("bus-gate", self._run_gate, sockets, gate_ctl_there)

    def _pair(self, endpoint: str) -> tuple[zmq.Socket, zmq.Socket]:
        a = self.ctx.socket(zmq.PAIR)
        a.bind(endpoint)
        b = self.ctx.socket(zmq.PAIR)
        b.connect(endpoint)
        return a, b

    def _spawn(self, name: str, target, *args) -> None:
        t = threading.Thread(target=target, args=args, name=f"{name}-{self.node}", daemon=True)
        t.start()
        self._threads.append(t)

    def _bind_curve(self, sock: zmq.Socket, s) -> None:
        """TCP for remote subscribers, CURVE-authenticated: only listed client keys connect."""
        import zmq.auth
        from zmq.auth.thread import ThreadAuthenticator

        keys = Path(s.tcp.keysDir)
        public, secret = load_or_create_server_keys(keys)
        self.log.debug("bus CURVE key pair", public_key=public.decode(), secret_key_file=str(keys / "server.key_secret"))
        authorized = Path(s.tcp.authorizedKeysDir) if s.tcp.authorizedKeysDir else keys / "authorized_keys"
        authorized.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._auth = ThreadAuthenticator(self.ctx, log=_QuietLog())
        self._auth.start()
        self._auth.configure_curve(domain="pylium", location=str(authorized))
        # Security options apply to the binds made after they are set: only the TCP endpoint.
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, secret)
        sock.setsockopt(zmq.ZAP_DOMAIN, b"pylium")
        address = s.tcp.address if "://" in s.tcp.address else f"tcp://{s.tcp.address}"
        sock.bind(address)
        self.tcp_endpoint = sock.getsockopt(zmq.LAST_ENDPOINT).decode()
        self.log.info("bus TCP endpoint with CURVE", endpoint=self.tcp_endpoint, authorized_keys=str(authorized))

    def stop(self) -> None:
        for ctl in (self._gate_ctl, self._proxy_ctl):
            if ctl is not None:
                ctl.send(b"TERMINATE")
        for t in self._threads:
            t.join(5)
        for sock in (self._gate_ctl, self._proxy_ctl, self._anchor):
            if sock is not None:
                sock.close(0)
        if self._auth is not None:
            self._auth.stop()
        for endpoint in (self.paths.subscribe, self.paths.publish):
            Path(endpoint[len("ipc://"):]).unlink(missing_ok=True)

    def proxy_statistics(self) -> dict[str, int]:
        """Message and byte counts of the proxy (libzmq's STATISTICS), for metrics."""
        if self._proxy_ctl is None:
            return {}
        with self._stats_lock:
            self._proxy_ctl.send(b"STATISTICS")
            if not self._proxy_ctl.poll(1000):
                return {}
            values = [int.from_bytes(f, "little") for f in self._proxy_ctl.recv_multipart()]
        names = ["frontend_in_msgs", "frontend_in_bytes", "frontend_out_msgs", "frontend_out_bytes",
                 "backend_in_msgs", "backend_in_bytes", "backend_out_msgs", "backend_out_bytes"]
        return dict(zip(names, values))

    # ----------------------------------------------------------------------------------------
    # Threads
    # ----------------------------------------------------------------------------------------

    @staticmethod
    def _run_proxy(front: zmq.Socket, back: zmq.Socket, control: zmq.Socket) -> None:
        try:
            zmq.proxy_steerable(front, back, None, control)
        except zmq.ContextTerminated:
            pass
        finally:
            for s in (front, back, control):
                s.close(0)

    def _gate_sockets(self, context: zmq.Context) -> dict[str, zmq.Socket]:
        s = self.settings
        gate_in = context.socket(zmq.XSUB)  # outside publishers connect here
        gate_in.setsockopt(zmq.RCVHWM, s.subscriberQueue)
        gate_in.setsockopt(zmq.MAXMSGSIZE, 64 * s.maxMessageBytes)  # memory guard; the limit is checked below
        bind_private(gate_in, self.paths.publish)
        gate_out = context.socket(zmq.XPUB)  # into the proxy, like an in-process publisher
        gate_out.setsockopt(zmq.XPUB_VERBOSE, 1)
        gate_out.setsockopt(zmq.SNDHWM, s.subscriberQueue)
        gate_out.connect(GATE_OUT)
        return {"gate_in": gate_in, "gate_out": gate_out}

    def _run_gate(self, sockets: dict[str, zmq.Socket], control: zmq.Socket) -> None:
        gate = _Gate(self, sockets)
        poller = zmq.Poller()
        for sock in (*sockets.values(), control):
            poller.register(sock, zmq.POLLIN)
        try:
            while True:
                ready = dict(poller.poll(1000))
                if control in ready:
                    control.recv()
                    return
                if sockets["gate_in"] in ready:
                    gate.forward_published()
                if sockets["gate_out"] in ready:
                    gate.forward_subscriptions()
        except zmq.ContextTerminated:
            pass
        finally:
            for sock in (*sockets.values(), control):
                sock.close(0)


class _QuietLog:
    """zmq.auth logs every handshake through the logging module; keep only failures."""

    def debug(self, *a, **k): ...
    def info(self, *a, **k): ...
    def warning(self, *a, **k): ...
    def error(self, *a, **k): ...


class _Gate:
    """Runs on the gate thread: validates what outside publishers send."""

    def __init__(self, core: BusCore, sockets: dict[str, zmq.Socket]):
        self.core = core
        self.s = sockets
        self.max_bytes = core.settings.maxMessageBytes

    def forward_published(self) -> None:
        gate_in, gate_out = self.s["gate_in"], self.s["gate_out"]
        for _ in range(1000):
            try:
                frames = gate_in.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            problem = self._check(frames)
            if problem is None:
                try:
                    gate_out.send_multipart(frames, zmq.NOBLOCK)
                except zmq.Again:
                    self.core.metrics.bus_dropped.labels("gate", "proxy_queue_full").inc()
            else:
                self.core.rejects.reject(*problem)

    def _check(self, frames: list[bytes]) -> tuple[str, str, str] | None:
        """None if valid, else (source, reason, detail)."""
        size = sum(len(f) for f in frames)
        if len(frames) != 3:
            return "unknown", "malformed", f"{len(frames)} frames, expected [topic, header, payload]"
        topic_raw, header_raw, payload = frames
        try:
            header = ev.decode_header(header_raw)
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            return "unknown", "malformed", f"bad header: {e}"
        source = f"{header.source}@{header.node}"
        if size > self.max_bytes:
            return source, "oversized", f"{size} bytes > bus.maxMessageBytes={self.max_bytes}"
        if header.v != ev.SCHEMA_VERSION:
            return source, "schema_version", f"schema version {header.v}, this agent speaks {ev.SCHEMA_VERSION}"
        try:
            topic = topic_raw.decode()
        except UnicodeDecodeError:
            return source, "malformed", "topic is not UTF-8"
        if header.type != topic:
            return source, "malformed", f"header type {header.type!r} differs from topic {topic!r}"
        try:
            self.core.registry.decode(topic, payload)
        except ev.UnknownTopic:
            return source, "unknown_topic", f"unknown topic {topic!r}"
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            return source, "invalid_payload", f"{topic}: {e}"
        return None

    def forward_subscriptions(self) -> None:
        """Subscriptions coming up from the proxy go on to outside publishers (their replays)."""
        gate_in, gate_out = self.s["gate_in"], self.s["gate_out"]
        while True:
            try:
                gate_in.send(gate_out.recv(zmq.NOBLOCK))
            except zmq.Again:
                return


def load_or_create_server_keys(keys_dir: Path) -> tuple[bytes, bytes]:
    """The agent's CURVE key pair in keys_dir/server.key{,_secret}; the secret file is 0600."""
    import zmq.auth

    keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    secret_file = keys_dir / "server.key_secret"
    if not secret_file.exists():
        old = os.umask(0o077)
        try:
            zmq.auth.create_certificates(str(keys_dir), "server")
        finally:
            os.umask(old)
    os.chmod(secret_file, 0o600)
    public, secret = zmq.auth.load_certificate(str(secret_file))
    return public, secret


"""The agent: load config and plugins, start them in order, serve, stop them in reverse.

    load config -> discover plugins -> validate config -> declare (sync, no I/O)
      -> serve API and metrics -> enter each plugin's lifespan in order -> READY=1
      -> wait for a stop request -> STOPPING=1 -> exit lifespans in reverse (bounded) -> exit
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import inspect
import json
import os
import signal
import time
from dataclasses import dataclass
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Callable

import anyio
import zmq
import zmq.asyncio

from pylium.core import EXIT_FAILURE, EXIT_OK, EXIT_UNAVAILABLE, __version__, config as cfg
from pylium.core.agent import log as logging_
from pylium.core.agent.declared import Declared
from pylium.core.agent.metrics import AgentMetrics
from pylium.core.agent.plugin_host import PluginHost, PluginInfo, PluginLoadError, discover, instantiate
from pylium.core.agent.sdnotify import Notifier
from pylium.core.api import server as api
from pylium.core.api.http import Response, Router, Server
from pylium.core.bus import events as ev
from pylium.core.bus.broker import Broker
from pylium.core.bus.client import BusAddresses, BusClient
from pylium.core.bus.proxy import BusCore, BusPaths
from pylium.core.datapath.ipcache import Ipcache, PluginIpcache, Source
from pylium.core.endpoints.manager import EndpointManager
from pylium.core.endpoints.maps import IPCACHE_OWNER, EndpointMaps
from pylium.core.endpoints.model import Endpoint
from pylium.core.plugin_api import Declarations, Health, HealthState, PluginContext
from pylium.core.state.manifests import Manifests, PluginManifests
from pylium.core.nodes.addresses import detect_ipv4
from pylium.core.nodes.ipcache_sync import IpcacheSync
from pylium.core.nodes.model import Node, NodeAddress, boot_id
from pylium.core.nodes.registry import NodeRegistry, PluginNode
from pylium.core.state.store import ClusterStore, LocalStore, StoreUnavailable

if TYPE_CHECKING:
    from pylium.core.datapath.datapath import Datapath

API_SOCKET = "pylium.sock"


class AgentError(Exception):
    """The agent cannot start for a reason outside its configuration (exit 1)."""


@dataclass(frozen=True)
class AgentOptions:
    node_name: str
    state_dir: Path = Path("/var/lib/pylium")
    run_dir: Path = Path("/var/run/pylium")
    bpf_root: Path = Path("/sys/fs/bpf/pylium")
    stop_timeout: float = 10.0

    @property
    def api_socket(self) -> Path:
        return self.run_dir / API_SOCKET


class _PluginTasks:
    """Hosts one plugin's named tasks in a task group owned by the agent's root group."""

    def __init__(self) -> None:
        self.group: anyio.abc.TaskGroup | None = None
        self._stop = anyio.Event()
        self._done = anyio.Event()

    async def host(self, *, task_status=anyio.TASK_STATUS_IGNORED) -> None:
        try:
            async with anyio.create_task_group() as tg:
                self.group = tg
                task_status.started()
                await self._stop.wait()
                tg.cancel_scope.cancel()
        finally:
            self.group = None
            self._done.set()

    async def stop(self) -> None:
        self._stop.set()
        await self._done.wait()


class Agent:
    def __init__(self, config: cfg.Section, options: AgentOptions, host: PluginHost, order: list[str],
                 declared: Declared, metrics: AgentMetrics, warnings: list[str] = (),
                 settings: dict[str, cfg.Section] | None = None):
        self.config = config  # the whole configuration (every owner's keys)
        self.core_config = cfg.project(cfg.CoreConfig, config)
        self.settings = settings or {}  # plugin -> its own part
        self.declared = declared
        self.registry = declared.registry
        self.stages = declared.stages
        self.options = options
        self.host = host
        self.order = order
        self.api_routes = declared.routes
        self.metrics = metrics
        self.log = logging_.get(node=options.node_name)
        self.state = "stopped"
        self.exit_code = EXIT_OK
        self.failure: str | None = None
        self.started_at = time.time()
        self.notifier = Notifier()
        self.contexts: dict[str, PluginContext] = {}
        self._tasks: dict[str, _PluginTasks] = {}
        self._stop: anyio.Event | None = None
        self._life: anyio.CancelScope | None = None
        self._root: anyio.abc.TaskGroup | None = None
        self._warnings = list(warnings)
        self.bus: BusCore | None = None
        self.broker: Broker | None = None
        self.store: ClusterStore | None = None
        self.datapath: Datapath | None = None
        self.ipcache: Ipcache | None = None
        self.endpoints: EndpointManager | None = None
        self.nodes: NodeRegistry | None = None
        self.ipsync: IpcacheSync | None = None
        manifests_dir = config.standalone.manifestsDir
        self.manifests = Manifests(Path(manifests_dir) if manifests_dir else None, self.log.bind(component="manifests"))
        self.core_bus: BusClient | None = None
        for name in order:
            self.contexts[name] = self._context(name)
            metrics.set_health(name, Health.STOPPED)

    # ----------------------------------------------------------------------------------------
    # Loading: everything that can fail because of configuration happens here, before run().
    # ----------------------------------------------------------------------------------------

    @classmethod
    def load(cls, options: AgentOptions, config_files: list[str | Path] = (), sets: list[str] = (),
             entries: list[EntryPoint] | None = None, extra: list[PluginInfo] = ()) -> Agent:
        """Raises ConfigError (exit 78) or PluginLoadError (exit 78) naming what is wrong."""
        raw = cfg.gather(config_files, sets)
        disabled = _disabled_names(raw.data)
        found = discover(entries)
        infos: list[PluginInfo] = []
        log = logging_.get(node=options.node_name)
        for ep, info in found:
            try:
                instantiate(ep, info)
            except PluginLoadError as e:
                if info.name not in disabled:
                    raise
                log.warning("disabled plugin cannot be loaded; its config keys are unknown", error=str(e))
                continue
            infos.append(info)
        infos.extend(extra)
        names = [i.name for i in infos]
        unknown = [d for d in disabled if d not in names]
        if unknown:
            raise cfg.ConfigError([f"plugins.disabled: unknown plugin {u!r} (installed: {', '.join(names) or 'none'})"
                                   for u in unknown])
        contributions = {}
        for info in infos:
            fn = getattr(info.obj, "pylium_config_model", None)
            model = fn() if callable(fn) else None
            if model is not None:
                contributions[info.name] = model
        cfg.apply_aliases(raw, list(contributions.values()))
        config = cfg.validate(cfg.build_model(contributions), raw)
        metrics = AgentMetrics(__version__)
        host = PluginHost(on_hook_duration=metrics.observe_hook)
        enabled = [i for i in infos if i.name not in disabled]
        for info in enabled:
            host.register(info)
        host.check()
        core_config = cfg.project(cfg.CoreConfig, config)
        settings = {name: cfg.project(model, config) for name, model in contributions.items()}
        decls: dict[str, Declarations] = {}
        for info in enabled:
            decl = decls[info.name] = Declarations(info.name, core_config, settings.get(info.name), info.package_dir)
            try:
                host.call("pylium_declare", info.name, declare=decl)
            except Exception as e:
                raise PluginLoadError(f"plugin {info.name}: pylium_declare failed: {type(e).__name__}: {e}") from e
            info.start_after = decl.start_after
        order = host.order([i.name for i in enabled])
        return cls(config, options, host, order, Declared.collect(decls), metrics, raw.warnings, settings)

    # ----------------------------------------------------------------------------------------
    # Running
    # ----------------------------------------------------------------------------------------

    async def run(self, stop: anyio.Event | None = None, handle_signals: bool = True) -> int:
        """Run until `stop` is set or SIGTERM/SIGINT arrives; returns the process exit code."""
        t0 = time.monotonic()
        self._stop = anyio.Event()
        for w in self._warnings:
            self.log.warning(w)
        with contextlib.ExitStack() as locks:
            self._lock_dirs(locks)
            with anyio.CancelScope() as life:
                self._life = life
                async with anyio.create_task_group() as root:
                    self._root = root
                    if handle_signals:
                        root.start_soon(self._watch_signals, name="signals")
                    if stop is not None:
                        root.start_soon(self._watch_event, stop, name="stop-trigger")
                    await self._run_plugins(root, t0)
                    root.cancel_scope.cancel()
            if life.cancelled_caught:
                self.log.error("shutdown did not finish in time; forced", timeout=self.options.stop_timeout)
                self.exit_code = EXIT_FAILURE
        self.state = "stopped"
        self.notifier.close()
        self.log.info("agent stopped", exit_code=self.exit_code)
        return self.exit_code

    async def _run_plugins(self, root: anyio.abc.TaskGroup, t0: float) -> None:
        self.state = "starting"
        servers: list[Server] = []
        zctx = zmq.asyncio.Context()
        try:
            servers.append(await self._serve_api())
            if self.config.prometheus.enabled and self.config.prometheus.port:
                servers.append(await self._serve_metrics())
            self._start_bus(zctx)
        except (OSError, AgentError, zmq.ZMQError) as e:
            self._fail(str(e))
        try:
            if self.failure is None:
                self.store = await self._open_store()
            if self.failure is None and self.store is not None:
                async with contextlib.AsyncExitStack() as stack:
                    stack.push_async_callback(self.store.close)
                    core_tasks = await stack.enter_async_context(anyio.create_task_group())
                    stack.callback(core_tasks.cancel_scope.cancel)  # they end before the store closes
                    if hasattr(self.store, "keep_alive"):
                        core_tasks.start_soon(self.store.keep_alive, name="kvstore-lease")
                    await self._start_broker(stack, root, zctx)
                    self.core_bus = await self._bus_client(stack, root, "core", zctx)
                    self.core_bus.owns("plugin.health", "endpoint", "node")
                    await self._start_nodes(core_tasks)
                    for ctx in self.contexts.values():
                        ctx.store, ctx.node = self.store, PluginNode(self.nodes)
                    try:
                        await self._start_datapath(stack)
                        self.ipsync.restored()
                        self.endpoints = self._endpoint_manager()
                        self.manifests.scan()
                        if self.failure is None:
                            await self._start_all(stack, root, zctx)
                        if self.failure is None and not self._stop.is_set():
                            await self.endpoints.restore()
                            if self.ipcache is not None:
                                self.ipcache.started()
                            await self._drain_cni_queue()
                            root.start_soon(self._guard("core", "manifests", self.manifests.watch,
                                                        self.endpoints.refresh_pod_labels), name="manifests")
                            self._ready(t0)
                            await self._stop.wait()
                    finally:
                        self.state = "stopping"
                        self.notifier.stopping(self.failure or "Stopping")
                        self.log.info("stopping plugins", reason=self.failure or "stop requested")
                        self.core_bus.publish(ev.AgentStopping(node=self.options.node_name,
                                                               reason=self.failure or "stop requested"))
                        self._set_deadline()
                self.core_bus = None
        finally:
            with anyio.CancelScope(shield=True):
                for server in reversed(servers):
                    await server.close()
            if self.bus is not None:
                self.bus.stop()
            zctx.destroy(linger=0)
            with contextlib.suppress(FileNotFoundError):
                self.options.api_socket.unlink()

    async def _open_store(self) -> ClusterStore | None:
        """The cluster store the configuration names; etcd is tried until kvstore.connectTimeout
        (then the agent exits 69), and its lease is kept alive for the agent's life."""
        settings = self.config.kvstore
        if settings.backend == "local":
            return LocalStore(self.options.state_dir / "store" / "local.db")
        from pylium.core.state.etcd import EtcdStore, TlsFiles

        etcd = self.config.etcd
        store = EtcdStore(etcd.endpoints, cfg.parse_duration(settings.leaseTTL),
                          TlsFiles(etcd.trustedCAFile, etcd.certFile, etcd.keyFile), self.log.bind(component="kvstore"))

        def retrying(problem: str, delay: float) -> None:
            if self._stop.is_set():
                raise StoreUnavailable("stop requested")
            self.log.warning("kvstore not reachable yet; retrying", problem=problem, retry_in=round(delay, 1))

        try:
            await store.connect(time.monotonic() + cfg.parse_duration(settings.connectTimeout), retrying)
        except StoreUnavailable as e:
            await store.close()
            if self._stop.is_set():
                return None
            self._fail(f"kvstore: {e} (tried for up to {settings.connectTimeout}, kvstore.connectTimeout)",
                       EXIT_UNAVAILABLE)
            return None
        self.log.info("kvstore connected", status=store.status().message)
        return store

    async def _start_nodes(self, tasks: anyio.abc.TaskGroup) -> None:
        """This node's record and its peers' (core/nodes)."""
        ipv4 = self.config.ipv4.nodeIP or await anyio.to_thread.run_sync(detect_ipv4)
        local = Node(name=self.options.node_name, cluster=self.config.cluster.name, boot_id=boot_id(),
                     ip_addresses=[NodeAddress("InternalIP", ipv4)] if ipv4 else [], ipv4_health_ip=ipv4)
        self.nodes = NodeRegistry(self.store, local, self.core_bus.publish, self.log.bind(component="nodes"),
                                  self.metrics.kvstore_bad_records.labels("nodes").inc)
        tasks.start_soon(self._guard("core", "nodes", self.nodes.run), name="nodes")
        with anyio.move_on_after(10):  # plugins start knowing the cluster's nodes (their replay is whole)
            await self.nodes.synced.wait()
        if not self.nodes.synced.is_set():
            self.log.warning("the cluster's nodes are not known yet; starting anyway")
        self.ipsync = IpcacheSync(self.store, ipv4, self.log.bind(component="ipcache-sync"),
                                  self.metrics.kvstore_bad_records.labels("ipcache").inc)
        tasks.start_soon(self._guard("core", "ipcache-sync", self.ipsync.run), name="ipcache-sync")

    def _start_bus(self, zctx: zmq.Context) -> None:
        settings = self.config.bus
        if not settings.tcp.keysDir:
            tcp = settings.tcp.model_copy(update={"keysDir": str(self.options.state_dir / "bus")})
            settings = settings.model_copy(update={"tcp": tcp})
        self.bus = BusCore(node=self.options.node_name, paths=BusPaths(self.options.run_dir), registry=self.registry,
                           metrics=self.metrics, settings=settings)
        self.bus.start(zctx)
        self.metrics.watch_proxy(self.bus.proxy_statistics)
        self.metrics.watch_datapath(lambda: self.datapath, lambda: self.endpoints.endpoints if self.endpoints else {})

    async def _start_datapath(self, stack: contextlib.AsyncExitStack) -> None:
        """Maps, dispatchers and every plugin's stages, compiled once per start (child processes)."""
        if not self.stages:
            return
        from pylium.core.datapath.compiler import CompileError
        from pylium.core.datapath.datapath import Datapath, MonitorSettings
        from pylium.core.datapath.views import PluginDatapath

        started = time.monotonic()
        dp = Datapath(self.options.bpf_root, self.options.node_name, self.log.bind(component="datapath"),
                      MonitorSettings.from_config(self.config.bpf), self.declared.defines)
        try:
            dp.open_maps(self.declared.maps)
            await dp.compile(self.stages)
            dp.install_stages()
        except (CompileError, OSError) as e:
            dp.close()
            self.metrics.bootstrap.labels("bpf", "failure").set(time.monotonic() - started)
            self._fail(f"datapath: {e}")
            return
        stack.callback(self._close_datapath)
        self.datapath = dp
        self.ipcache = Ipcache(dp.maps["ipcache"], self.options.state_dir / "ipcache-owners.json")
        self.ipcache.register(IPCACHE_OWNER, Source.LOCAL)
        for owner, source, waits in self.declared.ipcache_owners:
            self.ipcache.register(owner, source, waits)
        self.ipsync.attach(self.ipcache)  # the other nodes' pods: owner core/kvstore
        restored = self.ipcache.restore()
        for name, ctx in self.contexts.items():
            ctx.datapath = PluginDatapath(dp, name, self.host.plugins[name].package_dir)
            ctx.bpf_maps = dp.plugin_maps.get(name, {})
            ctx.ipcache = PluginIpcache(self.ipcache, name)
        self.metrics.bootstrap.labels("bpf", "success").set(time.monotonic() - started)
        self.log.info("datapath loaded", seconds=round(dp.compile_seconds, 2), stages=len(self.stages),
                      dispatch=dp.dispatch_ids(), ipcache_restored=restored)

    def _endpoint_manager(self) -> EndpointManager:
        dp = self.datapath
        maps = EndpointMaps(dp.maps["endpoints"], dp.maps["lxc_by_ifindex"], self.ipcache) if dp else None
        hooks = _EndpointHooks(self.host.call, self.contexts, self.order, self.declared.owned_fields)
        return EndpointManager(self.options.state_dir / "endpoints", hooks, lambda: self.core_bus, maps,
                               self.manifests.pod_labels, self.log.bind(component="endpoints"), self.ipsync)

    def _close_datapath(self) -> None:
        dp, self.datapath = self.datapath, None  # requests still in flight stop touching the maps
        if dp is not None:
            dp.close()

    async def _drain_cni_queue(self) -> None:
        """CNI DELs that arrived while the agent was down wait on disk; carry them out now."""
        queue = self.options.run_dir / "cni-del-queue"
        for item in sorted(queue.glob("*.json")) if queue.is_dir() else []:
            try:
                req = json.loads(item.read_text())
                await self.endpoints.delete(req["container_id"], req.get("ifname") or None, reason="queued CNI DEL")
            except (ValueError, KeyError, OSError) as e:
                self.log.error("bad queued CNI DEL; dropped", file=str(item), error=str(e))
            item.unlink(missing_ok=True)

    async def _start_broker(self, stack: contextlib.AsyncExitStack, root: anyio.abc.TaskGroup,
                            zctx: zmq.asyncio.Context) -> None:
        tasks = _PluginTasks()
        await root.start(tasks.host, name="bus-broker")
        paths = BusPaths(self.options.run_dir)
        self.broker = Broker(zctx, paths.rpc, paths.rpc_service, metrics=self.metrics, rejects=self.bus.rejects,
                             timeout=self.config.bus.requestTimeout, log=self.log.bind(component="broker"),
                             spawn=lambda name, fn: tasks.group.start_soon(self._guard("core", name, fn), name=name))
        stack.push_async_callback(self._close_broker)
        stack.push_async_callback(tasks.stop)

    async def _close_broker(self) -> None:
        await self.broker.aclose()
        self.broker = None

    async def _bus_client(self, stack: contextlib.AsyncExitStack, root: anyio.abc.TaskGroup, source: str,
                          zctx: zmq.asyncio.Context) -> BusClient:
        """A bus connection whose helper tasks outlive the owner's lifespan and stop before its
        sockets close."""
        tasks = _PluginTasks()
        await root.start(tasks.host, name=f"{source}:bus")
        settings = self.config.bus
        client = BusClient(ctx=zctx, source=source, node=self.options.node_name, registry=self.registry,
                           addresses=BusAddresses.in_process(), spawn=lambda name, fn: tasks.group.start_soon(
                               self._guard(source, name, fn), name=f"{source}:{name}"),
                           metrics=self.metrics, rejects=self.bus.rejects, publisher_queue=settings.publisherQueue,
                           subscriber_queue=settings.subscriberQueue, request_timeout=settings.requestTimeout,
                           broker=self.broker)
        stack.push_async_callback(client.aclose)
        stack.push_async_callback(tasks.stop)
        await client.ready()
        return client

    async def _start_all(self, stack: contextlib.AsyncExitStack, root: anyio.abc.TaskGroup,
                         zctx: zmq.asyncio.Context) -> None:
        for name in self.order:
            if self._stop.is_set():
                return
            ctx = self.contexts[name]
            ctx.bus = await self._bus_client(stack, root, name, zctx)
            started = time.monotonic()
            tasks = _PluginTasks()
            await root.start(tasks.host, name=f"{name}:tasks")
            self._tasks[name] = tasks
            stack.push_async_callback(tasks.stop)  # runs last for this plugin (LIFO)
            ctx.set_health(Health.STARTING, "starting")
            try:
                cm = _lifespan(self.host.call("pylium_lifespan", name, ctx=ctx))
                if cm is not None:
                    await cm.__aenter__()
            except Exception as e:
                while isinstance(e, BaseExceptionGroup) and len(e.exceptions) == 1:  # a task group's: say what
                    e = e.exceptions[0]
                self.metrics.bootstrap.labels(name, "failure").set(time.monotonic() - started)
                ctx.set_health(Health.STOPPED, f"failed to start: {e}")
                self.log.error("plugin failed to start", plugin=name, error=f"{type(e).__name__}: {e}", exc_info=e)
                self._fail(f"plugin {name} failed to start: {type(e).__name__}: {e}")
                return
            stack.push_async_callback(self._exit_plugin, name, cm)
            stack.push_async_callback(tasks.stop)  # tasks end before the lifespan exits
            if ctx.health.health is Health.STARTING:
                ctx.set_health(Health.OK)
            self.metrics.bootstrap.labels(name, "success").set(time.monotonic() - started)
            self.log.info("plugin started", plugin=name, seconds=round(time.monotonic() - started, 3))

    async def _exit_plugin(self, name: str, cm: Any) -> None:
        ctx = self.contexts[name]
        ctx.set_health(Health.STOPPED, "stopping")  # from now on its API routes answer 503
        try:
            if cm is not None:
                await cm.__aexit__(None, None, None)
        except Exception as e:
            self.log.error("plugin failed to stop cleanly", plugin=name, error=f"{type(e).__name__}: {e}")
            self.exit_code = EXIT_FAILURE
        finally:
            ctx.manifests.close()
            ctx.metrics.close()
            ctx.set_health(Health.STOPPED, "stopped")
        self.log.info("plugin stopped", plugin=name)

    def _ready(self, t0: float) -> None:
        self.state = "running"
        seconds = time.monotonic() - t0
        self.metrics.bootstrap.labels("overall", "success").set(seconds)
        self.notifier.ready(self._status_line())
        self.core_bus.publish(ev.AgentReady(node=self.options.node_name, version=__version__, plugins=self.order))
        if self.notifier.watchdog_interval and self._root is not None:
            self._root.start_soon(self._watchdog, name="watchdog")
        self.log.info("agent ready", plugins=len(self.order), seconds=round(seconds, 3),
                      api=str(self.options.api_socket))

    # ----------------------------------------------------------------------------------------
    # Stopping
    # ----------------------------------------------------------------------------------------

    def request_stop(self, reason: str = "stop requested", exit_code: int = EXIT_OK) -> None:
        """Begin a graceful stop, bounded by options.stop_timeout from now."""
        if exit_code:
            self.exit_code = exit_code
        if self._stop is not None and not self._stop.is_set():
            self.log.info("stop requested", reason=reason)
            self._stop.set()
        self._set_deadline()

    def _fail(self, message: str, exit_code: int = EXIT_FAILURE) -> None:
        self.failure = self.failure or message
        self.request_stop(message, exit_code)

    def _set_deadline(self) -> None:
        if self._life is not None:
            self._life.deadline = min(self._life.deadline, anyio.current_time() + self.options.stop_timeout)

    async def _watch_signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                if self._stop is not None and self._stop.is_set():
                    self.log.warning("second signal: stopping now", signal=signal.Signals(signum).name)
                    if self._life is not None:
                        self._life.cancel()
                    return
                self.request_stop(f"signal {signal.Signals(signum).name}")

    async def _watch_event(self, event: anyio.Event) -> None:
        await event.wait()
        self.request_stop("stop event")

    async def _watchdog(self) -> None:
        while True:
            self.notifier.watchdog()
            await anyio.sleep(self.notifier.watchdog_interval)

    # ----------------------------------------------------------------------------------------
    # Servers, directories, plugin contexts
    # ----------------------------------------------------------------------------------------

    async def _serve_api(self) -> Server:
        path = self.options.api_socket
        if api.socket_in_use(path):
            raise AgentError(f"another agent is serving {path}")
        server = api.build_server(self)
        await server.listen_unix(api.bind_unix_socket(path))
        return server

    async def _serve_metrics(self) -> Server:
        p = self.config.prometheus

        async def metrics(_):
            return Response(self.metrics.render(), content_type="text/plain; version=0.0.4")

        router = Router()
        router.add_get("/metrics", metrics)
        server = Server(router)
        try:
            await server.listen_tcp(p.address or None, p.port)
        except OSError as e:
            raise AgentError(f"cannot serve metrics on {p.address or '*'}:{p.port}: {e.strerror}") from None
        return server

    def _lock_dirs(self, locks: contextlib.ExitStack) -> None:
        o = self.options
        o.run_dir.mkdir(parents=True, exist_ok=True, mode=0o755)
        o.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        for lock_path in (o.run_dir / "pylium-agent.lock", o.state_dir / "pylium-agent.lock"):
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            locks.callback(os.close, fd)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                raise AgentError(f"another pylium-agent (pid {holder}) is using {lock_path.parent}") from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)

    def _context(self, name: str) -> PluginContext:
        o = self.options
        ctx = PluginContext(
            name=name, config=self.core_config, settings=self.settings.get(name), node_name=o.node_name,
            state_dir=o.state_dir, run_dir=o.run_dir, bpf_root=o.bpf_root, log=self.log.bind(plugin=name),
            metrics=self.metrics.registry, start_task=self._start_task, on_health=self._on_health,
        )
        ctx.manifests = PluginManifests(self.manifests)
        return ctx

    def _start_task(self, plugin: str, name: str, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        tasks = self._tasks.get(plugin)
        if tasks is None or tasks.group is None:
            raise RuntimeError(f"plugin {plugin}: start_task({name!r}) outside the plugin's lifespan")
        tasks.group.start_soon(self._guard(plugin, name, fn, *args), name=f"{plugin}:{name}")

    def _guard(self, plugin: str, name: str, fn: Callable[..., Awaitable[Any]], *args: Any):
        """Wrap a task: if it raises, the plugin is DEGRADED and the agent stops (exit 1)."""

        async def guarded() -> None:
            try:
                await fn(*args)
            except Exception as e:
                log = self.contexts[plugin].log if plugin in self.contexts else self.log
                log.error("task failed", task=name, error=f"{type(e).__name__}: {e}", exc_info=e)
                if plugin in self.contexts:
                    self.contexts[plugin].set_health(Health.DEGRADED, f"task {name} failed: {type(e).__name__}: {e}")
                self._fail(f"plugin {plugin}: task {name} failed: {type(e).__name__}: {e}")

        return guarded

    def _on_health(self, plugin: str, state: HealthState) -> None:
        self.metrics.set_health(plugin, state.health)
        if self.core_bus is not None:
            self.core_bus.publish(ev.PluginHealth(plugin=plugin, health=state.health.value, message=state.message))
        if state.health is Health.DEGRADED:
            self.log.warning("plugin degraded", plugin=plugin, reason=state.message)
        if self.state == "running":
            self.notifier.status(self._status_line())

    # ----------------------------------------------------------------------------------------
    # Introspection for the API
    # ----------------------------------------------------------------------------------------

    def _status_line(self) -> str:
        counts: dict[str, int] = {}
        for ctx in self.contexts.values():
            counts[ctx.health.health.value] = counts.get(ctx.health.health.value, 0) + 1
        summary = ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "no plugins"
        return f"{self.state}: plugins {summary}"

    def status(self) -> dict[str, Any]:
        plugins = []
        details: dict[str, str] = {}
        for name in self.order:
            ctx, info = self.contexts[name], self.host.plugins[name]
            plugins.append({"name": name, "health": ctx.health.health.value, "message": ctx.health.message,
                            "since": ctx.health.since, "version": info.version, "source": info.source})
            if self.state == "running" and ctx.health.health is not Health.STOPPED:
                try:
                    extra = self.host.call("pylium_status_details", name, ctx=ctx)
                except Exception as e:
                    extra = {name: f"status unavailable: {type(e).__name__}: {e}"}
                details.update(extra or {})
        return {
            "version": __version__, "node": self.options.node_name, "cluster": self.config.cluster.name,
            "state": self.state, "uptime_seconds": round(time.time() - self.started_at, 3),
            "started_at": self.started_at, "failure": self.failure, "plugins": plugins, "details": details,
            "kvstore": dataclasses.asdict(self.store.status()) if self.store is not None else None,
        }

    def plugin_list(self) -> list[dict[str, Any]]:
        out = []
        for position, name in enumerate(self.order):
            info = self.host.plugins[name]
            out.append({"name": name, "source": info.source, "dist": info.dist, "version": info.version,
                        "entry_point": info.entry_point, "start_order": position + 1,
                        "start_after": info.start_after, "hooks": self.host.hooks_of(name)})
        return out


def _lifespan(result: Any) -> Any:
    """What pylium_lifespan returned, as an async context manager: an async generator (the
    hook written as `async def ...: ... yield ...`) is wrapped; None means nothing to run."""
    if inspect.isasyncgen(result):
        generator = result
        return contextlib.asynccontextmanager(lambda: generator)()
    if result is not None and not (hasattr(result, "__aenter__") and hasattr(result, "__aexit__")):
        raise TypeError(f"pylium_lifespan must return an async context manager or be an async generator, "
                        f"not {type(result).__name__}")
    return result


class _EndpointHooks:
    """The plugins as the endpoint manager needs them: ordered, with the fields each owns."""

    def __init__(self, call: Callable[..., Any], contexts: dict[str, PluginContext], order: list[str],
                 owned_fields: dict[str, list[str]]):
        self._host_call, self._contexts = call, contexts
        self.order, self.owned_fields = order, owned_fields

    async def call(self, hook: str, plugin: str, endpoint: Endpoint, **extra: Any) -> Any:
        result = self._host_call(hook, plugin, ctx=self._contexts[plugin], endpoint=endpoint, **extra)
        if inspect.isawaitable(result):
            result = await result
        return result


def _disabled_names(data: dict[str, Any]) -> list[str]:
    plugins = data.get("plugins")
    disabled = plugins.get("disabled") if isinstance(plugins, dict) else None
    if isinstance(disabled, list):
        return [d for d in disabled if isinstance(d, str)]
    return []  # a wrong type is reported by validation

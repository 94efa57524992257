"""What a plugin receives from the core: declarations, its runtime context, health, API types."""

from __future__ import annotations

import enum
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Callable

if TYPE_CHECKING:
    import structlog
    from prometheus_client import CollectorRegistry

    from pylium.core.bus.client import BusClient
    from pylium.core.bus.events import EventType
    from pylium.core.config import CoreConfig, Section
    from pylium.core.datapath.consts import Slot
    from pylium.core.datapath.datapath import Stage
    from pylium.core.datapath.ipcache import PluginIpcache, Source
    from pylium.core.datapath.maps import MapSpec, PinnedMap
    from pylium.core.datapath.views import PluginDatapath
    from pylium.core.nodes.registry import PluginNode
    from pylium.core.state.manifests import PluginManifests
    from pylium.core.state.store import ClusterStore


class Health(str, enum.Enum):
    """A plugin's health, as shown by `pylium status` (Cilium's module health words)."""

    STARTING = "STARTING"  # lifespan entered, start-up not finished
    OK = "OK"
    DEGRADED = "DEGRADED"  # running, but something is wrong; the message says what
    STOPPED = "STOPPED"  # not running (not started yet, failed, or stopped)


class ApiError(Exception):
    """Raised by an API handler: answered as ``{"error": message}`` with this HTTP status."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class EndpointError(Exception):
    """An endpoint cannot be created or changed; `code` is machine-readable (the CNI plugin
    maps it to a CNI error code), `message` names what was wrong."""

    def __init__(self, code: str, message: str, status: int = 400):
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


@dataclass(frozen=True)
class ApiRequest:
    """A control-API request as a plugin handler sees it."""

    method: str
    path: str
    path_params: dict[str, str]
    query: dict[str, str]
    body: Any  # decoded JSON, or None
    #: True once the client has gone away: long-running (streaming) handlers check it.
    disconnected: Callable[[], bool] = lambda: False


#: A handler returns JSON-able data, or an async iterator to stream: each item is sent as it
#: comes, bytes as they are, anything else as one JSON line (NDJSON, chunked).
ApiHandler = Callable[[ApiRequest], Awaitable[Any]]


@dataclass(frozen=True)
class ApiRoute:
    method: str
    path: str
    handler: ApiHandler
    plugin: str


class Declarations:
    """Passed to `pylium_declare`: what one plugin asks of the core. Records only, no I/O."""

    def __init__(self, plugin: str, config: CoreConfig, settings: Section | None = None,
                 package_dir: Path | None = None):
        self.plugin = plugin
        #: The core's configuration (cluster, ipv4/ipv6, bpf monitor settings, ...).
        self.config = config
        #: This plugin's own configuration (its `pylium_config_model`), or None.
        self.settings = settings
        #: The directory of the plugin's package: relative BPF sources are found there.
        self.package_dir = package_dir or Path.cwd()
        self.start_after: list[str] = []
        self.routes: list[ApiRoute] = []
        self.event_types: list[EventType] = []
        self.maps: list[MapSpec] = []
        self.stages: list[Stage] = []
        self.defines: dict[str, str] = {}
        self.owned_fields: list[str] = []
        self.ipcache_owners: list[tuple[str, Source, bool]] = []

    def after(self, *names: str) -> None:
        """Start this plugin after the named plugins, when those are loaded."""
        self.start_after.extend(names)

    def api_route(self, method: str, path: str, handler: ApiHandler) -> None:
        """Serve `handler` at `method path` on the control API (path params as `{name}`)."""
        method = method.upper()
        if method not in ("GET", "POST", "PUT", "PATCH", "DELETE"):
            raise ValueError(f"api_route: unsupported method {method!r}")
        if not path.startswith("/v1/"):
            raise ValueError(f"api_route: path {path!r} must start with /v1/")
        self.routes.append(ApiRoute(method, path, handler, self.plugin))

    def api_routes(self, *routes: tuple[str, str, ApiHandler]) -> None:
        """Several routes at once: `declare.api_routes(("GET", "/v1/x", self.get_x), ...)`."""
        for method, path, handler in routes:
            self.api_route(method, path, handler)

    def bpf_maps(self, *specs: MapSpec) -> None:
        """BPF maps this plugin owns (pylium.core.datapath.maps.MapSpec): created or checked at
        start, pinned under <bpf-root>/<node>/<plugin>/, open in ctx.bpf_maps[name]."""
        self.maps.extend(specs)

    def bpf_defines(self, **defines: Any) -> None:
        """C macros for every program of this plugin (its stages and compile_programs), e.g.
        map sizes from its configuration: `declare.bpf_defines(LB_MAP_MAX=65536)`."""
        self.defines.update({k: str(v) for k, v in defines.items()})

    def bpf_stage(self, slot: Slot | str, *args: Any, fast_path: bool = False) -> None:
        """Put a program in a slot of an attach point, tail-called by the core's dispatcher:
        `bpf_stage(Slot.FROM_POLICY, "bpf/policy.c", "policy_egress")`, or for a free slot
        `bpf_stage("from-container", 6, "bpf/count.c", "count_from")`. The source is relative
        to the plugin's package (or absolute). `fast_path=True` declares that the program keeps
        the fast path's contract (docs/datapath.md): its decisions depend only on the packet's
        connection and on maps the agent writes, and it calls fast_forbid() for a packet it
        changes or must see again; while a stage without it is installed, every packet runs
        through all stages."""
        from pylium.core.datapath.consts import Slot
        from pylium.core.datapath.datapath import Stage
        from pylium.core.datapath.structs import ATTACH_POINTS, SLOTS

        if isinstance(slot, Slot):
            attach, index = slot.value
        else:
            attach, index, *args = (slot, *args)
        if len(args) != 2:
            raise TypeError("bpf_stage(slot, source, function) or bpf_stage(attach, index, source, function)")
        source, function = args
        if attach not in ATTACH_POINTS:
            raise ValueError(f"bpf_stage: unknown attach point {attach!r} (known: {', '.join(ATTACH_POINTS)})")
        if not isinstance(index, int) or not 0 <= index < SLOTS:
            raise ValueError(f"bpf_stage: slot {index!r} is not in 0..{SLOTS - 1}")
        path = self.package_dir / source
        if not path.is_file():
            raise ValueError(f"bpf_stage: source {source!r} not found (looked for {path})")
        self.stages.append(Stage(self.plugin, attach, index, str(path), function, fast_path))

    def endpoint_fields(self, *names: str) -> None:
        """Endpoint fields this plugin sets, by returning an EndpointContribution from its
        endpoint hooks; each field has one owner (checked at load)."""
        from pylium.core.endpoints.model import CONTRIBUTED_FIELDS

        for name in names:
            if name not in CONTRIBUTED_FIELDS:
                raise ValueError(f"endpoint_fields: {name!r} is not a field plugins set "
                                 f"(they are: {', '.join(CONTRIBUTED_FIELDS)})")
        self.owned_fields.extend(names)

    def ipcache_owner(self, name: str, source: Source, *, waits_for_sync: bool = False) -> None:
        """Write ipcache records as `<plugin>/<name>` with the precedence of `source`
        (pylium.core.datapath.ipcache.Source). After a restart, the entries the pinned map
        kept stay until the agent has started, or, with waits_for_sync, until the plugin calls
        `ctx.ipcache.synced(name)` (for owners that learn their entries later, from a store)."""
        self.ipcache_owners.append((name, source, waits_for_sync))

    def event_type(self, topic: str, model: type, *, state_family: str | None = None, key: str | None = None,
                   deletes: bool = False) -> None:
        """Add an event type to the bus vocabulary (third-party events; built-in ones live in
        pylium.core.bus.events). `model` is a frozen `pylium.core.bus.events.Event` subclass."""
        from pylium.core.bus import events

        model.topic = topic
        kind = "state" if state_family else "stream"
        self.event_types.append(events.EventType(topic, model, kind, family=state_family, key=key,
                                                 deletes=deletes, owner=self.plugin))


class PluginRegistry:
    """The agent's metrics registry as one plugin uses it (`ctx.metrics`, also as `registry=`
    of prometheus_client's metrics): what the plugin registers goes when it stops."""

    def __init__(self, registry: CollectorRegistry):
        self.registry = registry
        self._mine: list[Any] = []

    def register(self, collector: Any) -> None:
        self.registry.register(collector)
        self._mine.append(collector)

    def unregister(self, collector: Any) -> None:
        self.registry.unregister(collector)
        self._mine.remove(collector)

    def close(self) -> None:
        while self._mine:
            self.registry.unregister(self._mine.pop())


@dataclass
class HealthState:
    health: Health = Health.STOPPED
    message: str = "not started"
    since: float = field(default_factory=time.time)


class PluginContext:
    """Passed to runtime hooks: one plugin's view of its agent."""

    def __init__(
        self,
        *,
        name: str,
        config: CoreConfig,
        node_name: str,
        state_dir: Path,
        run_dir: Path,
        bpf_root: Path,
        log: structlog.typing.FilteringBoundLogger,
        metrics: CollectorRegistry,
        start_task: Callable[..., None],
        on_health: Callable[[str, HealthState], None],
        settings: Section | None = None,
    ):
        self.name = name
        #: The core's configuration (cluster, ipv4/ipv6, bpf monitor settings, ...). Other
        #: plugins' keys are not here: their facts come over the bus.
        self.config = config
        #: This plugin's own configuration, the validated `pylium_config_model` (or None).
        self.settings = settings
        self.node_name = node_name
        self.run_dir = run_dir
        #: The agent's state directory; the plugin's own durable files go in `plugin_state_dir`.
        self.state_dir = state_dir
        #: Where this plugin pins its BPF objects: <bpf-root>/<node>/<plugin>.
        self.bpf_dir = bpf_root / node_name / name
        self.log = log
        #: The agent's Prometheus registry: what the plugin registers is unregistered when it stops.
        self.metrics = PluginRegistry(metrics)
        #: This plugin's bus connection: publish, subscribe, serve, request (docs/events.md).
        self.bus: BusClient = None  # type: ignore[assignment]  (set before the lifespan starts)
        #: The cluster store: what nodes share (core/state/store.py: get, put(lease=), create,
        #: create_all, delete, list, snapshot, watch; `Mirror` follows a prefix).
        self.store: ClusterStore = None  # type: ignore[assignment]
        #: This node as peers see it: `update(pod_cidrs=...)`, `annotate(key, value)`, `local`.
        self.node: PluginNode = None  # type: ignore[assignment]
        #: The agent's one reader of the manifests directory, already scanned when lifespans
        #: start: `entries(kind)` / `objects(kind)`, and `on_change(callback)` to hear of
        #: changes until the plugin stops.
        self.manifests: PluginManifests = None  # type: ignore[assignment]
        #: The core's datapath as this plugin sees it (None when no plugin declared a BPF
        #: stage): core maps read-only, attach, bypass, compile_programs, pressure.
        self.datapath: PluginDatapath | None = None
        #: This plugin's pinned maps, by name.
        self.bpf_maps: dict[str, PinnedMap] = {}
        #: Writes to the shared ipcache as the owners this plugin declared (None without a datapath).
        self.ipcache: PluginIpcache | None = None
        self._start_task = start_task
        self._on_health = on_health
        self.health = HealthState()

    @property
    def plugin_state_dir(self) -> Path:
        """<state-dir>/plugins/<name>, created (mode 0700) on first use."""
        path = self.state_dir / "plugins" / self.name
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(path, 0o700)
        return path

    def set_health(self, health: Health, message: str = "") -> None:
        if (health, message) != (self.health.health, self.health.message):
            self.health = HealthState(health, message)
            self._on_health(self.name, self.health)

    def start_task(self, name: str, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run `fn(*args)` as a named task, cancelled before this plugin's lifespan exits."""
        self._start_task(self.name, name, fn, *args)

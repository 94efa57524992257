"""The pylium plugin contract: every hook the core calls, written as the reference manual.

A plugin is a module, or a class the core instantiates once per agent, that carries
functions marked with :data:`hookimpl` whose names match the specifications below. It is
found through the ``pylium.plugins`` entry-point group (built-in plugins use the same group)
and named after its entry point::

    [project.entry-points."pylium.plugins"]
    hello = "hello_pylium:HelloPlugin"

An implementation may accept any subset of a hook's arguments. A function named
``pylium_*`` that matches no specification is an error when the plugin loads, so a typo never
goes silently unused. Plugins never import each other; they talk over the event bus.

Order of calls for one agent::

    pylium_config_model    all discovered plugins (even disabled ones: their keys stay valid)
    pylium_declare         enabled plugins, synchronous, no I/O
    pylium_lifespan        enabled plugins in start order; exited in reverse order on stop
    pylium_status_details  whenever someone asks for the agent's status
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, AsyncContextManager

import pluggy

if TYPE_CHECKING:
    from pydantic import BaseModel

    from pylium.core.endpoints.manager import Endpoint
    from pylium.core.plugin_api import Declarations, PluginContext

PROJECT = "pylium"

#: Marks a hook specification (used only in this module).
hookspec = pluggy.HookspecMarker(PROJECT)

#: Marks a plugin's hook implementation: ``@hookimpl def pylium_declare(declare): ...``
hookimpl = pluggy.HookimplMarker(PROJECT)


# ============================================================================================
# Declaration: synchronous, no I/O
# ============================================================================================


@hookspec
def pylium_config_model() -> type[BaseModel] | None:
    """Return a pydantic model whose fields are the top-level config keys this plugin owns.

    Called for every discovered plugin, including disabled ones, before the configuration is
    validated, so that a key of a disabled plugin is still accepted. Field names are the YAML
    keys (Helm-values style, camelCase), field descriptions become the configuration reference,
    and nested sections should derive from :class:`pylium.core.config.Section` so that unknown
    keys are rejected. Two plugins claiming the same key is a load error.

    Example::

        class HelloConfig(Section):
            hello: HelloSettings = Field(default_factory=HelloSettings)

        @hookimpl
        def pylium_config_model():
            return HelloConfig

    The validated values are read later as ``ctx.config.hello``.
    """


@hookspec
def pylium_declare(declare: Declarations) -> None:
    """Declare what the plugin needs from the core, before anything starts.

    Synchronous and free of I/O: do not open files, sockets or BPF objects here. The
    :class:`~pylium.core.plugin_api.Declarations` object offers:

    - ``declare.config``: the validated configuration (read-only);
    - ``declare.after(*names)``: start after these plugins (when they are loaded);
    - ``declare.api_route(method, path, handler)``: serve ``handler(request)`` on the agent's
      control API at ``path`` (which must start with ``/v1/``); the handler returns a JSON-able
      value or raises :class:`~pylium.core.plugin_api.ApiError`;
    - ``declare.event_type(topic, model, state_family=None, key=None)``: add a third-party
      event type to the bus vocabulary (built-in types live in ``pylium.core.bus.events``);
    - ``declare.bpf_maps(*specs)``: BPF maps this plugin owns (:class:`pylium.core.datapath.maps.MapSpec`),
      created or checked at start and pinned under ``<bpf-root>/<node>/<plugin>/``;
    - ``declare.bpf_stage(attach, slot, source, function)``: a program (C under ``bpf/``)
      for a slot of an attach point (``from-container``, ``to-container``; slots in
      ``bpf/include/pylium_consts.h``), compiled once per agent start and tail-called by the
      core's dispatcher.

    Raising here stops the agent from starting with exit code 1 and the plugin's name.
    """


# ============================================================================================
# Lifecycle
# ============================================================================================


@hookspec
def pylium_lifespan(ctx: PluginContext) -> AsyncContextManager[Any] | None:
    """Return an async context manager that runs the plugin; or None if it has nothing to run.

    The core enters each plugin's lifespan in start order, one at a time: code before the
    ``yield`` is start-up (open maps, attach programs, subscribe), code after it is shutdown,
    run in reverse order on SIGTERM. If start-up raises, the plugins already started are
    stopped in reverse and the agent exits 1 naming the plugin and the reason. Shutdown of
    the whole agent is bounded (10 s by default); past it, shutdown code is cancelled.

    ``ctx.bus`` is the plugin's connection to the event bus: ``publish(event)``,
    ``subscribe(*prefixes)``, ``await serve(method, handler)``, ``await request(method, payload)``
    (see docs/events.md). Long-running work goes in named tasks: ``ctx.start_task("sync", fn, *args)``. Tasks are
    cancelled before the lifespan exits. A task that raises marks the plugin DEGRADED and
    stops the agent (exit 1), so a broken loop is never silently dead.

    Health starts as STARTING, becomes OK when the ``yield`` is reached, and can be changed
    any time with ``ctx.set_health(Health.DEGRADED, "why")``.

    Example::

        @hookimpl
        def pylium_lifespan(ctx):
            return self._run(ctx)       # an @asynccontextmanager method
    """


# ============================================================================================
# Endpoints: called in start order (unplug: reverse order), awaited one after the other
# ============================================================================================


@hookspec
async def pylium_endpoint_plug(ctx: PluginContext, endpoint: Endpoint) -> None:
    """Set up this plugin's part of a new endpoint (a CNI ADD), after IPAM gave its addresses.

    ``endpoint`` (:class:`pylium.core.endpoints.manager.Endpoint`) carries the id, container id,
    interface name, network namespace path, labels and ``addresses``; a plugin that wires the
    endpoint (connectivity) fills in ``host_ifname``, ``host_ifindex``, ``mac``, ``host_mac``
    and ``mtu``. The endpoint becomes reachable only after every plugin returned, so no packet
    passes before, say, its policy exists. Raise :class:`~pylium.core.plugin_api.EndpointError`
    (code, message) to refuse: the core then calls ``pylium_endpoint_unplug`` on the plugins
    that already plugged it, frees its addresses, and answers the error (a CNI error).
    """


@hookspec
async def pylium_endpoint_unplug(ctx: PluginContext, endpoint: Endpoint) -> None:
    """Remove this plugin's part of an endpoint (CNI DEL, garbage collection, a failed ADD,
    or a namespace that vanished while the agent was down). Must be idempotent and must cope
    with a half-built endpoint or one whose devices are already gone. Exceptions are logged;
    the other plugins still clean up."""


@hookspec
async def pylium_endpoint_restore(ctx: PluginContext, endpoint: Endpoint) -> bool | None:
    """At agent start, take back an endpoint of the previous run: re-sync this plugin's state
    with what survived (programs stay attached and maps pinned across restarts). Return False
    if the endpoint cannot live on (its devices are gone): the core then removes it. Called
    only for endpoints whose network namespace still exists."""


@hookspec
async def pylium_endpoint_update(ctx: PluginContext, endpoint: Endpoint, changed: list[str]) -> None:
    """An endpoint changed (``changed`` names the fields, e.g. ``["labels"]``): recompute what
    depends on them (identity, policy)."""


@hookspec
async def pylium_endpoint_check(ctx: PluginContext, endpoint: Endpoint) -> str | None:
    """CNI CHECK: return a sentence describing what is wrong with this plugin's part of the
    endpoint (e.g. "eth0 has no address 10.0.0.5"), or None when it is as it should be."""


# ============================================================================================
# Introspection
# ============================================================================================


@hookspec
def pylium_status_details(ctx: PluginContext) -> dict[str, str] | None:
    """Return extra lines for ``pylium status``, as ``{"Label": "text"}``; or None.

    Called on every status request, on the event loop: answer from memory, quickly, without
    I/O. Example: ``{"IPAM": "IPv4: 3/254 allocated from 10.0.0.0/24"}``.
    """

"""The pylium plugin contract: every hook the core calls, written as the reference manual.

A plugin is a module, or a class the core instantiates once per agent, that carries
functions marked with :data:`hookimpl` whose names match the specifications below. It is
found through the ``pylium.plugins`` entry-point group (built-in plugins use the same group)
and named after its entry point::

    [project.entry-points."pylium.plugins"]
    hello = "hello_pylium:HelloPlugin"

An implementation may accept any subset of a hook's arguments. A function named
``pylium_*`` that matches no specification is an error when the plugin loads, so a typo never
goes silently unused. Plugins import only :mod:`pylium.core.api_for_plugins` of the core and
never each other; they talk over the event bus.

Order of calls for one agent::

    pylium_config_model    all discovered plugins (even disabled ones: their keys stay valid)
    pylium_declare         enabled plugins, synchronous, no I/O
    pylium_lifespan        enabled plugins in start order; exited in reverse order on stop
    pylium_endpoint_*      as endpoints come, change, are checked and go (after all started)
    pylium_status_details  whenever someone asks for the agent's status
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, AsyncContextManager, AsyncIterator

import pluggy

if TYPE_CHECKING:
    from pydantic import BaseModel

    from pylium.core.endpoints.model import Endpoint, EndpointContribution
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
    and every section derives from :class:`pylium.core.config.Section` (unknown keys are
    errors). The model's validators apply. A key another owner also declares must be a section
    in both (like ``bpf``): the sections are combined and each leaf key keeps one owner;
    claiming the same leaf, or a key that is a value elsewhere, is a load error (exit 78).

    Older spellings of the plugin's keys go in the model's ``aliases`` class attribute:
    ``{"old.path": "new.path"}`` or ``{"old.path": translate}`` with
    ``translate(value, old, warn) -> {"new.path": value}``.

    The plugin reads its validated part as ``declare.settings`` and ``ctx.settings`` (an
    instance of this model, holding only its own keys); ``declare.config`` and ``ctx.config``
    are the core's. Example::

        class HelloConfig(Section):
            hello: HelloSettings = Field(default_factory=HelloSettings)

        @hookimpl
        def pylium_config_model():
            return HelloConfig          # then: ctx.settings.hello.greeting
    """


@hookspec
def pylium_declare(declare: Declarations) -> None:
    """Declare what the plugin needs from the core, before anything starts.

    Synchronous and free of I/O: do not open files, sockets or BPF objects here. The
    :class:`~pylium.core.plugin_api.Declarations` object offers:

    - ``declare.settings`` (this plugin's configuration), ``declare.config`` (the core's);
    - ``declare.after(*names)``: start after these plugins (when they are loaded);
    - ``declare.api_route(method, path, handler)`` / ``declare.api_routes(*(method, path,
      handler))``: serve ``handler(request)`` on the control API at ``path`` (``/v1/...``);
      the handler returns a JSON-able value (or an async iterator to stream) or raises
      :class:`~pylium.core.plugin_api.ApiError`; while the plugin is starting or stopped,
      the core answers 503 instead of calling it;
    - ``declare.event_type(topic, model, state_family=None, key=None)``: a third-party event
      type for the bus (built-in types live in ``pylium.core.bus.events``);
    - ``declare.bpf_maps(*specs)``: maps this plugin owns (``MapSpec``), created or checked at
      start, pinned under ``<bpf-root>/<node>/<plugin>/``, open in ``ctx.bpf_maps``;
    - ``declare.bpf_defines(**macros)``: C macros for this plugin's programs;
    - ``declare.bpf_stage(Slot.FROM_POLICY, "bpf/policy.c", "policy_egress")`` or
      ``declare.bpf_stage("from-container", 6, source, function)`` for a free slot: a program
      tail-called by the core's dispatcher, its source relative to the plugin's package;
      two plugins in one slot is a load error; ``fast_path=True`` when the program keeps the
      fast path's contract (docs/datapath.md), else the fast path is off while it runs;
    - ``declare.endpoint_fields(*names)``: the endpoint fields this plugin sets (by returning
      an ``EndpointContribution`` from its endpoint hooks); one owner per field;
    - ``declare.ipcache_owner(name, source, waits_for_sync=False)``: write ipcache records as
      ``<plugin>/<name>`` (``ctx.ipcache``) with the precedence of ``source``.

    Raising here stops the agent before it starts, with exit code 78 (like a configuration
    error: a restart would fail the same way) and a message naming the plugin.
    """


# ============================================================================================
# Lifecycle
# ============================================================================================


@hookspec
def pylium_lifespan(ctx: PluginContext) -> AsyncIterator[None] | AsyncContextManager[Any] | None:
    """Run the plugin: write it as an async generator (start-up, ``yield``, shutdown), or
    return an async context manager; None if there is nothing to run.

    The core enters each plugin's lifespan in start order, one at a time: code before the
    ``yield`` is start-up (open maps, attach programs, subscribe), code after it is shutdown,
    run in reverse order on SIGTERM. If start-up raises, the plugins already started are
    stopped in reverse and the agent exits 1 naming the plugin and the reason. Shutdown of
    the whole agent is bounded (10 s by default); past it, shutdown code is cancelled.

    ``ctx.bus`` is the plugin's connection to the event bus: ``publish(event)``,
    ``subscribe(*prefixes)``, ``await serve(method, handler)``, ``await request(method, payload)``,
    ``owns(family, snapshot=None)`` (replay a state family; see docs/events.md, docs/plugins.md
    §9). Long-running work goes in named tasks: ``ctx.start_task("sync", fn, *args)``. Tasks
    are cancelled before the lifespan exits. A task that raises marks the plugin DEGRADED and
    stops the agent (exit 1), so a broken loop is never silently dead.
    ``ctx.datapath`` (the core's maps read-only, attach, bypass, pressure), ``ctx.bpf_maps``
    and ``ctx.ipcache`` are set when the node has a datapath.

    Health starts as STARTING, becomes OK when the ``yield`` is reached, and can be changed
    any time with ``ctx.set_health(Health.DEGRADED, "why")``.

    Example::

        @hookimpl
        async def pylium_lifespan(self, ctx):
            ctx.start_task("heartbeat", self._beat)
            yield
            ctx.log.info("stopped")
    """


@hookspec
def pylium_cleanup(ctx: PluginContext) -> list[str] | None:
    """``pylium-agent --cleanup``: the node leaves pylium for good; remove what this plugin put
    in the kernel or started outside the BPF directory (iptables chains, devices, routes, ip
    rules, helper processes), for this node only (another node's agent may share the kernel).
    Return what was removed, a line each (``["iptables chain PYLIUM-MASQ-1a2b3c4d"]``).

    Called with no agent running (the directories are locked), in reverse start order, without
    a bus or datapath: ``ctx`` has the settings, node name and directories. Must be idempotent
    (a second run finds nothing) and tolerate a half-started node. The core then detaches the
    node's programs from every device and removes its BPF directory; the state directory stays.
    """


# ============================================================================================
# Endpoints: called in start order (unplug: reverse order), awaited one after the other
# ============================================================================================
#
# The endpoint a hook receives (:class:`pylium.core.endpoints.model.Endpoint`) is immutable:
# id, container id, interface name, network namespace, labels, addresses, and what the plugins
# before this one contributed; its labels and addresses are the hook's own copies. A plugin
# changes it only by returning an
# :class:`~pylium.core.endpoints.model.EndpointContribution` that sets fields it declared with
# ``declare.endpoint_fields``; the core applies it before the next plugin's hook. A result that
# is not a contribution (or None, or False from restore), or one that sets a field the plugin
# did not declare, counts as the hook failing with error code "internal".


@hookspec
async def pylium_endpoint_plug(ctx: PluginContext, endpoint: Endpoint) -> EndpointContribution | None:
    """Set up this plugin's part of a new endpoint (a CNI ADD), after IPAM gave its addresses.

    Return what the plugin contributes (connectivity: ``host_ifname``, ``host_ifindex``,
    ``mac``, ``host_mac``, ``mtu``; policy: ``identity``), or None. The endpoint becomes
    reachable (core maps, ipcache) only after every plugin returned, so no packet passes
    before, say, its policy exists. Raise :class:`~pylium.core.plugin_api.EndpointError`
    (code, message) to refuse: the core then calls ``pylium_endpoint_unplug`` on every plugin
    (each must cope with an endpoint it never saw), frees its addresses, and answers the
    error (a CNI error).
    """


@hookspec
async def pylium_endpoint_unplug(ctx: PluginContext, endpoint: Endpoint) -> None:
    """Remove this plugin's part of an endpoint (CNI DEL, garbage collection, a failed ADD,
    or a namespace that vanished while the agent was down). Must be idempotent and must cope
    with a half-built endpoint or one whose devices are already gone. The return value is
    ignored; exceptions are logged and the other plugins still clean up."""


@hookspec
async def pylium_endpoint_restore(ctx: PluginContext, endpoint: Endpoint) -> EndpointContribution | bool | None:
    """At agent start, take back an endpoint of the previous run: re-sync this plugin's state
    with what survived (programs stay attached and maps pinned across restarts). Return a
    contribution (as from plug: the fields may have new values) or None to keep it; return
    False if the endpoint cannot live on (its devices are gone). Called only for endpoints
    that were ready and whose network namespace still exists, in start order. On False, or
    when the hook fails, the later plugins' restore hooks are skipped and the endpoint is
    removed: every plugin's ``pylium_endpoint_unplug`` runs (reverse order), its addresses are
    freed, and the agent starts without it."""


@hookspec
async def pylium_endpoint_update(ctx: PluginContext, endpoint: Endpoint,
                                 changed: list[str]) -> EndpointContribution | None:
    """An endpoint changed (``changed`` names the fields, e.g. ``["labels"]``): recompute what
    depends on them and return a contribution (policy: the new identity) or None. Once every
    plugin has answered, the core reprograms its maps, saves the endpoint and publishes
    ``endpoint.updated``. If a hook fails, the change is refused (an API error for the caller,
    a log line for a Pod's labels in the manifests): the plugins that already took it are
    called again with the unchanged endpoint, and the endpoint keeps its labels."""


@hookspec
async def pylium_endpoint_check(ctx: PluginContext, endpoint: Endpoint) -> str | None:
    """CNI CHECK: return a sentence describing what is wrong with this plugin's part of the
    endpoint (e.g. "eth0 has no address 10.0.0.5"), or None when it is as it should be. The
    first sentence fails the check (error code "check_failed")."""


# ============================================================================================
# Introspection
# ============================================================================================


@hookspec
def pylium_status_details(ctx: PluginContext) -> dict[str, str] | None:
    """Return extra lines for ``pylium status``, as ``{"Label": "text"}``; or None.

    Called on every status request while the agent runs and the plugin is not stopped, on the
    event loop: answer from memory, quickly, without I/O. Example:
    ``{"IPAM": "IPv4: 3/254 allocated from 10.0.0.0/24"}``.
    """

"""Everything a plugin uses from the core, in one place: plugins (built-in and third-party)
import from here and from nothing else of `pylium.core` (a test checks the built-ins).

    from pylium.core.api_for_plugins import hookimpl, Section, Slot, MapSpec, Health

Names load on first use (PEP 562), so a plugin's CLI module that needs `print_table` does not
pull the agent's libraries into every `pylium` command.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# name -> module that defines it ("" after the colon: the module itself)
_EXPORTS = {
    # the contract
    "hookimpl": "pylium.core.hookspecs",
    "Declarations": "pylium.core.plugin_api",
    "PluginContext": "pylium.core.plugin_api",
    "PluginDatapath": "pylium.core.datapath.views",
    "PluginIpcache": "pylium.core.datapath.ipcache",
    "PluginRegistry": "pylium.core.plugin_api",
    "CoreConfig": "pylium.core.config",
    "Health": "pylium.core.plugin_api",
    "ApiError": "pylium.core.plugin_api",
    "ApiRequest": "pylium.core.plugin_api",
    "EndpointError": "pylium.core.plugin_api",
    "crash_point": "pylium.core.faults",
    # HTTP on a plugin's own port (Router, Server, Response, get_status); control-API routes
    # are declared instead
    "http_server": "pylium.core.api:http",
    # configuration
    "Section": "pylium.core.config",
    "ConfigError": "pylium.core.config",
    "Duration": "pylium.core.config",
    "parse_duration": "pylium.core.config",
    # endpoints
    "Endpoint": "pylium.core.endpoints.model",
    "EndpointContribution": "pylium.core.endpoints.model",
    # the bus
    "events": "pylium.core.bus:events",
    "Event": "pylium.core.bus.events",
    "RpcError": "pylium.core.bus.client",
    "NoService": "pylium.core.bus.client",
    "RpcTimeout": "pylium.core.bus.client",
    "BusPaths": "pylium.core.bus.proxy",
    # state
    "Manifests": "pylium.core.state.manifests",
    "ClusterStore": "pylium.core.state.store",
    "Mirror": "pylium.core.state.store",
    "StoreUnavailable": "pylium.core.state.store",
    "store_keys": "pylium.core.state:keys",
    "PluginManifests": "pylium.core.state.manifests",
    "ManifestEntry": "pylium.core.state.manifests",
    "gc_paused": "pylium.core.state.manifests",
    "release_freed_memory": "pylium.core.agent.memory",
    "Compressor": "pylium.core.compress",  # small similar byte strings kept compressed
    # the datapath
    "consts": "pylium.core.datapath:consts",
    "libbpf": "pylium.core.datapath:libbpf",
    "monitor": "pylium.core.datapath:monitor",
    "netns": "pylium.core.datapath:netns",
    "Slot": "pylium.core.datapath.consts",
    "free_slots": "pylium.core.datapath.structs",
    "DROP_REASONS": "pylium.core.datapath.consts",
    "MESSAGE_TYPES": "pylium.core.datapath.consts",
    "METRIC_DIRECTIONS": "pylium.core.datapath.consts",
    "OBSERVATION_POINTS": "pylium.core.datapath.consts",
    "POLICY_MATCH_TYPES": "pylium.core.datapath.consts",
    "TRACE_REASONS": "pylium.core.datapath.consts",
    "drop_reason": "pylium.core.datapath.monitor",
    "read_bpf_metrics": "pylium.core.agent.metrics",
    "ReservedIdentity": "pylium.core.datapath.consts",
    "DropReason": "pylium.core.datapath.consts",
    "MessageType": "pylium.core.datapath.consts",
    "MapSpec": "pylium.core.datapath.maps",
    "PinnedMap": "pylium.core.datapath.maps",
    "Source": "pylium.core.datapath.ipcache",
    "IpcacheKey": "pylium.core.datapath.structs",
    "EndpointKey": "pylium.core.datapath.structs",
    "CORE_MAPS": "pylium.core.datapath.structs",
    "FlowKey": "pylium.core.datapath.structs",
    "EVENT_HEADER": "pylium.core.datapath.structs",
    "RingReader": "pylium.core.datapath.ringbuf",
    # command-line commands (the `pylium.cli` entry points)
    "Client": "pylium.core.cli.client",
    "AgentUnreachable": "pylium.core.cli.client",
    "ApiFailure": "pylium.core.cli.client",
    "emit": "pylium.core.cli.output",
    "fail": "pylium.core.cli.output",
    "output_option": "pylium.core.cli.output",
    "print_table": "pylium.core.cli.output",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    where = _EXPORTS.get(name)
    if where is None:
        raise AttributeError(f"pylium.core.api_for_plugins has no {name!r} (it offers: {', '.join(__all__)})")
    module, _, attribute = where.partition(":")
    value = importlib.import_module(f"{module}.{attribute}") if attribute else getattr(
        importlib.import_module(module), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # what type checkers and editors see
    from pylium.core.bus import events  # noqa: F401
    from pylium.core.bus.client import NoService, RpcError, RpcTimeout  # noqa: F401
    from pylium.core.bus.events import Event  # noqa: F401
    from pylium.core.cli.client import AgentUnreachable, ApiFailure, Client  # noqa: F401
    from pylium.core.cli.output import emit, fail, output_option, print_table  # noqa: F401
    from pylium.core.config import ConfigError, CoreConfig, Duration, Section, parse_duration  # noqa: F401
    from pylium.core.datapath import consts, libbpf, monitor, netns  # noqa: F401
    from pylium.core.agent.metrics import read_bpf_metrics  # noqa: F401
    from pylium.core.api import http as http_server  # noqa: F401
    from pylium.core.datapath.consts import (DROP_REASONS, MESSAGE_TYPES, METRIC_DIRECTIONS,  # noqa: F401
                                             OBSERVATION_POINTS, POLICY_MATCH_TYPES, TRACE_REASONS, DropReason,
                                             MessageType, ReservedIdentity, Slot)
    from pylium.core.datapath.monitor import drop_reason  # noqa: F401
    from pylium.core.datapath.ipcache import PluginIpcache, Source  # noqa: F401
    from pylium.core.datapath.views import PluginDatapath  # noqa: F401
    from pylium.core.datapath.maps import MapSpec, PinnedMap  # noqa: F401
    from pylium.core.datapath.ringbuf import RingReader  # noqa: F401
    from pylium.core.datapath.structs import EVENT_HEADER, FlowKey, IpcacheKey, free_slots  # noqa: F401
    from pylium.core.endpoints.model import Endpoint, EndpointContribution  # noqa: F401
    from pylium.core.hookspecs import hookimpl  # noqa: F401
    from pylium.core.plugin_api import (ApiError, ApiRequest, Declarations, EndpointError, Health,  # noqa: F401
                                        PluginContext, PluginRegistry)
    from pylium.core.agent.memory import release_freed_memory  # noqa: F401
    from pylium.core.compress import Compressor  # noqa: F401
    from pylium.core.state.manifests import ManifestEntry, Manifests, PluginManifests, gc_paused  # noqa: F401
    from pylium.core.state import keys as store_keys  # noqa: F401
    from pylium.core.state.store import ClusterStore, Mirror, StoreUnavailable  # noqa: F401

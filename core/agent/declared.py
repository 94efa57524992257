"""What all plugins declared, gathered and checked before anything starts: two plugins never
serve one API route, take one slot, own one endpoint field or one ipcache owner name."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pylium.core.agent.plugin_host import PluginLoadError
from pylium.core.bus import events as ev
from pylium.core.plugin_api import ApiRoute, Declarations

if TYPE_CHECKING:
    from pylium.core.datapath.datapath import Stage
    from pylium.core.datapath.ipcache import Source
    from pylium.core.datapath.maps import MapSpec


@dataclass
class Declared:
    routes: list[ApiRoute] = field(default_factory=list)
    registry: ev.Registry = field(default_factory=ev.VOCABULARY.copy)
    stages: list[Stage] = field(default_factory=list)
    maps: dict[str, list[MapSpec]] = field(default_factory=dict)
    defines: dict[str, dict[str, str]] = field(default_factory=dict)  # plugin -> C macros
    owned_fields: dict[str, list[str]] = field(default_factory=dict)  # plugin -> endpoint fields
    ipcache_owners: list[tuple[str, Source, bool]] = field(default_factory=list)  # (owner, source, waits)

    @classmethod
    def collect(cls, decls: dict[str, Declarations]) -> Declared:
        out = cls()
        routes: dict[tuple[str, str], ApiRoute] = {}
        slots: dict[tuple[str, int], Stage] = {}
        field_owner: dict[str, str] = {}
        for name, decl in decls.items():
            for r in decl.routes:
                if (r.method, r.path) in routes:
                    raise PluginLoadError(f"plugin {name}: API route {r.method} {r.path} already served by "
                                          f"{routes[(r.method, r.path)].plugin}")
                routes[(r.method, r.path)] = r
            for et in decl.event_types:
                try:
                    out.registry.add(et)
                except ValueError as e:
                    raise PluginLoadError(f"plugin {name}: {e}") from None
            for st in decl.stages:
                other = slots.setdefault((st.attach, st.slot), st)
                if other is not st:
                    raise PluginLoadError(f"plugin {name}: slot {st.slot} of {st.attach} is already taken by "
                                          f"{other.plugin}")
            for f in decl.owned_fields:
                owner = field_owner.setdefault(f, name)
                if owner != name:
                    raise PluginLoadError(f"plugin {name}: endpoint field {f!r} is already owned by {owner}")
            if decl.owned_fields:
                out.owned_fields[name] = list(decl.owned_fields)
            if decl.maps:
                out.maps[name] = decl.maps
            if decl.defines:
                out.defines[name] = decl.defines
            for owner, source, waits in decl.ipcache_owners:
                if any(o == f"{name}/{owner}" for o, _, _ in out.ipcache_owners):
                    raise PluginLoadError(f"plugin {name}: ipcache owner {owner!r} is declared twice")
                out.ipcache_owners.append((f"{name}/{owner}", source, waits))
        out.routes = list(routes.values())
        out.stages = list(slots.values())
        return out

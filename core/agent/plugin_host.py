"""Plugin discovery (entry points), loading into a pluggy PluginManager, ordering and calls."""

from __future__ import annotations

import inspect
import sys
import time
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any, Callable, Iterable

import pluggy

from pylium.core import hookspecs

ENTRY_POINT_GROUP = "pylium.plugins"
BUILTIN_DIST = "pylium"


class PluginLoadError(Exception):
    """A plugin could not be loaded, declared or ordered; the message names it."""


@dataclass
class PluginInfo:
    name: str
    entry_point: str  # "module:attr"
    dist: str
    version: str
    obj: Any = None  # the module or instance registered with pluggy
    start_after: list[str] = field(default_factory=list)

    @property
    def package_dir(self) -> Path:
        """The directory of the module that defines the plugin (relative BPF sources are there)."""
        module = self.obj if inspect.ismodule(self.obj) else sys.modules[type(self.obj).__module__]
        return Path(module.__file__).resolve().parent

    @property
    def builtin(self) -> bool:
        return self.dist == BUILTIN_DIST

    @property
    def source(self) -> str:
        return "built-in" if self.builtin else f"third-party ({self.dist})"


class _PluginManager(pluggy.PluginManager):
    """Treat every `pylium_*` callable as a hook implementation, marked or not, so that a
    misspelt or undecorated hook is reported by `check_pending` instead of never running."""

    def parse_hookimpl_opts(self, plugin: Any, name: str):  # type: ignore[override]
        opts = super().parse_hookimpl_opts(plugin, name)
        if opts is None and name.startswith("pylium_"):
            if callable(getattr(plugin, name, None)):
                return {}
        return opts


def discover(entries: Iterable[EntryPoint] | None = None) -> list[tuple[EntryPoint, PluginInfo]]:
    """All entry points in the group, built-ins first, then third-party, each by name."""
    eps = list(entries) if entries is not None else list(entry_points(group=ENTRY_POINT_GROUP))
    found = []
    seen: dict[str, str] = {}
    for ep in eps:
        dist = ep.dist.metadata["Name"] if ep.dist else "unknown"
        version = ep.dist.version if ep.dist else "0"
        if ep.name in seen:
            raise PluginLoadError(f"plugin {ep.name!r} is provided twice: by {seen[ep.name]} and by {dist}")
        seen[ep.name] = dist
        found.append((ep, PluginInfo(ep.name, ep.value, dist, version)))
    found.sort(key=lambda pair: (not pair[1].builtin, pair[1].name))
    return found


def instantiate(ep: EntryPoint, info: PluginInfo) -> None:
    try:
        obj = ep.load()
        info.obj = obj() if inspect.isclass(obj) else obj
    except Exception as e:  # a third-party import can fail in any way
        raise PluginLoadError(f"plugin {info.name}: cannot load {info.entry_point}: {type(e).__name__}: {e}") from e


class PluginHost:
    """One agent's PluginManager plus per-plugin calls with timing and error attribution."""

    def __init__(self, on_hook_duration: Callable[[str, str, float], None] | None = None):
        self.pm = _PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.plugins: dict[str, PluginInfo] = {}
        self._on_hook_duration = on_hook_duration

    def register(self, info: PluginInfo) -> None:
        try:
            self.pm.register(info.obj, name=info.name)
        except ValueError as e:
            raise PluginLoadError(f"plugin {info.name}: {e}") from e
        except pluggy.PluginValidationError as e:
            raise PluginLoadError(f"plugin {info.name}: {e}") from e
        self.plugins[info.name] = info

    def check(self) -> None:
        """Every hook implementation must match a specification."""
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as e:
            name = self.pm.get_name(e.plugin) if e.plugin is not None else "?"
            raise PluginLoadError(f"plugin {name}: {e}") from None

    def hooks_of(self, name: str) -> list[str]:
        callers = self.pm.get_hookcallers(self.plugins[name].obj) or []
        return sorted(c.name for c in callers)

    def call(self, hook: str, plugin: str, **kwargs: Any) -> Any:
        """Call `hook` on one plugin only, passing the arguments its implementation accepts."""
        for impl in getattr(self.pm.hook, hook).get_hookimpls():
            if impl.plugin_name != plugin:
                continue
            start = time.perf_counter()
            try:
                return impl.function(*[kwargs[a] for a in impl.argnames])
            finally:
                if self._on_hook_duration:
                    self._on_hook_duration(plugin, hook, time.perf_counter() - start)
        return None

    def order(self, names: list[str]) -> list[str]:
        """Stable topological order: base order `names`, moved only as `start_after` requires."""
        pending = {n: {a for a in self.plugins[n].start_after if a in names and a != n} for n in names}
        ordered: list[str] = []
        while pending:
            ready = [n for n in names if n in pending and not pending[n]]
            if not ready:
                cycle = ", ".join(f"{n} after {sorted(d)}" for n, d in pending.items())
                raise PluginLoadError(f"plugin start order has a cycle: {cycle}")
            ordered.append(ready[0])
            del pending[ready[0]]
            for deps in pending.values():
                deps.discard(ready[0])
        return ordered

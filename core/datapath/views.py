"""What a plugin sees of the core's datapath (`ctx.datapath`): the core's maps read-only, its
own directory and programs, and the few operations that change shared state on its behalf
(attaching, bypassing its own stages, reporting map pressure). Writes to shared maps go through
services (`ctx.ipcache`), never through a map."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Mapping

from pylium.core.datapath.consts import Slot
from pylium.core.datapath.datapath import Datapath
from pylium.core.datapath.maps import PinnedMap


class ReadOnlyMap:
    """A core map as plugins see it: lookups and walks. `fd` is there for readers that consume
    through it (the events ring buffer)."""

    def __init__(self, table: PinnedMap):
        self._table = table

    @property
    def spec(self):
        return self._table.spec

    @property
    def fd(self) -> int:
        return self._table.fd

    def get(self, key) -> Any | None:
        return self._table.get(key)

    def keys(self) -> Iterator[Any]:
        return self._table.keys()

    def items(self) -> Iterator[tuple[Any, Any]]:
        return self._table.items()

    def count(self) -> int:
        return self._table.count()


class PluginDatapath:
    def __init__(self, datapath: Datapath, plugin: str, package_dir: Path):
        self._dp, self.plugin, self.package_dir = datapath, plugin, package_dir
        #: the core's maps by C name, read-only
        self.maps: Mapping[str, ReadOnlyMap] = {name: ReadOnlyMap(m) for name, m in datapath.maps.items()}
        self._stages = {(s.attach, s.slot) for s in datapath.stages if s.plugin == plugin}

    @property
    def pin_dir(self) -> Path:
        """<bpf-root>/<node>/<plugin>: where this plugin's maps, programs and links are pinned."""
        return self._dp.pin_dir(self.plugin)

    @property
    def source_files(self) -> dict[int, str]:
        return self._dp.source_files

    async def compile_programs(self, source: str, functions: dict[str, dict]) -> dict[str, Path]:
        """Compile more programs of this plugin (e.g. cgroup socket hooks; `source` relative to
        the plugin's package), pinned as <pin_dir>/prog_<function>; returns the pins."""
        return await self._dp.compile_programs(self.plugin, str(self.package_dir / source), functions)

    async def attach(self, ifname: str) -> None:
        """Attach the core's dispatchers to an endpoint's host-side device (hitless)."""
        await self._dp.attach(ifname)

    async def attach_tc(self, devices: dict[str, dict[str, Path]], prio: int = 1) -> None:
        """Attach pinned programs of this plugin to devices' clsact hooks ({device: {"ingress": pin}});
        several plugins on one hook take different priorities (lower runs first; a program
        returning TC_ACT_UNSPEC passes the packet on to the next)."""
        await self._dp.attach_tc(devices, prio)

    def attach_cgroup_link(self, program_pin: Path, cgroup: Path, attach_type: int, link_pin: Path) -> int:
        """Attach a pinned socket program to a cgroup through a BPF link pinned at `link_pin`."""
        return self._dp.attach_cgroup_link(program_pin, cgroup, attach_type, link_pin)

    def detach_cgroup_link(self, link_pin: Path) -> bool:
        return self._dp.detach_cgroup_link(link_pin)

    def bypass(self, slot: Slot | tuple[str, int], bypassed: bool) -> None:
        """Let packets skip this plugin's stage in `slot` (a `Slot`, or `(attach, index)` for a
        free slot) while it has nothing to do, or run it again. Cheap when nothing changes."""
        attach, index = slot.value if isinstance(slot, Slot) else slot
        if (attach, index) not in self._stages:
            raise ValueError(f"plugin {self.plugin} has no stage in slot {index} of {attach}")
        self._dp.bypass(attach, index, bypassed)

    def fast_path_status(self) -> str:
        """Whether the fast path is on (with its generation), or why not."""
        return self._dp.fast_path_status()

    def set_pressure(self, map_name: str, ratio: float | None) -> None:
        """How full a map (or this plugin's part of one) is, served as
        cilium_bpf_map_pressure{map_name}; None: let the core report the map's own fill."""
        if ratio is None:
            self._dp.pressure.pop(map_name, None)
        else:
            self._dp.pressure[map_name] = ratio

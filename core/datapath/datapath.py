"""The core's datapath: shared maps, dispatch programs, stage slots, attachment to devices.

At every agent start: open (or create) the pinned maps, checking each against its Python
declaration; compile the dispatchers and every plugin's stages once, in child processes, in
parallel; put the stages in their slots (an atomic swap per slot, so running traffic never
sees an empty slot); and re-attach the dispatchers to existing endpoints with a hitless
`tc filter replace`. Programs stay attached and maps pinned while the agent is down.

Pins: <bpf-root>/<node>/<owner>/<map>_v<N> and <bpf-root>/<node>/<owner>/prog_<function>.
"""

from __future__ import annotations

import ctypes as ct
import json
import mmap
import os
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from pylium.core.datapath import libbpf
from pylium.core.datapath.compiler import CompileError, Job, compile_job, source_files
from pylium.core.datapath.maps import MapSpec, PinnedMap
from pylium.core.datapath.consts import AGGREGATE_MEDIUM
from pylium.core.datapath.structs import ATTACH_POINTS, EVENTS_BYTES, SLOTS, FastState, core_maps

DISPATCHERS = {"from-container": "from_container", "to-container": "to_container"}


@dataclass(frozen=True)
class MonitorSettings:
    """What the programs report into the events ring buffer (compiled in: config `bpf.*`)."""

    aggregation: int = 3  # bpf.monitorAggregation: medium
    interval_ns: int = 5_000_000_000
    tcp_flags: int = 0x07  # syn, fin, rst
    trace_events: bool = True
    drop_events: bool = True
    policy_verdict_events: bool = True
    events_bytes: int = EVENTS_BYTES
    fast_path: bool = True  # bpf.fastPath.enabled

    @classmethod
    def from_config(cls, bpf: Any) -> MonitorSettings:
        from pylium.core.config import parse_duration

        return cls(bpf.aggregation_level(), int(parse_duration(bpf.monitorAggregationInterval) * 1e9),
                   bpf.tcp_flag_mask(), bpf.events.trace.enabled, bpf.events.drop.enabled,
                   bpf.events.policyVerdict.enabled, bpf.events.ringBufferSize, bpf.fastPath.enabled)

    @property
    def fast_path_compiled(self) -> bool:
        """The fast path skips the stages' trace points: only where they report per connection."""
        return self.fast_path and (not self.trace_events or self.aggregation >= AGGREGATE_MEDIUM)

    def defines(self) -> dict[str, str]:
        return {"MONITOR_AGGREGATION": str(self.aggregation), "MONITOR_INTERVAL_NS": f"{self.interval_ns}ULL",
                "MONITOR_FLAGS": str(self.tcp_flags), "PYLIUM_TRACE_EVENTS": str(int(self.trace_events)),
                "PYLIUM_DROP_EVENTS": str(int(self.drop_events)),
                "PYLIUM_POLICY_VERDICT_EVENTS": str(int(self.policy_verdict_events)),
                "PYLIUM_EVENTS_BYTES": str(self.events_bytes), "PYLIUM_FAST_PATH": str(int(self.fast_path_compiled))}


@dataclass(frozen=True)
class Stage:
    """A plugin's program for one slot of one attach point."""

    plugin: str
    attach: str  # "from-container" or "to-container"
    slot: int
    source: str  # the C file: absolute (a plugin's, resolved in its package), or relative to bpf/
    function: str
    fast_path: bool = False  # keeps the fast path's contract (docs/datapath.md)


class Datapath:
    def __init__(self, bpf_root: Path, node: str, log: Any, monitor: MonitorSettings = MonitorSettings(),
                 plugin_defines: dict[str, dict[str, str]] | None = None):
        self.root = bpf_root / node
        self.plugin_defines = plugin_defines or {}  # owner -> C macros for its programs
        self.log = log
        self.monitor = monitor
        self.core_map_specs = core_maps(monitor.events_bytes)
        #: fill ratios plugins report for parts of maps (an endpoint's share of the policy map),
        #: served as cilium_bpf_map_pressure{map_name}
        self.pressure: dict[str, float] = {}
        #: (attach point, slot) of installed stages packets skip for now (bypass())
        self.bypassed: set[tuple[str, int]] = set()
        self.maps: dict[str, PinnedMap] = {}  # core maps by C name
        self.plugin_maps: dict[str, dict[str, PinnedMap]] = {}
        self.dispatch_fds: dict[str, int] = {}
        self.stages: list[Stage] = []
        self.compile_seconds = 0.0
        self._ours: dict[str, set[int]] = {}  # program pin -> ids it held in earlier runs
        self._fast_state: mmap.mmap | None = None  # the fast_state map's value, mapped
        self._fast_enabled = False  # no stage that runs forbids it (kept by install_stages and bypass)
        self._fast_lock = threading.Lock()

    def pin_dir(self, owner: str) -> Path:
        return self.root / owner

    async def compile_programs(self, owner: str, source: str, functions: dict[str, dict]) -> dict:
        """Compile extra programs of a plugin (e.g. cgroup socket hooks) once, pinned under its
        directory: {"function": {"type": "CGROUP_SOCK_ADDR", "attach_type": 10}}. The program
        each pin held before (an earlier run's, maybe still attached) is remembered as ours."""
        specs = {fn: {**spec, "pin": str(self.pin_dir(owner) / f"prog_{fn}")}
                 for fn, spec in functions.items()}
        for spec in specs.values():
            if os.path.exists(spec["pin"]):
                fd = libbpf.obj_get(spec["pin"])
                self._ours.setdefault(spec["pin"], set()).add(libbpf.prog_info(fd).id)
                os.close(fd)
        result = await compile_job(Job(owner, source, specs, self._defines(owner)))
        return {fn: Path(pin) for fn, pin in result["programs"].items()}

    # ---- maps ---------------------------------------------------------------------------

    def open_maps(self, plugin_specs: dict[str, list[MapSpec]]) -> None:
        for spec in self.core_map_specs:
            self.maps[spec.name] = PinnedMap.open_or_create(spec, self.pin_dir("core"), self.log)
        self._remove_old_versions("core", self.core_map_specs)
        for plugin, specs in plugin_specs.items():
            self.plugin_maps[plugin] = {s.name: PinnedMap.open_or_create(s, self.pin_dir(plugin), self.log)
                                        for s in specs}
            self._remove_old_versions(plugin, specs)
        self._fast_state = mmap.mmap(self.maps["fast_state"].fd, mmap.PAGESIZE)
        for m in self.all_maps():
            if m.spec.name not in ("fast_flows", "fast_state"):
                m.on_write = self.fast_path_changed

    def _remove_old_versions(self, owner: str, specs: list[MapSpec]) -> None:
        """Pins of an earlier layout (<name>_v<older>) are dead weight once the new one exists.
        Program arrays are kept: unpinning one empties it under attached programs."""
        for spec in specs:
            if spec.type == libbpf.MAP_PROG_ARRAY:
                continue
            for old in self.pin_dir(owner).glob(f"{spec.name}_v*"):
                if old.name != spec.pin_name and old.name[len(spec.name) + 2:].isdigit():
                    self.log.info("removing pinned map of an older layout", map=str(old))
                    old.unlink()

    # ---- programs -----------------------------------------------------------------------

    @property
    def source_files(self) -> dict[int, str]:
        """The file number in drop and trace records -> source file."""
        return source_files()

    def _defines(self, owner: str) -> dict[str, str]:
        return {"PYLIUM_CORE_PIN": f'"{self.pin_dir("core")}"', "PYLIUM_PIN": f'"{self.pin_dir(owner)}"',
                **self.monitor.defines(), **self.plugin_defines.get(owner, {})}

    async def compile(self, stages: list[Stage], parallel: int | None = None) -> None:
        """Compile the dispatchers and every stage, at most `parallel` at a time."""
        self.stages = stages
        jobs = [Job("core", "core/dispatch.c",
                    {fn: str(self.pin_dir("core") / f"prog_{fn}") for fn in DISPATCHERS.values()},
                    self._defines("core"))]
        by_source: dict[tuple[str, str], dict[str, str]] = {}
        for st in stages:
            by_source.setdefault((st.plugin, st.source), {})[st.function] = str(self.pin_dir(st.plugin) / f"prog_{st.function}")
        jobs += [Job(plugin, source, fns, self._defines(plugin)) for (plugin, source), fns in by_source.items()]
        results: dict[int, dict] = {}
        limiter = anyio.CapacityLimiter(parallel or os.cpu_count() or 2)
        start = anyio.current_time()

        async def run(i: int, job: Job) -> None:
            async with limiter:
                results[i] = await compile_job(job)

        try:
            async with anyio.create_task_group() as tg:
                for i, job in enumerate(jobs):
                    tg.start_soon(run, i, job)
        except BaseExceptionGroup as group:  # report the first failure, not a group
            raise group.exceptions[0] from None
        self.compile_seconds = anyio.current_time() - start
        for i, job in enumerate(jobs):
            self._check_tables(job, results[i]["tables"])
        for attach, fn in DISPATCHERS.items():
            if attach in self.dispatch_fds:
                os.close(self.dispatch_fds[attach])
            self.dispatch_fds[attach] = libbpf.obj_get(str(self.pin_dir("core") / f"prog_{fn}"))

    def _check_tables(self, job: Job, tables: dict) -> None:
        """The C declarations must be the maps the agent opened from their MapSpecs: the same
        kernel map (a pin name or version that differs makes bcc create another), with the
        sizes of the Python mirrors the agent reads them with."""
        opened = dict(self.maps)
        for maps in self.plugin_maps.values():
            opened.update({m.spec.name: m for m in maps.values()})
        for name, t in tables.items():
            table = opened.get(name)
            if table is None or table.spec.key is None:
                continue
            spec = table.spec
            want = (spec.key_size, spec.value_size, spec.max_entries)
            have = (t["key_size"], t["value_size"], t["max_entries"])
            if want != have:
                raise CompileError(f"{job.owner}: {job.source}: map {name} is declared in C with key/value/entries "
                                   f"{have} but in Python with {want}")
            if t["id"] != libbpf.map_info(table.fd).id:
                raise CompileError(f"{job.owner}: {job.source}: map {name} in C is not the map pinned at "
                                   f"{table.path} (its pin name in C must be {spec.pin_name!r})")

    def install_stages(self) -> None:
        """Put each stage in its slot (atomic replace); empty the slots nobody claims now."""
        wanted: dict[tuple[str, int], Stage] = {(s.attach, s.slot): s for s in self.stages}
        self._fast_enabled = self._fast_path_off_because() is None
        for attach, attach_id in ATTACH_POINTS.items():
            slots = self.maps[f"calls_{attach.replace('-', '_')}"]
            mask = 0  # slots holding a program
            for slot in range(SLOTS):
                key = ct.c_uint32(slot)
                stage = wanted.get((attach, slot))
                if stage is None:
                    continue
                fd = libbpf.obj_get(str(self.pin_dir(stage.plugin) / f"prog_{stage.function}"))
                try:
                    slots.put(key, ct.c_uint32(fd))
                finally:
                    os.close(fd)
                mask |= 1 << slot
            # the mask grows before emptied slots are deleted: a packet never misreads a slot
            self.maps["slot_mask"].put(ct.c_uint32(attach_id), ct.c_uint32(self._active(attach, mask)))
            for slot in range(SLOTS):
                if not mask & (1 << slot):
                    slots.delete(ct.c_uint32(slot))

    def _active(self, attach: str, installed: int) -> int:
        return installed & ~sum(1 << slot for a, slot in self.bypassed if a == attach)

    def bypass(self, attach: str, slot: int, bypassed: bool) -> None:
        """Let packets skip an installed stage while its plugin has nothing for it to do (or
        run it again): the slot's bit in slot_mask; the program stays in its slot."""
        if ((attach, slot) in self.bypassed) == bypassed:
            return
        (self.bypassed.add if bypassed else self.bypassed.discard)((attach, slot))
        self._fast_enabled = self._fast_path_off_because() is None
        installed = sum(1 << s.slot for s in self.stages if s.attach == attach)
        self.maps["slot_mask"].put(ct.c_uint32(ATTACH_POINTS[attach]), ct.c_uint32(self._active(attach, installed)))

    # ---- the fast path (docs/datapath.md) ------------------------------------------------

    def _fast_path_off_because(self) -> str | None:
        if not self.monitor.fast_path:
            return "bpf.fastPath.enabled=false"
        if not self.monitor.fast_path_compiled:
            return "trace events aggregated below medium"
        foreign = [s for s in self.stages if not s.fast_path and (s.attach, s.slot) not in self.bypassed]
        if foreign:
            return "stage " + ", ".join(f"{s.plugin}/{s.function} ({s.attach} slot {s.slot})" for s in foreign) + \
                " not declared with fast_path=True"
        return None

    def fast_path_status(self) -> str:
        """One line for `pylium status`: on, or why not."""
        why = self._fast_path_off_because()
        return f"Disabled ({why})" if why else f"Enabled (generation {self.fast_path.generation})"

    def fast_path_changed(self) -> None:
        """After each write to a map (the stages read them; a slot or slot_mask write changes the
        stages): a new generation, so that what the fast path remembered from before is decided
        by the stages again. A store into the mapped map value: no system call per write."""
        with self._fast_lock:
            state = FastState.from_buffer(self._fast_state)
            state.enabled = self._fast_enabled
            state.generation = (state.generation + 1) & 0xFFFFFFFF

    @property
    def fast_path(self) -> FastState:
        """The generation in force and whether the fast path is used."""
        return FastState.from_buffer_copy(self._fast_state)

    # ---- attachment ---------------------------------------------------------------------

    async def attach(self, ifname: str) -> None:
        """Attach both dispatchers to an endpoint's host-side veth (clsact, direct action),
        replacing older ones: a hitless upgrade.

        Not tcx: a tcx attach waits for an RCU grace period while holding the RTNL lock
        (8-16 ms here), which serialised concurrent CNI ADDs; clsact costs 1% of request/
        response rate against tcx in an A/B run and attaches in about a millisecond. Done by
        `tc -batch` in a worker thread (vfork): twenty at once run in parallel."""
        await self.attach_tc({ifname: {"ingress" if attach == "from-container" else "egress":
                                       self.pin_dir("core") / f"prog_{fn}" for attach, fn in DISPATCHERS.items()}})

    @staticmethod
    async def attach_tc(devices: dict[str, dict[str, Path]], prio: int = 1) -> None:
        """Attach pinned programs to devices' clsact hooks ({device: {"ingress": pin, ...}}),
        replacing what is there at `prio` (hitless), in one `tc -batch` run in a worker thread.
        A program returning TC_ACT_UNSPEC (-1) lets the next priority's run."""
        commands = []
        for ifname, programs in devices.items():
            commands.append(f"qdisc replace dev {ifname} clsact")
            commands += [f"filter replace dev {ifname} {direction} prio {prio} handle 1 bpf da object-pinned {pin}"
                         for direction, pin in programs.items()]
        if not commands:
            return
        result = await anyio.to_thread.run_sync(lambda: subprocess.run(
            ["tc", "-batch", "-"], input="\n".join(commands).encode() + b"\n", capture_output=True))
        if result.returncode != 0:
            raise OSError(f"attaching programs to {', '.join(devices)}: "
                          f"{result.stderr.decode(errors='replace').strip()}")

    def attached_program_ids(self, ifname: str) -> dict[str, list[int]]:
        """Program ids of the filters on a device, per attach point (for status and tests)."""
        out = {}
        for attach in DISPATCHERS:
            direction = "ingress" if attach == "from-container" else "egress"
            shown = subprocess.run(["tc", "-j", "filter", "show", "dev", ifname, direction], capture_output=True)
            filters = json.loads(shown.stdout or b"[]") if shown.returncode == 0 else []
            out[attach] = [f["options"]["prog"]["id"] for f in filters if "prog" in f.get("options", {})]
        return out

    # ---- cgroup socket hooks (socket-level load balancing) ------------------------------

    @staticmethod
    def cgroup_programs(cgroup: Path, attach_type: int) -> list[tuple[int, str]]:
        """(id, name) of the programs attached to a cgroup at a hook, in run order."""
        cg = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
        try:
            out = []
            for prog_id in libbpf.prog_query(cg, attach_type):
                fd = libbpf.prog_fd_by_id(prog_id)
                try:
                    out.append((prog_id, libbpf.prog_info(fd).name.decode()))
                finally:
                    os.close(fd)
            return out
        finally:
            os.close(cg)

    def _our_ids(self, program_pin: Path) -> set[int]:
        """Programs this pin holds or held (earlier runs): the only ones we detach or replace."""
        fd = libbpf.obj_get(str(program_pin))
        try:
            return self._ours.setdefault(str(program_pin), set()) | {libbpf.prog_info(fd).id}
        finally:
            os.close(fd)

    def attach_cgroup(self, program_pin: Path, cgroup: Path, attach_type: int) -> int:
        """Attach a pinned socket program to a cgroup next to anyone else's (ALLOW_MULTI);
        an earlier version of it is replaced atomically. Returns its id."""
        fd = libbpf.obj_get(str(program_pin))
        cg = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
        try:
            info = libbpf.prog_info(fd)
            attached = libbpf.prog_query(cg, attach_type)
            ours = [pid for pid in attached if pid in self._our_ids(program_pin) and pid != info.id]
            if info.id not in attached:
                old = libbpf.prog_fd_by_id(ours[0]) if ours else None
                try:
                    libbpf.prog_attach(fd, cg, attach_type, replace_fd=old, flags=libbpf.F_ALLOW_MULTI)
                finally:
                    if old is not None:
                        os.close(old)
                ours = ours[1:]
            for stale in ours:  # more than one copy of ours: keep only the new one
                self._detach_cgroup_id(stale, cg, attach_type)
            return info.id
        finally:
            os.close(cg)
            os.close(fd)

    def detach_cgroup(self, program_pin: Path, cgroup: Path, attach_type: int) -> int:
        """Detach what this pin holds or held from a cgroup hook, nothing else; returns how many."""
        cg = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
        try:
            mine = self._our_ids(program_pin)
            ours = [pid for pid in libbpf.prog_query(cg, attach_type) if pid in mine]
            for pid in ours:
                self._detach_cgroup_id(pid, cg, attach_type)
            return len(ours)
        finally:
            os.close(cg)

    def attach_cgroup_link(self, program_pin: Path, cgroup: Path, attach_type: int, link_pin: Path) -> int:
        """Attach a pinned socket program to a cgroup through a BPF link pinned at `link_pin`
        (under the plugin's directory): it lasts while pinned (the agent may restart), a new
        start swaps the program in atomically, and removing the pin (the node's BPF
        directory) detaches it, so nothing is left behind on a cgroup every node shares
        (a cgroup holds at most 64 programs per hook). Returns the program's id."""
        prog = libbpf.obj_get(str(program_pin))
        try:
            if link_pin.exists():
                link = libbpf.obj_get(str(link_pin))
                try:
                    libbpf.link_update(link, prog)
                finally:
                    os.close(link)
            else:
                cg = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    link = libbpf.link_create(prog, cg, attach_type)
                finally:
                    os.close(cg)
                try:
                    libbpf.obj_pin(link, str(link_pin))
                finally:
                    os.close(link)
            return libbpf.prog_info(prog).id
        finally:
            os.close(prog)

    @staticmethod
    def detach_cgroup_link(link_pin: Path) -> bool:
        """Detach what attach_cgroup_link pinned at `link_pin`; False when nothing was."""
        if not link_pin.exists():
            return False
        link = libbpf.obj_get(str(link_pin))
        try:
            libbpf.link_detach(link)
        finally:
            os.close(link)
        link_pin.unlink()
        return True

    @staticmethod
    def _detach_cgroup_id(prog_id: int, cg: int, attach_type: int) -> None:
        fd = libbpf.prog_fd_by_id(prog_id)
        try:
            libbpf.prog_detach(fd, cg, attach_type)
        finally:
            os.close(fd)

    def all_maps(self) -> list[PinnedMap]:
        return [*self.maps.values(), *(m for maps in self.plugin_maps.values() for m in maps.values())]

    def dispatch_ids(self) -> dict[str, int]:
        return {attach: libbpf.prog_info(fd).id for attach, fd in self.dispatch_fds.items()}

    def close(self) -> None:
        if self._fast_state is not None:
            self._fast_state.close()
            self._fast_state = None
        for fd in self.dispatch_fds.values():
            os.close(fd)
        self.dispatch_fds.clear()
        for m in self.maps.values():
            m.close()
        for maps in self.plugin_maps.values():
            for m in maps.values():
                m.close()

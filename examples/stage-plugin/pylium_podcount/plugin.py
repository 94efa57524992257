"""The podcount plugin: a BPF stage in a free slot of both attach points counts what each pod
sends and receives in the plugin's own map; `GET /v1/podcount` (and `pylium podcount list`)
reports it with the pods' names, which it learns from the bus's endpoint events."""

from __future__ import annotations

import ctypes as ct

from pydantic import Field, field_validator

from pylium.core.api_for_plugins import Section, free_slots, hookimpl, libbpf
from pylium_podcount.maps import POD_COUNTS, PodCount, totals

# The stage takes the same slot of both attach points: one that pylium's own stages leave free in both.
FREE_SLOTS = tuple(sorted(set(free_slots("from-container")) & set(free_slots("to-container"))))


class PodCountSettings(Section):
    slot: int = Field(6, description="Slot of both attach points the counting stage takes (1, 3, 5 or 6); "
                                     "6 counts what passed policy, just before delivery.")

    @field_validator("slot")
    @classmethod
    def _free(cls, v: int) -> int:
        if v not in FREE_SLOTS:
            raise ValueError(f"must be a free slot: {', '.join(map(str, FREE_SLOTS))}")
        return v


class PodCountConfig(Section):
    podcount: PodCountSettings = Field(default_factory=PodCountSettings)


class PodCountPlugin:
    def __init__(self) -> None:
        self.ctx = None
        self.names: dict[int, str] = {}  # endpoint id -> namespace/pod (or container id)

    @hookimpl
    def pylium_config_model(self):
        return PodCountConfig

    @hookimpl
    def pylium_declare(self, declare):
        slot = declare.settings.podcount.slot
        declare.bpf_maps(POD_COUNTS)
        declare.bpf_defines(PODCOUNT_SLOT=slot)  # the C continues the chain at slot + 1
        declare.bpf_stage("from-container", slot, "bpf/podcount.c", "podcount_from")
        declare.bpf_stage("to-container", slot, "bpf/podcount.c", "podcount_to")
        declare.api_route("GET", "/v1/podcount", self.api_counts)

    @hookimpl
    async def pylium_lifespan(self, ctx):
        self.ctx = ctx
        ctx.start_task("endpoints", self._follow_endpoints)
        yield
        self.ctx = None  # the stage and its map stay: counting goes on while the agent is away

    async def _follow_endpoints(self) -> None:
        """Endpoint events (replayed at subscription): which endpoint id is which pod."""
        async with self.ctx.bus.subscribe("endpoint.") as events:
            async for e in events:
                if e.topic in ("endpoint.created", "endpoint.updated"):
                    ev = e.event
                    self.names[ev.id] = f"{ev.namespace}/{ev.pod_name}" if ev.pod_name else ev.container_id
                elif e.topic == "endpoint.deleted":
                    self.names.pop(e.event.id, None)
                    self._reset(e.event.id)  # the next pod with this id starts from 0

    def _reset(self, ep_id: int) -> None:
        zeros = (PodCount * libbpf.possible_cpus())()  # a per-CPU map takes one value per CPU
        self.ctx.bpf_maps["pod_counts"].put(ct.c_uint32(ep_id), zeros)

    async def api_counts(self, request):
        table = self.ctx.bpf_maps["pod_counts"]
        rows = []
        for ep_id, name in sorted(self.names.items()):
            per_cpu = table.get(ct.c_uint32(ep_id))
            rows.append({"endpoint": ep_id, "pod": name, **(totals(per_cpu) if per_cpu is not None else {})})
        return rows

    @hookimpl
    def pylium_status_details(self):
        return {"Podcount": f"counting {len(self.names)} endpoints in slot {self.ctx.settings.podcount.slot}"}

"""Python constants generated from C headers, so that a number shared by the datapath and the
agent is written once, in C.

    python -m pylium.core.datapath.constgen [ROOT]       # rewrite every generated module (make consts)
    python -m pylium.core.datapath.constgen HEADER OUT   # any header, e.g. a third-party plugin's

Every `#define NAME <integer>` becomes `NAME = <integer>` with its comment; groups of defines
(by name prefix) also become enums and, where the comments carry names, lookup tables. A
test regenerates every module and fails when one is stale.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

_DEFINE = re.compile(r"^[ \t]*#[ \t]*define[ \t]+([A-Z][A-Z0-9_]*)[ \t]+(0[xX][0-9a-fA-F]+|\d+)(?:U|UL|ULL)?"
                     r"[ \t]*(?:/\*(.*?)(\*/)?)?[ \t]*$")  # a comment may go on below


@dataclass(frozen=True)
class Define:
    name: str
    value: int
    comment: str
    text: str  # the value as written (hex stays hex)


@dataclass(frozen=True)
class Group:
    """Defines named `<prefix>X` become enum `enum` with member X (and table `table`)."""

    prefix: str
    enum: str
    kind: str = "int"  # int, flag, or slot (members are (attach point, slot) pairs)
    table: str = ""  # a dict of value -> the comment (or, with pair, the two parts "a: b")
    pair: bool = False
    doc: str = ""


def parse(header: Path) -> list[Define]:
    out = []
    lines = header.read_text().splitlines()
    for i, line in enumerate(lines):
        m = _DEFINE.match(line)
        if m:
            raw, comment = m.group(2), m.group(3) or ""
            if m.group(3) is not None and not m.group(4):  # the comment goes on below
                for more in lines[i + 1:]:
                    text, end, _ = more.strip().removeprefix("*").partition("*/")
                    comment += " " + text
                    if end:
                        break
            out.append(Define(m.group(1), int(raw, 0), " ".join(comment.split()), raw))
    return out


def _slot(name: str, value: int) -> str:
    attach = "from-container" if name.startswith("FROM_") else "to-container"
    return f'("{attach}", {value})'


def render(header: Path, groups: tuple[Group, ...] = (), title: str = "") -> str:
    defines = parse(header)
    lines = [f'"""{title or "Constants"} generated from {header.as_posix()} by `make consts`: do not edit."""', "",
             "from __future__ import annotations", ""]
    if groups:
        kinds = sorted({"Enum" if g.kind == "slot" else "IntFlag" if g.kind == "flag" else "IntEnum" for g in groups})
        lines += [f"from enum import {', '.join(kinds)}", ""]
    for d in defines:
        lines.append(f"{d.name} = {d.text}" + (f"  # {d.comment}" if d.comment else ""))
    taken: set[str] = set()
    for g in groups:
        members = [d for d in defines if d.name.startswith(g.prefix) and d.name not in taken]
        taken |= {d.name for d in members}
        base = {"slot": "Enum", "flag": "IntFlag", "int": "IntEnum"}[g.kind]
        lines += ["", "", f"class {g.enum}({base}):", f'    """{g.doc or g.enum}"""', ""]
        for d in members:
            member = d.name[len(g.prefix):]
            lines.append(f"    {member} = {_slot(member, d.value) if g.kind == 'slot' else d.name}")
        if g.kind == "slot":
            lines += ["", "    @property", "    def attach(self) -> str:", "        return self.value[0]", "",
                      "    @property", "    def index(self) -> int:", "        return self.value[1]"]
        if g.table:
            lines += ["", ""]
            if g.pair:
                rows = [f'    {d.name}: ("{a.strip()}", "{b.strip()}"),'
                        for d in members for a, _, b in [d.comment.partition(": ")]]
                lines += [f"{g.table}: dict[int, tuple[str, str]] = {{", *rows, "}"]
            else:
                lines += [f"{g.table}: dict[int, str] = {{", *[f'    {d.name}: "{d.comment}",' for d in members], "}"]
    return "\n".join(lines) + "\n"


CORE_GROUPS = (
    Group("SLOT_", "Slot", "slot", doc="A tail-call slot of an attach point: declare.bpf_stage(Slot.FROM_POLICY, ...)."),
    Group("CB_F_", "CbFlag", "flag", doc="Bits of skb->cb[CB_FLAGS]."),
    Group("CB_", "Cb", doc="skb->cb indices: facts passed between the stages of one packet."),
    Group("DROP_", "DropReason", table="DROP_REASONS", pair=True,
          doc="Drop reasons (Cilium's numbers); DROP_REASONS: code -> (flow.proto name, monitor text)."),
    Group("MSG_", "MessageType", table="MESSAGE_TYPES", doc="Record types of the events ring buffer."),
    Group("TRACE_REASON_", "TraceReason", table="TRACE_REASONS", doc="Why a trace was reported."),
    Group("TRACE_", "TracePoint", table="OBSERVATION_POINTS", pair=True,
          doc="Trace observation points; OBSERVATION_POINTS: number -> (monitor name, flow.proto name)."),
    Group("POLICY_MATCH_", "PolicyMatch", table="POLICY_MATCH_TYPES", doc="Policy verdict match types."),
    Group("EVENT_F_", "EventFlag", "flag", doc="pylium_event.flags."),
    Group("AGGREGATE_", "Aggregation", doc="bpf.monitorAggregation levels."),
    Group("METRIC_", "MetricDirection", table="METRIC_DIRECTIONS", doc="Directions of the metrics map."),
    Group("ID_", "ReservedIdentity", table="RESERVED_IDENTITIES", doc="Reserved security identities."),
)

# The generated modules of this repository: (header, module, groups, title), relative to its root.
GENERATED = (
    ("bpf/include/pylium_consts.h", "core/datapath/consts.py", CORE_GROUPS, "The datapath's shared numbers"),
    ("plugins/lb/bpf/lb_consts.h", "plugins/lb/consts.py", (), "The load-balancing plugin's numbers"),
    ("plugins/policy/bpf/policy_maps.h", "plugins/policy/consts.py", (), "The policy plugin's numbers"),
)


def regenerate(root: Path) -> list[str]:
    changed = []
    for header, module, groups, title in GENERATED:
        text = _render_at(root, header, groups, title)
        out = root / module
        if not out.exists() or out.read_text() != text:
            out.write_text(text)
            changed.append(module)
    return changed


def _render_at(root: Path, header: str, groups: tuple[Group, ...], title: str) -> str:
    # the docstring names the header relative to the root, wherever the root is
    return render(root / header, groups, title).replace((root / header).as_posix(), header, 1)


if __name__ == "__main__":
    args = sys.argv[1:]
    if len(args) == 2:
        Path(args[1]).write_text(render(Path(args[0])))
    else:
        for rel in regenerate(Path(args[0] if args else ".")):
            print(f"updated {rel}")

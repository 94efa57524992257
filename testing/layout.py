"""C structs against their ctypes mirrors, compiled for real (the idea of Cilium's
bpf_alignchecker.c): gcc builds a program that prints sizeof and every member's offset and
size; each must equal the mirror's, and the mirror must name every byte (explicit padding),
so that a member C adds cannot hide in it. A mismatch means the agent would read or write a map with
the wrong layout, which bcc never reports.

    problems = check_layout([Path("bpf/my_structs.h")], {"my_key": MyKey, "my_value": MyValue})
    assert problems == []
"""

from __future__ import annotations

import ctypes as ct
import re
import subprocess
import tempfile
from pathlib import Path

from pylium.core.datapath.compiler import INCLUDE_DIR

_STRUCT = re.compile(r"^\s*struct\s+(\w+)\s*\{", re.M)

# What the headers may use besides plain C: map declarations of bcc (not structs, dropped).
_PRELUDE = """#include <stdio.h>
#include <stddef.h>
#include <linux/types.h>
#define BPF_TABLE_PINNED(...)
#define BPF_TABLE(...)
#include "pylium_consts.h"
"""


def structs_in(header: Path) -> list[str]:
    """Names of the structs a header defines."""
    return _STRUCT.findall(header.read_text())


def check_layout(headers: list[Path], mirrors: dict[str, type[ct.Structure]]) -> list[str]:
    """One line per difference between `struct <name>` in the headers and its mirror."""
    lines = [_PRELUDE, *[f'#include "{h.resolve()}"' for h in headers], "int main(void) {"]
    for name, mirror in mirrors.items():
        lines.append(f'printf("{name} %zu\\n", sizeof(struct {name}));')
        for field, *_ in mirror._fields_:
            lines.append(f'printf("{name}.{field} %zu %zu\\n", offsetof(struct {name}, {field}), '
                         f'sizeof(((struct {name} *)0)->{field}));')
    lines += ["return 0;", "}"]
    with tempfile.TemporaryDirectory() as tmp:
        source, binary = Path(tmp) / "layout.c", Path(tmp) / "layout"
        source.write_text("\n".join(lines) + "\n")
        built = subprocess.run(["gcc", "-w", "-I", str(INCLUDE_DIR), "-o", str(binary), str(source)],
                               capture_output=True, text=True)
        if built.returncode != 0:  # e.g. a mirror names a member the struct does not have
            return [f"gcc: {line}" for line in built.stderr.splitlines() if "error" in line]
        out = subprocess.run([str(binary)], capture_output=True, text=True, check=True).stdout
    c = {key: tuple(int(v) for v in rest) for key, *rest in (line.split() for line in out.splitlines())}
    problems = []
    for name, mirror in mirrors.items():
        named = sum(getattr(mirror, field).size for field, *_ in mirror._fields_)
        if named != ct.sizeof(mirror):
            problems.append(f"struct {name}: {mirror.__name__} leaves {ct.sizeof(mirror) - named} bytes of padding "
                            f"unnamed (name them: a C member there would go unseen)")
        if c[name] != (ct.sizeof(mirror),):
            problems.append(f"struct {name}: sizeof {c[name][0]} in C, {ct.sizeof(mirror)} in {mirror.__name__}")
        for field, *_ in mirror._fields_:
            descriptor = getattr(mirror, field)
            want = (descriptor.offset, descriptor.size)
            if c[f"{name}.{field}"] != want:
                off, size = c[f"{name}.{field}"]
                problems.append(f"struct {name}.{field}: offset {off} size {size} in C, offset {want[0]} size "
                                f"{want[1]} in {mirror.__name__}")
    return problems

"""Compile BPF C with bcc in a short-lived child process, pin the programs, exit.

The agent never imports bcc: LLVM stays out of its memory (~30 MB instead of ~170 MB), and a
crash in the compiler cannot take the agent down. The child reports each program's pin and
each map's layout (so the agent can check the C against its Python mirrors), or the
compiler's or verifier's complaint.

    parent: compile(job)   ->   child: python -m pylium.core.datapath.compiler < job.json
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

BPF_DIR = Path(__file__).resolve().parent.parent.parent / "bpf"  # the repository's bpf/ (pylium.bpf)
INCLUDE_DIR = BPF_DIR / "include"
_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]+"([^"]+)"[ \t]*$', re.M)


class CompileError(Exception):
    """The C did not compile or a program was rejected by the verifier."""


@dataclass
class Job:
    """What one child compiles: one source file, its functions, where to pin them."""

    owner: str  # plugin (or "core") the programs belong to, for messages
    source: str  # absolute (a plugin's C, in its package), or relative to bpf/ (the core's)
    functions: dict[str, str | dict]  # function -> pin path, or {"pin", "type", "attach_type"}
    defines: dict[str, str] = field(default_factory=dict)

    def text(self) -> str:
        return assemble(BPF_DIR / self.source)

    def cflags(self) -> list[str]:
        return [f"-D{k}={v}" for k, v in sorted(self.defines.items())]


# Source files by the number drop and trace records carry (numbered in this process, on first use).
_FILE_IDS: dict[str, int] = {}
# DROP(...) / TRACE(...) / TRACE_DEV(...) call sites get their file and line written in: __LINE__ would count
# the lines of the text bcc rewrites (it adds lines), not the file's.
_REPORT = re.compile(r"\b(DROP|TRACE|TRACE_DEV|POLICY_DROP|POLICY_VERDICT)\(")


def file_id(path: Path) -> int:
    name = str(path.relative_to(BPF_DIR)) if path.is_relative_to(BPF_DIR) else str(path)
    if name not in _FILE_IDS and len(_FILE_IDS) >= 255:  # records carry the number in one byte
        raise ValueError(f"{name}: more than 255 BPF source files report events")
    return _FILE_IDS.setdefault(name, len(_FILE_IDS) + 1)


def source_files() -> dict[int, str]:
    """Record file number -> source file (relative to bpf/ for ours)."""
    return {number: name for name, number in _FILE_IDS.items()}


def _mark_call_sites(text: str, fid: int) -> str:
    return "".join(line if line.lstrip().startswith("#") else
                   _REPORT.sub(lambda m, n=n: f"{m.group(1)}_AT({fid}, {n}, ", line)
                   for n, line in enumerate(text.splitlines(keepends=True), 1))


def assemble(path: Path, seen: set[Path] | None = None) -> str:
    """The source with our own `#include "..."` files spliced in, each once: bcc rewrites
    map calls (`m.lookup(...)`) only in the main text, never in included headers."""
    seen = set() if seen is None else seen
    here = path.resolve()
    if here in seen:
        return ""
    seen.add(here)

    text = _mark_call_sites(here.read_text(), file_id(here))

    def splice(match: re.Match) -> str:
        name = match.group(1)
        # #line keeps __LINE__ (drop and trace records) pointing into the original files
        back = f'\n#line {text.count(chr(10), 0, match.start()) + 2} "{here.name}"'
        for candidate in (here.parent / name, INCLUDE_DIR / name):
            if candidate.exists():
                return f'#line 1 "{name}"\n' + assemble(candidate, seen) + back
        raise CompileError(f"{path.name}: include file {name!r} not found in {here.parent} or {INCLUDE_DIR}")

    return _INCLUDE.sub(splice, text).replace("#pragma once", "")


async def compile_job(job: Job, timeout: float = 180) -> dict:
    """Compile in a child process; returns {"programs": {fn: pin}, "tables": {name: layout}}."""
    import anyio

    payload = json.dumps({"text": job.text(), "cflags": job.cflags(), "functions": job.functions})
    with anyio.fail_after(timeout):
        result = await anyio.run_process([sys.executable, "-m", "pylium.core.datapath.compiler"],
                                         input=payload.encode(), check=False)
    try:
        out = json.loads(result.stdout)
    except ValueError:
        out = {"error": "the compiler process produced no result"}
    if result.returncode != 0 or "error" in out:
        log = result.stderr.decode(errors="replace").strip().splitlines()
        tail = "\n".join(line for line in log[-40:])
        raise CompileError(f"{job.owner}: {job.source}: {out.get('error', 'compiler failed')}"
                           + (f"\n--- compiler/verifier log (tail) ---\n{tail}" if tail else ""))
    return out


# ---- the child -----------------------------------------------------------------------------


def _tables(bpf) -> dict:
    import ctypes as ct

    from bcc.libbcc import lib

    from pylium.core.datapath import libbpf

    # bcc declares some of these signatures, not all: without them the module pointer is cut
    for name, restype in (("bpf_num_tables", ct.c_size_t), ("bpf_table_name", ct.c_char_p),
                          ("bpf_table_key_size_id", ct.c_size_t), ("bpf_table_leaf_size_id", ct.c_size_t),
                      ("bpf_table_fd_id", ct.c_int)):
        getattr(lib, name).restype = restype
        getattr(lib, name).argtypes = [ct.c_void_p] if name == "bpf_num_tables" else [ct.c_void_p, ct.c_size_t]
    out = {}
    for i in range(lib.bpf_num_tables(bpf.module)):
        name = lib.bpf_table_name(bpf.module, i).decode()
        out[name] = {"type": lib.bpf_table_type_id(bpf.module, i),
                     "key_size": lib.bpf_table_key_size_id(bpf.module, i),
                     "value_size": lib.bpf_table_leaf_size_id(bpf.module, i),
                     "max_entries": lib.bpf_table_max_entries_id(bpf.module, i),
                     "id": libbpf.map_info(lib.bpf_table_fd_id(bpf.module, i)).id}  # which kernel map
    return out


def _child() -> int:
    from bcc import BPF

    from pylium.core.datapath import libbpf

    job = json.load(sys.stdin)
    try:
        bpf = BPF(text=job["text"], cflags=job["cflags"], debug=0)
    except Exception as e:  # clang's diagnostics went to stderr
        json.dump({"error": f"compile failed: {e}".splitlines()[0][:300]}, sys.stdout)
        return 1
    programs = {}
    for name, spec in job["functions"].items():
        spec = spec if isinstance(spec, dict) else {"pin": spec}
        pin = spec["pin"]
        prog_type = getattr(BPF, spec.get("type", "SCHED_CLS"))  # e.g. CGROUP_SOCK_ADDR
        try:
            fn = bpf.load_func(name, prog_type, attach_type=spec.get("attach_type", -1))
        except Exception as e:  # the verifier's log went to stderr
            json.dump({"error": f"program {name} rejected: {e}"}, sys.stdout)
            return 1
        if os.path.exists(pin):
            os.unlink(pin)
        os.makedirs(os.path.dirname(pin), mode=0o700, exist_ok=True)
        libbpf.obj_pin(fn.fd, pin)
        programs[name] = pin
    json.dump({"programs": programs, "tables": _tables(bpf)}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(_child())

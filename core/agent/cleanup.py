"""`pylium-agent --cleanup`: take this node off pylium for good.

A stopped agent leaves its datapath running (pods keep their traffic across restarts); this
removes it: each plugin's own kernel state (`pylium_cleanup`: masquerade chains, devices,
routes, rules, the L7 proxy), then the tc filters that run this node's programs, then the
node's BPF directory (its maps, programs and cgroup links: unpinning a link detaches it).
Only this node's: another agent on the same kernel keeps its chains, pins and attachments.
The state directory stays (addresses and keys survive a reinstall)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from pathlib import Path

from pyroute2.iproute.linux import IPRoute

from pylium.core.datapath import libbpf


def run(agent) -> tuple[list[str], list[str]]:
    """Clean up the agent's node; returns (what was removed, what failed), a line each.
    Raises AgentError while an agent uses the same directories."""
    with contextlib.ExitStack() as locks:
        agent._lock_dirs(locks)
        node_dir = agent.options.bpf_root / agent.options.node_name
        programs = pinned_programs(node_dir)
        done, failed = [], []
        for name in reversed(agent.order):
            try:
                done += agent.host.call("pylium_cleanup", name, ctx=agent.contexts[name]) or []
            except Exception as e:  # one plugin's failure must not keep the rest in place
                failed.append(f"plugin {name}: {type(e).__name__}: {e}")
        done += detach_filters(programs)
        if node_dir.exists():
            libbpf.remove_pins(node_dir)
            done.append(f"bpf directory {node_dir}")
        with contextlib.suppress(OSError):
            node_dir.parent.rmdir()  # the root too, once no node uses it
        return done, failed


def pinned_programs(node_dir: Path) -> set[int]:
    """Ids of the programs pinned under the node's BPF directory (prog_<function> files)."""
    ids = set()
    for pin in node_dir.rglob("prog_*") if node_dir.exists() else ():
        with contextlib.suppress(OSError):
            fd = libbpf.obj_get(str(pin))
            try:
                ids.add(libbpf.prog_info(fd).id)
            finally:
                os.close(fd)
    return ids


def detach_filters(programs: set[int]) -> list[str]:
    """Delete the tc filters running one of `programs` on any device of this namespace; a
    clsact qdisc left without filters goes too."""
    with IPRoute() as ipr:
        devices = [link.get_attr("IFLA_IFNAME") for link in ipr.get_links()]
    done = []
    for dev in devices:
        remaining = removed = 0
        for direction in ("ingress", "egress"):
            shown = subprocess.run(["tc", "-j", "filter", "show", "dev", dev, direction], capture_output=True)
            filters = json.loads(shown.stdout or b"[]") if shown.returncode == 0 else []
            for f in filters:
                if "options" not in f:
                    continue  # a chain's header line, not a filter
                prog = f["options"].get("prog", {}).get("id")
                if prog not in programs:
                    remaining += 1
                    continue
                subprocess.run(["tc", "filter", "del", "dev", dev, direction, "pref", str(f["pref"]),
                                "handle", f["options"]["handle"], "bpf"], capture_output=True, check=True)
                done.append(f"tc filter {dev} {direction} pref {f['pref']} (program {prog})")
                removed += 1
        if removed and not remaining:
            subprocess.run(["tc", "qdisc", "del", "dev", dev, "clsact"], capture_output=True)
    return done

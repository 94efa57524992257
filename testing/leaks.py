"""What pylium could leave on a machine, as a set of short descriptions, so a test run can
compare before and after and name every leftover: network namespaces, links, iptables and
nftables rules and chains, policy-routing rules and routes, BPF pins, tc filters, cgroup
BPF programs, processes, files in /tmp and /dev/shm, run and state directories."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

BPF_FS = Path("/sys/fs/bpf")
CGROUP_ROOT = Path("/sys/fs/cgroup")
_IGNORED_TMP = ("pytest-of-", "bash_jobs", "bash_tool", "tmp", ".")  # the runner's own


def _lines(*cmd: str) -> list[str]:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()]


def _processes() -> set[str]:
    """pylium's own processes (agents, the L7 proxy, the CNI plugin) and etcd, by pid and cmdline."""
    out = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        if any(word in cmdline for word in ("pylium-agent", "pylium.plugins.policy.proxy", "pylium-cni", "etcd ",
                                             "wireguard-go")) and "pytest" not in cmdline:
            out.add(f"process {entry.name}: {cmdline[:160]}")
    return out


def snapshot() -> set[str]:
    state: set[str] = set()
    state |= {f"netns {line.split()[0]}" for line in _lines("ip", "netns", "list")}
    state |= {f"link {line.split(':')[1].strip().split('@')[0]}" for line in _lines("ip", "-o", "link")}
    for table in ("nat", "filter", "mangle", "raw"):
        state |= {f"iptables -t {table} {line}" for line in _lines("iptables", "-t", table, "-S")
                  if "pylium" in line.lower()}
    state |= {f"nft {line}" for line in _lines("nft", "list", "tables") if "pylium" in line.lower()}
    state |= {f"ip rule {line}" for line in _lines("ip", "rule")}
    state |= {f"ip -6 rule {line}" for line in _lines("ip", "-6", "rule")}
    state |= {f"route {line}" for line in _lines("ip", "route", "show", "table", "all")
              if not line.startswith(("local ", "broadcast ", "multicast "))}
    if BPF_FS.exists():
        state |= {f"bpf pin {p}" for p in BPF_FS.iterdir() if p.name not in ("maps.debug", "progs.debug")}
    for line in _lines("ip", "-o", "link"):
        dev = line.split(":")[1].strip().split("@")[0]
        for direction in ("ingress", "egress"):
            state |= {f"tc filter {dev} {direction}: {f}" for f in _lines("tc", "filter", "show", "dev", dev,
                                                                          direction) if "bpf" in f}
    state |= {f"cgroup bpf {line}" for line in _lines("bpftool", "cgroup", "tree", str(CGROUP_ROOT))
              if line[:1].isdigit()}
    state |= _processes()
    state |= {f"file /tmp/{p.name}" for p in Path("/tmp").iterdir() if not p.name.startswith(_IGNORED_TMP)}
    state |= {f"file /dev/shm/{p.name}" for p in Path("/dev/shm").iterdir()}
    state |= {f"file {p}" for d in ("/run", "/var/lib") for p in Path(d).glob("pylium*")}  # run and state dirs
    return state


def leftovers(before: set[str], after: set[str] | None = None) -> list[str]:
    """What is there now and was not before."""
    return sorted((snapshot() if after is None else after) - before)

"""Namespaces and an agent for datapath benchmarks (everything created here is removed)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from _agent import wait_until_running  # noqa: E402 (bench/ is on sys.path)
from pylium.core.cli.client import Client
from pylium.core.datapath import libbpf

VENV_BIN = Path(sys.executable).parent
POD_CIDR = "10.211.0.0/16"


def sh(*cmd: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=check, capture_output=True, text=True, **kw)


@contextlib.contextmanager
def node_with_agent(*agent_args: str, prepare=None):
    """Yields (node netns name, api client, new_netns(name) -> str, agent start seconds).
    `prepare(state_dir)` runs before the agent starts (to seed its local store, say)."""
    tag = uuid.uuid4().hex[:6]
    root = Path(tempfile.mkdtemp(prefix="pylium-bench-"))
    if prepare is not None:
        prepare(root / "state")
    bpf_root = Path(f"/sys/fs/bpf/pylium-bench-{tag}")
    made: list[str] = []

    def netns(name: str) -> str:
        ns = f"pb{tag}-{name}"
        sh("ip", "netns", "add", ns)
        made.append(ns)
        return ns

    node = netns("node")
    sh("ip", "-n", node, "link", "set", "lo", "up")
    run_dir = root / "run"
    log = open(root / "agent.log", "wb")
    started = time.monotonic()
    proc = subprocess.Popen(
        ["nsenter", f"--net=/var/run/netns/{node}", str(VENV_BIN / "pylium-agent"), "--node-name", f"bench-{tag}",
         "--run-dir", str(run_dir), "--state-dir", str(root / "state"), "--bpf-root", str(bpf_root),
         "--set", "prometheus.port=0", "--set", f"ipam.operator.clusterPoolIPv4PodCIDRList={{{POD_CIDR}}}",
         "--set", f"standalone.manifestsDir={root / 'manifests'}", "--log-format", "json", *agent_args],
        stdout=log, stderr=subprocess.STDOUT)
    client = Client.for_run_dir(run_dir, timeout=120)
    try:
        wait_until_running(client, proc, root / "agent.log")
        yield node, client, netns, time.monotonic() - started, run_dir
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()
        for ns in reversed(made):
            # processes that outlive the agent (the L7 proxy, servers) would keep the namespace
            for pid in sh("ip", "netns", "pids", ns, check=False).stdout.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            sh("ip", "netns", "del", ns, check=False)
        libbpf.remove_pins(bpf_root)
        shutil.rmtree(root, ignore_errors=True)


def add_pod(client: Client, netns_name: str, labels: dict[str, str] | None = None) -> str:
    ep = client.call("POST", "/v1/cni/add", {"container_id": netns_name, "ifname": "eth0",
                                             "netns": f"/var/run/netns/{netns_name}", "labels": labels or {}})
    return ep["addresses"][0]["ip"]


def exec_in(ns: str, *cmd: str, **kw) -> subprocess.CompletedProcess:
    return sh("ip", "netns", "exec", ns, *cmd, **kw)


def rrprobe() -> str:
    path = Path(__file__).parent.parent / ".tools" / "rrprobe"
    if not path.exists():
        sh("gcc", "-O2", "-o", str(path), str(Path(__file__).with_name("rrprobe.c")))
    return str(path)



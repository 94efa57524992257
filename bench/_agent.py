"""Start a real pylium-agent for a benchmark, with the benchmark plugin installed."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pylium.core.cli.client import AgentUnreachable, Client

HERE = Path(__file__).parent


def wait_until_running(client: Client, proc: subprocess.Popen, log_path: Path, timeout: float = 120) -> None:
    """Until the agent reports `running`; its log when it exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if client.get("/v1/status")["state"] == "running":
                return
        except (AgentUnreachable, OSError):
            pass
        if proc.poll() is not None:
            raise SystemExit(f"agent exited: {log_path.read_text()}")
        time.sleep(0.02)
    raise SystemExit(f"agent not running after {timeout:g}s: {log_path.read_text()}")


@contextlib.contextmanager
def bench_agent(*extra: str):
    root = Path(tempfile.mkdtemp(prefix="pylium-bench-"))
    site = root / "site"
    site.mkdir()
    shutil.copy(HERE / "benchplugin.py", site / "benchplugin.py")
    info = site / "pylium_bench-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: pylium-bench\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[pylium.plugins]\nbenchpub = benchplugin:BenchPub\n")
    run_dir = root / "run"
    args = [str(Path(sys.executable).parent / "pylium-agent"), "--node-name", "bench", "--run-dir", str(run_dir),
            "--state-dir", str(root / "state"), "--bpf-root", str(root / "bpf"), "--set", "prometheus.port=0",
            # the bus and IPAM alone: no datapath (the agent runs in this namespace, its BPF root is not bpffs)
            "--set", "plugins.disabled={connectivity,lb,observability,policy,health}", "--log-format", "json", *extra]
    log = open(root / "agent.log", "wb")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(site)})
    client = Client.for_run_dir(run_dir, timeout=30)
    try:
        wait_until_running(client, proc, root / "agent.log", timeout=15)
        yield client, run_dir
    finally:
        proc.terminate()
        proc.wait(20)
        log.close()
        shutil.rmtree(root, ignore_errors=True)

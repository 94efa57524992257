"""Fixtures: unique per-test agent directories and real agent processes, stopped at teardown."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest

from helpers import BIN, AgentDirs, AgentProcess

pytest_plugins = ("pylium.testing.leakcheck",)  # every module must leave the machine as it found it


@pytest.fixture
def agent_dirs(tmp_path: Path) -> AgentDirs:
    return AgentDirs(tmp_path / "agent", f"t-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def start_agent(agent_dirs: AgentDirs, tmp_path: Path):
    """start_agent(*extra_args, env=None) -> AgentProcess; every agent is stopped at teardown."""
    started: list[AgentProcess] = []

    def start(*extra: str, env: dict | None = None, dirs: AgentDirs | None = None,
              metrics: bool = False) -> AgentProcess:
        d = dirs or agent_dirs
        log_path = tmp_path / f"agent-{len(started)}.log"
        # Agents here run in the test's own namespace: no datapath (connectivity, lb, observability, policy) unless a
        # test disables plugins itself. Datapath tests use the `lab` fixture.
        args = [str(BIN / "pylium-agent"), *d.args(), "--log-format", "json",
                "--set", "plugins.disabled={connectivity,lb,observability,policy,health}"]
        if not metrics:
            args += ["--set", "prometheus.port=0"]
        full_env = {**os.environ, **(env or {})}
        with open(log_path, "wb") as log:
            proc = subprocess.Popen([*args, *extra], stdout=log, stderr=subprocess.STDOUT, env=full_env)
        ap = AgentProcess(proc, d, log_path)
        started.append(ap)
        return ap

    yield start
    for ap in started:
        if ap.proc.poll() is None:
            ap.proc.kill()
            ap.proc.wait(10)




@pytest.fixture
def lab(pylium_lab):
    """A node namespace, an outside namespace and helpers to run an agent and pods in them
    (pylium.testing's `pylium_lab`, which plugin authors use too)."""
    return pylium_lab

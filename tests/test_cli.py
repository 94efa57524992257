"""The `pylium` CLI against real agents: exit codes, -o json, --wait, config, plugins."""

from __future__ import annotations

import json
import os
import subprocess
import time

import yaml

from helpers import BIN, run_cli, write_plugin_dist

DEGRADING = """
    from contextlib import asynccontextmanager
    from pylium.core.hookspecs import hookimpl
    from pylium.core.plugin_api import Health

    @asynccontextmanager
    async def _life(ctx):
        ctx.set_health(Health.DEGRADED, "upstream unreachable")
        yield

    @hookimpl
    def pylium_lifespan(ctx):
        return _life(ctx)
"""


def test_status_when_no_agent_runs_exits_2(agent_dirs):
    r = run_cli(agent_dirs, "status")
    assert r.returncode == 2
    assert "no pylium agent is running" in r.stderr and str(agent_dirs.run_dir) in r.stderr


def test_status_json_and_table(start_agent, agent_dirs):
    start_agent().wait_ready()
    r = run_cli(agent_dirs, "status", "-o", "json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["state"] == "running" and s["node"] == agent_dirs.node
    r = run_cli(agent_dirs, "status")
    assert r.returncode == 0 and f"node {agent_dirs.node}" in r.stdout and r.stdout.startswith("Agent:          OK")


def test_status_exit_1_when_a_plugin_is_degraded(start_agent, agent_dirs, tmp_path):
    site = write_plugin_dist(tmp_path / "site", "degrading", "0.1", "degrading", DEGRADING, {"degrading": "degrading"})
    start_agent(env={"PYTHONPATH": str(site)}).wait_ready()
    r = run_cli(agent_dirs, "status")
    assert r.returncode == 1
    assert "DEGRADED(1)" in r.stdout and "upstream unreachable" in r.stdout
    r = run_cli(agent_dirs, "status", "--wait", "--wait-duration", "0.5")
    assert r.returncode == 1


def test_status_wait_waits_for_the_agent_to_come_up(start_agent, agent_dirs):
    waiter = subprocess.Popen([str(BIN / "pylium"), "--run-dir", str(agent_dirs.run_dir), "status", "--wait",
                               "--wait-duration", "60", "-o", "json"], stdout=subprocess.PIPE, text=True)
    time.sleep(1.0)
    assert waiter.poll() is None, "must keep waiting while no agent runs"
    start_agent()
    out, _ = waiter.communicate(timeout=60)
    assert waiter.returncode == 0
    assert json.loads(out)["state"] == "running"


def test_run_dir_from_environment(start_agent, agent_dirs):
    start_agent().wait_ready()
    r = subprocess.run([str(BIN / "pylium"), "status", "-o", "json"], capture_output=True, text=True,
                       env={**os.environ, "PYLIUM_RUN_DIR": str(agent_dirs.run_dir)})
    assert r.returncode == 0 and json.loads(r.stdout)["node"] == agent_dirs.node


def test_config_command_prints_effective_config(start_agent, agent_dirs):
    start_agent("--set", "cluster.name=blue").wait_ready()
    r = run_cli(agent_dirs, "config")
    assert r.returncode == 0
    assert yaml.safe_load(r.stdout)["cluster"]["name"] == "blue"
    r = run_cli(agent_dirs, "config", "-o", "json")
    assert json.loads(r.stdout)["prometheus"]["port"] == 0


def test_plugins_command_table(start_agent, agent_dirs, tmp_path):
    site = write_plugin_dist(tmp_path / "site", "degrading", "0.7", "degrading", DEGRADING, {"degrading": "degrading"})
    start_agent(env={"PYTHONPATH": str(site)}).wait_ready()
    r = run_cli(agent_dirs, "plugins")
    assert r.returncode == 0
    assert "degrading" in r.stdout and "0.7" in r.stdout and "pylium_lifespan" in r.stdout


def test_cni_binary_answers_version():
    r = subprocess.run([str(BIN / "pylium-cni")], capture_output=True, text=True, env={"CNI_COMMAND": "VERSION"})
    assert r.returncode == 0
    assert "1.1.0" in json.loads(r.stdout)["supportedVersions"]
    r = subprocess.run([str(BIN / "pylium-cni")], capture_output=True, text=True, input="{}",
                       env={"CNI_COMMAND": "BOGUS"})
    assert r.returncode == 1 and json.loads(r.stdout)["code"] == 4

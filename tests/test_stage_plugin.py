"""examples/stage-plugin, a third-party plugin with its own BPF stage and map, installed with
pip into a temporary site: its own packet tests pass (pylium.testing), and a real agent loads
it from its entry point and counts real pods' packets; its CLI command comes from the
`pylium.cli` entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import pip_install, run_cli

EXAMPLE = Path(__file__).parent.parent / "examples" / "stage-plugin"


@pytest.fixture(scope="module")
def podcount_site(tmp_path_factory) -> Path:
    site = pip_install(EXAMPLE, tmp_path_factory.mktemp("podcount"))
    assert (site / "pylium_podcount" / "bpf" / "podcount.c").exists(), "the C is installed with the package"
    return site


def test_its_own_packet_tests_pass_with_pylium_testing(podcount_site, tmp_path):
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLE / "tests")],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path,
                       env={**os.environ, "PYTHONPATH": str(podcount_site)})
    assert r.returncode == 0, r.stdout + r.stderr
    assert "3 passed" in r.stdout, r.stdout


def test_a_real_agent_counts_real_pod_traffic(lab, podcount_site):
    env = {"PYTHONPATH": str(podcount_site)}
    lab.start_agent(env=env)
    plugins = {p["name"]: p for p in json.loads(run_cli(lab.dirs, "plugins", "-o", "json").stdout)}
    assert plugins["podcount"]["source"] == "third-party (pylium-podcount)"
    a, b = lab.pod("a"), lab.pod("b")
    lab.exec(a.netns, "ping", "-c", "10", "-i", "0.05", "-W", "1", b.ip)
    r = run_cli(lab.dirs, "podcount", "list", "-o", "json", env=env)
    assert r.returncode == 0, r.stderr
    counts = {row["endpoint"]: row for row in json.loads(r.stdout)}
    sent, received = counts[a.endpoint["id"]], counts[b.endpoint["id"]]
    assert sent["pod"] == a.endpoint["container_id"] and received["pod"] == b.endpoint["container_id"]
    assert sent["tx_packets"] >= 10 and received["rx_packets"] >= 10, counts  # the echo requests
    assert sent["rx_packets"] >= 10 and received["tx_packets"] >= 10, counts  # and the replies
    table = run_cli(lab.dirs, "podcount", "list", env=env).stdout
    assert "TX PACKETS" in table and a.endpoint["container_id"] in table
    assert "Podcount:" in run_cli(lab.dirs, "status").stdout

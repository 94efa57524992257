"""examples/stage-plugin, a third-party plugin with its own BPF stage and map, installed with
pip into a temporary site: its own packet tests pass (pylium.testing), and a real agent loads
it from its entry point and counts real pods' packets; its CLI command comes from the
`pylium.cli` entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
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


def test_a_map_whose_c_pin_differs_from_its_mapspec_is_refused(pylium_stage, tmp_path, monkeypatch):
    """bcc would silently create a second map for a pin name the agent did not open: the stage
    would count into a map nobody reads. The compile step refuses it, naming the pin."""
    import importlib

    (tmp_path / "bpf").mkdir()
    (tmp_path / "bpf" / "mis.c").write_text(textwrap.dedent("""
        #include "pylium_lib.h"
        BPF_TABLE_PINNED("array", __u32, __u64, mis_counts, 16, PYLIUM_PIN "/mis_counts_v2");
        int mis_from(struct __sk_buff *skb) {
            __u32 k = 0;
            __u64 *n = mis_counts.lookup(&k);
            if (n)
                __sync_fetch_and_add(n, 1);
            return from_chain(skb, 4);
        }
    """))
    (tmp_path / "mis.py").write_text(textwrap.dedent("""
        import ctypes as ct
        from pylium.core.api_for_plugins import MapSpec, hookimpl, libbpf

        class Mis:
            @hookimpl
            def pylium_declare(self, declare):
                declare.bpf_maps(MapSpec("mis_counts", libbpf.MAP_ARRAY, ct.c_uint32, ct.c_uint64, 16))  # _v1
                declare.bpf_stage("from-container", 3, "bpf/mis.c", "mis_from")
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("mis")
    from pylium.core.datapath.compiler import CompileError

    with pytest.raises(CompileError, match=r"map mis_counts in C is not the map pinned at .*/mis_counts_v1 "
                                           r"\(its pin name in C must be 'mis_counts_v1'\)"):
        pylium_stage(module.Mis())

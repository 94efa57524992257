"""`pylium-agent --cleanup`: a node leaving pylium takes everything of its own out of the
kernel (chains, devices, tc filters, programs, pins) and nothing of anyone else's."""

from __future__ import annotations

import json
import subprocess
import sys

from pylium.core.agent import cleanup
from pylium.plugins.connectivity import masquerade

OTHER = "other-node"  # a second node's agent on the same kernel


def our_filters(lab) -> list[str]:
    out = []
    for dev in lab.node_links():
        for direction in ("ingress", "egress"):
            shown = lab.node("tc", "-j", "filter", "show", "dev", dev, direction, check=False).stdout
            out += [f"{dev} {direction} {f['kind']}" for f in json.loads(shown or "[]") if "options" in f]
    return out


def object_exists(kind: str, object_id: int) -> bool:
    return subprocess.run(["bpftool", kind, "show", "id", str(object_id)], capture_output=True).returncode == 0


def program_exists(prog_id: int) -> bool:
    return object_exists("prog", prog_id)


def test_cleanup_removes_this_nodes_state_only(lab):
    lab.start_agent("--set", "routingMode=tunnel")
    pod = lab.pod("a")
    ext = f"{lab.prefix}e"
    lab.node("tc", "filter", "add", "dev", ext, "ingress", "pref", "7", "bpf", "bytecode", "1,6 0 0 4294967295")  # not ours
    lab.node(sys.executable, "-c", f"from pylium.plugins.connectivity import masquerade; "
                                   f"masquerade.apply({OTHER!r}, 4, ['10.99.0.0/24'], ['10.99.0.0/16'], True)")
    other_pins = lab.bpf_root / OTHER
    other_pins.mkdir(parents=True)
    node_dir = lab.bpf_root / lab.dirs.node
    programs = cleanup.pinned_programs(node_dir)
    assert programs, "the running node pinned its programs"
    prog_arrays = [json.loads(lab.node("bpftool", "-j", "map", "show", "pinned", str(pin)).stdout)["id"]
                   for pin in node_dir.rglob("calls_*")]
    assert len(prog_arrays) == 2

    refused = lab.node(*lab.agent_args("--cleanup"), check=False)
    assert refused.returncode == 1 and "is using" in refused.stderr and "stop it first" in refused.stderr
    assert node_dir.exists(), "a refused cleanup changes nothing"

    lab.agents[-1].stop()
    ours, theirs = masquerade.chain_name(lab.dirs.node), masquerade.chain_name(OTHER)
    assert f"-N {ours}" in lab.node("iptables", "-t", "nat", "-S").stdout, "a stopped agent keeps its datapath"
    assert pod.endpoint["host_ifname"] + " ingress bpf" in our_filters(lab)

    done = lab.node(*lab.agent_args("--cleanup"), check=False)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert f"removed iptables chain {ours} (IPv4)" in lines
    assert {"removed device pylium_host", "removed device pylium_vxlan", f"removed bpf directory {node_dir}"} <= \
        set(lines)
    rules = lab.node("iptables", "-t", "nat", "-S").stdout
    assert ours not in rules and f"-N {theirs}" in rules and f"-j {theirs}" in rules, rules
    assert our_filters(lab) == [f"{ext} ingress bpf"], "only the other filter is left"
    links = lab.node_links()
    assert "pylium_host" not in links and "pylium_net" not in links and "pylium_vxlan" not in links
    assert not node_dir.exists() and other_pins.exists()
    assert not [p for p in programs if program_exists(p)], "no program of the node is left in the kernel"
    # a stage that tail-calls into its own array is a cycle the kernel did not always break
    assert not [m for m in prog_arrays if object_exists("map", m)], "no program array is left either"
    assert lab.dirs.state_dir.exists(), "the state directory stays"

    again = lab.node(*lab.agent_args("--cleanup"))
    assert again.stdout.strip().endswith("clean (0 removed)")

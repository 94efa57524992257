"""Meta-tests: every hook is documented (docstring and docs/plugins.md) and called by a real
agent in a test; the docs say what the code does."""

from __future__ import annotations

import inspect
import json
import os
from pathlib import Path

import pytest

from pylium.core import hookspecs

ROOT = Path(__file__).parent.parent
HOOKS = sorted(
    name for name, fn in vars(hookspecs).items()
    if name.startswith("pylium_") and inspect.isfunction(fn) and hasattr(fn, "pylium_spec")
)


def test_there_are_hooks():
    assert {"pylium_config_model", "pylium_declare", "pylium_lifespan", "pylium_status_details"} <= set(HOOKS)


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_has_a_real_docstring(hook):
    doc = inspect.getdoc(getattr(hookspecs, hook)) or ""
    assert len(doc) >= 80, f"{hook} needs a docstring that explains when it is called and what it returns"


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_in_the_plugin_guide(hook):
    assert f"`{hook}" in (ROOT / "docs" / "plugins.md").read_text(), f"docs/plugins.md does not mention {hook}"


def test_a_failing_declare_exits_as_documented(start_agent, tmp_path):
    import re

    from helpers import write_plugin_dist

    site = write_plugin_dist(tmp_path / "site", "baddecl", "0.1", "baddecl", """
        from pylium.core.api_for_plugins import hookimpl

        @hookimpl
        def pylium_declare(declare):
            raise RuntimeError("no can do")
    """, {"baddecl": "baddecl"})
    agent = start_agent(env={"PYTHONPATH": str(site)})
    code = agent.proc.wait(30)
    assert "plugin baddecl: pylium_declare failed: RuntimeError: no can do" in agent.log
    documented = re.search(r"exit code (\d+)", inspect.getdoc(hookspecs.pylium_declare))
    assert documented and int(documented.group(1)) == code == 78
    assert "`pylium_declare`" in (ROOT / "docs" / "plugins.md").read_text()
    assert re.search(r"pylium_declare.*?exit code 78", (ROOT / "docs" / "plugins.md").read_text(), re.S)


def _hook_records(lab) -> list[dict]:
    return [json.loads(line) for line in
            (lab.dirs.state_dir / "plugins" / "epwatch" / "hooks.jsonl").read_text().splitlines()]


def test_a_real_agent_calls_every_hook_as_documented(lab, tmp_path):
    """tests/data/epwatch_plugin.py implements every hook and records each call: a real agent
    with real pods calls them all, in order, and copes with each way a hook can fail."""
    from helpers import install_test_plugin, run_cli

    site = install_test_plugin(tmp_path / "site", "epwatch_plugin", "epwatch", "EpWatch")
    lab.start_agent(env={"PYTHONPATH": str(site)})
    good = lab.pod("good")
    shown = lab.api.get(f"/v1/endpoints/{good.endpoint['id']}")
    assert "epwatch:scribbled=yes" not in shown["labels"] and shown["addresses"], "hooks get copies"
    links_before = set(lab.node_links())
    for container, labels, error in (
            ("refused", {"cni:fail": "plug"}, {"error": "epwatch refuses endpoint 2", "code": "refused"}),
            ("overstep", {"cni:contribute": "mtu"},  # a field another plugin owns
             {"error": "plugin epwatch: pylium_endpoint_plug sets mtu, which it did not declare "
                       "(declare.endpoint_fields)", "code": "internal"})):
        ns = lab.netns(container)
        code, body = lab.api.request("POST", "/v1/cni/add", {"container_id": container, "ifname": "eth0",
                                                             "netns": f"/var/run/netns/{ns}", "labels": labels})
        assert code in (400, 500) and body == error
        assert set(lab.node_links()) == links_before, "a refused endpoint leaves no veth behind"
        assert "eth0" not in lab.exec(ns, "ip", "link").stdout
    assert [a["owner"]["container_id"] for a in lab.api.get("/v1/ipam?all=true")["allocations"]] == \
           [good.endpoint["container_id"]]
    assert [r["prefix"] for r in lab.api.get("/v1/bpf/ipcache") if r["owner"] == "core/endpoints"] == \
           [f"{good.ip}/32"], "nor an ipcache record"
    code, body = lab.api.request("POST", "/v1/cni/check", {"container_id": good.endpoint["container_id"],
                                                           "ifname": "eth0"})
    assert code == 200
    records = [r for r in _hook_records(lab) if "endpoint" in r]
    assert [(r["hook"], r["endpoint"]) for r in records] == [
        ("plug", 1), ("plug", 2), ("unplug", 2), ("plug", 2), ("unplug", 2), ("check", 1)]
    assert records[0]["host_ifname"] == good.endpoint["host_ifname"]  # connectivity plugged before epwatch

    # an update a plugin refuses: the plugins before it get the old labels back, nothing changes
    ep_id = good.endpoint["id"]
    identity = lab.api.get(f"/v1/endpoints/{ep_id}")["identity"]
    code, body = lab.api.request("POST", f"/v1/endpoints/{ep_id}/labels", {"add": {"fail": "update"}})
    assert (code, body["error"]) == (400, f"epwatch refuses the labels of endpoint {ep_id}")
    after = lab.api.get(f"/v1/endpoints/{ep_id}")
    assert "unspec:fail=update" not in after["labels"] and after["identity"] == identity

    # a restore that fails removes that endpoint only
    doomed = lab.pod("doomed", labels={"cni:fail": "restore"})
    lab.agents[0].stop()
    lab.start_agent(env={"PYTHONPATH": str(site)})
    assert [e["id"] for e in lab.api.get("/v1/endpoints")] == [ep_id]
    assert doomed.endpoint["host_ifname"] not in lab.node_links(), "its veth is gone"
    assert [a["owner"]["container_id"] for a in lab.api.get("/v1/ipam?all=true")["allocations"]] == \
           [good.endpoint["container_id"]], "its address is free"
    assert f"not restored: epwatch: RuntimeError: epwatch cannot restore endpoint {doomed.endpoint['id']}" \
           in lab.agents[-1].log

    lab.api.call("POST", f"/v1/endpoints/{ep_id}/labels", {"add": {"x": "y"}})
    run_cli(lab.dirs, "status")
    records = _hook_records(lab)
    assert [(r["hook"], r["endpoint"]) for r in records if "endpoint" in r][-4:] == [
        ("restore", 1), ("restore", 2), ("unplug", 2), ("update", 1)]
    update = [r for r in records if r["hook"] == "update"][-1]
    assert update["changed"] == ["labels"] and "unspec:x=y" in update["labels"]

    lab.agents[-1].stop()  # the node leaves: --cleanup calls every plugin, in reverse start order
    cleaned = lab.node(*lab.agent_args("--cleanup"), env={**os.environ, "PYTHONPATH": str(site)})
    lines = cleaned.stdout.splitlines()
    assert "removed epwatch's records of nothing" in lines
    assert lines.index("removed epwatch's records of nothing") < lines.index("removed device pylium_host"), \
        "epwatch (started after connectivity) is cleaned up before it"
    records = _hook_records(lab)
    specified = {name.removeprefix("pylium_").removeprefix("endpoint_") for name in HOOKS}
    assert {r["hook"] for r in records} == specified, "every hook of the contract was called"

"""Faults: the agent killed with SIGKILL at every step of a CNI ADD (PYLIUM_CRASH_AT, see
core/faults.py); after a restart, the DEL, or the retried ADD and then the DEL, leave neither
a veth nor an address nor an endpoint behind."""

from __future__ import annotations

import json

import pytest

from pylium.core.faults import CNI_ADD_POINTS
from pylium.testing.lab import NODE_IP


def env(ns: str, container: str) -> dict:
    return {"CNI_CONTAINERID": container, "CNI_NETNS": f"/var/run/netns/{ns}", "CNI_IFNAME": "eth0"}


def veths(lab) -> list[str]:
    return [link for link in lab.node_links() if link.startswith("lxc")]


def assert_clean(lab, ns: str) -> None:
    assert veths(lab) == [], "no veth is left"
    assert lab.api.get("/v1/ipam?all=true")["allocations"] == [], "no address is left"
    assert lab.api.get("/v1/endpoints") == [], "no endpoint is left"
    assert "eth0" not in lab.exec(ns, "ip", "-o", "link").stdout, "nothing is left in the pod"


def crash_during_add(lab, ns: str, container: str, point: str) -> None:
    agent = lab.start_agent(env={"PYLIUM_CRASH_AT": point})
    r = lab.cni("ADD", env(ns, container), lab.conf())
    if point == "endpoint-ready":  # the answer may or may not have left before the crash
        agent.proc.wait(10)
    else:
        assert r.returncode != 0, f"the ADD cannot succeed when the agent dies at {point}"
    assert agent.proc.wait(10) == -9, f"the agent died at {point}"
    lab.start_agent()


@pytest.mark.parametrize("point", CNI_ADD_POINTS)
def test_kill_at_every_step_of_cni_add_leaves_nothing(lab, point):
    ns = lab.netns("p")
    crash_during_add(lab, ns, "deleted", point)
    assert lab.cni("DEL", env(ns, "deleted"), lab.conf()).returncode == 0
    assert_clean(lab, ns)

    lab.agents[-1].stop()
    crash_during_add(lab, ns, "retried", point)
    retried = lab.cni("ADD", env(ns, "retried"), lab.conf())
    assert retried.returncode == 0, retried.stdout
    [ip] = json.loads(retried.stdout)["ips"]
    allocations = lab.api.get("/v1/ipam?all=true")["allocations"]
    addresses = [x["cidr"].split("/")[0] for a in allocations for x in a["addresses"]]
    assert len(veths(lab)) == 1 and addresses == [ip["address"].split("/")[0]], "one veth and one address: the retry's"
    lab.exec(ns, "ping", "-c1", "-W2", NODE_IP)
    assert lab.cni("DEL", env(ns, "retried"), lab.conf()).returncode == 0
    assert_clean(lab, ns)

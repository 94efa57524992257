"""Faults: the agent killed with SIGKILL at every step of a CNI ADD (PYLIUM_CRASH_AT, see
core/faults.py); after a restart, the DEL, or the retried ADD and then the DEL, leave neither
a veth nor an address nor an endpoint behind. The state directory on a full filesystem.
(Full BPF maps: tests/test_lb.py::test_services_that_do_not_fit_the_maps_are_refused_whole,
tests/test_policy.py::test_a_policy_that_does_not_fit_the_map,
tests/test_policy.py::test_a_full_conntrack_map_keeps_traffic_and_policy,
tests/test_lb.py::test_a_full_nat_map_keeps_live_connections_and_takes_new_ones.)"""

from __future__ import annotations

import json
import re
import subprocess

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


def test_a_full_state_directory_refuses_cleanly_and_keeps_its_state(lab):
    """The state directory on a tiny tmpfs, filled up: an ADD is refused naming the cause and
    leaves nothing; once space returns, ADDs work and a restarted agent has every endpoint."""
    state = lab.dirs.state_dir
    state.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "pylium-full", str(state)], check=True)
    try:
        lab.start_agent()
        first = lab.pod("a")
        filler = state / "filler"
        subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=64k"], capture_output=True)  # until ENOSPC
        ns = lab.netns("b")
        code, body = lab.api.request("POST", "/v1/cni/add", {"container_id": "full", "ifname": "eth0",
                                                             "netns": f"/var/run/netns/{ns}"})
        assert code >= 400 and re.search(r"No space left on device|disk is full", str(body)), body
        assert veths(lab) == [first.endpoint["host_ifname"]], "the refused ADD left no veth"
        assert [a["owner"]["container_id"] for a in lab.api.get("/v1/ipam?all=true")["allocations"]] == \
            [first.endpoint["container_id"]], "nor an address"
        assert lab.api.get("/v1/healthz") == {"status": "ok"}
        filler.unlink()
        second = lab.pod("c")
        lab.agents[-1].stop()
        lab.start_agent()
        assert [e["container_id"] for e in lab.api.get("/v1/endpoints")] == \
            [first.endpoint["container_id"], second.endpoint["container_id"]]
        lab.exec(second.netns, "ping", "-c1", "-W2", first.ip)
    finally:
        for agent in lab.agents:
            if agent.proc.poll() is None:
                agent.proc.kill()
                agent.proc.wait(10)
        subprocess.run(["umount", "-l", str(state)], check=False)

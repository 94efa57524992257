"""IPAM through a real agent and its bus: concurrency, kill -9 durability, exhaustion, dual
stack, pools, bad requests, CLI."""

from __future__ import annotations

import ipaddress
import json
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import zmq

from helpers import BusRequester, run_cli


def _args(*sets: str) -> list[str]:
    out = []
    for s in sets:
        out += ["--set", s]
    return out


@pytest.fixture
def ipam_agent(start_agent, agent_dirs):
    """An agent with a small test pool (never the default 10.0.0.0/8)."""

    def start(*sets: str):
        agent = start_agent(*_args("ipam.operator.clusterPoolIPv4PodCIDRList={10.77.0.0/16}", *sets))
        agent.wait_ready()
        return agent, BusRequester(agent_dirs.run_dir)

    return start


def _ips(body) -> list[str]:
    return [a["ip"] for a in body["addresses"]]


def test_200_concurrent_allocations_are_distinct(ipam_agent, agent_dirs):
    agent, bus = ipam_agent()
    corrs = {bus.send("ipam.allocate", {"owner": {"container_id": f"c{i}", "interface": "eth0"}}): i
             for i in range(200)}
    answers = {}
    for _ in corrs:
        corr, outcome, body = bus.receive()
        assert outcome == "ok", body
        answers[corrs[corr]] = body
    ips = [_ips(b)[0] for b in answers.values()]
    assert len(set(ips)) == 200
    assert all(ipaddress.ip_address(ip) in ipaddress.ip_network("10.77.0.0/24") for ip in ips)
    assert "10.77.0.1" not in ips and "10.77.0.0" not in ips
    # asking again for the same owner returns the same address (CNI ADD retries do not leak)
    outcome, again = bus.call("ipam.allocate", {"owner": {"container_id": "c7", "interface": "eth0"}})
    assert _ips(again) == _ips(answers[7])
    listing = agent_dirs.client.get("/v1/ipam?all=true")
    assert listing["pools"][0]["used"] == 200 and len(listing["allocations"]) == 200


BURST = """
import json, sys, zmq
run_dir, out_path, workers = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = zmq.Context().socket(zmq.DEALER)
s.setsockopt(zmq.LINGER, 0)
s.connect(f"ipc://{run_dir}/rpc.sock")
out = open(out_path, "a", buffering=1)
n = 0
def send():
    global n
    n += 1
    s.send_multipart([b"", str(n).encode(), b"ipam.allocate",
                      json.dumps({"owner": {"container_id": f"burst-{n}", "interface": "eth0"}}).encode()])
for _ in range(workers):
    send()
while s.poll(3000):
    _, corr, outcome, body = s.recv_multipart()
    if outcome == b"ok":
        out.write(json.dumps({"owner": f"burst-{corr.decode()}", "ip": json.loads(body)["addresses"][0]["ip"]}) + "\\n")
    send()
"""


def test_kill_9_in_a_burst_loses_and_reuses_nothing(start_agent, agent_dirs, tmp_path):
    sets = _args("ipam.operator.clusterPoolIPv4PodCIDRList={10.78.0.0/16}", "ipam.operator.clusterPoolIPv4MaskSize=20")
    agent = start_agent(*sets)
    agent.wait_ready()
    log = tmp_path / "returned.jsonl"
    client = subprocess.Popen([sys.executable, "-c", BURST, str(agent_dirs.run_dir), str(log), "8"])
    deadline = time.monotonic() + 30
    while (not log.exists() or len(log.read_text().splitlines()) < 300) and time.monotonic() < deadline:
        time.sleep(0.02)
    agent.proc.send_signal(signal.SIGKILL)  # in the middle of the burst
    agent.proc.wait(10)
    client.wait(30)
    returned = {}
    for line in log.read_text().splitlines():
        rec = json.loads(line)
        returned[rec["owner"]] = rec["ip"]
    assert len(returned) >= 300 and len(set(returned.values())) == len(returned)

    again = start_agent(*sets)
    again.wait_ready()
    held = {a["owner"]["container_id"]: a["addresses"][0]["ip"]
            for a in agent_dirs.client.get("/v1/ipam?all=true")["allocations"]}
    for owner, ip in returned.items():  # every answered allocation survived, unchanged
        assert held.get(owner) == ip, owner
    bus = BusRequester(agent_dirs.run_dir)
    fresh = []
    for i in range(100):
        outcome, body = bus.call("ipam.allocate", {"owner": {"container_id": f"after-{i}", "interface": "eth0"}})
        assert outcome == "ok", body
        fresh.append(_ips(body)[0])
    assert not set(fresh) & set(held.values()), "an address was handed out twice"
    owner, ip = next(iter(returned.items()))
    outcome, body = bus.call("ipam.allocate", {"owner": {"container_id": owner, "interface": "eth0"}})
    assert _ips(body) == [ip]


def test_exhausting_a_29_pool(start_agent, agent_dirs):
    agent = start_agent(*_args("ipam.operator.clusterPoolIPv4PodCIDRList={10.79.0.0/29}",
                               "ipam.operator.clusterPoolIPv4MaskSize=29", "prometheus.port=0"))
    agent.wait_ready()
    events = zmq.Context.instance().socket(zmq.SUB)
    events.connect(f"ipc://{agent_dirs.run_dir}/bus.sock")
    events.subscribe(b"ipam.pool.exhausted")
    time.sleep(0.3)
    bus = BusRequester(agent_dirs.run_dir)
    for i in range(5):
        assert bus.call("ipam.allocate", {"owner": {"container_id": f"c{i}"}})[0] == "ok"
    outcome, body = bus.call("ipam.allocate", {"owner": {"container_id": "one-too-many"}})
    assert outcome == "error" and body["code"] == "exhausted"
    assert body["message"] == ("pool default (ipv4) is exhausted: 5/5 addresses in use in this node's blocks "
                               "10.79.0.0/29 (pool CIDRs 10.79.0.0/29)")
    assert events.poll(5000)
    topic, _, payload = events.recv_multipart()
    assert json.loads(payload) == {"pool": "default", "family": "ipv4", "cidrs": ["10.79.0.0/29"],
                                   "blocks": ["10.79.0.0/29"], "used": 5, "total": 5}
    # freeing one makes room again
    assert bus.call("ipam.release", {"container_id": "c0"})[0] == "ok"
    assert bus.call("ipam.allocate", {"owner": {"container_id": "one-too-many"}})[0] == "ok"


def test_exhaustion_metrics(start_agent, agent_dirs):
    from helpers import free_port
    import urllib.request
    from prometheus_client.parser import text_string_to_metric_families

    port = free_port()
    agent = start_agent(*_args("ipam.operator.clusterPoolIPv4PodCIDRList={10.79.0.0/29}",
                               "ipam.operator.clusterPoolIPv4MaskSize=29", f"prometheus.port={port}",
                               "prometheus.address=127.0.0.1"), metrics=True)
    agent.wait_ready()
    bus = BusRequester(agent_dirs.run_dir)
    for i in range(6):
        bus.call("ipam.allocate", {"owner": {"container_id": f"c{i}"}})
    bus.call("ipam.release", {"container_id": "c1"})
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples[("cilium_ipam_capacity", (("family", "ipv4"), ("pool", "default")))] == 5
    assert samples[("cilium_ip_addresses", (("family", "ipv4"), ("pool", "default")))] == 4
    assert samples[("cilium_ipam_events_total", (("action", "allocate"), ("family", "ipv4")))] == 5
    assert samples[("cilium_ipam_events_total", (("action", "release"), ("family", "ipv4")))] == 1
    assert samples[("pylium_ipam_exhausted_total", (("family", "ipv4"), ("pool", "default")))] == 1


def test_dual_stack(ipam_agent, agent_dirs):
    agent, bus = ipam_agent("ipv6.enabled=true", "ipam.operator.clusterPoolIPv6PodCIDRList={fd00:77::/104}")
    outcome, body = bus.call("ipam.allocate", {"owner": {"container_id": "ds", "interface": "eth0"}})
    assert outcome == "ok"
    fams = {a["family"]: a for a in body["addresses"]}
    assert set(fams) == {"ipv4", "ipv6"}
    assert ipaddress.ip_address(fams["ipv6"]["ip"]) in ipaddress.ip_network("fd00:77::/120")
    assert fams["ipv6"]["gateway"] == "fd00:77::1" and fams["ipv4"]["gateway"] == "10.77.0.1"
    outcome, body = bus.call("ipam.allocate", {"owner": {"container_id": "v6only"}, "family": "ipv6"})
    assert [a["family"] for a in body["addresses"]] == ["ipv6"]
    status = run_cli(agent_dirs, "status")
    assert "IPv4: 1/253 allocated from 10.77.0.0/24; IPv6: 2/254 allocated from fd00:77::/120" in status.stdout


def test_multi_pool_selection_and_growth(start_agent, agent_dirs, tmp_path):
    cfg = tmp_path / "pools.yaml"
    cfg.write_text(textwrap.dedent("""
        ipam:
          mode: multi-pool
          pools:
            default: {ipv4: {cidrs: [10.81.0.0/24], maskSize: 28}}
            blue:    {ipv4: {cidrs: [10.82.0.0/27], maskSize: 29}}
    """))
    agent = start_agent("--config", str(cfg))
    agent.wait_ready()
    bus = BusRequester(agent_dirs.run_dir)
    outcome, body = bus.call("ipam.allocate", {"owner": {"container_id": "b0"}, "pool": "blue"})
    assert outcome == "ok" and body["pool"] == "blue" and _ips(body)[0].startswith("10.82.0.")
    outcome, body = bus.call("ipam.allocate", {"owner": {"container_id": "d0"}})
    assert body["pool"] == "default" and _ips(body)[0].startswith("10.81.0.")
    # blue grows block by block (/29 = 5 usable each) until its /27 is used up: 4 blocks, 20 addresses
    got = {_ips(bus.call("ipam.allocate", {"owner": {"container_id": f"b{i}"}, "pool": "blue"})[1])[0]
           for i in range(1, 20)}
    assert len(got) == 19
    outcome, body = bus.call("ipam.allocate", {"owner": {"container_id": "b20"}, "pool": "blue"})
    assert outcome == "error" and body["code"] == "exhausted" and "no free block is left" in body["message"]
    blue = next(p for p in agent_dirs.client.get("/v1/ipam")["pools"] if p["name"] == "blue")
    assert len(blue["blocks"]) == 4 and blue["used"] == 20


def test_kubernetes_mode_uses_the_node_pod_cidr(ipam_agent):
    agent, bus = ipam_agent("ipam.mode=kubernetes", "ipam.podCIDRs={10.90.3.0/26}")
    outcome, body = bus.call("ipam.allocate", {"owner": {"container_id": "k"}})
    assert body["addresses"][0]["block"] == "10.90.3.0/26" and body["addresses"][0]["gateway"] == "10.90.3.1"


@pytest.mark.parametrize("payload, code, fragment", [
    ({"owner": {"container_id": "x"}, "pool": "purple"}, "unknown_pool", "unknown pool 'purple' (pools: default)"),
    ({"owner": {"container_id": "x"}, "requested": ["192.168.1.5"]}, "bad_request",
     "requested address 192.168.1.5 is outside pool default"),
    ({"owner": {"container_id": "x"}, "requested": ["10.77.0.1"]}, "conflict", "router address"),
    ({"owner": {"container_id": 5}}, "bad_request", "at `$.owner.container_id`"),
    ({"owner": {"container_id": "x"}, "colour": "red"}, "bad_request", "unknown field `colour`"),
    ({"owner": {"container_id": "x", "interface": "eth/0"}}, "bad_request", "owner.interface"),
    ({}, "bad_request", "missing required field `owner`"),
])
def test_bad_requests_change_nothing(ipam_agent, agent_dirs, payload, code, fragment):
    agent, bus = ipam_agent()
    before = agent_dirs.client.get("/v1/ipam?all=true")
    outcome, body = bus.call("ipam.allocate", payload)
    assert outcome == "error" and body["code"] == code and fragment in body["message"], body
    assert agent_dirs.client.get("/v1/ipam?all=true") == before


def test_malformed_json_is_an_error(ipam_agent, agent_dirs):
    agent, bus = ipam_agent()
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.connect(f"ipc://{agent_dirs.run_dir}/rpc.sock")
    s.send_multipart([b"", b"1", b"ipam.allocate", b"{oops"])
    assert s.poll(5000)
    _, _, outcome, body = s.recv_multipart()
    assert outcome == b"error" and json.loads(body)["code"] == "bad_request"
    assert agent_dirs.client.get("/v1/ipam?all=true")["allocations"] == []


def test_release_is_idempotent_and_restart_keeps_allocations(ipam_agent, start_agent, agent_dirs):
    agent, bus = ipam_agent()
    _, first = bus.call("ipam.allocate", {"owner": {"container_id": "keep", "interface": "eth0"}})
    bus.call("ipam.allocate", {"owner": {"container_id": "gone", "interface": "eth0"}})
    outcome, body = bus.call("ipam.release", {"container_id": "gone", "interface": "eth0"})
    assert outcome == "ok" and len(body["released"]) == 1
    assert bus.call("ipam.release", {"container_id": "gone", "interface": "eth0"}) == ("ok", {"released": []})
    assert bus.call("ipam.release", {"container_id": "never-seen"}) == ("ok", {"released": []})
    assert agent.stop() == 0
    agent = start_agent(*_args("ipam.operator.clusterPoolIPv4PodCIDRList={10.77.0.0/16}"))
    agent.wait_ready()
    bus = BusRequester(agent_dirs.run_dir)
    _, again = bus.call("ipam.allocate", {"owner": {"container_id": "keep", "interface": "eth0"}})
    assert _ips(again) == _ips(first)
    listing = agent_dirs.client.get("/v1/ipam?all=true")
    assert [a["owner"]["container_id"] for a in listing["allocations"]] == ["keep"]


def test_ipam_list_cli(ipam_agent, agent_dirs):
    agent, bus = ipam_agent()
    bus.call("ipam.allocate", {"owner": {"container_id": "cli-test", "interface": "eth0"}})
    r = run_cli(agent_dirs, "ipam", "list")
    assert r.returncode == 0 and "10.77.0.0/16" in r.stdout and "10.77.0.0/24" in r.stdout and "252" in r.stdout
    r = run_cli(agent_dirs, "ipam", "list", "--all")
    assert "cli-test/eth0" in r.stdout
    data = json.loads(run_cli(agent_dirs, "ipam", "list", "--all", "-o", "json").stdout)
    assert data["pools"][0] | {"used": 1} == data["pools"][0]
    assert data["allocations"][0]["owner"] == {"container_id": "cli-test", "interface": "eth0"}


def test_bad_ipam_config_exits_78(start_agent):
    agent = start_agent(*_args("ipam.mode=multi-pool"))
    assert agent.proc.wait(30) == 78
    assert "ipam: multi-pool mode needs at least one pool in ipam.pools" in agent.log
    agent = start_agent(*_args("ipam.operator.clusterPoolIPv4PodCIDRList={10.0.0.0/40}"))
    assert agent.proc.wait(30) == 78
    assert "ipam.operator.clusterPoolIPv4PodCIDRList" in agent.log and "is not a CIDR" in agent.log

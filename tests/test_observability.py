"""Observability: flows with Hubble's fields from real pods, filters, follow, monitor, drops,
lost events, metrics (parsed by prometheus-client's parser) and the service map."""

from __future__ import annotations

import json
import subprocess
import textwrap
import threading
import time
from pathlib import Path

import msgspec
import pytest
from prometheus_client.parser import text_string_to_metric_families

from helpers import BIN, run_cli
from pylium.testing.lab import OUTSIDE_IP
from test_datapath import ask, ping, serve

from pylium.plugins.observability.cli import _ordered_filters
from pylium.plugins.observability.filters import FilterBuilder, FilterError, compile_lists
from pylium.plugins.observability.flow import Flow, FlowBatch
from pylium.plugins.observability.render import compact

RECORDED = Path(__file__).parent / "data" / "flows.jsonl"  # `pylium observe --all -o json`, aggregation none
UNROUTABLE = "10.210.0.200"  # in the node's pod block, no endpoint
PODS = textwrap.dedent("""
    apiVersion: v1
    kind: Pod
    metadata: {name: xwing, namespace: default, labels: {app: xwing, org: alliance}}
    ---
    apiVersion: v1
    kind: Pod
    metadata: {name: deathstar, namespace: empire, labels: {app: deathstar, org: empire}}
""")


# ---- filters, one by one, against a recorded flow set --------------------------------------


def recorded() -> list[dict]:
    return [json.loads(line)["flow"] for line in RECORDED.read_text().splitlines()]


def matching(*args: str) -> set[str]:
    builder = FilterBuilder()
    for flag, value in _ordered_filters(list(args)):
        builder.add(flag, value)
    match = compile_lists(*builder.lists())
    return {f["uuid"] for f in recorded() if match(msgspec.convert(f, Flow))}


def pod(ep) -> str:
    return f"{ep.get('namespace')}/{ep.get('pod_name')}" if ep and ep.get("pod_name") else ""


def l4port(f, side) -> int | None:
    x = (f.get("l4") or {}).get("TCP") or (f.get("l4") or {}).get("UDP")
    return x.get(f"{side}_port") if x else None


def ip(f, side) -> str:
    return (f.get("IP") or {}).get(side, "")


def labels(f, side) -> list[str]:
    return (f.get(side) or {}).get("labels", [])


FILTER_CASES = [
    (["--pod", "default/xwing"], lambda f: "default/xwing" in (pod(f.get("source")), pod(f.get("destination")))),
    (["--pod", "xwing"], lambda f: "default/xwing" in (pod(f.get("source")), pod(f.get("destination")))),
    (["--from-pod", "default/xwing"], lambda f: pod(f.get("source")) == "default/xwing"),
    (["--to-pod", "empire/death"], lambda f: pod(f.get("destination")) == "empire/deathstar"),
    (["--namespace", "empire"], lambda f: "empire" in ((f.get("source") or {}).get("namespace"),
                                                       (f.get("destination") or {}).get("namespace"))),
    (["--from-namespace", "empire"], lambda f: (f.get("source") or {}).get("namespace") == "empire"),
    (["--label", "k8s:app=deathstar"], lambda f: "k8s:app=deathstar" in labels(f, "source") + labels(f, "destination")),
    (["--from-label", "org=alliance"], lambda f: "k8s:org=alliance" in labels(f, "source")),
    (["--to-label", "reserved:world"], lambda f: "reserved:world" in labels(f, "destination")),
    (["--from-label", "reserved:host"], lambda f: "reserved:host" in labels(f, "source")),
    (["--to-label", "app,org=empire"], lambda f: "k8s:org=empire" in labels(f, "destination")),
    (["--to-label", "!org"], lambda f: not any(l.startswith("k8s:org=") for l in labels(f, "destination"))),
    (["--to-label", "org!=empire"], lambda f: any(l.startswith("k8s:org=") and l != "k8s:org=empire"
                                                 for l in labels(f, "destination"))
                                             or not any(l.startswith("k8s:org=") for l in labels(f, "destination"))),
    (["--ip", OUTSIDE_IP], lambda f: OUTSIDE_IP in (ip(f, "source"), ip(f, "destination"))),
    (["--ip", "10.250.0.0/24"], lambda f: any(ip(f, s).startswith("10.250.0.") for s in ("source", "destination"))),
    (["--from-ip", "10.210.0.0/24"], lambda f: ip(f, "source").startswith("10.210.0.")),
    (["--to-ip", "ff02::/16"], lambda f: ip(f, "destination").startswith("ff02:")),
    (["--port", "80"], lambda f: 80 in (l4port(f, "source"), l4port(f, "destination"))),
    (["--from-port", "80"], lambda f: l4port(f, "source") == 80),
    (["--to-port", "53"], lambda f: l4port(f, "destination") == 53),
    (["--protocol", "udp"], lambda f: "UDP" in (f.get("l4") or {})),
    (["--protocol", "icmp"], lambda f: {"ICMPv4", "ICMPv6"} & set(f.get("l4") or {})),
    (["--protocol", "tcp", "--protocol", "udp"], lambda f: {"TCP", "UDP"} & set(f.get("l4") or {})),
    (["--verdict", "DROPPED"], lambda f: f["verdict"] == "DROPPED"),
    (["-t", "drop"], lambda f: f["event_type"]["type"] == 1),
    (["--type", "trace:to-stack"], lambda f: f.get("trace_observation_point") == "TO_STACK"),
    (["-t", "trace:from-endpoint"], lambda f: f.get("trace_observation_point") == "FROM_ENDPOINT"),
    (["--drop-reason-desc", "STALE_OR_UNROUTABLE_IP"], lambda f: f.get("drop_reason_desc") == "STALE_OR_UNROUTABLE_IP"),
    (["--traffic-direction", "egress"], lambda f: f.get("traffic_direction") == "EGRESS"),
    (["--identity", "2"], lambda f: 2 in ((f.get("source") or {}).get("identity"),
                                          (f.get("destination") or {}).get("identity"))),
    (["--from-identity", "1"], lambda f: (f.get("source") or {}).get("identity") == 1),
    (["--not", "--protocol", "icmp"], lambda f: not {"ICMPv4", "ICMPv6"} & set(f.get("l4") or {})),
    (["--protocol", "tcp", "--not", "--to-port", "80"], lambda f: "TCP" in (f.get("l4") or {})
                                                         and l4port(f, "destination") != 80),
    # Hubble's two-sided semantics: (source pod and source port) or (destination pod and destination port)
    (["--pod", "empire/deathstar", "--port", "80"],
     lambda f: (pod(f.get("source")) == "empire/deathstar" and l4port(f, "source") == 80)
     or (pod(f.get("destination")) == "empire/deathstar" and l4port(f, "destination") == 80)),
    (["--uuid", "x"], lambda f: False),
]


@pytest.mark.parametrize("args, expected", FILTER_CASES, ids=[" ".join(a) for a, _ in FILTER_CASES])
def test_filter_against_the_recorded_flows(args, expected):
    flows = recorded()
    want = {f["uuid"] for f in flows if expected(f)}
    assert matching(*args) == want
    if args[0] != "--uuid":
        assert 0 < len(want) < len(flows), "the recorded set must let this filter discriminate"


@pytest.mark.parametrize("args, message", [
    (["--ip", "10.1.2"], "not an IP address or CIDR"),
    (["-t", "dorp"], "unknown event type"),
    (["-t", "trace:to-moon"], "unknown subtype"),
    (["--verdict", "MAYBE"], "unknown verdict"),
    (["--protocol", "sctpx"], "unknown protocol"),
    (["--drop-reason-desc", "BAD_LUCK"], "unknown drop reason"),
    (["--identity", "world"], "an identity is a number"),
    (["--traffic-direction", "up"], "ingress or egress"),
])
def test_bad_filters_are_named(args, message):
    with pytest.raises(FilterError, match=message):
        matching(*args)


def test_compact_lines_read_like_hubbles():
    lines = [compact({"flow": f}) for f in recorded()]
    assert any(line.endswith(": default/xwing -> 10.210.0.200 Stale or unroutable IP DROPPED (ICMPv4 EchoRequest)")
               for line in lines)
    syn = next(line for line in lines if "to-endpoint" in line and "(TCP Flags: SYN)" in line)
    assert " default/xwing:" in syn and " -> empire/deathstar:80 to-endpoint FORWARDED (TCP Flags: SYN)" in syn
    assert any(" <- empire/deathstar:80 to-endpoint FORWARDED (TCP Flags: SYN, ACK)" in line for line in lines)


# ---- real pods -------------------------------------------------------------------------------


@pytest.fixture
def star(lab):
    """xwing (default) and deathstar (empire), their labels from Pod manifests."""
    lab.manifests.joinpath("pods.yaml").write_text(PODS)

    def start(*extra: str):
        agent = lab.start_agent(*extra)
        a = lab.pod("a", k8s_namespace="default", k8s_pod_name="xwing")
        b = lab.pod("b", k8s_namespace="empire", k8s_pod_name="deathstar")
        return agent, a, b

    yield lab, start
    for proc in getattr(lab, "servers", []):
        proc.kill()


def flows(lab, *args: str) -> list[dict]:
    out = run_cli(lab.dirs, "observe", "--all", "-o", "json", *args)
    assert out.returncode == 0, out.stderr
    return [json.loads(line)["flow"] for line in out.stdout.splitlines() if "flow" in json.loads(line)]


def wait_for(fn, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = fn()
        if result:
            return result
        time.sleep(0.1)
    return fn()


def test_flows_between_pods_carry_hubbles_fields(star):
    lab, start = star
    _, a, b = start("--set", "bpf.monitorAggregation=none")
    serve(lab, b.netns, "tcp", b.ip, 80)
    assert ask(lab, a.netns, "tcp", b.ip, 80) == a.ip
    ping(lab, a.netns, OUTSIDE_IP, 1)
    syn = wait_for(lambda: [f for f in flows(lab, "--to-port", "80") if f["l4"]["TCP"]["flags"] == {"SYN": True}])
    by_point = {f["trace_observation_point"]: f for f in syn}
    assert set(by_point) == {"FROM_ENDPOINT", "TO_ENDPOINT"}
    f = by_point["TO_ENDPOINT"]
    assert f["verdict"] == "FORWARDED" and f["Type"] == "L3_L4" and f["node_name"] == lab.dirs.node
    assert f["IP"] == {"source": a.ip, "destination": b.ip, "ipVersion": "IPv4"}
    assert f["l4"]["TCP"]["destination_port"] == 80 and f["l4"]["TCP"]["source_port"] > 1024
    assert a.endpoint["identity"] >= 256, "the policy plugin gives labelled pods an identity"
    assert f["source"] == {"ID": a.endpoint["id"], "identity": a.endpoint["identity"], "cluster_name": "default",
                           "namespace": "default",
                           "labels": ["k8s:app=xwing", "k8s:io.kubernetes.pod.namespace=default",
                                      "k8s:org=alliance"], "pod_name": "xwing"}
    assert f["destination"]["ID"] == b.endpoint["id"] and f["destination"]["pod_name"] == "deathstar"
    assert f["destination"]["namespace"] == "empire" and "k8s:app=deathstar" in f["destination"]["labels"]
    assert f["traffic_direction"] == "INGRESS" and by_point["FROM_ENDPOINT"]["traffic_direction"] == "EGRESS"
    assert f["event_type"] == {"type": 4} and by_point["FROM_ENDPOINT"]["event_type"] == {"type": 4, "sub_type": 5}
    assert f["is_reply"] is False and f["trace_reason"] == "NEW" and f["Summary"] == "TCP Flags: SYN"
    assert f["interface"]["name"] == b.endpoint["host_ifname"] and f["file"]["name"] == "delivery.c"
    assert f["time"].endswith("Z") and len(f["uuid"]) == 36
    synack = next(x for x in flows(lab, "--from-port", "80", "-t", "trace:to-endpoint")
                  if x["l4"]["TCP"]["flags"] == {"SYN": True, "ACK": True})
    assert synack["is_reply"] is True and synack["trace_reason"] == "REPLY"
    out = next(x for x in flows(lab, "--to-ip", OUTSIDE_IP) if x["trace_observation_point"] == "TO_STACK")
    assert out["destination"] == {"identity": 2, "labels": ["reserved:world"]} and out["l4"] == {"ICMPv4": {"type": 8}}
    back = next(x for x in flows(lab, "--from-ip", OUTSIDE_IP) if x["trace_observation_point"] == "TO_ENDPOINT")
    assert back["is_reply"] is True and back["source"]["identity"] == 2  # the outside, not the host
    # --first/--last pick from either end of the buffer; table output has Hubble's columns
    first = run_cli(lab.dirs, "observe", "--first", "1", "-o", "json").stdout.splitlines()
    last = run_cli(lab.dirs, "observe", "--last", "1", "-o", "json").stdout.splitlines()
    assert len(first) == len(last) == 1 and first != last
    table = run_cli(lab.dirs, "observe", "--to-port", "80", "-o", "table").stdout.splitlines()
    assert table[0].split() == ["TIMESTAMP", "SOURCE", "DESTINATION", "TYPE", "VERDICT", "SUMMARY"]
    assert any("empire/deathstar:80" in row and "to-endpoint" in row for row in table[1:])


def test_medium_aggregation_reports_connections_not_packets(star):
    lab, start = star
    _, a, b = start("--set", "bpf.monitorAggregationInterval=1s")  # aggregation: medium (the default)
    send = textwrap.dedent(f"""
        import socket, time
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for i in range(26):
            s.sendto(b"x", ("{b.ip}", 9999)); time.sleep(0.1)
    """)
    listener = subprocess.Popen(["ip", "netns", "exec", b.netns, "python3", "-c",
                                 f"import socket,time; s=socket.socket(2,2); s.bind(('{b.ip}',9999)); time.sleep(30)"])
    try:
        lab.exec(a.netns, "python3", "-c", send)
    finally:
        listener.kill()
    reports = wait_for(lambda: flows(lab, "--to-port", "9999"))
    assert {f["trace_observation_point"] for f in reports} == {"TO_ENDPOINT"}, "no traces at receive points"
    assert 2 <= len(reports) <= 5, f"26 packets over 2.5 s, reported on start and about once a second: {len(reports)}"
    assert reports[0]["trace_reason"] == "NEW" and all(r["trace_reason"] == "ESTABLISHED" for r in reports[1:])


def test_follow_streams_new_matching_flows(star):
    lab, start = star
    _, a, b = start("--set", "bpf.monitorAggregation=none")
    serve(lab, b.netns, "tcp", b.ip, 80)
    serve(lab, b.netns, "udp", b.ip, 53)
    follower = subprocess.Popen([str(BIN / "pylium"), "--run-dir", str(lab.dirs.run_dir), "observe", "-f",
                                 "--to-pod", "empire/deathstar", "--not", "--protocol", "udp", "--not",
                                 "--protocol", "icmp", "-o", "json"],
                                stdout=subprocess.PIPE, text=True)
    lines: list[dict] = []
    reader = threading.Thread(target=lambda: [lines.append(json.loads(x)) for x in follower.stdout], daemon=True)
    reader.start()
    try:
        assert wait_for(lambda: lab.api.get("/v1/observer")["followers"] == 1)
        ask(lab, a.netns, "udp", b.ip, 53)
        ask(lab, a.netns, "tcp", b.ip, 80)
        assert wait_for(lambda: any(r["flow"].get("l4", {}).get("TCP", {}).get("flags", {}).get("FIN")
                                    for r in lines))
    finally:
        follower.terminate()
        follower.wait(10)
    got = [r["flow"] for r in lines]
    assert got and all(f["destination"]["pod_name"] == "deathstar" for f in got)
    assert all(set(f["l4"]) == {"TCP"} for f in got), "neither UDP nor neighbour discovery (ICMPv6)"
    assert {f["trace_observation_point"] for f in got} == {"FROM_ENDPOINT", "TO_ENDPOINT"}
    assert wait_for(lambda: lab.api.get("/v1/observer")["followers"] == 0), "a departed client is forgotten"


def test_bus_subscribers_get_flows_one_each_or_many_to_a_message(star):
    """`flow` and `batch.flow` carry the same flows in the same order, decoded by the types in
    the vocabulary; a batch's header counts batches."""
    import zmq

    lab, start = star
    _, a, b = start("--set", "bpf.monitorAggregation=none")
    serve(lab, b.netns, "udp", b.ip, 53)
    sockets = {}
    for topic in ("flow", "batch.flow"):
        sub = sockets[topic] = zmq.Context.instance().socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.connect(f"ipc://{lab.dirs.run_dir}/bus.sock")
        sub.subscribe(topic.encode())
    try:
        time.sleep(0.5)  # the subscriptions reach the publisher
        ask(lab, a.netns, "udp", b.ip, 53)
        got: dict[str, list] = {"flow": [], "batch.flow": []}
        headers = []
        udp = lambda flows: [f for f in flows if f.l4 and f.l4.UDP]  # noqa: E731 (sent after both subscribed)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not (len(udp(got["flow"])) >= 4  # the query and the answer, 2 points
                                                   and len(udp(got["batch.flow"])) >= len(udp(got["flow"]))):
            for topic, sub in sockets.items():
                while sub.poll(100):
                    frames = sub.recv_multipart()
                    if frames[0] == b"flow":
                        got["flow"].append(msgspec.json.decode(frames[2], type=Flow))
                    elif frames[0] == b"batch.flow":
                        headers.append(json.loads(frames[1]))
                        got["batch.flow"] += msgspec.json.decode(frames[2], type=FlowBatch).flows
    finally:
        for sub in sockets.values():
            sub.close()
    singles, batched = udp(got["flow"]), udp(got["batch.flow"])
    assert len(singles) >= 4 and {f.l4.UDP.destination_port for f in singles} >= {53}
    assert batched == singles
    assert [h["type"] for h in headers] == ["batch.flow"] * len(headers)
    assert [h["seq"] for h in headers] == list(range(headers[0]["seq"], headers[0]["seq"] + len(headers)))


def scrape(lab) -> dict[str, list]:
    text = lab.node("curl", "-sf", "http://127.0.0.1:9962/metrics").stdout
    return {fam.name: fam.samples for fam in text_string_to_metric_families(text)}


def sample(families, name: str, **labels) -> float:
    family = name.removesuffix("_total")
    return sum(s.value for s in families.get(family, []) if s.name == name
               and all(s.labels.get(k) == v for k, v in labels.items()))


def test_a_forced_drop_has_its_reason_and_moves_the_drop_metrics(star):
    lab, start = star
    _, a, b = start("--set", "prometheus.port=9962", "--set", "hubble.metrics.endpointDrops.enabled=true",
                    "--set", "hubble.metrics.endpointDrops.maxEndpoints=1")
    before = scrape(lab)
    monitor = subprocess.Popen([str(BIN / "pylium"), "--run-dir", str(lab.dirs.run_dir), "monitor", "-t", "drop",
                                "-j"], stdout=subprocess.PIPE, text=True)
    text_monitor = subprocess.Popen([str(BIN / "pylium"), "--run-dir", str(lab.dirs.run_dir), "monitor", "--type",
                                     "drop", "--from", str(a.endpoint["id"])], stdout=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: lab.api.get("/v1/observer")["followers"] == 2)
        assert not ping(lab, a.netns, UNROUTABLE, 3)
        assert not ping(lab, b.netns, UNROUTABLE, 1)
        event = json.loads(monitor.stdout.readline())
        line = text_monitor.stdout.readline()
    finally:
        monitor.kill()
        text_monitor.kill()
    assert event["type"] == "drop" and event["reason"] == 151 and event["reasonDesc"] == "Stale or unroutable IP"
    assert event["source"] == a.endpoint["id"] and event["file"] == "delivery.c" and event["line"] > 0
    assert event["summary"] == f"{a.ip} -> {UNROUTABLE} ICMPv4 EchoRequest"
    assert line.startswith("xx drop (Stale or unroutable IP) flow 0x") and f"{a.ip} -> {UNROUTABLE}" in line
    drops = wait_for(lambda: [f for f in flows(lab, "--verdict", "DROPPED")] if len(
        flows(lab, "--verdict", "DROPPED")) >= 4 else [])
    f = drops[0]
    assert f["drop_reason"] == 151 and f["drop_reason_desc"] == "STALE_OR_UNROUTABLE_IP"
    assert f["event_type"] == {"type": 1, "sub_type": 151} and f["traffic_direction"] == "EGRESS"
    assert f["source"]["pod_name"] == "xwing" and f["IP"]["destination"] == UNROUTABLE
    compact_out = run_cli(lab.dirs, "observe", "--verdict", "DROPPED", "--last", "1").stdout
    assert f"empire/deathstar -> {UNROUTABLE} Stale or unroutable IP DROPPED (ICMPv4 EchoRequest)" in compact_out
    after = scrape(lab)
    key = {"reason": "Stale or unroutable IP", "direction": "EGRESS"}
    assert sample(after, "cilium_drop_count_total", **key) - sample(before, "cilium_drop_count_total", **key) == 4
    assert sample(after, "cilium_drop_bytes_total", **key) - sample(before, "cilium_drop_bytes_total", **key) == 4 * 98
    assert sample(after, "hubble_drop_total", reason="STALE_OR_UNROUTABLE_IP", protocol="ICMPv4") == 4
    # the cardinality cap: one endpoint gets its own series, the next one counts as "other"
    assert sample(after, "pylium_endpoint_drop_count_total", endpoint="default/xwing") == 3
    assert sample(after, "pylium_endpoint_drop_count_total", endpoint="other") == 1


def test_metric_names_and_labels_are_ciliums(star):
    lab, start = star
    _, a, b = start("--set", "prometheus.port=9962")
    assert ping(lab, a.netns, b.ip, 2)
    ping(lab, a.netns, UNROUTABLE, 1)
    wait_for(lambda: flows(lab, "--verdict", "DROPPED"))
    families = scrape(lab)
    expected = {
        "cilium_drop_count_total": {"reason", "direction"}, "cilium_drop_bytes_total": {"reason", "direction"},
        "cilium_forward_count_total": {"direction"}, "cilium_forward_bytes_total": {"direction"},
        "cilium_endpoint": set(), "cilium_endpoint_state": {"endpoint_state"},
        "cilium_bpf_map_ops_total": {"map_name", "operation", "outcome"}, "cilium_bpf_map_pressure": {"map_name"},
        "hubble_flows_processed_total": {"type", "subtype", "verdict"}, "hubble_drop_total": {"reason", "protocol"},
        "hubble_lost_events_total": {"source"},
    }
    for name, label_names in expected.items():
        samples = [s for s in families.get(name.removesuffix("_total"), []) if s.name == name]
        assert samples, f"{name} is served"
        assert all(set(s.labels) == label_names for s in samples), (name, samples[0].labels)
    assert sample(families, "cilium_endpoint") == 2
    assert sample(families, "cilium_endpoint_state", endpoint_state="ready") == 2
    assert sample(families, "cilium_forward_count_total", direction="INGRESS") >= 4
    assert sample(families, "cilium_bpf_map_ops_total", map_name="endpoints", operation="update",
                  outcome="success") >= 2
    assert 0 < sample(families, "cilium_bpf_map_pressure", map_name="lxc_by_ifindex") < 0.01
    assert sample(families, "hubble_flows_processed_total", type="Trace", subtype="to-endpoint",
                  verdict="FORWARDED") >= 4
    assert {s.labels["source"] for s in families["hubble_lost_events"]} == {
        "perf_event_ring_buffer", "observer_events_queue", "hubble_ring_buffer"}
    listed = json.loads(run_cli(lab.dirs, "metrics", "list", "-p", "^cilium_drop_count", "-o", "json").stdout)
    assert listed and {r["name"] for r in listed} == {"cilium_drop_count_total"}
    bpf_rows = json.loads(run_cli(lab.dirs, "bpf", "metrics", "list", "-o", "json").stdout)
    assert {"reason": 151, "description": "Stale or unroutable IP", "direction": "EGRESS", "packets": 1,
            "bytes": 98} in bpf_rows


def test_a_flood_that_overruns_the_ring_is_reported_as_lost_events(star):
    lab, start = star
    _, a, b = start("--set", "bpf.monitorAggregation=none", "--set", "bpf.events.ringBufferSize=4096",
                    "--set", "hubble.eventQueueSize=64")
    flood = textwrap.dedent(f"""
        import socket, time
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        end = time.monotonic() + 3
        while time.monotonic() < end:
            for _ in range(200):
                s.sendto(b"x", ("{b.ip}", 9))
    """)
    # a follower that wants drops only: lost-event notices reach it whatever its filters
    follower = subprocess.Popen([str(BIN / "pylium"), "--run-dir", str(lab.dirs.run_dir), "observe", "-f",
                                 "-t", "drop", "-o", "json"], stdout=subprocess.PIPE, text=True)
    records: list[dict] = []
    threading.Thread(target=lambda: [records.append(json.loads(x)) for x in follower.stdout], daemon=True).start()
    assert wait_for(lambda: lab.api.get("/v1/observer")["followers"] == 1)
    flooder = subprocess.Popen(["ip", "netns", "exec", a.netns, "python3", "-c", flood])
    try:
        time.sleep(1)
        slowest = 0.0
        while flooder.poll() is None:
            t0 = time.monotonic()
            status = lab.api.get("/v1/status")
            slowest = max(slowest, time.monotonic() - t0)
            assert status["state"] == "running"
            time.sleep(0.2)
    finally:
        flooder.kill()
    assert slowest < 1.0, f"the agent answered its API within {slowest:.2f} s during the flood"
    observer = wait_for(lambda: (o := lab.api.get("/v1/observer"))["lost_events"]["PERF_EVENT_RING_BUFFER"] and o)
    kernel_lost = observer["lost_events"]["PERF_EVENT_RING_BUFFER"]
    assert kernel_lost > 0
    assert wait_for(lambda: sum(r["lost_events"]["num_events_lost"] for r in records if "lost_events" in r
                                and r["lost_events"]["source"] == "PERF_EVENT_RING_BUFFER") == kernel_lost)
    follower.terminate()
    notices = [r["lost_events"] for r in records if "lost_events" in r]
    assert all(n["num_events_lost"] > 0 for n in notices) and not [r for r in records if "flow" in r]
    assert ping(lab, a.netns, b.ip, 1), "traffic still flows"


def test_service_map_aggregates_flows_into_workload_edges(star):
    lab, start = star
    _, a, b = start()
    serve(lab, b.netns, "tcp", b.ip, 80)
    for _ in range(3):
        ask(lab, a.netns, "tcp", b.ip, 80)
    ping(lab, a.netns, UNROUTABLE, 1)
    data = wait_for(lambda: (d := json.loads(run_cli(lab.dirs, "service-map", "-o", "json").stdout))["edges"] and d)
    edge = next(e for e in data["edges"] if e["port"] == 80)
    assert (edge["source"], edge["destination"], edge["protocol"]) == ("default/xwing", "empire/deathstar", "TCP")
    assert edge["verdicts"]["FORWARDED"] == edge["flows"] >= 6, "both directions of 3 connections, replies folded in"
    assert any(e["source"] == "default/xwing" and e["verdicts"].get("DROPPED") for e in data["edges"])
    dot = run_cli(lab.dirs, "service-map", "-o", "dot").stdout
    assert dot.startswith("digraph") and '"default/xwing" -> "empire/deathstar" [label="80/TCP forwarded=' in dot
    assert "empire/deathstar" in run_cli(lab.dirs, "service-map").stdout


def test_the_service_map_lets_go_of_deleted_endpoints():
    """Its workload-name cache must not keep endpoints that went (a pod churn soak grew the
    agent by them)."""
    from pylium.plugins.observability.flow import Endpoint
    from pylium.plugins.observability.servicemap import ServiceMap

    service_map = ServiceMap(10)
    pods = [Endpoint(ID=i, identity=300, namespace="shop", pod_name=f"web-{i}", labels=("k8s:app=web",))
            for i in range(1, 4)]
    assert {service_map._name(ep) for ep in pods} == {"shop/web"}
    for ep in pods[:2]:
        service_map.forget(ep)
    assert list(service_map._names) == [pods[2]]

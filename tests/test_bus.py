"""The event bus with real sockets and a real agent: in-process and outside subscribers,
late-joiner replay, request/reply across processes, CURVE, back-pressure, hostile input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import zmq
import zmq.auth
from prometheus_client.parser import text_string_to_metric_families

from helpers import BIN, free_port, install_test_plugin

ROOT = Path(__file__).parent.parent


@pytest.fixture
def probe_site(tmp_path) -> Path:
    return install_test_plugin(tmp_path / "site", "busprobe_plugin", "busprobe", "BusProbe")


@pytest.fixture
def probe_agent(start_agent, probe_site):
    port = free_port()
    agent = start_agent("--set", f"prometheus.port={port}", "--set", "prometheus.address=127.0.0.1",
                        env={"PYTHONPATH": str(probe_site)}, metrics=True)
    agent.wait_ready()
    agent.metrics_port = port
    return agent


def _sub(run_dir: Path, *prefixes: str, hwm: int = 100_000) -> zmq.Socket:
    s = zmq.Context.instance().socket(zmq.SUB)
    s.setsockopt(zmq.RCVHWM, hwm)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(f"ipc://{run_dir}/bus.sock")
    for p in prefixes or ("",):
        s.subscribe(p.encode())
    return s


def _recv(sock: zmq.Socket, until, timeout: float = 10) -> list[tuple[str, dict, dict]]:
    out = []
    deadline = time.monotonic() + timeout
    while not until(out):
        left = deadline - time.monotonic()
        if left <= 0 or not sock.poll(int(left * 1000)):
            raise AssertionError(f"timed out; received {[(t, h.get('seq')) for t, h, _ in out][-20:]}")
        t, h, p = sock.recv_multipart()
        out.append((t.decode(), json.loads(h), json.loads(p)))
    return out


def _metrics(agent) -> dict[str, list]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{agent.metrics_port}/metrics", timeout=5).read().decode()
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, []).append(s)
    return samples


def _sample(samples, name, **labels) -> float:
    return sum(s.value for s in samples.get(name, []) if all(s.labels.get(k) == v for k, v in labels.items()))


def test_in_process_and_outside_subscribers_get_the_same_events(probe_agent, agent_dirs):
    outside = _sub(agent_dirs.run_dir, "probe.tick")
    time.sleep(0.3)
    seqs = agent_dirs.client.call("POST", "/v1/busprobe/publish", {"ticks": 500, "text": "hi"})["seqs"]
    assert None not in seqs and seqs == sorted(seqs)
    got = _recv(outside, lambda g: len(g) >= 500)
    deadline = time.monotonic() + 10
    while True:  # the plugin's subscriber runs on the agent's loop, maybe still catching up
        inside = agent_dirs.client.get("/v1/busprobe/received")
        if len(inside["events"]) >= 500 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    inside_ticks = [(e["seq"], e["payload"]) for e in inside["events"] if e["topic"] == "probe.tick"]
    outside_ticks = [(h["seq"], p) for t, h, p in got if t == "probe.tick"]
    assert outside_ticks == inside_ticks
    assert len(outside_ticks) == 500 and inside["lost"] == 0
    t, h, p = got[0]
    assert (h["v"], h["type"], h["source"], h["node"]) == (1, "probe.tick", "busprobe", agent_dirs.node)
    assert isinstance(h["time"], int) and h["time"] > 1.7e18  # nanoseconds
    assert [x[0] for x in outside_ticks] == list(range(outside_ticks[0][0], outside_ticks[0][0] + 500))


def test_a_topic_nobody_subscribes_is_not_sent_until_someone_does(probe_agent, agent_dirs):
    def proxied() -> float:
        return _sample(_metrics(probe_agent), "pylium_bus_proxy_messages_total", side="frontend", direction="in")

    def publish_quiet(n: int) -> list:
        return agent_dirs.client.call("POST", "/v1/busprobe/publish", {"quiet": n})["seqs"]

    before = proxied()
    assert None not in publish_quiet(3000)
    assert proxied() - before < 300  # health and other traffic only: the ticks stayed in the plugin
    sub = _sub(agent_dirs.run_dir, "quiet.")
    got = []
    deadline = time.monotonic() + 10
    while not got:  # until the subscription has travelled through the proxy
        assert time.monotonic() < deadline, "the subscriber never received quiet.tick"
        publish_quiet(1)
        got = _recv(sub, lambda g: len(g) >= 1) if sub.poll(200) else []
    seqs = publish_quiet(500)
    ticks = _recv(sub, lambda g: len(g) >= 500)
    assert [h["seq"] for _, h, _ in ticks] == seqs and [p["n"] for _, _, p in ticks] == list(range(500))
    sub.close()
    deadline = time.monotonic() + 10
    while True:  # the last unsubscription reaches the publisher: sending stops again
        publish_quiet(1)
        time.sleep(0.1)
        before = proxied()
        publish_quiet(3000)
        if proxied() - before < 300:
            break
        assert time.monotonic() < deadline, "quiet.tick still sent after its only subscriber left"


def test_late_joiner_gets_replay_then_synced_then_live(probe_agent, agent_dirs):
    agent_dirs.client.call("POST", "/v1/busprobe/publish", {"items": 300})
    agent_dirs.client.call("POST", "/v1/busprobe/publish", {"items": 10, "value": 99})  # newer revisions
    late = _sub(agent_dirs.run_dir, "probe.item", "plugin.health")
    got = _recv(late, lambda g: sum(t.endswith(".synced") for t, _, _ in g) >= 2)
    items = {h["key"]: (h["rev"], p["value"]) for t, h, p in got if t == "probe.item"}
    assert len(items) == 300
    assert all(v == 99 for k, (_, v) in items.items() if int(k.split("-")[1]) < 10)
    for family in ("probe.item", "plugin.health"):  # replays, then synced; live ones (health ticks) after
        synced_at = next(i for i, (t, _, _) in enumerate(got) if t == f"{family}.synced")
        assert all(h["replay"] for t, h, _ in got[:synced_at] if t == family)
    synced = {t: p for t, h, p in got if t.endswith(".synced")}
    assert synced["probe.item.synced"] == {"family": "probe.item", "count": 300}
    assert synced["plugin.health.synced"]["count"] == 2
    health = [p for t, _, p in got if t == "plugin.health"]
    assert {"plugin": "busprobe", "health": "OK", "message": ""} in health and len(health) == 2
    # replay of a family ends with its synced marker, live updates follow
    order = [t for t, _, _ in got]
    assert order.index("probe.item.synced") > max(i for i, t in enumerate(order) if t == "probe.item")
    agent_dirs.client.call("POST", "/v1/busprobe/publish", {"items": 1, "value": 7})
    [(t, h, p)] = _recv(late, lambda g: len(g) >= 1)
    assert (t, h.get("replay", False), p["value"]) == ("probe.item", False, 7)
    assert h["rev"] > items["item-0"][0]


def test_a_family_replayed_from_its_owners_snapshot(probe_agent, agent_dirs):
    """owns(family, snapshot=fn): the bus keeps no copy; a late subscriber gets the owner's
    current objects, each with a revision no older than the last one published, then synced."""
    agent_dirs.client.call("POST", "/v1/busprobe/publish", {"snaps": 200})
    live = _sub(agent_dirs.run_dir, "probe.snap")
    _recv(live, lambda g: any(t == "probe.snap.synced" for t, _, _ in g))
    agent_dirs.client.call("POST", "/v1/busprobe/publish", {"snaps": 10, "value": 99})
    updates = _recv(live, lambda g: len(g) >= 10)
    assert {(h["key"], p["value"], h.get("replay", False)) for t, h, p in updates} == {
        (f"snap-{i}", 99, False) for i in range(10)}
    late = _sub(agent_dirs.run_dir, "probe.snap")
    got = _recv(late, lambda g: any(t == "probe.snap.synced" for t, _, _ in g))
    items = {h["key"]: (h["rev"], p["value"]) for t, h, p in got if t == "probe.snap"}
    assert all(h["replay"] for t, h, _ in got if t == "probe.snap")
    assert items == {f"snap-{i}": (items[f"snap-{i}"][0], 99 if i < 10 else i) for i in range(200)}
    assert min(rev for rev, _ in items.values()) >= max(h["rev"] for _, h, _ in updates)
    assert got[-1][2] == {"family": "probe.snap", "count": 200}
    agent_dirs.client.call("POST", "/v1/busprobe/publish", {"snaps": 1, "value": 7})
    [(t, h, p)] = _recv(late, lambda g: len(g) >= 1)
    assert (t, h.get("replay", False), p["value"]) == ("probe.snap", False, 7)
    assert h["rev"] > items["snap-0"][0]
    live.close()
    late.close()


def test_replay_with_concurrent_updates_is_never_stale(probe_agent, agent_dirs):
    agent_dirs.client.call("POST", "/v1/busprobe/publish", {"items": 50, "value": 1})
    stop = threading.Event()

    def churn():
        v = 1000
        while not stop.is_set():
            agent_dirs.client.call("POST", "/v1/busprobe/publish", {"items": 50, "value": v})
            v += 1

    worker = threading.Thread(target=churn)
    worker.start()
    try:
        for _ in range(5):
            sub = _sub(agent_dirs.run_dir, "probe.item")
            got = _recv(sub, lambda g: any(t == "probe.item.synced" for t, _, _ in g))
            latest: dict[str, int] = {}
            for t, h, _ in got:
                if t == "probe.item":
                    latest[h["key"]] = max(latest.get(h["key"], 0), h["rev"])
            assert len(latest) == 50
            sub.close()
    finally:
        stop.set()
        worker.join()


def test_requests_between_agent_and_a_plugin_in_another_process(probe_agent, agent_dirs, tmp_path):
    child = tmp_path / "upper_service.py"
    child.write_text(textwrap.dedent(f"""
        import anyio
        from pylium.core.bus.client import RpcError, connect

        async def upper(payload):
            if not isinstance(payload, dict) or not isinstance(payload.get("text"), str):
                raise RpcError("bad_request", "payload.text: a string is required")
            return {{"upper": payload["text"].upper()}}

        async def main():
            async with connect({str(agent_dirs.run_dir)!r}, source="upper") as bus:
                await bus.serve("upper.text", upper)
                print("serving", flush=True)
                await anyio.sleep(60)

        anyio.run(main)
    """))
    proc = subprocess.Popen([sys.executable, str(child)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "serving"
        # the agent's plugin calls the service in the child process
        r = agent_dirs.client.call("POST", "/v1/busprobe/request", {"method": "upper.text", "payload": {"text": "abc"}})
        assert r == {"result": {"upper": "ABC"}}
        code, body = agent_dirs.client.request("POST", "/v1/busprobe/request",
                                               {"method": "upper.text", "payload": {"text": 5}})
        assert code == 502 and "bad_request: payload.text: a string is required" in body["error"]
        # a client in another process calls the agent's plugin
        out = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
            import anyio, json
            from pylium.core.bus.client import connect
            async def main():
                async with connect({str(agent_dirs.run_dir)!r}, source="client") as bus:
                    print(json.dumps(await bus.request("probe.echo", {{"text": "ping"}})))
            anyio.run(main)
        """)], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout) == {"echo": "ping", "by": "busprobe"}
    finally:
        proc.kill()
        proc.wait()
    # the dead process's service is forgotten: no-service error, not a hang
    deadline = time.monotonic() + 15
    while True:
        code, body = agent_dirs.client.request("POST", "/v1/busprobe/request",
                                               {"method": "upper.text", "payload": {"text": "x"}, "timeout": 2})
        if "NoService" in body.get("error", "") or time.monotonic() > deadline:
            break
    assert "NoService: no_service: no plugin serves 'upper.text'" in body["error"]


def test_request_timeout_and_no_service(probe_agent, agent_dirs):
    t0 = time.monotonic()
    code, body = agent_dirs.client.request("POST", "/v1/busprobe/request",
                                           {"method": "probe.slow", "payload": {"seconds": 5}, "timeout": 0.3})
    assert code == 502 and "RpcTimeout" in body["error"] and "within 0.3s" in body["error"]
    assert time.monotonic() - t0 < 3
    code, body = agent_dirs.client.request("POST", "/v1/busprobe/request", {"method": "nobody.home"})
    assert code == 502
    assert "no plugin serves 'nobody.home'" in body["error"] and "probe.echo" in body["error"]
    samples = _metrics(probe_agent)
    assert _sample(samples, "pylium_bus_requests_total", outcome="no_service") == 1
    assert _sample(samples, "pylium_bus_request_duration_seconds_count", outcome="timeout") == 1


def test_plain_zmq_request_over_ipc(probe_agent, agent_dirs):
    """The request wire format needs no pylium import: DEALER [b"", id, method, json]."""
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(f"ipc://{agent_dirs.run_dir}/rpc.sock")
    s.send_multipart([b"", b"42", b"probe.echo", json.dumps({"text": "raw"}).encode()])
    assert s.poll(5000)
    empty, corr, outcome, body = s.recv_multipart()
    assert (empty, corr, outcome) == (b"", b"42", b"ok")
    assert json.loads(body) == {"echo": "raw", "by": "busprobe"}
    s.send_multipart([b"", b"43", b"probe.echo", b"{not json"])
    assert s.poll(5000)
    _, corr, outcome, body = s.recv_multipart()
    assert (corr, outcome) == (b"43", b"error") and json.loads(body)["code"] == "bad_request"


def test_curve_accepts_listed_key_and_rejects_another(start_agent, agent_dirs, tmp_path, probe_site):
    keys = tmp_path / "keys"
    authorized = tmp_path / "authorized"
    keys.mkdir()
    authorized.mkdir()
    _, good_secret = zmq.auth.create_certificates(str(keys), "good")
    _, bad_secret = zmq.auth.create_certificates(str(keys), "bad")
    (authorized / "good.key").write_bytes((keys / "good.key").read_bytes())
    port = free_port()
    agent = start_agent("--set", f"bus.tcp.address=127.0.0.1:{port}",
                        "--set", f"bus.tcp.authorizedKeysDir={authorized}", env={"PYTHONPATH": str(probe_site)})
    agent.wait_ready()
    server_secret = agent_dirs.state_dir / "bus" / "server.key_secret"
    assert oct(server_secret.stat().st_mode & 0o777) == "0o600"
    server_public, _ = zmq.auth.load_certificate(str(agent_dirs.state_dir / "bus" / "server.key"))

    def tcp_sub(secret_file):
        pub, sec = zmq.auth.load_certificate(secret_file)
        s = zmq.Context.instance().socket(zmq.SUB)
        s.setsockopt(zmq.LINGER, 0)
        s.curve_serverkey, s.curve_publickey, s.curve_secretkey = server_public, pub, sec
        s.connect(f"tcp://127.0.0.1:{port}")
        s.subscribe(b"plugin.health")
        return s

    good, bad = tcp_sub(good_secret), tcp_sub(bad_secret)
    got = _recv(good, lambda g: any(t == "plugin.health.synced" for t, _, _ in g))
    assert any(t == "plugin.health" for t, _, _ in got)
    assert not bad.poll(1500), "an unlisted key must get nothing"
    # the CLI speaks CURVE too
    r = subprocess.run([str(BIN / "pylium"), "--run-dir", str(agent_dirs.run_dir), "events", "--count", "1",
                        "--connect", f"tcp://127.0.0.1:{port}", "--server-key",
                        str(agent_dirs.state_dir / "bus" / "server.key"), "--client-key", good_secret, "plugin.health"],
                       capture_output=True, text=True, timeout=20)
    assert r.returncode == 0 and "plugin.health" in r.stdout
    # ipc keeps working without CURVE next to the TCP endpoint
    local = _sub(agent_dirs.run_dir, "plugin.health")
    _recv(local, lambda g: any(t == "plugin.health.synced" for t, _, _ in g))
    assert agent.stop() == 0


def _outside_publisher(run_dir: Path) -> zmq.Socket:
    """An outside publisher: waits until the bus subscribes to it (no slow-joiner loss)."""
    p = zmq.Context.instance().socket(zmq.XPUB)
    p.setsockopt(zmq.LINGER, 2000)
    p.connect(f"ipc://{run_dir}/bus-pub.sock")
    return p


def _header(topic, seq, v=1, source="outsider"):
    return json.dumps({"v": v, "type": topic, "source": source, "node": "elsewhere", "seq": seq,
                       "time": time.time_ns()}).encode()


def test_outside_publisher_and_hostile_input_are_counted_and_survived(probe_agent, agent_dirs):
    sub = _sub(agent_dirs.run_dir, "probe.tick")
    pub = _outside_publisher(agent_dirs.run_dir)
    assert pub.poll(5000), "the agent's gate subscribes to outside publishers"
    pub.recv()
    time.sleep(0.2)
    bad = [
        [b"probe.tick", _header("probe.tick", 1)],  # two frames
        [b"probe.tick", b"{not json", b"{}"],
        [b"probe.tock", _header("probe.tock", 1), b'{"n": 1}'],  # unknown topic
        [b"probe.tick", _header("probe.tick", 1, v=2), b'{"n": 1}'],  # schema version
        [b"probe.tick", _header("probe.tick", 1), json.dumps({"n": "x"}).encode()],  # invalid payload
        [b"probe.tick", _header("probe.tick", 1), json.dumps({"n": 1, "text": "x" * (2 << 20)}).encode()],
    ]
    for _ in range(3):  # repeated: counted each time, logged once per source and reason
        for frames in bad:
            pub.send_multipart(frames)
    pub.send_multipart([b"probe.tick", _header("probe.tick", 1), b'{"n": 7, "text": "valid"}'])
    [(t, h, p)] = _recv(sub, lambda g: len(g) >= 1)
    assert (t, p["n"], h["source"]) == ("probe.tick", 7, "outsider")
    samples = _metrics(probe_agent)
    for reason in ("malformed", "unknown_topic", "schema_version", "invalid_payload", "oversized"):
        assert _sample(samples, "pylium_bus_rejected_total", reason=reason) >= 3, reason
    assert _sample(samples, "pylium_bus_rejected_total", reason="malformed") == 6
    assert _sample(samples, "pylium_bus_proxy_messages_total", side="backend", direction="out") >= 1
    log = probe_agent.log
    assert log.count('"reason": "unknown_topic"') == 1
    status = agent_dirs.client.get("/v1/status")
    assert status["state"] == "running" and all(p["health"] == "OK" for p in status["plugins"])


def test_flood_with_a_stuck_subscriber_keeps_the_agent_responsive(probe_agent, agent_dirs):
    stuck = _sub(agent_dirs.run_dir, "", hwm=100)  # connects, never reads
    reader = _sub(agent_dirs.run_dir, "probe.tick", hwm=1_000_000)
    time.sleep(0.3)
    pub = _outside_publisher(agent_dirs.run_dir)
    assert pub.poll(5000)
    stop = threading.Event()
    sent = [0]

    def flood():
        seq = 0
        payload = json.dumps({"n": 1, "text": "x" * 200}).encode()
        while not stop.is_set():
            seq += 1
            pub.send_multipart([b"probe.tick", _header("probe.tick", seq), payload])
        sent[0] = seq

    flooder = threading.Thread(target=flood)
    flooder.start()
    latencies = []
    try:
        time.sleep(0.5)
        for _ in range(20):
            t0 = time.perf_counter()
            assert agent_dirs.client.get("/v1/status")["state"] == "running"
            latencies.append(time.perf_counter() - t0)
            time.sleep(0.05)
    finally:
        stop.set()
        flooder.join()
    # the flooder is a thread of this process: a sample can wait for the GIL, not for the agent
    assert sorted(latencies)[len(latencies) // 2] < 0.05 and max(latencies) < 0.25, \
        f"API latencies under flood: {sorted(latencies)[-3:]}"
    got = 0
    while reader.poll(500):
        reader.recv_multipart()
        got += 1
    assert got > 1000, "the reading subscriber kept receiving while another was stuck"
    stuck.close()


def test_in_process_subscriber_counts_what_it_lost(start_agent, agent_dirs, tmp_path):
    """A plugin whose subscription queue overflows sees the gap, and the agent counts it."""
    site = tmp_path / "site"
    install_test_plugin(site, "busprobe_plugin", "busprobe", "BusProbe")
    port = free_port()
    agent = start_agent("--set", "bus.subscriberQueue=100", "--set", f"prometheus.port={port}",
                        "--set", "prometheus.address=127.0.0.1", env={"PYTHONPATH": str(site)}, metrics=True)
    agent.wait_ready()
    agent.metrics_port = port
    for _ in range(10):
        agent_dirs.client.call("POST", "/v1/busprobe/publish", {"ticks": 5000})
    received = agent_dirs.client.get("/v1/busprobe/received")
    assert received["lost"] > 0
    assert _sample(_metrics(agent), "pylium_bus_lost_total", subscriber="busprobe") == received["lost"]


def test_events_cli_and_example_subscriber(probe_agent, agent_dirs):
    agent_dirs.client.call("POST", "/v1/busprobe/publish", {"items": 3})
    r = subprocess.run([str(BIN / "pylium"), "--run-dir", str(agent_dirs.run_dir), "events", "probe.item",
                        "--count", "4", "-o", "json"], capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(l) for l in r.stdout.splitlines()]
    assert [l["topic"] for l in lines] == ["probe.item"] * 3 + ["probe.item.synced"]
    assert all(l["header"]["replay"] for l in lines[:3])
    r = subprocess.run([str(BIN / "pylium"), "--run-dir", str(agent_dirs.run_dir), "events", "probe.item",
                        "--count", "4"], capture_output=True, text=True, timeout=20)
    assert "probe.item busprobe@" in r.stdout and "[replay]" in r.stdout
    # the example subscriber uses only pyzmq and json
    example = ROOT / "examples" / "subscriber.py"
    assert "pylium" not in "".join(l for l in example.read_text().splitlines() if l.startswith(("import", "from")))
    r = subprocess.run([sys.executable, str(example), "--run-dir", str(agent_dirs.run_dir), "--count", "4",
                        "probe.item"], capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, r.stderr
    assert "probe.item.synced: 3 objects replayed, now live" in r.stdout
    r = subprocess.run([str(BIN / "pylium"), "--run-dir", str(agent_dirs.run_dir / "nope"), "events"],
                       capture_output=True, text=True, timeout=20)
    assert r.returncode == 2 and "no bus socket" in r.stderr


def test_bus_sockets_are_root_only(probe_agent, agent_dirs):
    for name in ("bus.sock", "bus-pub.sock", "rpc.sock", "rpc-svc.sock"):
        st = os.stat(agent_dirs.run_dir / name)
        assert (st.st_mode & 0o777, st.st_uid, st.st_gid) == (0o660, 0, 0), name
    assert probe_agent.stop() == 0
    for name in ("bus.sock", "bus-pub.sock", "rpc.sock", "rpc-svc.sock"):
        assert not (agent_dirs.run_dir / name).exists()


def test_the_replay_cache_keeps_payloads_compressed_and_gives_them_back_exactly():
    from pylium.core.bus import events as ev
    from pylium.core.bus.client import StateFamily

    family = StateFamily()
    payloads = {f"10.97.0.{i}:80/TCP": ev.encode(ev.ServiceChanged(
        frontend=f"10.97.0.{i}:80/TCP", id=i, type="ClusterIP", service=f"bench/decoy-{i}",
        backends=[ev.ServiceBackend(f"10.98.{i}.{j}", 8080, "active") for j in range(4)])) for i in range(1, 200)}
    payloads["small"] = b'{"a":1}'
    for rev, (key, payload) in enumerate(payloads.items(), 1):
        family.put(key, "service.changed", payload, rev)
    kept = sum(len(family._entries[k]) for k in payloads)
    assert kept < sum(map(len, payloads.values())) / 2, "compressed against the family's first payload"
    assert {k: family.get(k) for k in family} == {k: ("service.changed", p, rev)
                                                   for rev, (k, p) in enumerate(payloads.items(), 1)}
    family.put("other", "service.other", payloads["small"], 2**63)  # each entry keeps its topic and rev
    assert family.get("other") == ("service.other", payloads["small"], 2**63)
    assert family.get("small") == ("service.changed", payloads["small"], len(payloads))
    family.pop("small")
    assert family.get("small") is None and "small" not in list(family)

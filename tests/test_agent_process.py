"""A real `pylium-agent` process: third-party plugin discovery, signals, sd_notify, the API
socket, metrics over HTTP, and the CLI against it."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from helpers import datagram_socket, free_port, pip_install, run_cli, write_plugin_dist

EXAMPLE = Path(__file__).parent.parent / "examples" / "hello-plugin"


@pytest.fixture(scope="session")
def hello_site(tmp_path_factory) -> Path:
    """The example third-party plugin, pip-installed into a temporary directory."""
    return pip_install(EXAMPLE, tmp_path_factory.mktemp("hello"))


def _env(*sites: Path) -> dict:
    return {"PYTHONPATH": os.pathsep.join(str(s) for s in sites)}


def test_third_party_plugin_discovered_and_served(start_agent, agent_dirs, hello_site):
    agent = start_agent("--set", "hello.greeting=ahoy", env=_env(hello_site))
    status = agent.wait_ready()
    assert [p["name"] for p in status["plugins"]] == ["ipam", "hello"]  # built-ins first, same group
    hello = status["plugins"][1]
    assert hello["health"] == "OK" and hello["version"] == "1.2.3"
    assert hello["source"] == "third-party (hello-pylium)"

    r = run_cli(agent_dirs, "plugins", "-o", "json")
    assert r.returncode == 0, r.stderr
    builtin, p = json.loads(r.stdout)
    assert (builtin["name"], builtin["source"], builtin["entry_point"]) == (
        "ipam", "built-in", "pylium.plugins.ipam.plugin:IpamPlugin")
    assert p["entry_point"] == "hello_pylium:HelloPlugin"
    assert p["hooks"] == ["pylium_config_model", "pylium_declare", "pylium_lifespan", "pylium_status_details"]

    # the plugin's own config key, API route and status line
    assert agent_dirs.client.get("/v1/config")["hello"]["greeting"] == "ahoy"
    assert agent_dirs.client.get("/v1/hello/world")["message"] == "ahoy, world"
    code, body = agent_dirs.client.request("GET", "/v1/hello/bad%20name")
    assert code == 400 and "letters and digits" in body["error"]
    r = run_cli(agent_dirs, "status")
    assert r.returncode == 0, r.stderr
    assert "Hello:" in r.stdout and "hello" in r.stdout and "OK(2)" in r.stdout
    assert agent.stop() == 0


def test_disabled_plugin_is_not_loaded_but_its_keys_stay_valid(start_agent, agent_dirs, hello_site):
    agent = start_agent("--set", "plugins.disabled={hello,connectivity,lb,observability,policy,health}", "--set", "hello.greeting=hi",
                        env=_env(hello_site))
    status = agent.wait_ready()
    assert [p["name"] for p in status["plugins"]] == ["ipam"]
    code, _ = agent_dirs.client.request("GET", "/v1/hello/x")
    assert code == 404
    assert agent.stop() == 0


def test_disabling_an_unknown_plugin_is_a_config_error(start_agent, hello_site):
    agent = start_agent("--set", "plugins.disabled={nope}", env=_env(hello_site))
    assert agent.proc.wait(30) == 78
    assert "plugins.disabled: unknown plugin 'nope' (installed: connectivity, health, ipam, lb, observability, policy, hello)" in agent.log


def test_hook_without_spec_is_an_error_at_load(start_agent, tmp_path):
    site = write_plugin_dist(tmp_path / "site", "typo-plugin", "0.1", "typo_plugin", """
        from pylium.core.hookspecs import hookimpl

        @hookimpl
        def pylium_lifespam(ctx):
            return None
    """, {"typo": "typo_plugin"})
    agent = start_agent(env=_env(site))
    assert agent.proc.wait(30) == 78
    assert "plugin typo" in agent.log and "pylium_lifespam" in agent.log and "unknown hook" in agent.log


def test_plugin_that_cannot_import_is_named(start_agent, tmp_path):
    site = write_plugin_dist(tmp_path / "site", "broken-plugin", "0.1", "broken_plugin",
                             "import no_such_module\n", {"broken": "broken_plugin"})
    agent = start_agent(env=_env(site))
    assert agent.proc.wait(30) == 78
    assert "plugin broken: cannot load broken_plugin" in agent.log and "no_such_module" in agent.log


def test_plugin_start_failure_exits_1_naming_the_plugin(start_agent, agent_dirs, tmp_path, hello_site):
    site = write_plugin_dist(tmp_path / "site", "zz-failing", "0.1", "zz_failing", """
        from contextlib import asynccontextmanager
        from pylium.core.hookspecs import hookimpl

        @hookimpl
        def pylium_declare(declare):
            declare.after("hello")

        @asynccontextmanager
        async def _life(ctx):
            raise OSError("cannot open /dev/nothing")
            yield

        @hookimpl
        def pylium_lifespan(ctx):
            return _life(ctx)
    """, {"zzfail": "zz_failing"})
    agent = start_agent(env=_env(hello_site, site))
    assert agent.proc.wait(30) == 1
    log = agent.log
    assert "plugin zzfail failed to start: OSError: cannot open /dev/nothing" in log
    # hello started first and was stopped again during the unwind
    assert '"hello stopped"' in log or '"event": "hello stopped"' in log
    assert not (agent_dirs.run_dir / "pylium.sock").exists()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_gracefully(start_agent, agent_dirs, hello_site, sig):
    agent = start_agent(env=_env(hello_site))
    agent.wait_ready()
    t0 = time.monotonic()
    assert agent.stop(sig) == 0
    assert time.monotonic() - t0 < 10
    events = [json.loads(l)["event"] for l in agent.log.splitlines() if l.startswith("{")]
    assert events.index("stop requested") < events.index("hello stopped") < events.index("agent stopped")
    assert not (agent_dirs.run_dir / "pylium.sock").exists()


def test_api_socket_is_root_only(start_agent, agent_dirs):
    agent = start_agent()
    agent.wait_ready()
    st = os.stat(agent_dirs.run_dir / "pylium.sock")
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o660
    assert (st.st_uid, st.st_gid) == (0, 0)
    state = os.stat(agent_dirs.state_dir)
    assert stat.S_IMODE(state.st_mode) == 0o700
    # an unprivileged user cannot talk to it
    r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c",
                        "import socket; s=socket.socket(socket.AF_UNIX); s.connect(%r)" % str(agent_dirs.run_dir / "pylium.sock")],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "PermissionError" in r.stderr
    assert agent.stop() == 0


def test_healthz_and_openapi_served(start_agent, agent_dirs):
    agent = start_agent()
    agent.wait_ready()
    code, body = agent_dirs.client.request("GET", "/v1/healthz")
    assert (code, body) == (200, {"status": "ok"})
    code, body = agent_dirs.client.request("GET", "/v1/nosuch")
    assert code == 404 and "error" in body
    code, text = agent_dirs.client.request("GET", "/v1/openapi.yaml")
    assert code == 200 and "openapi: 3" in text
    assert agent.stop() == 0


def test_second_agent_on_the_same_run_dir_is_refused(start_agent, agent_dirs):
    first = start_agent()
    first.wait_ready()
    second = start_agent()
    assert second.proc.wait(30) == 1
    assert "another pylium-agent" in second.log
    assert first.proc.poll() is None
    assert first.stop() == 0


def test_metrics_scraped_over_http(start_agent, agent_dirs, hello_site):
    port = free_port()
    agent = start_agent("--set", f"prometheus.port={port}", "--set", "prometheus.address=127.0.0.1",
                        env=_env(hello_site), metrics=True)
    agent.wait_ready()
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, []).append(s)
    [version] = samples["cilium_version"]
    assert version.labels["version"] and version.labels["arch"] and version.value == 1
    health = {(s.labels["plugin"], s.labels["status"]): s.value for s in samples["pylium_plugin_health"]}
    assert health[("hello", "OK")] == 1 and health[("hello", "DEGRADED")] == 0
    hooks = {(s.labels["plugin"], s.labels["hook"]) for s in samples["pylium_hook_duration_seconds_count"]}
    assert {("hello", "pylium_declare"), ("hello", "pylium_lifespan")} <= hooks
    scopes = {s.labels["scope"] for s in samples["cilium_agent_bootstrap_seconds"]}
    assert {"overall", "hello"} <= scopes
    assert agent.stop() == 0


def test_metrics_port_in_use_fails_clearly(start_agent):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        agent = start_agent("--set", f"prometheus.port={port}", "--set", "prometheus.address=127.0.0.1", metrics=True)
        assert agent.proc.wait(30) == 1
    assert f"cannot serve metrics on 127.0.0.1:{port}" in agent.log


def test_sd_notify_protocol(start_agent, agent_dirs, tmp_path, hello_site):
    sock_path = tmp_path / "notify.sock"
    with datagram_socket(sock_path) as sock:
        sock.settimeout(15)
        agent = start_agent(env={**_env(hello_site), "NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "200000"})
        messages: list[str] = []

        def receive_until(token: str) -> None:
            while not any(token in m.split("\n") for m in messages):
                messages.append(sock.recv(4096).decode())

        receive_until("READY=1")
        ready = next(m for m in messages if "READY=1" in m)
        assert "STATUS=running: plugins OK 2" in ready
        assert f"MAINPID={agent.proc.pid}" in ready
        before = len(messages)
        receive_until("WATCHDOG=1")  # pinged every WATCHDOG_USEC/2
        time.sleep(0.5)
        agent.proc.send_signal(signal.SIGTERM)
        receive_until("STOPPING=1")
        assert sum("WATCHDOG=1" in m for m in messages[before:]) >= 1
        assert agent.proc.wait(15) == 0


def test_sd_notify_abstract_socket(start_agent, agent_dirs):
    import socket
    import uuid

    name = f"pylium-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(15)
        agent = start_agent(env={"NOTIFY_SOCKET": "@" + name})
        assert "READY=1" in sock.recv(4096).decode()
        assert agent.stop() == 0

"""Security review, as tests: the API and bus sockets refuse a non-root user, key and state
files are root-only, no secret reaches the logs even at debug level, and the systemd unit's
sandboxing scores what docs/security.md records. (CURVE refusing an unlisted key:
tests/test_bus.py::test_curve_accepts_listed_key_and_rejects_another.)"""

from __future__ import annotations

import re
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
import zmq.auth

from helpers import AgentDirs, free_port

ROOT = Path(__file__).parent.parent
UNIT = ROOT / "packaging" / "systemd" / "pylium-agent.service"
CONNECT = "import socket, sys; s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])"


@pytest.fixture
def open_dirs():
    """Agent directories under /run (world-traversable, unlike pytest's 0700 tmp), removed after."""
    dirs = AgentDirs(Path(f"/run/pylium-sec-{uuid.uuid4().hex[:8]}"), f"sec-{uuid.uuid4().hex[:6]}")
    yield dirs
    shutil.rmtree(dirs.root, ignore_errors=True)


def as_nobody(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *cmd],
                          capture_output=True, text=True, timeout=30)


def test_sockets_refuse_a_non_root_user(start_agent, open_dirs):
    start_agent(dirs=open_dirs).wait_ready()
    open_dirs.root.chmod(0o755)
    sockets = sorted(open_dirs.run_dir.glob("*.sock"))
    assert {"pylium.sock", "bus.sock", "bus-pub.sock", "rpc.sock"} <= {s.name for s in sockets}
    assert as_nobody("/usr/bin/python3", "-c", "print('runs')").stdout == "runs\n", "nobody can run Python"
    for sock in sockets:
        assert sock.stat().st_mode & 0o007 == 0 and sock.stat().st_uid == 0, sock
        refused = as_nobody("/usr/bin/python3", "-c", CONNECT, str(sock))
        assert refused.returncode != 0 and "PermissionError" in refused.stderr, (sock, refused.stderr)


def test_keys_and_state_are_root_only_and_secrets_stay_out_of_logs(start_agent, agent_dirs):
    agent = start_agent("--log-level", "debug", "--set", f"bus.tcp.address=127.0.0.1:{free_port()}")
    agent.wait_ready()
    state = agent_dirs.state_dir
    assert state.stat().st_mode & 0o777 == 0o700
    secret_file = state / "bus" / "server.key_secret"
    assert secret_file.stat().st_mode & 0o777 == 0o600
    readable = [p for p in state.rglob("*") if p.stat().st_mode & 0o077 and p.name != "server.key"]
    assert not readable, f"readable by others: {readable}"
    _, secret = zmq.auth.load_certificate(str(secret_file))
    config = agent_dirs.client.call("GET", "/v1/config")
    agent.stop()
    log = agent.log
    assert '"event": "bus CURVE key pair"' in log, "the agent logged about its keys at debug level"
    for text in (log, str(config)):
        assert secret.decode() not in text and "secret-key" not in text


def test_systemd_unit_sandboxing_score():
    """`systemd-analyze security` (0 = most sandboxed, 10 = none): no worse than recorded."""
    out = subprocess.run(["systemd-analyze", "security", "--offline=true", str(UNIT)], capture_output=True,
                         text=True, timeout=60).stdout
    score = float(re.search(r"Overall exposure level for \S+: ([\d.]+)", out).group(1))
    recorded = float(re.search(r"exposure level \*\*([\d.]+)\*\*", (ROOT / "docs" / "security.md").read_text())
                     .group(1))
    assert score <= recorded, f"the unit's exposure rose to {score} (docs/security.md records {recorded})"

"""Helpers shared by tests (importable as `helpers`; fixtures live in conftest.py)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

from pylium.testing.lab import BIN, IN_CI, AgentDirs, AgentProcess  # noqa: F401  (tests import them from here)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cli(dirs: AgentDirs | None, *args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    base = [str(BIN / "pylium")]
    if dirs is not None:
        base += ["--run-dir", str(dirs.run_dir)]
    return subprocess.run([*base, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def pip_install(source: Path, work: Path) -> Path:
    """A copy of a plugin's source tree pip-installed into <work>/site, as a user would."""
    import shutil

    shutil.copytree(source, work / "src")
    target = work / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(work / "src")], check=True, capture_output=True)
    return target


def write_plugin_dist(site: Path, dist: str, version: str, module: str, source: str,
                      entry_points: dict[str, str]) -> Path:
    """Install a plugin distribution into `site` the way pip would: module + dist-info."""
    site.mkdir(parents=True, exist_ok=True)
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    eps = "\n".join(f"{name} = {target}" for name, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[pylium.plugins]\n{eps}\n")
    (info / "RECORD").write_text("")
    return site


DATA = Path(__file__).parent / "data"


class BusRequester:
    """Plain-zmq requests to an agent's rpc.sock; many may be in flight at once."""

    def __init__(self, run_dir: Path):
        import zmq

        self._sock = zmq.Context.instance().socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.connect(f"ipc://{run_dir}/rpc.sock")
        self._next = 0

    def send(self, method: str, payload) -> bytes:
        import json

        self._next += 1
        corr = str(self._next).encode()
        self._sock.send_multipart([b"", corr, method.encode(), json.dumps(payload).encode()])
        return corr

    def receive(self, timeout: float = 10) -> tuple[bytes, str, object]:
        import json

        if not self._sock.poll(int(timeout * 1000)):
            raise TimeoutError("no answer")
        _, corr, outcome, body = self._sock.recv_multipart()
        return corr, outcome.decode(), json.loads(body)

    def call(self, method: str, payload, timeout: float = 10) -> tuple[str, object]:
        corr = self.send(method, payload)
        got, outcome, body = self.receive(timeout)
        assert got == corr
        return outcome, body

    def close(self) -> None:
        self._sock.close(0)


def install_test_plugin(site: Path, module: str, name: str, attr: str) -> Path:
    """Install tests/data/<module>.py as plugin `name` (entry point module:attr) into `site`."""
    return write_plugin_dist(site, f"{name}-test", "0.1", module, (DATA / f"{module}.py").read_text(),
                             {name: f"{module}:{attr}"})


@contextlib.contextmanager
def datagram_socket(path: Path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(path))
    try:
        yield s
    finally:
        s.close()


def replayed(run_dir: Path, prefix: str, timeout_ms: int = 3000):
    """Subscribe to a state family on the agent's bus; returns the socket and what the replay
    brought (key -> payload) up to `<prefix>synced`."""
    import zmq

    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.connect(f"ipc://{run_dir}/bus.sock")
    sub.subscribe(prefix.encode())
    seen = {}
    while sub.poll(timeout_ms):
        topic, header, payload = sub.recv_multipart()
        if topic == f"{prefix}synced".encode():
            break
        seen[json.loads(header)["key"]] = json.loads(payload)
    return sub, seen


class NoMap:
    """A BPF map that takes everything and holds nothing: what is measured or tested is the
    load balancer's own state."""

    def put_many(self, keys, values): pass
    def put(self, key, value): pass
    def delete(self, key): pass
    def items(self): return iter(())
    def keys(self): return iter(())

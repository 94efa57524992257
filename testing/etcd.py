"""A real etcd (Debian's etcd-server) for tests and benchmarks: one member, its data on
/dev/shm (ext4 fsync stalls make etcd flaky), optionally inside a network namespace. It can be
stopped and started again on the same data (an outage), and `close()` removes everything."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

SHM = Path("/dev/shm")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Etcd:
    def __init__(self, address: str = "127.0.0.1", port: int = 0, netns: str | None = None, log_dir: Path | None = None):
        self.name = f"pylium-etcd-{uuid.uuid4().hex[:8]}"
        self.address, self.netns = address, netns
        self.port = port or free_port()
        self.peer_port = free_port() if netns is None else 2380
        self.data_dir = SHM / self.name
        self.log_path = (log_dir or self.data_dir.parent) / f"{self.name}.log"
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.address}:{self.port}"

    def start(self, timeout: float = 20) -> Etcd:
        client, peer = self.endpoint, f"http://127.0.0.1:{self.peer_port}"
        cmd = ["etcd", "--name", "pylium", "--data-dir", str(self.data_dir),
               "--listen-client-urls", client, "--advertise-client-urls", client,
               "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
               "--initial-cluster", f"pylium={peer}", "--initial-cluster-state", "new",
               "--heartbeat-interval", "50", "--election-timeout", "250", "--log-level", "warn"]
        if self.netns:
            cmd = ["nsenter", f"--net=/var/run/netns/{self.netns}", *cmd]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not self.healthy():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"etcd did not start:\n{self.log_path.read_text()[-2000:]}")
            time.sleep(0.05)
        return self

    def healthy(self) -> bool:
        if self.netns:
            r = subprocess.run(["nsenter", f"--net=/var/run/netns/{self.netns}", "etcdctl",
                                f"--endpoints={self.endpoint}", "endpoint", "health"],
                               capture_output=True, text=True, env={**os.environ, "ETCDCTL_API": "3"}, timeout=10)
            return r.returncode == 0
        try:
            with urllib.request.urlopen(f"{self.endpoint}/health", timeout=1) as r:
                return b'"health":"true"' in r.read()
        except OSError:
            return False

    def stop(self) -> None:
        """End the process (the data stays: start() brings the same cluster back)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def etcdctl(self, *args: str) -> str:
        cmd = ["etcdctl", f"--endpoints={self.endpoint}", *args]
        if self.netns:
            cmd = ["nsenter", f"--net=/var/run/netns/{self.netns}", *cmd]
        return subprocess.run(cmd, check=True, capture_output=True, text=True, env={**os.environ, "ETCDCTL_API": "3"},
                              timeout=20).stdout

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)
        self.log_path.unlink(missing_ok=True)

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


def make_certs(directory: Path, address: str) -> dict[str, Path]:
    """A CA, a server certificate for `address` and a client certificate (openssl), for an
    etcd that speaks TLS and asks clients for a certificate."""
    directory.mkdir(parents=True, exist_ok=True)
    out = {name: directory / f"{name}.pem" for name in ("ca", "ca-key", "server", "server-key", "client",
                                                          "client-key")}

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
        "-subj", "/CN=pylium-test-ca", "-keyout", str(out["ca-key"]), "-out", str(out["ca"]))
    for name, extension in (("server", f"subjectAltName=IP:{address}"), ("client", "extendedKeyUsage=clientAuth")):
        csr = directory / f"{name}.csr"
        run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-subj", f"/CN={name}",
            "-keyout", str(out[f"{name}-key"]), "-out", str(csr))
        ext = directory / f"{name}.ext"
        ext.write_text(extension + "\n")
        run("x509", "-req", "-in", str(csr), "-CA", str(out["ca"]), "-CAkey", str(out["ca-key"]), "-CAcreateserial",
            "-days", "2", "-extfile", str(ext), "-out", str(out[name]))
    for path in directory.iterdir():
        path.chmod(0o600)
    return out


class Etcd:
    def __init__(self, address: str = "127.0.0.1", port: int = 0, netns: str | None = None, log_dir: Path | None = None,
                 certs: dict[str, Path] | None = None):
        self.name = f"pylium-etcd-{uuid.uuid4().hex[:8]}"
        self.address, self.netns = address, netns
        self.port = port or free_port()
        self.peer_port = free_port() if netns is None else 2380
        self.data_dir = SHM / self.name
        self.log_path = (log_dir or self.data_dir.parent) / f"{self.name}.log"
        self.proc: subprocess.Popen | None = None
        self.certs = certs  # make_certs(): TLS with client certificates

    @property
    def endpoint(self) -> str:
        return f"{'https' if self.certs else 'http'}://{self.address}:{self.port}"

    def _tls_args(self, client: bool) -> list[str]:
        if not self.certs:
            return []
        if client:
            return [f"--cacert={self.certs['ca']}", f"--cert={self.certs['client']}", f"--key={self.certs['client-key']}"]
        return ["--cert-file", str(self.certs["server"]), "--key-file", str(self.certs["server-key"]),
                "--trusted-ca-file", str(self.certs["ca"]), "--client-cert-auth"]

    def start(self, timeout: float = 20) -> Etcd:
        client, peer = self.endpoint, f"http://127.0.0.1:{self.peer_port}"
        cmd = ["etcd", "--name", "pylium", "--data-dir", str(self.data_dir),
               "--listen-client-urls", client, "--advertise-client-urls", client,
               "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
               "--initial-cluster", f"pylium={peer}", "--initial-cluster-state", "new",
               "--heartbeat-interval", "50", "--election-timeout", "250", "--log-level", "warn",
               *self._tls_args(client=False)]
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
        if self.netns or self.certs:
            try:
                self.etcdctl("endpoint", "health")
                return True
            except subprocess.CalledProcessError:
                return False
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
        cmd = ["etcdctl", f"--endpoints={self.endpoint}", *self._tls_args(client=True), *args]
        if self.netns:
            cmd = ["nsenter", f"--net=/var/run/netns/{self.netns}", *cmd]
        return subprocess.run(cmd, check=True, capture_output=True, text=True, env={**os.environ, "ETCDCTL_API": "3"},
                              timeout=20).stdout

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)
        self.log_path.unlink(missing_ok=True)

"""A lab for datapath tests: a node (network namespace) with an agent in it, pods (namespaces
wired by the agent), an "outside" namespace behind the node. Unique names per test; close()
removes everything it created, processes left running in its namespaces included. Only
addresses inside these namespaces are used."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from pylium.core.cli.client import AgentUnreachable, Client
from pylium.core.datapath import libbpf

BIN = Path(sys.executable).parent  # pylium-agent, pylium, pylium-cni of this environment
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
BPF_TEST_ROOT = Path("/sys/fs/bpf/pylium-test")
POD_CIDR = "10.210.0.0/16"
NODE_IP, OUTSIDE_IP = "10.250.0.1", "10.250.0.2"


def remove_bpf_root(path: Path | None = None) -> None:
    """A lab's pins (`path`), and their shared parent once nothing else uses it."""
    if path is not None:
        libbpf.remove_pins(path)
    with contextlib.suppress(OSError):
        BPF_TEST_ROOT.rmdir()


@dataclass
class AgentDirs:
    root: Path
    node: str

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def bpf_root(self) -> Path:
        return self.root / "bpf"

    def args(self) -> list[str]:
        return ["--node-name", self.node, "--run-dir", str(self.run_dir), "--state-dir", str(self.state_dir),
                "--bpf-root", str(self.bpf_root)]

    @property
    def client(self) -> Client:
        return Client.for_run_dir(self.run_dir, timeout=5)


@dataclass
class AgentProcess:
    proc: subprocess.Popen
    dirs: AgentDirs
    log_path: Path
    stopped: bool = field(default=False)

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    def wait_ready(self, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"agent exited {self.proc.returncode} before ready:\n{self.log}")
            try:
                status = self.dirs.client.get("/v1/status")
                if status["state"] == "running":
                    return status
            except (AgentUnreachable, OSError):
                pass
            time.sleep(0.05)
        raise AssertionError(f"agent not ready after {timeout}s:\n{self.log}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            self.stopped = True



def launch_agent(netns: str, args: list[str], dirs: AgentDirs, log_path: Path, env: dict | None = None,
                 wait: bool = True, timeout: float = 60) -> AgentProcess:
    """Start pylium-agent (`args`) inside a network namespace, its output in `log_path`."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(["nsenter", f"--net=/var/run/netns/{netns}", *args], stdout=log,
                                stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    agent = AgentProcess(proc, dirs, log_path)
    if wait:
        agent.wait_ready(timeout=timeout)
    return agent


def require_datapath() -> str | None:
    """Why the datapath cannot run here, or None. In CI a missing capability is an error."""
    if os.geteuid() != 0:
        return "datapath tests need root"
    if not Path("/sys/fs/bpf").is_mount():
        return "bpffs is not mounted on /sys/fs/bpf (make setup mounts it)"
    try:
        subprocess.run([sys.executable, "-c", "import bcc"], check=True, capture_output=True)
    except subprocess.CalledProcessError:
        return "bcc is not importable (make setup links Debian's python3-bpfcc)"
    return None


def sh(*cmd: str, check: bool = True, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=timeout, **kw)


@dataclass
class Pod:
    name: str
    netns: str  # namespace name
    endpoint: dict

    @property
    def path(self) -> str:
        return f"/var/run/netns/{self.netns}"

    @property
    def ip(self) -> str:
        return next(a["ip"] for a in self.endpoint["addresses"] if a["family"] == "ipv4")


@dataclass
class Lab:
    tmp: Path
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    namespaces: list[str] = field(default_factory=list)
    agents: list[AgentProcess] = field(default_factory=list)
    cni_plugin: Path = BIN / "pylium-cni"

    def __post_init__(self) -> None:
        self.prefix = f"pl{self.id}"
        self.node_ns = self._netns("node")
        self.out_ns = self._netns("out")
        self.dirs = AgentDirs(self.tmp / "agent", f"node-{self.id}")
        self.bpf_root = BPF_TEST_ROOT / self.id
        self.manifests = self.tmp / "manifests"
        self.manifests.mkdir(parents=True, exist_ok=True)
        ext, out = f"{self.prefix}e", f"{self.prefix}o"
        sh("ip", "link", "add", ext, "netns", self.node_ns, "type", "veth", "peer", "name", out, "netns", self.out_ns)
        for ns, dev, ip in ((self.node_ns, ext, NODE_IP), (self.out_ns, out, OUTSIDE_IP)):
            sh("ip", "-n", ns, "addr", "add", f"{ip}/30", "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")

    def _netns(self, name: str) -> str:
        ns = f"{self.prefix}-{name}"
        sh("ip", "netns", "add", ns)
        self.namespaces.append(ns)
        return ns

    # ---- the agent -------------------------------------------------------------------------

    def agent_args(self, *extra: str) -> list[str]:
        return [str(BIN / "pylium-agent"), "--node-name", self.dirs.node, "--run-dir", str(self.dirs.run_dir),
                "--state-dir", str(self.dirs.state_dir), "--bpf-root", str(self.bpf_root), "--log-format", "json",
                "--set", "prometheus.port=0", "--set", f"ipam.operator.clusterPoolIPv4PodCIDRList={{{POD_CIDR}}}",
                "--set", f"standalone.manifestsDir={self.manifests}", *extra]

    def start_agent(self, *extra: str, wait: bool = True, env: dict | None = None) -> AgentProcess:
        self.agents.append(launch_agent(self.node_ns, self.agent_args(*extra), self.dirs,
                                        self.tmp / f"agent-{len(self.agents)}.log", env, wait=False))
        if wait:
            self.agents[-1].wait_ready(timeout=60)
        return self.agents[-1]

    @property
    def api(self):
        return self.dirs.client

    # ---- pods ------------------------------------------------------------------------------

    def netns(self, name: str) -> str:
        return self._netns(name)

    def pod(self, name: str, **body) -> Pod:
        ns = self._netns(name)
        ep = self.api.call("POST", "/v1/cni/add", {"container_id": f"{self.prefix}-{name}", "ifname": "eth0",
                                                   "netns": f"/var/run/netns/{ns}", **body})
        return Pod(name, ns, ep)

    def exec(self, ns: str, *cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        return sh("ip", "netns", "exec", ns, *cmd, check=check, timeout=timeout)

    def node(self, *cmd: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
        return sh("nsenter", f"--net=/var/run/netns/{self.node_ns}", *cmd, check=check, **kw)

    def cni(self, command: str, env: dict, conf: dict | str, in_node: bool = True) -> subprocess.CompletedProcess:
        """Run the CNI plugin (self.cni_plugin: the Python one by default) as a runtime would."""
        stdin = conf if isinstance(conf, str) else json.dumps(conf)
        full = {"PATH": os.environ["PATH"], "CNI_COMMAND": command, "CNI_PATH": "/usr/lib/cni", **env}
        prefix = ["nsenter", f"--net=/var/run/netns/{self.node_ns}"] if in_node else []
        return subprocess.run([*prefix, str(self.cni_plugin)], input=stdin, capture_output=True, text=True,
                              env=full, timeout=120)

    def install_c_plugin(self) -> Path:
        """The plugin as `pylium install-cni` installs it (the C one, with gcc at hand)."""
        bin_dir = self.tmp / "cni-bin"
        sh(str(BIN / "pylium"), "install-cni", "--conf-dir", str(self.tmp / "net.d"), "--bin-dir", str(bin_dir),
           "--run-dir", str(self.dirs.run_dir), "--no-portmap")
        self.cni_plugin = bin_dir / "pylium-cni"
        return self.cni_plugin

    def conf(self, **extra) -> dict:
        return {"cniVersion": "1.0.0", "name": "pylium", "type": "pylium-cni",
                "socketPath": str(self.dirs.run_dir / "pylium.sock"), **extra}

    def node_links(self) -> list[str]:
        out = self.node("ip", "-o", "link").stdout
        return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()]

    def close(self) -> None:
        for agent in self.agents:
            if agent.proc.poll() is None:
                agent.proc.send_signal(signal.SIGKILL)
                agent.proc.wait(10)
        for ns in reversed(self.namespaces):
            # a process in a namespace outlives `ip netns del` (and keeps the namespace): end it
            for pid in sh("ip", "netns", "pids", ns, check=False).stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            sh("ip", "netns", "del", ns, check=False)
        remove_bpf_root(self.bpf_root)
        deadline = time.monotonic() + 5  # namespace teardown is asynchronous in the kernel
        while any(ns in sh("ip", "netns", "list").stdout for ns in self.namespaces) and time.monotonic() < deadline:
            time.sleep(0.05)


def skip_or_fail(reason: str):
    """Skip a test that needs what this machine lacks; in CI (CI=true) fail it instead."""
    import pytest

    if IN_CI:
        pytest.fail(f"datapath unavailable in CI: {reason}")
    pytest.skip(reason)

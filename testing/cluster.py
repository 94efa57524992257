"""A lab of several nodes on one machine, for multi-node tests and benchmarks: an underlay
namespace with a bridge (and etcd on it, data on /dev/shm), each node a namespace with its
own underlay veth, its own agent (run/state/BPF directories of its own), its own pods.
Unique names per lab; close() removes every namespace, process, pin and file it made.

    lab = ClusterLab(tmp_path, nodes=3)
    for node in lab.nodes:
        node.start_agent()
    a = lab.nodes[0].pod("a")
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from pylium.testing.etcd import Etcd
from pylium.testing.lab import BIN, BPF_TEST_ROOT, AgentDirs, AgentProcess, Pod, launch_agent, remove_bpf_root, sh

UNDERLAY = "10.251.0."  # node i: .(i + 1); the underlay's own address (and etcd): .254
POD_CIDR = "10.212.0.0/16"


@dataclass
class ClusterNode:
    lab: ClusterLab
    index: int
    name: str
    ns: str
    ip: str
    dirs: AgentDirs
    agents: list[AgentProcess] = field(default_factory=list)

    def agent_args(self, *extra: str) -> list[str]:
        lab = self.lab
        args = [str(BIN / "pylium-agent"), *self.dirs.args(), "--log-format", "json",
                "--set", "prometheus.port=0", "--set", f"ipam.operator.clusterPoolIPv4PodCIDRList={{{POD_CIDR}}}",
                "--set", f"standalone.manifestsDir={lab.manifests}", "--set", f"ipv4.nodeIP={self.ip}",
                "--set", f"cluster.name={lab.cluster}"]
        if lab.etcd is not None:
            args += ["--set", "kvstore=etcd", "--set", f"etcd.endpoints={{{lab.etcd.endpoint}}}",
                     "--set", f"kvstore.leaseTTL={lab.lease_ttl}", "--set", "kvstore.connectTimeout=20s"]
        return [*args, *lab.extra, *extra]

    def start_agent(self, *extra: str, wait: bool = True, env: dict | None = None) -> AgentProcess:
        self.agents.append(launch_agent(self.ns, self.agent_args(*extra), self.dirs,
                                        self.lab.tmp / f"{self.name}-agent-{len(self.agents)}.log", env, wait=False))
        if wait:
            self.agents[-1].wait_ready(timeout=90)
        return self.agents[-1]

    @property
    def agent(self) -> AgentProcess:
        return self.agents[-1]

    @property
    def api(self):
        return self.dirs.client

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return sh(str(BIN / "pylium"), "--run-dir", str(self.dirs.run_dir), *args, check=check)

    def pod(self, name: str, labels: dict[str, str] | None = None, **body) -> Pod:
        ns = self.lab.netns(f"{self.index}{name}")
        ep = self.api.call("POST", "/v1/cni/add", {"container_id": f"{self.lab.prefix}-{self.index}-{name}",
                                                   "ifname": "eth0", "netns": f"/var/run/netns/{ns}",
                                                   "labels": labels or {}, **body})
        return Pod(name, ns, ep)

    def exec(self, *cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        return sh("nsenter", f"--net=/var/run/netns/{self.ns}", *cmd, check=check, timeout=timeout)


@dataclass
class ClusterLab:
    tmp: Path
    nodes_count: int = 3
    etcd_enabled: bool = True
    lease_ttl: str = "15m"
    extra: tuple[str, ...] = ()  # agent options for every node
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    namespaces: list[str] = field(default_factory=list)
    nodes: list[ClusterNode] = field(default_factory=list)
    etcd: Etcd | None = None

    def __post_init__(self) -> None:
        self.prefix = f"pc{self.id}"
        self.cluster = f"c{self.id}"
        self.bpf_root = BPF_TEST_ROOT / self.id
        self.manifests = self.tmp / "manifests"
        self.manifests.mkdir(parents=True, exist_ok=True)
        try:
            self.underlay = self.netns("ul")
            sh("ip", "-n", self.underlay, "link", "add", "br0", "type", "bridge")
            sh("ip", "-n", self.underlay, "addr", "add", f"{UNDERLAY}254/24", "dev", "br0")
            for dev in ("br0", "lo"):
                sh("ip", "-n", self.underlay, "link", "set", dev, "up")
            if self.etcd_enabled:
                self.etcd = Etcd(f"{UNDERLAY}254", 2379, netns=self.underlay, log_dir=self.tmp).start()
            for i in range(self.nodes_count):
                self.add_node()
        except BaseException:
            self.close()
            raise

    def netns(self, name: str) -> str:
        ns = f"{self.prefix}-{name}"
        sh("ip", "netns", "add", ns)
        self.namespaces.append(ns)
        return ns

    def add_node(self) -> ClusterNode:
        i = len(self.nodes)
        name, ns, ip = f"{self.prefix}-n{i}", self.netns(f"n{i}"), f"{UNDERLAY}{i + 1}"
        port = f"{self.prefix}n{i}"
        sh("ip", "link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", port, "netns", self.underlay)
        sh("ip", "-n", self.underlay, "link", "set", port, "master", "br0", "up")
        sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
        for dev in ("eth0", "lo"):
            sh("ip", "-n", ns, "link", "set", dev, "up")
        node = ClusterNode(self, i, name, ns, ip, _LabDirs(self.tmp / name, name, self.bpf_root))
        self.nodes.append(node)
        return node

    def exec(self, ns: str, *cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        """Run a command in a namespace (a pod's, by its netns name)."""
        return sh("ip", "netns", "exec", ns, *cmd, check=check, timeout=timeout)

    def node_list(self, node: ClusterNode) -> dict[str, dict]:
        return {r["name"]: r for r in json.loads(node.cli("node", "list", "-o", "json").stdout)}

    def wait_nodes(self, node: ClusterNode, names: set[str], timeout: float = 10) -> dict[str, dict]:
        """`node list` on `node` once it shows exactly these nodes."""
        def check():
            rows = self.node_list(node)
            return rows if set(rows) == names else None

        return self.wait(check, timeout, what=f"{node.name} to list {sorted(names)}")

    def wait(self, condition, timeout: float = 10, interval: float = 0.1, what: str = "condition"):
        deadline = time.monotonic() + timeout
        while True:
            result = condition()
            if result:
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            time.sleep(interval)

    def close(self) -> None:
        for node in self.nodes:
            for agent in node.agents:
                if agent.proc.poll() is None:
                    agent.proc.send_signal(signal.SIGKILL)
                    agent.proc.wait(10)
        if self.etcd is not None:
            self.etcd.close()
        for ns in reversed(self.namespaces):
            for pid in sh("ip", "netns", "pids", ns, check=False).stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            sh("ip", "netns", "del", ns, check=False)
        remove_bpf_root(self.bpf_root)
        deadline = time.monotonic() + 5
        while any(ns in sh("ip", "netns", "list").stdout for ns in self.namespaces) and time.monotonic() < deadline:
            time.sleep(0.05)


class _LabDirs(AgentDirs):
    """A node's directories, with the lab's BPF root (on bpffs) instead of one under tmp."""

    def __init__(self, root: Path, node: str, bpf_root: Path):
        super().__init__(root, node)
        self._bpf_root = bpf_root

    @property
    def bpf_root(self) -> Path:
        return self._bpf_root

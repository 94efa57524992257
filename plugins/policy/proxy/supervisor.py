"""The agent's side of the L7 proxy: proxy ports (allocated once from a range and kept across
restarts in `proxy_ports_state.json`, as Cilium does), the routing that keeps packets assigned
to a proxy socket on the node, the policy snapshot the proxy reads, and the proxy process
itself: started when some endpoint has L7 rules, adopted (not restarted) by a new agent, and
started again when it dies."""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from pyroute2.iproute.linux import IPRoute

from pylium.core.api_for_plugins import consts as c
from pylium.plugins.policy.proxy.policy import PID_FILE, POLICY_FILE

PORTS_FILE = "proxy_ports_state.json"
LISTENERS = ("http-ingress", "http-egress", "dns-egress")


def _free(port: int) -> bool:
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):  # the DNS proxy takes both
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def allocate_ports(state_dir: Path, first: int, last: int) -> dict[str, int]:
    """One port per listener, kept from the previous run when still in the range."""
    path = state_dir / PORTS_FILE
    ports: dict[str, int] = {}
    if path.exists():
        for item in json.loads(path.read_text()):
            name = f"{item['type']}-{'ingress' if item['ingress'] else 'egress'}"
            if name in LISTENERS and first <= item["port"] <= last:
                ports[name] = item["port"]
    candidates = list(range(first, last + 1))
    random.shuffle(candidates)
    for name in LISTENERS:
        if name in ports:
            continue
        port = next((p for p in candidates if p not in ports.values() and _free(p)), None)
        if port is None:
            raise RuntimeError(f"no free proxy port in {first}-{last}")
        ports[name] = port
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps([{"type": n.split("-")[0], "ingress": n.endswith("-ingress"), "port": p}
                               for n, p in sorted(ports.items())]))
    tmp.replace(path)
    return ports


def install_routes() -> None:
    """Packets the datapath assigned to a proxy socket (mark 0x200) are delivered locally."""
    with IPRoute() as ip:
        lo = ip.link_lookup(ifname="lo")[0]
        for family, dst, scope in ((socket.AF_INET, "0.0.0.0/0", {"scope": 254}), (socket.AF_INET6, "::/0", {})):
            for add in (lambda: ip.rule("add", family=family, priority=c.PROXY_RULE_PREF,
                                        fwmark=c.MARK_MAGIC_TO_PROXY, fwmask=c.MARK_MAGIC_MASK,
                                        table=c.PROXY_ROUTE_TABLE),
                        lambda: ip.route("add", family=family, dst=dst, type="local", oif=lo,
                                         table=c.PROXY_ROUTE_TABLE, **scope)):  # IPv4: scope host
                try:
                    add()
                except Exception as e:  # noqa: BLE001 (pyroute2's NetlinkError)
                    if getattr(e, "code", None) != errno.EEXIST:
                        raise


def remove_routes() -> list[str]:
    """Cleanup: the rules and routes install_routes made."""
    done = []
    with IPRoute() as ip:
        for family, version, anywhere in ((socket.AF_INET, 4, "0.0.0.0/0"), (socket.AF_INET6, 6, "::/0")):
            for rule in ip.get_rules(family=family, priority=c.PROXY_RULE_PREF):
                if rule.get_attr("FRA_TABLE") == c.PROXY_ROUTE_TABLE:
                    ip.rule("del", family=family, priority=c.PROXY_RULE_PREF, table=c.PROXY_ROUTE_TABLE,
                            fwmark=c.MARK_MAGIC_TO_PROXY, fwmask=c.MARK_MAGIC_MASK)
                    done.append(f"ip rule pref {c.PROXY_RULE_PREF} (IPv{version})")
            if ip.get_routes(family=family, table=c.PROXY_ROUTE_TABLE):
                ip.route("del", family=family, dst=anywhere, type="local", table=c.PROXY_ROUTE_TABLE)
                done.append(f"route table {c.PROXY_ROUTE_TABLE} (IPv{version})")
    return done


def write_policy(state_dir: Path, snapshot: dict) -> bool:
    """Write the proxy's policy (atomically, root-only); False when it did not change."""
    path = state_dir / POLICY_FILE
    text = json.dumps(snapshot, sort_keys=True)
    if path.exists() and path.read_text() == text:
        return False
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    tmp.replace(path)
    return True


class ProxyProcess:
    def __init__(self, node: str, run_dir: Path, state_dir: Path, bpf_root: Path, max_request_bytes: int, log):
        self.node, self.run_dir, self.state_dir, self.bpf_root = node, run_dir, state_dir, bpf_root
        self.max_request_bytes = max_request_bytes
        self.log = log
        self.child: subprocess.Popen | None = None

    def pid(self) -> int | None:
        """The running proxy of this node (ours or a previous agent's), if any."""
        try:
            pid = int((self.run_dir / PID_FILE).read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return None
        if self.child is not None and self.child.pid == pid and self.child.poll() is not None:
            return None  # our child, exited (a zombie until reaped)
        return pid if b"pylium.plugins.policy.proxy.main" in cmdline and self.node.encode() in cmdline else None

    def ensure(self) -> None:
        if self.child is not None:
            if self.child.poll() is None:
                return  # running (maybe not yet listening)
            self.log.warning("L7 proxy exited; starting it again", code=self.child.returncode)
            self.child = None
        if self.pid() is not None:
            return  # a previous agent's, adopted
        log_file = open(self.run_dir / "l7proxy.log", "ab")
        self.child = subprocess.Popen(
            [sys.executable, "-m", "pylium.plugins.policy.proxy.main", "--node", self.node, "--run-dir",
             str(self.run_dir), "--state-dir", str(self.state_dir), "--bpf-root", str(self.bpf_root),
             "--max-request-bytes", str(self.max_request_bytes)],
            stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file, start_new_session=True)
        log_file.close()
        self.log.info("L7 proxy started", pid=self.child.pid)

    def stop(self, timeout: float = 5) -> int | None:
        """Cleanup: end this node's proxy; returns its pid (None: none ran)."""
        pid = self.pid()
        if pid is None:
            return None
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        if Path(f"/proc/{pid}").exists():
            os.kill(pid, signal.SIGKILL)
        return pid

    def reload(self) -> None:
        pid = self.pid()
        if pid is not None:
            os.kill(pid, signal.SIGHUP)

"""Masquerading pods' traffic to the outside: one chain per node (never a rule per pod), via
iptables-restore so the chain is replaced in one step."""

from __future__ import annotations

import hashlib
import subprocess

COMMENT = "pylium: masquerade pod traffic leaving the pod CIDRs"


def chain_name(node: str) -> str:
    return "PYLIUM-MASQ-" + hashlib.sha256(node.encode()).hexdigest()[:8]


def apply(node: str, family: int, blocks: list[str], cluster_cidrs: list[str], enabled: bool) -> None:
    """Make the chain say exactly: traffic from this node's blocks to anywhere outside the
    cluster's pod CIDRs is masqueraded. With `enabled` false the chain is emptied."""
    tool = "iptables" if family == 4 else "ip6tables"
    chain = chain_name(node)
    lines = ["*nat", f":{chain} - [0:0]"]  # declaring the chain flushes it (with --noflush)
    if enabled:
        lines += [f"-A {chain} -d {c} -j RETURN" for c in cluster_cidrs]
        lines += [f"-A {chain} -s {b} -j MASQUERADE" for b in blocks]
    lines.append("COMMIT")
    subprocess.run([f"{tool}-restore", "--noflush", "-w", "5"], input="\n".join(lines) + "\n", text=True,
                   check=True, capture_output=True)
    jump = ["POSTROUTING", "-m", "comment", "--comment", COMMENT, "-j", chain]
    if subprocess.run([tool, "-w", "5", "-t", "nat", "-C", *jump], capture_output=True).returncode != 0:
        subprocess.run([tool, "-w", "5", "-t", "nat", "-A", *jump], check=True, capture_output=True, text=True)


def remove(node: str, family: int) -> bool:
    """Remove this node's chain and its jump (another node's stay); False when there was none."""
    tool = "iptables" if family == 4 else "ip6tables"
    chain = chain_name(node)
    jump = ["POSTROUTING", "-m", "comment", "--comment", COMMENT, "-j", chain]
    while subprocess.run([tool, "-w", "5", "-t", "nat", "-D", *jump], capture_output=True).returncode == 0:
        pass
    subprocess.run([tool, "-w", "5", "-t", "nat", "-F", chain], capture_output=True)
    return subprocess.run([tool, "-w", "5", "-t", "nat", "-X", chain], capture_output=True).returncode == 0

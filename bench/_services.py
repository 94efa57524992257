"""Service manifests and kube-proxy-style iptables rules for the load-balancing benchmarks."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pylium.core.datapath.maps import PinnedMap
from pylium.plugins.lb.maps import lb_maps


def lb_map(node: str, name: str, map_max: int = 65536) -> PinnedMap:
    """A load-balancer map of the bench agent on `node` (sized by its bpf.lbMapMax)."""
    tag = node[2:8]  # _lab: netns pb<tag>-node, node bench-<tag>, bpf root pylium-bench-<tag>
    spec = next(s for s in lb_maps(map_max, 16381) if s.name == name)
    return PinnedMap.open(spec, Path(f"/sys/fs/bpf/pylium-bench-{tag}/bench-{tag}/lb"))


def decoy_vip(i: int) -> str:
    return f"10.97.{i // 250}.{i % 250 + 1}"


def service_docs(name: str, vip: str, backends: list[str], port: int = 80, target: int = 8080) -> list[dict]:
    return [{"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "bench"},
             "spec": {"clusterIP": vip, "ports": [{"port": port, "targetPort": target}]}},
            {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
             "metadata": {"name": f"{name}-1", "namespace": "bench", "labels": {"kubernetes.io/service-name": name}},
             "ports": [{"port": target}], "endpoints": [{"addresses": [b]} for b in backends]}]


def write_manifest(path: Path, docs: list[dict]) -> None:
    """Atomically (the agent watches the directory): a `kind: List`, as `kubectl get -o json`
    writes it, in path.json."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}))
    tmp.rename(path.with_suffix(".json"))


def decoys(count: int, backends_each: int = 4) -> list[dict]:
    """`count` services, each with `backends_each` backends in 10.98.0.0/16 (never reached)."""
    docs = []
    for i in range(count):
        backends = [f"10.98.{(i * backends_each + j) // 250 % 256}.{(i * backends_each + j) % 250 + 1}"
                    for j in range(backends_each)]
        docs += service_docs(f"decoy-{i}", decoy_vip(i), backends)
    return docs


def kube_proxy_rules(decoy_count: int, target: tuple[str, int, str, int], backends_each: int = 1) -> str:
    """An iptables-restore nat table as kube-proxy (iptables mode) writes it, the decoys'
    KUBE-SERVICES rules first (the worst case), then the target service."""
    lines = ["*nat", ":PREROUTING ACCEPT [0:0]", ":INPUT ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
             ":POSTROUTING ACCEPT [0:0]", ":KUBE-SERVICES - [0:0]", ":KUBE-POSTROUTING - [0:0]",
             ":KUBE-MARK-MASQ - [0:0]"]
    rules = ["-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
             "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
             "-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING",
             "-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000",
             "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN",
             "-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0",
             "-A KUBE-POSTROUTING -j MASQUERADE --random-fully"]
    services = [(f"bench/decoy-{i}", decoy_vip(i), 80,
                 [f"10.98.{(i * backends_each + j) // 250 % 256}.{(i * backends_each + j) % 250 + 1}:8080"
                  for j in range(backends_each)]) for i in range(decoy_count)]
    vip, port, backend, bport = target
    services.append(("bench/target", vip, port, [f"{backend}:{bport}"]))
    for name, ip, p, eps in services:
        svc = "KUBE-SVC-" + hashlib.sha256(name.encode()).hexdigest()[:16].upper()
        lines.append(f":{svc} - [0:0]")
        rules.append(f"-A KUBE-SERVICES -d {ip}/32 -p tcp -m comment --comment \"{name} cluster IP\" -m tcp "
                     f"--dport {p} -j {svc}")
        rules.append(f"-A {svc} ! -s 10.0.0.0/8 -d {ip}/32 -p tcp -m comment --comment \"{name} cluster IP\" -m tcp "
                     f"--dport {p} -j KUBE-MARK-MASQ")
        for j, ep in enumerate(eps):
            sep = "KUBE-SEP-" + hashlib.sha256(f"{name}/{ep}".encode()).hexdigest()[:16].upper()
            lines.append(f":{sep} - [0:0]")
            left = len(eps) - j
            chance = f"-m statistic --mode random --probability {1 / left:.11f} " if left > 1 else ""
            rules.append(f"-A {svc} -m comment --comment \"{name} -> {ep}\" {chance}-j {sep}")
            rules.append(f"-A {sep} -s {ep.split(':')[0]}/32 -m comment --comment \"{name}\" -j KUBE-MARK-MASQ")
            rules.append(f"-A {sep} -p tcp -m comment --comment \"{name}\" -m tcp -j DNAT --to-destination {ep}")
    return "\n".join(lines + rules + ["COMMIT", ""])

"""Configuration keys owned by the load-balancing plugin (Cilium's Helm names), `bpf.lbMapMax`
among them (the `bpf` section is shared)."""

from __future__ import annotations

import re
from typing import Any

from pydantic import Field, field_validator

from pylium.core.api_for_plugins import ConfigError, Section
from pylium.plugins.lb import maglev
from pylium.plugins.lb.maps import ALGORITHMS


class LoadBalancerSettings(Section):
    algorithm: str = Field("random", description="How a new connection picks a backend: random, round_robin, "
                                                 "source_hash (by client address) or maglev (consistent hashing "
                                                 "of the connection, the same choice on every node).")
    mode: str = Field("snat", description="How traffic from outside reaches backends: snat (the node's address "
                                          "replaces the client's; replies come back through the node).")

    @field_validator("algorithm")
    @classmethod
    def _algorithm(cls, v: str) -> str:
        if v not in ALGORITHMS:
            raise ValueError(f"must be one of {', '.join(ALGORITHMS)}")
        return v

    @field_validator("mode")
    @classmethod
    def _mode(cls, v: str) -> str:
        if v != "snat":
            raise ValueError("must be snat (dsr and hybrid are not supported yet)")
        return v


class NodePortSettings(Section):
    enabled: bool = Field(True, description="Serve NodePort, externalIPs and LoadBalancer addresses on the "
                                            "node's devices.")
    range: str = Field("30000-32767", description="NodePorts services may use, first-last (or first,last).")

    @field_validator("range")
    @classmethod
    def _range(cls, v: str) -> str:
        m = re.fullmatch(r"\s*(\d+)\s*[-,]\s*(\d+)\s*", str(v))
        if not m or not 1 <= int(m[1]) <= int(m[2]) <= 65535:
            raise ValueError("must be first-last within 1-65535, for example 30000-32767")
        return f"{int(m[1])}-{int(m[2])}"

    def bounds(self) -> tuple[int, int]:
        low, high = self.range.split("-")
        return int(low), int(high)


class SocketLBSettings(Section):
    enabled: bool = Field(True, description="Translate service addresses once per connection in cgroup socket "
                                            "hooks (connect, sendmsg, recvmsg, getpeername) instead of per "
                                            "packet. Alias: hostServices.enabled.")
    hostNamespaceOnly: bool = Field(False, description="Socket LB only for the node's own processes; pods go "
                                                       "through the per-packet path.")


class MaglevSettings(Section):
    tableSize: int = Field(16381, description=f"Maglev table size per service, one of "
                                              f"{', '.join(map(str, maglev.PRIMES))}; about 100 times the "
                                              f"backends of the largest service.")
    hashSeed: str = Field(maglev.DEFAULT_SEED, description="Base64 of 12 bytes; the same on every node so that "
                                                           "every node picks the same backends.")

    @field_validator("tableSize")
    @classmethod
    def _size(cls, v: int) -> int:
        if v not in maglev.PRIMES:
            raise ValueError(f"must be one of {', '.join(map(str, maglev.PRIMES))}")
        return v

    @field_validator("hashSeed")
    @classmethod
    def _seed(cls, v: str) -> str:
        maglev.seed_bytes(v)
        return v


class CgroupSettings(Section):
    hostRoot: str = Field("", description="cgroup v2 directory the socket hooks attach to; empty: the root of "
                                          "the first cgroup2 mount.")


class LbBpfSettings(Section):
    lbMapMax: int = Field(65536, ge=256, le=1 << 24, description="Entries of the load balancer's service, "
                                                               "backend and affinity maps; a change that needs "
                                                               "more is refused whole.")
    natMax: int = Field(262144, ge=1024, le=1 << 24, description="Entries of lb4_ct, the connections the "
                                                               "per-packet path translated (destination and "
                                                               "source NAT, one entry per direction; Cilium's "
                                                               "bpf.natMax). An LRU: when full, the least "
                                                               "recently used translation makes room.")


def _host_services(value: Any, old: str, warn) -> dict[str, Any]:
    """The seed's `hostServices` section: `enabled` is socket LB; `protocols` has no meaning here."""
    if not isinstance(value, dict):
        raise ConfigError([f"hostServices: must be a section with 'enabled' (got {value!r})"])
    for k in set(value) - {"enabled", "protocols"}:
        raise ConfigError([f"hostServices.{k}: unknown key (allowed: enabled, protocols)"])
    if "protocols" in value:
        warn("hostServices.protocols: ignored, socket load balancing covers TCP and UDP")
    return {"socketLB.enabled": value["enabled"]} if "enabled" in value else {}


_KPR_OLD = {"strict": True, "partial": True, "probe": True, "disabled": False}  # the seed's values


class LbConfig(Section):
    aliases = {"hostServices": _host_services}

    kubeProxyReplacement: bool = Field(True, description="Replace kube-proxy: socket LB, NodePort, externalIPs "
                                                         "and LoadBalancer addresses. false: only ClusterIP "
                                                         "services, per packet.")
    serviceNoBackendResponse: str = Field("reject", description="A connection to a service without backends: "
                                                                "reject (ICMP port unreachable) or drop. Either "
                                                                "way a drop with reason 158 is reported.")
    devices: list[str] = Field(default_factory=list, description="Devices NodePort and external services are "
                                                                  "served on; empty: every device with a global "
                                                                  "IPv4 address except the one carrying the "
                                                                  "pods' gateways.")
    loadBalancer: LoadBalancerSettings = Field(default_factory=LoadBalancerSettings)
    nodePort: NodePortSettings = Field(default_factory=NodePortSettings)
    socketLB: SocketLBSettings = Field(default_factory=SocketLBSettings)
    maglev: MaglevSettings = Field(default_factory=MaglevSettings)
    cgroup: CgroupSettings = Field(default_factory=CgroupSettings)
    bpf: LbBpfSettings = Field(default_factory=LbBpfSettings)

    @field_validator("kubeProxyReplacement", mode="before")
    @classmethod
    def _kpr_spellings(cls, v: Any) -> Any:
        return _KPR_OLD.get(v.lower(), v) if isinstance(v, str) else v

    @field_validator("serviceNoBackendResponse")
    @classmethod
    def _response(cls, v: str) -> str:
        if v not in ("reject", "drop"):
            raise ValueError("must be reject or drop")
        return v

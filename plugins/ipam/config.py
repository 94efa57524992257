"""The `ipam` configuration section (Cilium's Helm shape: `ipam.mode`, `ipam.operator.*`)."""

from __future__ import annotations

import ipaddress
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from pylium.core.api_for_plugins import Section

# Keys Cilium's chart nests under ipam.operator; written directly under ipam they mean the same.
_OPERATOR_KEYS = ("clusterPoolIPv4PodCIDRList", "clusterPoolIPv4MaskSize", "clusterPoolIPv6PodCIDRList",
                  "clusterPoolIPv6MaskSize", "autoCreateCiliumPodIPPools")


def _check_cidrs(cidrs: list[str], version: int) -> list[str]:
    out = []
    for c in cidrs:
        try:
            net = ipaddress.ip_network(c, strict=True)
        except ValueError as e:
            raise ValueError(f"{c!r} is not a CIDR ({e})") from None
        if net.version != version:
            raise ValueError(f"{c!r} is not an IPv{version} CIDR")
        out.append(str(net))
    for i, a in enumerate(out):
        for b in out[i + 1:]:
            if ipaddress.ip_network(a).overlaps(ipaddress.ip_network(b)):
                raise ValueError(f"CIDRs {a} and {b} overlap")
    return out


class FamilyPool(Section):
    cidrs: list[str] = Field(default_factory=list, description="CIDRs of the pool.")
    maskSize: int = Field(description="Prefix length of the blocks a node claims from the CIDRs.")


class Ipv4Pool(FamilyPool):
    maskSize: int = Field(27, ge=1, le=30)

    @field_validator("cidrs")
    @classmethod
    def _v4(cls, v: list[str]) -> list[str]:
        return _check_cidrs(v, 4)


class Ipv6Pool(FamilyPool):
    maskSize: int = Field(120, ge=1, le=126)

    @field_validator("cidrs")
    @classmethod
    def _v6(cls, v: list[str]) -> list[str]:
        return _check_cidrs(v, 6)


class NamedPool(Section):
    ipv4: Ipv4Pool | None = None
    ipv6: Ipv6Pool | None = None


class OperatorSettings(Section):
    clusterPoolIPv4PodCIDRList: list[str] = Field(["10.0.0.0/8"], description="cluster-pool: IPv4 CIDRs split into "
                                                                            "per-node blocks.")
    clusterPoolIPv4MaskSize: int = Field(24, ge=1, le=30, description="cluster-pool: prefix length of a node's IPv4 block.")
    clusterPoolIPv6PodCIDRList: list[str] = Field(["fd00::/104"], description="cluster-pool: IPv6 CIDRs split into "
                                                                            "per-node blocks.")
    clusterPoolIPv6MaskSize: int = Field(120, ge=1, le=126, description="cluster-pool: prefix length of a node's IPv6 "
                                                                        "block.")
    autoCreateCiliumPodIPPools: dict[str, NamedPool] = Field(
        default_factory=dict, description="multi-pool: Cilium's name for `ipam.pools` (merged into it).")

    @field_validator("clusterPoolIPv4PodCIDRList")
    @classmethod
    def _v4(cls, v: list[str]) -> list[str]:
        return _check_cidrs(v, 4)

    @field_validator("clusterPoolIPv6PodCIDRList")
    @classmethod
    def _v6(cls, v: list[str]) -> list[str]:
        return _check_cidrs(v, 6)


class IpamSettings(Section):
    mode: Literal["cluster-pool", "kubernetes", "multi-pool"] = Field(
        "cluster-pool", description="cluster-pool: a per-node block claimed from the cluster CIDRs; kubernetes: the "
                                    "node's pod CIDRs (`ipam.podCIDRs`); multi-pool: named pools (`ipam.pools`).")
    operator: OperatorSettings = Field(default_factory=OperatorSettings)
    podCIDRs: list[str] = Field(default_factory=list, description="kubernetes mode: this node's pod CIDRs (at most one "
                                                                  "per family), as the Node object would give them.")
    pools: dict[str, NamedPool] = Field(default_factory=dict, description="multi-pool: pools by name, each with "
                                                                          "`ipv4`/`ipv6` `cidrs` and `maskSize`; "
                                                                          "requests without a pool use `default`.")

    @model_validator(mode="before")
    @classmethod
    def _flat_operator_keys(cls, data: Any) -> Any:
        if isinstance(data, dict) and any(k in data for k in _OPERATOR_KEYS):
            data = dict(data)
            operator = dict(data.get("operator") or {})
            for k in _OPERATOR_KEYS:
                if k in data:
                    operator[k] = data.pop(k)
            data["operator"] = operator
        return data

    @field_validator("podCIDRs")
    @classmethod
    def _pod_cidrs(cls, v: list[str]) -> list[str]:
        nets = []
        for c in v:
            try:
                nets.append(ipaddress.ip_network(c, strict=True))
            except ValueError as e:
                raise ValueError(f"{c!r} is not a CIDR ({e})") from None
        if len({n.version for n in nets}) != len(nets):
            raise ValueError("at most one CIDR per address family")
        return [str(n) for n in nets]

    @model_validator(mode="after")
    def _mode_needs(self) -> IpamSettings:
        if self.mode == "multi-pool" and not self.all_pools():
            raise ValueError("multi-pool mode needs at least one pool in ipam.pools")
        if self.mode == "kubernetes" and not self.podCIDRs:
            raise ValueError("kubernetes mode needs ipam.podCIDRs (the node's spec.podCIDRs)")
        op = self.operator
        for cidrs, mask in ((op.clusterPoolIPv4PodCIDRList, op.clusterPoolIPv4MaskSize),
                            (op.clusterPoolIPv6PodCIDRList, op.clusterPoolIPv6MaskSize)):
            for c in cidrs:
                if ipaddress.ip_network(c).prefixlen > mask:
                    raise ValueError(f"operator: mask size {mask} is shorter than the prefix of {c}")
        for name, pool in self.all_pools().items():
            for fam in (pool.ipv4, pool.ipv6):
                if fam is not None and any(ipaddress.ip_network(c).prefixlen > fam.maskSize for c in fam.cidrs):
                    raise ValueError(f"pool {name}: maskSize {fam.maskSize} is shorter than a CIDR's prefix")
        return self

    def all_pools(self) -> dict[str, NamedPool]:
        return {**self.operator.autoCreateCiliumPodIPPools, **self.pools}


class IpamConfig(Section):
    ipam: IpamSettings = Field(default_factory=IpamSettings)

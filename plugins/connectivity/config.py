"""Configuration keys owned by the connectivity plugin (Cilium's Helm names)."""

from __future__ import annotations

import ipaddress
from typing import Any, Literal

from pydantic import Field, field_validator

from pylium.core.api_for_plugins import ConfigError, Section


def _routing(value: Any, old: str, warn) -> dict[str, Any]:
    """The seed's `datapath.mode` / `tunnel`: routingMode and tunnelProtocol."""
    v = str(value).lower()
    if v in ("disabled", "native"):
        return {"routingMode": "native"}
    if v in ("vxlan", "geneve"):
        return {"routingMode": "tunnel", "tunnelProtocol": v}
    raise ConfigError([f"{old}: must be one of 'vxlan', 'geneve', 'native' or 'disabled' (got {value!r})"])


class ConnectivitySettings(Section):
    hostDevice: str = Field("pylium_host", max_length=15, pattern=r"^[A-Za-z0-9_.-]+$",
                            description="Device on the node that carries the pods' gateway (router) addresses.")


class ConnectivityConfig(Section):
    aliases = {"datapath.mode": _routing, "tunnel": _routing}

    enableIPv4Masquerade: bool = Field(True, description="Masquerade IPv4 traffic from pods to destinations outside "
                                                         "the pod CIDRs behind the node's address.")
    enableIPv6Masquerade: bool = Field(True, description="The same for IPv6.")
    MTU: int = Field(0, ge=0, le=65535, description="MTU of pod interfaces (and of the tunnel device); 0 takes the "
                                                    "MTU of the node's default route device (1500 when there is "
                                                    "none), less 50 in tunnel mode for the encapsulation.")
    connectivity: ConnectivitySettings = Field(default_factory=ConnectivitySettings)
    routingMode: Literal["tunnel", "native"] = Field(
        "tunnel", description="How pods reach pods on other nodes: tunnel (encapsulated between nodes, the source's "
                              "identity in the header) or native (routed by the network; see autoDirectNodeRoutes). "
                              "Aliases: tunnel, datapath.mode.")
    tunnelProtocol: Literal["vxlan", "geneve"] = Field("vxlan", description="Encapsulation in tunnel mode. geneve "
                                                                           "needs a kernel with Geneve.")
    tunnelPort: int = Field(0, ge=0, le=65535, description="UDP port of the tunnel; 0: the protocol's (VXLAN 8472, "
                                                           "Geneve 6081).")
    ipv4NativeRoutingCIDR: str = Field("", description="Destinations the network routes without masquerading "
                                                       "(native routing), e.g. all pod CIDRs of the cluster.")
    autoDirectNodeRoutes: bool = Field(False, description="native: route each other node's pod CIDRs via that "
                                                          "node's address (nodes on one L2 network).")
    directRoutingSkipUnreachable: bool = Field(False, description="autoDirectNodeRoutes: skip (with a warning) "
                                                                  "a node not directly reachable, instead of failing.")

    @field_validator("ipv4NativeRoutingCIDR")
    @classmethod
    def _cidr(cls, v: str) -> str:
        if v:
            ipaddress.ip_network(v, strict=False)
        return v

    def tunnel_port(self) -> int:
        return self.tunnelPort or {"vxlan": 8472, "geneve": 6081}[self.tunnelProtocol]

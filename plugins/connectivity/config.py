"""Configuration keys owned by the connectivity plugin (Cilium's Helm names)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from pylium.core.api_for_plugins import ConfigError, Section


def _routing(value: Any, old: str, warn) -> dict[str, Any]:
    """The seed's `datapath.mode` / `tunnel`: routingMode and tunnelProtocol (keys of the
    multi-node routing this plugin grows into; unknown until then, named as written)."""
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
    MTU: int = Field(0, ge=0, le=65535, description="MTU of pod interfaces; 0 takes the MTU of the node's default "
                                                    "route device (1500 when there is none).")
    connectivity: ConnectivitySettings = Field(default_factory=ConnectivitySettings)

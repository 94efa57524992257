"""A node as the cluster store holds it, at `cilium/state/nodes/v1/<cluster>/<name>`, in the
shape of Cilium's node record (Name, Cluster, IPAddresses, IPv4AllocCIDR, BootID, ...).
Annotations are the free-form attributes plugins add (e.g. an encryption public key)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import msgspec

from pylium.core.state.keys import NODES as PREFIX


def node_key(cluster: str, name: str) -> str:
    return f"{PREFIX}{cluster}/{name}"


class NodeAddress(msgspec.Struct, frozen=True, rename="pascal"):
    type: str  # InternalIP
    ip: str = msgspec.field(name="IP")


class Node(msgspec.Struct, frozen=True, rename="pascal", kw_only=True):
    name: str
    cluster: str
    ip_addresses: list[NodeAddress] = msgspec.field(name="IPAddresses", default_factory=list)
    ipv4_alloc_cidr: list[str] = msgspec.field(name="IPv4AllocCIDR", default_factory=list)
    ipv6_alloc_cidr: list[str] = msgspec.field(name="IPv6AllocCIDR", default_factory=list)
    ipv4_health_ip: str = msgspec.field(name="IPv4HealthIP", default="")
    boot_id: str = msgspec.field(name="BootID", default="")
    labels: dict[str, str] = msgspec.field(default_factory=dict)
    annotations: dict[str, str] = msgspec.field(default_factory=dict)

    @property
    def ipv4(self) -> str:
        return next((a.ip for a in self.ip_addresses if ipaddress.ip_address(a.ip).version == 4), "")

    @property
    def ipv6(self) -> str:
        return next((a.ip for a in self.ip_addresses if ipaddress.ip_address(a.ip).version == 6), "")

    @property
    def pod_cidrs(self) -> list[str]:
        return [*self.ipv4_alloc_cidr, *self.ipv6_alloc_cidr]

    def replace(self, **changes) -> Node:
        return msgspec.structs.replace(self, **changes)

    def record(self) -> dict:
        return msgspec.to_builtins(self)


class BadNodeRecord(ValueError):
    pass


def parse(key: str, value: object) -> Node:
    """A node record read from the store, checked: its fields, its addresses, and that it is
    stored under its own name."""
    try:
        node = msgspec.convert(value, Node)
    except msgspec.ValidationError as e:
        raise BadNodeRecord(str(e)) from None
    if not key.endswith(f"/{node.cluster}/{node.name}"):
        raise BadNodeRecord(f"stored under {key} but names {node.cluster}/{node.name}")
    try:
        for a in node.ip_addresses:
            ipaddress.ip_address(a.ip)
        for cidr in node.pod_cidrs:
            ipaddress.ip_network(cidr)
    except ValueError as e:
        raise BadNodeRecord(str(e)) from None
    return node


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""

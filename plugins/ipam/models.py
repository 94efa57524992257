"""Request payloads of the IPAM bus methods (validated: unknown fields and wrong types are errors)."""

from __future__ import annotations

import re
from typing import Literal

import msgspec

IFNAME = re.compile(r"^[^\s/:]{1,15}$")  # a Linux interface name


class OwnerRef(msgspec.Struct, forbid_unknown_fields=True):
    container_id: str
    interface: str = "eth0"


class AllocateRequest(msgspec.Struct, forbid_unknown_fields=True):
    """`ipam.allocate`: addresses for an owner (container id + interface)."""

    owner: OwnerRef
    pool: str | None = None  # default: the pool named "default"
    family: Literal["ipv4", "ipv6"] | None = None  # default: every family the pool has
    requested: list[str] = []  # specific addresses, at most one per family


class ReleaseRequest(msgspec.Struct, forbid_unknown_fields=True):
    """`ipam.release`: free an owner's addresses (every interface when `interface` is omitted)."""

    container_id: str
    interface: str | None = None


class ListRequest(msgspec.Struct, forbid_unknown_fields=True):
    """`ipam.list`: pools with usage, and every allocation when `all` is true."""

    all: bool = False


def check_owner(container_id: str, interface: str | None) -> str | None:
    """A problem with the owner fields, or None."""
    if not container_id or len(container_id) > 256 or not container_id.isprintable():
        return "container_id: must be 1-256 printable characters"
    if interface is not None and not IFNAME.match(interface):
        return f"interface: {interface!r} is not a valid interface name (1-15 characters, no spaces, '/' or ':')"
    return None

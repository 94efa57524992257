"""Security identities: a set of identity-relevant labels -> a number, the same on every node.

Reserved identities have Cilium's numbers. Identities of label sets are allocated from 256
through the cluster store (an atomic create on `identities/v1/id/<n>` and on the label key),
so two nodes asking for the same labels get the same number. CIDR identities (peers named
by address in policies) are local to the node, from 2^24.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any

from pylium.core.api_for_plugins import consts

RESERVED = {int(n): label.removeprefix("reserved:") for n, label in consts.RESERVED_IDENTITIES.items()}
ID_HOST, ID_WORLD, ID_INIT = consts.ID_HOST, consts.ID_WORLD, consts.ID_INIT
MIN_ALLOCATED, MAX_ALLOCATED = consts.IDENTITY_ALLOCATED_MIN, consts.IDENTITY_ALLOCATED_MAX
MIN_LOCAL = consts.IDENTITY_LOCAL_MIN
PREFIX = "identities/v1"

# Cilium's default identity-relevant label filter: every label, except those that change per
# pod or carry no meaning for policy (regular expressions on "key" without the source; a
# leading "!" excludes; the first matching pattern decides).
DEFAULT_LABEL_FILTER = (
    "io\\.kubernetes\\.pod\\.namespace$", "io\\.cilium\\.k8s\\.namespace\\.labels", "io\\.cilium\\.k8s\\.policy",
    "app\\.kubernetes\\.io",
    "!io\\.kubernetes", "!kubernetes\\.io", "!.*beta\\.kubernetes\\.io", "!k8s\\.io",
    "!pod-template-generation", "!pod-template-hash", "!controller-revision-hash", "!controller-uid",
    "!job-name", "!annotation\\.", "!etcd_node", "!statefulset\\.kubernetes\\.io/pod-name",
)


class LabelFilter:
    def __init__(self, patterns: tuple[str, ...] | list[str] = DEFAULT_LABEL_FILTER):
        self.rules = [(not p.startswith("!"), re.compile(p.lstrip("!"))) for p in patterns]

    def relevant(self, labels: dict[str, str]) -> dict[str, str]:
        out = {}
        for full, value in labels.items():
            source, _, key = full.partition(":")
            if source in ("reserved", "cidr"):
                out[full] = value
                continue
            for include, pattern in self.rules:
                if pattern.match(key):
                    if include:
                        out[full] = value
                    break
            else:
                out[full] = value
        return out


def label_key(labels: dict[str, str]) -> str:
    """Canonical text of a label set: sorted "source:key=value" joined by ';'."""
    return ";".join(f"{k}={v}" for k, v in sorted(labels.items()))


def reserved_labels(number: int) -> dict[str, str]:
    return {f"reserved:{RESERVED[number]}": ""}


@dataclass
class Identity:
    id: int
    labels: dict[str, str]
    kind: str  # reserved, cluster_local, node_local (Cilium's cilium_identity{type})

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "labels": [f"{k}={v}" if v else k for k, v in sorted(self.labels.items())],
                "type": self.kind}


def cidr_labels(prefix: str) -> dict[str, str]:
    """A CIDR identity carries its prefix and every prefix containing it (so a rule naming
    10.0.0.0/8 selects the identity of 10.1.0.0/16), and reserved:world."""
    net = ipaddress.ip_network(prefix)
    labels = {"reserved:world": ""}
    for length in range(net.prefixlen + 1):
        labels[f"cidr:{net.supernet(new_prefix=length)}"] = ""
    return labels


class IdentityAllocator:
    """Numbers for label sets, shared through the cluster store; CIDR identities kept here."""

    def __init__(self, store: Any, label_filter: LabelFilter):
        self.store = store
        self.filter = label_filter
        self.known: dict[int, Identity] = {n: Identity(n, reserved_labels(n), "reserved") for n in RESERVED}
        self._by_key: dict[str, int] = {}
        self._cidrs: dict[str, int] = {}

    def known_labels(self, labels: dict[str, str]) -> Identity | None:
        """The identity of these labels if this node knows it already."""
        number = self._by_key.get(label_key(self.filter.relevant(labels)))
        return self.known[number] if number is not None else None

    async def allocate(self, labels: dict[str, str]) -> Identity:
        relevant = self.filter.relevant(labels)
        reserved = [k for k in relevant if k.startswith("reserved:")]
        if reserved:  # reserved:host, reserved:init ... keep their numbers
            name = reserved[0].split(":", 1)[1]
            number = next((n for n, v in RESERVED.items() if v == name), ID_INIT)
            return self.known[number]
        key = label_key(relevant)
        if not relevant:
            return self.known[ID_INIT]
        if key in self._by_key:
            return self.known[self._by_key[key]]
        number = await self.store.get(f"{PREFIX}/labels/{key}")
        while number is None:
            taken = {int(k.rsplit("/", 1)[1]) for k in await self.store.list(f"{PREFIX}/id/")}
            candidate = next((n for n in range(MIN_ALLOCATED, MAX_ALLOCATED + 1) if n not in taken), None)
            if candidate is None:
                raise RuntimeError(f"no free identity in {MIN_ALLOCATED}-{MAX_ALLOCATED} for {key}")
            if not await self.store.create(f"{PREFIX}/id/{candidate}", relevant):
                continue  # another node took it: try the next
            if await self.store.create(f"{PREFIX}/labels/{key}", candidate):
                number = candidate
            else:  # another node allocated these labels meanwhile: use theirs
                await self.store.delete(f"{PREFIX}/id/{candidate}")
                number = await self.store.get(f"{PREFIX}/labels/{key}")
        return self._remember(int(number), relevant, "cluster_local")

    def _remember(self, number: int, labels: dict[str, str], kind: str) -> Identity:
        identity = Identity(number, labels, kind)
        self.known[number] = identity
        self._by_key[label_key(labels)] = number
        return identity

    async def sync(self) -> int:
        """Learn every identity the cluster allocated (peers on other nodes); how many are new."""
        new = 0
        for key, labels in (await self.store.list(f"{PREFIX}/id/")).items():
            number = int(key.rsplit("/", 1)[1])
            if number not in self.known:
                self._remember(number, dict(labels), "cluster_local")
                new += 1
        return new

    def cidr(self, prefix: str) -> tuple[Identity, bool]:
        """The node-local identity of a prefix, and whether it was just created."""
        prefix = str(ipaddress.ip_network(prefix, strict=False))
        number = self._cidrs.get(prefix)
        if number is not None:
            return self.known[number], False
        number = self._cidrs[prefix] = MIN_LOCAL + len(self._cidrs)
        return self._remember(number, cidr_labels(prefix), "node_local"), True

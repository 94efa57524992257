"""Security identities: a set of identity-relevant labels -> a number, the same on every node.

Reserved identities have Cilium's numbers. Identities of label sets are numbered from 256
through the cluster store, in Cilium's layout under `cilium/state/identities/v1/`:

- `id/<n>` -> the labels (no lease: a number is never reused for other labels);
- `value/<labels>` -> n, the cluster's binding of a label set to its number; `id/<n>` and
  `value/<labels>` are created in one transaction, so two nodes asking for the same labels at
  the same moment get the same number, and two label sets never get one number;
- `value/<labels>/<node IPv4>` -> n with the agent's lease: this node uses the identity.

`<labels>` is Cilium's text of a label set: `source:key=value;` for each label, sorted. Every
node follows `id/` (a watch), so identities allocated elsewhere are known here within
milliseconds. CIDR identities (peers named by address in policies) are local, from 2^24.
"""

from __future__ import annotations

import ipaddress
import random
import re
from dataclasses import dataclass
from typing import Any, Callable

import anyio

from pylium.core.api_for_plugins import Mirror, StoreUnavailable, consts, store_keys

RESERVED = {int(n): label.removeprefix("reserved:") for n, label in consts.RESERVED_IDENTITIES.items()}
ID_HOST, ID_WORLD, ID_INIT = consts.ID_HOST, consts.ID_WORLD, consts.ID_INIT
MIN_ALLOCATED, MAX_ALLOCATED = consts.IDENTITY_ALLOCATED_MIN, consts.IDENTITY_ALLOCATED_MAX
MIN_LOCAL = consts.IDENTITY_LOCAL_MIN
ID_PREFIX, VALUE_PREFIX = store_keys.IDENTITY_IDS, store_keys.IDENTITY_VALUES
ATTEMPTS = 16  # as Cilium's allocator: then the range is taken as full

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
    """Cilium's text of a label set in the kvstore: "source:key=value;" per label, sorted."""
    return "".join(f"{k}={v};" for k, v in sorted(labels.items()))


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
    """Numbers for label sets, shared through the cluster store; CIDR identities kept here.
    `run()` follows the cluster's identities; `on_new(identity)` hears of each new one."""

    def __init__(self, store: Any, label_filter: LabelFilter, node_suffix: str,
                 on_new: Callable[[Identity], None] = lambda identity: None, log: Any = None):
        self.store, self.filter, self.node_suffix, self.on_new, self.log = store, label_filter, node_suffix, on_new, log
        self.known: dict[int, Identity] = {n: Identity(n, reserved_labels(n), "reserved") for n in RESERVED}
        self._by_key: dict[str, int] = {}
        self._cidrs: dict[str, int] = {}
        self._used: set[str] = set()  # label sets whose per-node key this agent writes
        self._unwritten: dict[str, int] = {}  # ... and has not written yet
        self._pending_used = anyio.Event()
        self.bad = 0  # records under id/ that did not parse
        self.mirror = Mirror(store, ID_PREFIX, self._changed, log)

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self.mirror.run)
            tg.start_soon(self._write_used)

    async def _write_used(self) -> None:
        """This node's `value/<labels>/<node>` keys, in the background and again until they
        are written: a known identity never waits for etcd (a restart while it is away keeps
        its pods)."""
        while True:
            await self._pending_used.wait()
            self._pending_used = anyio.Event()
            for key, number in list(self._unwritten.items()):
                try:
                    await self.store.put(f"{VALUE_PREFIX}{key}/{self.node_suffix}", number, lease=True)
                    self._unwritten.pop(key, None)
                except StoreUnavailable:
                    await anyio.sleep(1)
                    self._pending_used.set()
                    break

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
        if not relevant:
            return self.known[ID_INIT]
        key = label_key(relevant)
        number = self._by_key.get(key)
        if number is None:
            number = await self.store.get(VALUE_PREFIX + key)
        for _ in range(ATTEMPTS):
            if number is not None:
                break
            candidate = self._free_number()
            if await self.store.create_all({f"{ID_PREFIX}{candidate}": relevant, VALUE_PREFIX + key: candidate}):
                number = candidate
            else:  # these labels were bound meanwhile (use that number), or the number was taken: again
                number = await self.store.get(VALUE_PREFIX + key)
        if number is None:
            raise RuntimeError(f"no identity for {key}: no free number in {MIN_ALLOCATED}-{MAX_ALLOCATED} "
                               f"after {ATTEMPTS} attempts")
        if key not in self._used:
            self._used.add(key)
            self._unwritten[key] = int(number)
            self._pending_used.set()
        identity = self.known.get(int(number))
        return identity if identity is not None and identity.labels == relevant else \
            self._remember(int(number), relevant, "cluster_local")

    def _free_number(self) -> int:
        """A random number no identity has (random: nodes allocating at once rarely collide)."""
        for _ in range(64):
            n = random.randint(MIN_ALLOCATED, MAX_ALLOCATED)
            if n not in self.known:
                return n
        free = [n for n in range(MIN_ALLOCATED, MAX_ALLOCATED + 1) if n not in self.known]
        if not free:
            raise RuntimeError(f"no free identity number in {MIN_ALLOCATED}-{MAX_ALLOCATED}")
        return random.choice(free)

    def _remember(self, number: int, labels: dict[str, str], kind: str) -> Identity:
        identity = Identity(number, labels, kind)
        self.known[number] = identity
        self._by_key[label_key(labels)] = number
        return identity

    def _changed(self, key: str, old: Any, new: Any) -> None:
        """An identity of the cluster appeared (or went, by someone's garbage collection)."""
        try:
            number = int(key.removeprefix(ID_PREFIX))
        except ValueError:
            number = None
        if number is None or (new is not None and not (isinstance(new, dict) and all(
                isinstance(k, str) and isinstance(v, str) for k, v in new.items()))):
            self.bad += 1
            if self.log is not None:
                self.log.error("ignoring an identity record that does not parse", key=key, value=str(new)[:200])
            return
        if new is None:
            gone = self.known.pop(number, None)
            if gone is not None:
                self._by_key.pop(label_key(gone.labels), None)
            return
        if number in self.known and self.known[number].labels == new:
            return
        self.on_new(self._remember(number, dict(new), "cluster_local"))

    def cidr(self, prefix: str) -> tuple[Identity, bool]:
        """The node-local identity of a prefix, and whether it was just created."""
        prefix = str(ipaddress.ip_network(prefix, strict=False))
        number = self._cidrs.get(prefix)
        if number is not None:
            return self.known[number], False
        number = self._cidrs[prefix] = MIN_LOCAL + len(self._cidrs)
        return self._remember(number, cidr_labels(prefix), "node_local"), True

    def local(self, labels: dict[str, str]) -> Identity:
        """A node-local identity for other generated label sets (fqdn:<selector>): the same
        number for the same labels, from the same range as CIDR identities."""
        key = "local:" + label_key(labels)
        number = self._cidrs.get(key)
        if number is None:
            number = self._cidrs[key] = MIN_LOCAL + len(self._cidrs)
            return self._remember(number, dict(labels), "node_local")
        return self.known[number]

"""Address allocation, pure logic: pools of node blocks, reserved addresses, owners.

Nothing here does I/O; `service.py` makes every change durable before it is answered. The
rules: an owner (container id + interface) holds at most one address per family; asking again
returns the same addresses; the network, broadcast (IPv4) and router addresses of a block are
never handed out.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Iterable

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
FAMILIES = {4: "ipv4", 6: "ipv6"}


class IpamError(Exception):
    """A request that cannot be served; `code` is machine-readable, the message names why."""

    code = "bad_request"


class UnknownPool(IpamError):
    code = "unknown_pool"


class Conflict(IpamError):
    code = "conflict"


class Exhausted(IpamError):
    code = "exhausted"

    def __init__(self, pool: str, family: str, cidrs: list[str], blocks: list[str], used: int, total: int,
                 can_grow: bool = False):
        self.pool, self.family, self.cidrs, self.blocks, self.used, self.total = pool, family, cidrs, blocks, used, total
        grow = " and no free block is left in the pool" if can_grow else ""
        super().__init__(f"pool {pool} ({family}) is exhausted: {used}/{total} addresses in use in this node's "
                         f"blocks {', '.join(blocks) or 'none'} (pool CIDRs {', '.join(cidrs)}){grow}")


class NeedsBlock(Exception):
    """The pool can grow: claim another block for (pool, family) and try again."""

    def __init__(self, pool: str, family: int):
        super().__init__(f"{pool}/{FAMILIES[family]}")
        self.pool, self.family = pool, family


@dataclass(frozen=True)
class Owner:
    container_id: str
    interface: str

    @property
    def key(self) -> str:
        return f"{self.container_id}/{self.interface}"


@dataclass(frozen=True)
class Address:
    ip: str
    family: int
    block: str  # the node block, e.g. 10.0.0.0/24
    gateway: str  # the block's router address

    def as_dict(self) -> dict:
        net = ipaddress.ip_network(self.block)
        return {"ip": self.ip, "family": FAMILIES[self.family], "cidr": f"{self.ip}/{net.prefixlen}",
                "block": self.block, "gateway": self.gateway}


@dataclass
class Allocation:
    owner: Owner
    pool: str
    addresses: list[Address]

    def as_dict(self) -> dict:
        return {"owner": {"container_id": self.owner.container_id, "interface": self.owner.interface},
                "pool": self.pool, "addresses": [a.as_dict() for a in self.addresses]}


class Block:
    """One node block. Addresses are kept as integers; a cursor hands out the next free one,
    so a released address is not reused at once."""

    def __init__(self, cidr: str):
        self.net: IPNetwork = ipaddress.ip_network(cidr)
        first = int(self.net.network_address)
        self.first, self.last = first, first + self.net.num_addresses - 1
        self.router = first + 1
        self.reserved = {first, self.router} | ({self.last} if self.net.version == 4 else set())
        self.used: dict[int, str] = {}  # address -> owner key
        self._cursor = self.router

    @property
    def cidr(self) -> str:
        return str(self.net)

    @property
    def capacity(self) -> int:
        return self.net.num_addresses - len(self.reserved)

    @property
    def gateway(self) -> str:
        return str(ipaddress.ip_address(self.router))

    def full(self) -> bool:
        return len(self.used) >= self.capacity

    def contains(self, addr: int) -> bool:
        return self.first <= addr <= self.last

    def take(self, owner: str, requested: int | None = None) -> int:
        if requested is not None:
            self.check_free(requested)
            addr = requested
        else:
            size = self.net.num_addresses
            addr = self._cursor
            for _ in range(size):
                addr = self.first + (addr - self.first + 1) % size
                if addr not in self.used and addr not in self.reserved:
                    break
            else:
                raise RuntimeError("take() on a full block")
            self._cursor = addr
        self.used[addr] = owner
        return addr

    def check_free(self, addr: int) -> None:
        ip = ipaddress.ip_address(addr)
        if addr in self.reserved:
            what = "router" if addr == self.router else "network" if addr == self.first else "broadcast"
            raise Conflict(f"{ip} is the {what} address of block {self.cidr} and is never handed out")
        if addr in self.used:
            raise Conflict(f"{ip} is already allocated to {self.used[addr]}")

    def free(self, addr: int) -> None:
        self.used.pop(addr, None)


@dataclass
class PoolFamily:
    """One pool's addresses of one family on this node."""

    pool: str
    family: int
    cidrs: list[str]
    mask: int
    can_grow: bool  # multi-pool: claim another block when these are full
    blocks: list[Block] = field(default_factory=list)
    growable: bool = False  # configured to grow (stays true once no block is left)

    def __post_init__(self) -> None:
        self.growable = self.can_grow

    @property
    def capacity(self) -> int:
        return sum(b.capacity for b in self.blocks)

    @property
    def used(self) -> int:
        return sum(len(b.used) for b in self.blocks)

    def block_of(self, addr: int) -> Block | None:
        return next((b for b in self.blocks if b.contains(addr)), None)

    def in_pool(self, addr: int) -> bool:
        ip = ipaddress.ip_address(addr)
        return any(ip in ipaddress.ip_network(c) for c in self.cidrs)

    def describe(self) -> dict:
        return {"name": self.pool, "family": FAMILIES[self.family], "cidrs": self.cidrs, "mask_size": self.mask,
                "blocks": [b.cidr for b in self.blocks], "routers": [b.gateway for b in self.blocks],
                "capacity": self.capacity, "used": self.used, "free": self.capacity - self.used}


class Allocator:
    def __init__(self, default_pool: str = "default"):
        self.pools: dict[str, dict[int, PoolFamily]] = {}
        self.by_owner: dict[str, Allocation] = {}
        self._by_container: dict[str, set[str]] = {}  # container id -> owner keys
        self.default_pool = default_pool

    def _hold(self, alloc: Allocation) -> None:
        self.by_owner[alloc.owner.key] = alloc
        self._by_container.setdefault(alloc.owner.container_id, set()).add(alloc.owner.key)

    # ---- configuration ------------------------------------------------------------------

    def add_pool(self, pool: str, family: int, cidrs: list[str], mask: int, can_grow: bool) -> PoolFamily:
        pf = PoolFamily(pool, family, cidrs, mask, can_grow)
        self.pools.setdefault(pool, {})[family] = pf
        return pf

    def add_block(self, pool: str, family: int, cidr: str) -> Block:
        pf = self.pools[pool][family]
        for b in pf.blocks:
            if b.cidr == cidr:
                return b
        block = Block(cidr)
        pf.blocks.append(block)
        return block

    # ---- requests -----------------------------------------------------------------------

    def allocate(self, owner: Owner, pool: str | None = None, families: Iterable[int] | None = None,
                 requested: Iterable[str] = ()) -> Allocation:
        """The owner's allocation, existing or new. Raises IpamError (nothing changed) or
        NeedsBlock (nothing changed; claim a block and call again)."""
        wanted = self._parse_requested(requested)
        existing = self.by_owner.get(owner.key)
        if existing is not None:
            return self._check_same(existing, pool, wanted)
        name = pool or self.default_pool
        if name not in self.pools:
            known = ", ".join(sorted(self.pools)) or "none"
            raise UnknownPool(f"unknown pool {name!r} (pools: {known})" if pool else
                              f"no pool given and there is no pool named {name!r} (pools: {known})")
        fams = sorted(set(families) if families is not None else set(self.pools[name]))
        for fam in fams:
            if fam not in self.pools[name]:
                raise UnknownPool(f"pool {name} has no {FAMILIES[fam]} addresses")
        for fam in wanted:
            if fam not in fams:
                raise IpamError(f"requested {FAMILIES[fam]} address {ipaddress.ip_address(wanted[fam])} but "
                                f"{FAMILIES[fam]} was not asked for")
        taken: list[tuple[Block, int]] = []
        try:
            for fam in fams:
                taken.append(self._take(self.pools[name][fam], owner, wanted.get(fam)))
        except BaseException:
            for block, addr in taken:  # all families or none
                block.free(addr)
            raise
        alloc = Allocation(owner, name, [Address(str(ipaddress.ip_address(a)), b.net.version, b.cidr, b.gateway)
                                         for b, a in taken])
        self._hold(alloc)
        return alloc

    def _take(self, pf: PoolFamily, owner: Owner, requested: int | None) -> tuple[Block, int]:
        if requested is not None:
            block = pf.block_of(requested)
            if block is None:
                ip = ipaddress.ip_address(requested)
                where = "is in" if pf.in_pool(requested) else "is outside"
                raise IpamError(f"requested address {ip} {where} pool {pf.pool} ({', '.join(pf.cidrs)}) but outside "
                                f"this node's blocks ({', '.join(b.cidr for b in pf.blocks) or 'none'})")
            return block, block.take(owner.key, requested)
        for block in pf.blocks:
            if not block.full():
                return block, block.take(owner.key)
        if pf.can_grow:
            raise NeedsBlock(pf.pool, pf.family)
        raise Exhausted(pf.pool, FAMILIES[pf.family], pf.cidrs, [b.cidr for b in pf.blocks], pf.used, pf.capacity,
                        pf.growable)

    def _check_same(self, existing: Allocation, pool: str | None, wanted: dict[int, int]) -> Allocation:
        if pool is not None and pool != existing.pool:
            raise Conflict(f"{existing.owner.key} already has addresses from pool {existing.pool}, not {pool}")
        have = {a.family: int(ipaddress.ip_address(a.ip)) for a in existing.addresses}
        for fam, addr in wanted.items():
            if have.get(fam) != addr:
                raise Conflict(f"{existing.owner.key} already holds "
                               f"{ipaddress.ip_address(have[fam]) if fam in have else 'no ' + FAMILIES[fam]}, "
                               f"not {ipaddress.ip_address(addr)}")
        return existing

    @staticmethod
    def _parse_requested(requested: Iterable[str]) -> dict[int, int]:
        out: dict[int, int] = {}
        for text in requested:
            try:
                ip = ipaddress.ip_address(text)
            except ValueError:
                raise IpamError(f"requested address {text!r} is not an IP address") from None
            if ip.version in out:
                raise IpamError(f"more than one requested IPv{ip.version} address")
            out[ip.version] = int(ip)
        return out

    def release(self, container_id: str, interface: str | None = None) -> list[Allocation]:
        """Free the addresses of one owner, or of every interface of a container. Releasing
        what is not allocated is not an error."""
        return [self.release_owner(k) for k in self.owners_of(container_id, interface)]

    def owners_of(self, container_id: str, interface: str | None = None) -> list[str]:
        keys = self._by_container.get(container_id, ())
        return sorted(k for k in keys if interface is None or self.by_owner[k].owner.interface == interface)

    def release_owner(self, key: str) -> Allocation:
        alloc = self.by_owner.pop(key)
        siblings = self._by_container[alloc.owner.container_id]
        siblings.discard(key)
        if not siblings:
            del self._by_container[alloc.owner.container_id]
        for a in alloc.addresses:
            addr = int(ipaddress.ip_address(a.ip))
            pf = self.pools.get(alloc.pool, {}).get(a.family)
            block = pf.block_of(addr) if pf else None
            if block is not None:
                block.free(addr)
        return alloc

    def restore(self, alloc: Allocation) -> list[str]:
        """Put back an allocation read from disk; returns warnings for addresses no block holds."""
        warnings = []
        for a in alloc.addresses:
            addr = int(ipaddress.ip_address(a.ip))
            pf = self.pools.get(alloc.pool, {}).get(a.family)
            block = pf.block_of(addr) if pf else None
            if block is None:
                warnings.append(f"{a.ip} of {alloc.owner.key} is outside the configured pool {alloc.pool}; kept "
                                "allocated, not reused")
            else:
                block.used[addr] = alloc.owner.key
        self._hold(alloc)
        return warnings

    def describe(self) -> list[dict]:
        return [pf.describe() for name in sorted(self.pools) for _, pf in sorted(self.pools[name].items())]

"""Claiming a node's address blocks from the pool CIDRs through the cluster store.

A block is claimed by creating `/pylium/ipam/blocks/<pool>/<cidr>` (atomic create-if-absent),
and indexed under `/pylium/ipam/nodes/<node>/<pool>/<cidr>`. With the local store the first
node gets the first block; with etcd the same calls are transactions between nodes.
"""

from __future__ import annotations

import ipaddress

from pylium.plugins.ipam.allocator import Allocator


def block_key(pool: str, cidr: str) -> str:
    return f"/pylium/ipam/blocks/{pool}/{cidr}"


def node_prefix(node: str) -> str:
    return f"/pylium/ipam/nodes/{node}/"


class BlockClaimer:
    def __init__(self, store, node: str, allocator: Allocator):
        self.store, self.node, self.allocator = store, node, allocator

    async def load_own(self) -> list[tuple[str, int, str]]:
        """Put back the blocks this node claimed earlier; returns (pool, family, cidr)."""
        found = []
        prefix = node_prefix(self.node)
        for key in await self.store.list(prefix):
            pool, cidr = key[len(prefix):].split("/", 1)
            family = ipaddress.ip_network(cidr).version
            if family in self.allocator.pools.get(pool, {}):
                self.allocator.add_block(pool, family, cidr)
                found.append((pool, family, cidr))
        return found

    async def claim(self, pool: str, family: int) -> str | None:
        """Claim the first free block of (pool, family); None when the pool has none left."""
        pf = self.allocator.pools[pool][family]
        prefix = block_key(pool, "")
        while True:
            taken = {key[len(prefix):] for key in await self.store.list(prefix)}
            candidate = next((str(sub) for cidr in pf.cidrs
                              for sub in ipaddress.ip_network(cidr).subnets(new_prefix=pf.mask)
                              if str(sub) not in taken), None)
            if candidate is None:
                return None
            if await self.store.create_all({block_key(pool, candidate): {"node": self.node},
                                            node_prefix(self.node) + f"{pool}/{candidate}": {"family": family}}):
                self.allocator.add_block(pool, family, candidate)
                return candidate
            # another node took it between list and create: look again

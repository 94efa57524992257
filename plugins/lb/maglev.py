"""Maglev lookup tables (Eisenbud et al., NSDI'16): every backend fills table slots in the
order of its own permutation, in turns, so each gets M/N slots (+-1) and removing one backend
moves little more than its own slots. The seed (maglev.hashSeed) is the same on every node,
so every node computes the same table."""

from __future__ import annotations

import base64
import hashlib

PRIMES = (251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 131071)  # maglev.tableSize choices
DEFAULT_SEED = "JLfvgnHc2kaSUFaI"  # Cilium's default maglev.hashSeed


def seed_bytes(seed: str) -> bytes:
    """The 12 bytes a maglev.hashSeed (base64) stands for; ValueError when it is not that."""
    try:
        raw = base64.b64decode(seed, validate=True)
    except ValueError:
        raise ValueError("must be base64 of 12 bytes (head -c12 /dev/urandom | base64)") from None
    if len(raw) != 12:
        raise ValueError(f"must be base64 of 12 bytes, not {len(raw)}")
    return raw


def _offset_skip(backend: str, m: int, seed: bytes) -> tuple[int, int]:
    digest = hashlib.blake2b(backend.encode(), digest_size=16, key=seed).digest()
    h1, h2 = int.from_bytes(digest[:8], "little"), int.from_bytes(digest[8:], "little")
    return h1 % m, h2 % (m - 1) + 1


def table(backends: list[str], m: int, seed: bytes) -> list[int]:
    """Index into `backends` for each of the m slots (backends named e.g. "10.0.0.1:80").
    The order of `backends` does not matter: the table depends on the names only."""
    if not backends:
        return []
    order = sorted(range(len(backends)), key=lambda i: backends[i])
    params = [_offset_skip(backends[i], m, seed) for i in order]
    nexts = [0] * len(order)
    entry = [-1] * m
    filled = 0
    while True:
        for i, (offset, skip) in enumerate(params):
            c = (offset + nexts[i] * skip) % m
            while entry[c] >= 0:
                nexts[i] += 1
                c = (offset + nexts[i] * skip) % m
            entry[c] = order[i]
            nexts[i] += 1
            filled += 1
            if filled == m:
                return entry

"""Giving freed memory back to the system.

glibc's allocator keeps freed pages of its heap for reuse: after a burst of short-lived
allocations (thousands of services computed at once) the agent's resident size would stay at
that peak. `malloc_trim(0)` returns the free pages."""

from __future__ import annotations

import ctypes
import ctypes.util

try:
    _trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    _trim.argtypes, _trim.restype = [ctypes.c_size_t], ctypes.c_int
except (OSError, AttributeError):  # not glibc: nothing to do
    _trim = None


def release_freed_memory() -> None:
    if _trim is not None:
        _trim(0)

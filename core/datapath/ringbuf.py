"""Reading a BPF ring buffer through libbpf (ring_buffer__new / __consume), without bcc.

The map's fd is pollable: an event loop watches it and calls `drain()` when it is readable.
Each record is copied out as bytes, so the kernel's space is free as soon as `drain` returns."""

from __future__ import annotations

import ctypes as ct

from pylium.core.datapath import libbpf

# the record as a char pointer: slicing it copies the bytes ~8x faster than ct.string_at here
_SampleFn = ct.CFUNCTYPE(ct.c_int, ct.c_void_p, ct.POINTER(ct.c_char), ct.c_size_t)
_lib = libbpf._lib
_lib.ring_buffer__new.restype = ct.c_void_p
_lib.ring_buffer__new.argtypes = [ct.c_int, _SampleFn, ct.c_void_p, ct.c_void_p]
_lib.ring_buffer__consume.argtypes = [ct.c_void_p]
_lib.ring_buffer__free.argtypes = [ct.c_void_p]


class RingReader:
    def __init__(self, map_fd: int):
        self.fd = map_fd
        self._batch: list[bytes] = []
        append = self._batch.append

        def sample(_ctx, data, size) -> int:
            append(data[:size])
            return 0

        self._callback = _SampleFn(sample)  # kept referenced: libbpf calls it
        self._rb = _lib.ring_buffer__new(map_fd, self._callback, None, None)
        if not self._rb:
            raise libbpf.BpfError(ct.get_errno(), "ring_buffer__new failed")

    def fileno(self) -> int:
        return self.fd

    def drain(self) -> list[bytes]:
        """Every record available now, oldest first."""
        ret = _lib.ring_buffer__consume(self._rb)
        if ret < 0:
            raise libbpf.BpfError(-ret, "ring_buffer__consume failed")
        batch = self._batch[:]
        self._batch.clear()
        return batch

    def close(self) -> None:
        if self._rb:
            _lib.ring_buffer__free(self._rb)
            self._rb = None

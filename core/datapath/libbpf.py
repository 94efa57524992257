"""ctypes access to libbpf (Debian's libbpf1): pins, maps, program info, test runs.

Using libbpf directly, the agent never imports bcc (and LLVM) itself: programs are compiled
in short-lived child processes and reached here through their pins.
"""

from __future__ import annotations

import contextlib
import ctypes as ct
import errno
import os
import shutil
from functools import cache
from pathlib import Path

_lib = ct.CDLL("libbpf.so.1", use_errno=True)


class BpfError(OSError):
    pass


def _check(ret: int, what: str) -> int:
    if ret < 0:  # libbpf 1.x returns -errno
        code = -ret
        raise BpfError(code, f"{what}: {os.strerror(code)}")
    return ret


_lib.bpf_obj_get.argtypes = [ct.c_char_p]
_lib.bpf_obj_pin.argtypes = [ct.c_int, ct.c_char_p]
_lib.bpf_map_update_elem.argtypes = [ct.c_int, ct.c_void_p, ct.c_void_p, ct.c_uint64]
_lib.bpf_map_lookup_elem.argtypes = [ct.c_int, ct.c_void_p, ct.c_void_p]
_lib.bpf_map_delete_elem.argtypes = [ct.c_int, ct.c_void_p]
_lib.bpf_map_get_next_key.argtypes = [ct.c_int, ct.c_void_p, ct.c_void_p]
_lib.bpf_obj_get_info_by_fd.argtypes = [ct.c_int, ct.c_void_p, ct.POINTER(ct.c_uint32)]
_lib.bpf_prog_get_fd_by_id.argtypes = [ct.c_uint32]
_lib.bpf_map_get_fd_by_id.argtypes = [ct.c_uint32]


class MapCreateOpts(ct.Structure):
    _fields_ = [("sz", ct.c_size_t), ("btf_fd", ct.c_uint32), ("btf_key_type_id", ct.c_uint32),
                ("btf_value_type_id", ct.c_uint32), ("btf_vmlinux_value_type_id", ct.c_uint32),
                ("inner_map_fd", ct.c_uint32), ("map_flags", ct.c_uint32), ("map_extra", ct.c_uint64),
                ("numa_node", ct.c_uint32), ("map_ifindex", ct.c_uint32)]


_lib.bpf_map_create.argtypes = [ct.c_int, ct.c_char_p, ct.c_uint32, ct.c_uint32, ct.c_uint32,
                                ct.POINTER(MapCreateOpts)]


class MapInfo(ct.Structure):
    _fields_ = [("type", ct.c_uint32), ("id", ct.c_uint32), ("key_size", ct.c_uint32),
                ("value_size", ct.c_uint32), ("max_entries", ct.c_uint32), ("map_flags", ct.c_uint32),
                ("name", ct.c_char * 16), ("ifindex", ct.c_uint32), ("btf_vmlinux_value_type_id", ct.c_uint32),
                ("netns_dev", ct.c_uint64), ("netns_ino", ct.c_uint64), ("btf_id", ct.c_uint32),
                ("btf_key_type_id", ct.c_uint32), ("btf_value_type_id", ct.c_uint32), ("pad", ct.c_uint32),
                ("map_extra", ct.c_uint64)]


class ProgInfo(ct.Structure):
    _fields_ = [("type", ct.c_uint32), ("id", ct.c_uint32), ("tag", ct.c_uint8 * 8),
                ("jited_prog_len", ct.c_uint32), ("xlated_prog_len", ct.c_uint32),
                ("jited_prog_insns", ct.c_uint64), ("xlated_prog_insns", ct.c_uint64), ("load_time", ct.c_uint64),
                ("created_by_uid", ct.c_uint32), ("nr_map_ids", ct.c_uint32), ("map_ids", ct.c_uint64),
                ("name", ct.c_char * 16)]


class TestRunOpts(ct.Structure):
    _fields_ = [("sz", ct.c_size_t), ("data_in", ct.c_void_p), ("data_out", ct.c_void_p),
                ("data_size_in", ct.c_uint32), ("data_size_out", ct.c_uint32), ("ctx_in", ct.c_void_p),
                ("ctx_out", ct.c_void_p), ("ctx_size_in", ct.c_uint32), ("ctx_size_out", ct.c_uint32),
                ("retval", ct.c_uint32), ("repeat", ct.c_int), ("duration", ct.c_uint32), ("flags", ct.c_uint32),
                ("cpu", ct.c_uint32), ("batch_size", ct.c_uint32)]


_lib.bpf_prog_test_run_opts.argtypes = [ct.c_int, ct.POINTER(TestRunOpts)]


class AttachOpts(ct.Structure):  # libbpf 1.1's struct bpf_prog_attach_opts
    _fields_ = [("sz", ct.c_size_t), ("flags", ct.c_uint), ("replace_prog_fd", ct.c_int)]


_lib.bpf_prog_attach_opts.argtypes = [ct.c_int, ct.c_int, ct.c_int, ct.POINTER(AttachOpts)]
_lib.bpf_prog_detach2.argtypes = [ct.c_int, ct.c_int, ct.c_int]
_lib.bpf_link_create.argtypes = [ct.c_int, ct.c_int, ct.c_int, ct.c_void_p]
_lib.bpf_link_update.argtypes = [ct.c_int, ct.c_int, ct.c_void_p]
_lib.bpf_link_detach.argtypes = [ct.c_int]
_lib.bpf_prog_query.argtypes = [ct.c_int, ct.c_int, ct.c_uint32, ct.POINTER(ct.c_uint32),
                                ct.POINTER(ct.c_uint32), ct.POINTER(ct.c_uint32)]

CGROUP_INET4_CONNECT, CGROUP_INET6_CONNECT = 10, 11  # enum bpf_attach_type
CGROUP_UDP4_SENDMSG, CGROUP_UDP6_SENDMSG, CGROUP_UDP4_RECVMSG, CGROUP_UDP6_RECVMSG = 14, 15, 19, 20
CGROUP_INET4_GETPEERNAME, CGROUP_INET6_GETPEERNAME = 29, 30
F_ALLOW_MULTI, F_REPLACE = 1 << 1, 1 << 2

# Map and program types used here (uapi enum values).
MAP_HASH, MAP_ARRAY, MAP_PROG_ARRAY, MAP_PERCPU_HASH, MAP_PERCPU_ARRAY = 1, 2, 3, 5, 6
MAP_LRU_HASH, MAP_LPM_TRIE, MAP_RINGBUF = 9, 11, 27
PERCPU_TYPES = {MAP_PERCPU_HASH, MAP_PERCPU_ARRAY}
F_NO_PREALLOC = 1
F_MMAPABLE = 1 << 10  # an array the agent maps into its memory
ANY, NOEXIST, EXIST = 0, 1, 2


def obj_get(path: str) -> int:
    return _check(_lib.bpf_obj_get(path.encode()), f"open pin {path}")


def obj_pin(fd: int, path: str) -> None:
    _check(_lib.bpf_obj_pin(fd, path.encode()), f"pin {path}")


def map_create(map_type: int, name: str, key_size: int, value_size: int, max_entries: int, flags: int = 0) -> int:
    opts = MapCreateOpts(sz=ct.sizeof(MapCreateOpts), map_flags=flags)
    return _check(_lib.bpf_map_create(map_type, name.encode()[:15], key_size, value_size, max_entries,
                                      ct.byref(opts)), f"create map {name}")


def map_info(fd: int) -> MapInfo:
    info = MapInfo()
    size = ct.c_uint32(ct.sizeof(info))
    _check(_lib.bpf_obj_get_info_by_fd(fd, ct.byref(info), ct.byref(size)), "map info")
    return info


def prog_info(fd: int) -> ProgInfo:
    info = ProgInfo()
    size = ct.c_uint32(ct.sizeof(info))
    _check(_lib.bpf_obj_get_info_by_fd(fd, ct.byref(info), ct.byref(size)), "program info")
    return info


def update(fd: int, key, value, flags: int = ANY) -> None:
    _check(_lib.bpf_map_update_elem(fd, ct.byref(key), ct.byref(value), flags), "map update")


class BatchOpts(ct.Structure):
    _fields_ = [("sz", ct.c_size_t), ("elem_flags", ct.c_uint64), ("flags", ct.c_uint64)]


_lib.bpf_map_update_batch.argtypes = [ct.c_int, ct.c_void_p, ct.c_void_p, ct.POINTER(ct.c_uint32),
                                      ct.POINTER(BatchOpts)]


def update_batch(fd: int, keys: ct.Array, values: ct.Array) -> None:
    """Write len(keys) entries in one system call (BPF_MAP_UPDATE_BATCH)."""
    count = ct.c_uint32(len(keys))
    opts = BatchOpts(sz=ct.sizeof(BatchOpts))
    _check(_lib.bpf_map_update_batch(fd, keys, values, ct.byref(count), ct.byref(opts)),
           f"map batch update ({count.value} of {len(keys)} written)")


def lookup(fd: int, key, value) -> bool:
    ret = _lib.bpf_map_lookup_elem(fd, ct.byref(key), ct.byref(value))
    if ret == -errno.ENOENT:
        return False
    _check(ret, "map lookup")
    return True


def delete(fd: int, key) -> bool:
    ret = _lib.bpf_map_delete_elem(fd, ct.byref(key))
    if ret == -errno.ENOENT:
        return False
    _check(ret, "map delete")
    return True


def clear_prog_array(fd: int) -> bool:
    """Empty every slot of a program array; False (and nothing done) when `fd` is another
    object (a map of another type, a program, a link: told apart by the kernel's fdinfo)."""
    with open(f"/proc/self/fdinfo/{fd}") as f:
        fields = dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
    if fields.get("map_type") != str(MAP_PROG_ARRAY):
        return False
    for slot in range(int(fields["max_entries"])):
        delete(fd, ct.c_uint32(slot))
    return True


def next_key(fd: int, key, next_) -> bool:
    ret = _lib.bpf_map_get_next_key(fd, ct.byref(key) if key is not None else None, ct.byref(next_))
    if ret == -errno.ENOENT:
        return False
    _check(ret, "map next key")
    return True


def prog_attach(prog_fd: int, target: int, attach_type: int, replace_fd: int | None = None,
                flags: int = 0) -> None:
    """Attach (legacy BPF_PROG_ATTACH: it outlives this process); atomically replace
    `replace_fd` when given."""
    flags |= F_REPLACE if replace_fd is not None else 0
    opts = AttachOpts(sz=ct.sizeof(AttachOpts), flags=flags,
                      replace_prog_fd=replace_fd or 0)
    _check(_lib.bpf_prog_attach_opts(prog_fd, target, attach_type, ct.byref(opts)), "attach program")


def prog_detach(prog_fd: int, target: int, attach_type: int) -> None:
    _check(_lib.bpf_prog_detach2(prog_fd, target, attach_type), "detach program")


def link_create(prog_fd: int, target: int, attach_type: int) -> int:
    """A BPF link attaching a program (BPF_LINK_CREATE): it lasts while an fd or a pin holds it."""
    return _check(_lib.bpf_link_create(prog_fd, target, attach_type, None), "create link")


def link_update(link_fd: int, prog_fd: int) -> None:
    """Swap the program behind a link, atomically."""
    _check(_lib.bpf_link_update(link_fd, prog_fd, None), "update link")


def link_detach(link_fd: int) -> None:
    _check(_lib.bpf_link_detach(link_fd), "detach link")


def prog_query(target: int, attach_type: int) -> list[int]:
    """Ids of the programs attached to `target` (an ifindex for tcx), in run order."""
    ids = (ct.c_uint32 * 64)()
    count = ct.c_uint32(64)
    flags = ct.c_uint32(0)
    ret = _lib.bpf_prog_query(target, attach_type, 0, ct.byref(flags), ids, ct.byref(count))
    if ret == -errno.ENOENT:
        return []
    _check(ret, "query attached programs")
    return list(ids[: count.value])


def prog_fd_by_id(prog_id: int) -> int:
    return _check(_lib.bpf_prog_get_fd_by_id(prog_id), f"open program id {prog_id}")


@cache
def possible_cpus() -> int:
    return _check(_lib.libbpf_num_possible_cpus(), "possible cpus")


def test_run(prog_fd: int, data: bytes, ctx_in: ct.Structure | None = None, repeat: int = 1,
             data_out_size: int = 4096) -> tuple[int, bytes, ct.Structure | None, int]:
    """Run a program on a packet (BPF_PROG_TEST_RUN): (return value, packet out, ctx out, ns/run)."""
    data_in = ct.create_string_buffer(data, len(data))
    data_out = ct.create_string_buffer(data_out_size)
    opts = TestRunOpts(sz=ct.sizeof(TestRunOpts), data_in=ct.addressof(data_in), data_out=ct.addressof(data_out),
                       data_size_in=len(data), data_size_out=data_out_size, repeat=repeat)
    ctx_out = None
    if ctx_in is not None:
        ctx_out = type(ctx_in)()
        opts.ctx_in, opts.ctx_size_in = ct.addressof(ctx_in), ct.sizeof(ctx_in)
        opts.ctx_out, opts.ctx_size_out = ct.addressof(ctx_out), ct.sizeof(ctx_out)
    _check(_lib.bpf_prog_test_run_opts(prog_fd, ct.byref(opts)), "test run")
    return opts.retval, data_out.raw[: opts.data_size_out], ctx_out, opts.duration


def remove_pins(directory: Path) -> None:
    """Remove a tree of pins, its program arrays emptied first. A stage that tail-calls into the
    array that holds it is a cycle; the kernel breaks it when the array's last pin goes, but
    with direct tail calls (constant slots) it left the array and its programs behind (kernel
    6.18). Emptied first, nothing holds them."""
    for pin in directory.rglob("*") if directory.exists() else ():
        if not pin.is_file():
            continue
        with contextlib.suppress(OSError):
            fd = obj_get(str(pin))
            try:
                clear_prog_array(fd)
            finally:
                os.close(fd)
    shutil.rmtree(directory, ignore_errors=True)

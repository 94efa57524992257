"""The toolkit's cgroup socket hooks: compile, attach next to others, replace, detach only ours."""

from __future__ import annotations

import ctypes as ct
import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import anyio
import pytest
import structlog

from pylium.testing.lab import BPF_TEST_ROOT, remove_bpf_root, require_datapath, skip_or_fail

from pylium.core.datapath import libbpf
from pylium.core.datapath.datapath import Datapath
from pylium.core.datapath.maps import MapSpec

DATA = Path(__file__).parent / "data"
CONNECTS = MapSpec("connects", libbpf.MAP_ARRAY, ct.c_uint32, ct.c_uint64, 1)


def cgroup2_root() -> Path:
    for line in Path("/proc/mounts").read_text().splitlines():
        fields = line.split()
        if fields[2] == "cgroup2":
            return Path(fields[1])
    pytest.fail("no cgroup2 mount")


@pytest.fixture
def env(tmp_path):
    reason = require_datapath()
    if reason:
        skip_or_fail(reason)
    root = BPF_TEST_ROOT / f"cg-{uuid.uuid4().hex[:6]}"
    cgroup = cgroup2_root() / f"pylium-test-{uuid.uuid4().hex[:6]}"
    cgroup.mkdir()
    dp = Datapath(root, "node", structlog.get_logger())
    dp.open_maps({"sock": [CONNECTS]})
    try:
        yield dp, cgroup
    finally:
        cg = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
        for pid, _ in dp.cgroup_programs(cgroup, libbpf.CGROUP_INET4_CONNECT):
            fd = libbpf.prog_fd_by_id(pid)
            libbpf.prog_detach(fd, cg, libbpf.CGROUP_INET4_CONNECT)
            os.close(fd)
        os.close(cg)
        cgroup.rmdir()
        dp.close()
        remove_bpf_root(root)


def connect_from(cgroup: Path) -> None:
    """Run a process inside the cgroup that connects to a local listener."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    code = (f"import os, socket; open({str(cgroup / 'cgroup.procs')!r}, 'w').write(str(os.getpid()));"
            f"socket.create_connection(('127.0.0.1', {port})).close()")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)
    listener.close()


def test_attach_replace_and_detach_only_ours(env):
    dp, cgroup = env
    pins = anyio.run(dp.compile_programs, "sock", str(DATA / "count_connect.c"),
                     {"count_connect4": {"type": "CGROUP_SOCK_ADDR", "attach_type": libbpf.CGROUP_INET4_CONNECT}})
    first = dp.attach_cgroup(pins["count_connect4"], cgroup, libbpf.CGROUP_INET4_CONNECT)
    assert dp.cgroup_programs(cgroup, libbpf.CGROUP_INET4_CONNECT) == [(first, "count_connect4")]
    connect_from(cgroup)
    counter = dp.plugin_maps["sock"]["connects"]
    assert counter.get(ct.c_uint32(0)).value == 1
    # a recompiled program (a restarted agent) replaces ours; someone else's stays attached
    other = anyio.run(dp.compile_programs, "other", str(DATA / "count_connect.c"),
                      {"count_connect4": {"type": "CGROUP_SOCK_ADDR", "attach_type": libbpf.CGROUP_INET4_CONNECT}})
    fd = libbpf.obj_get(str(other["count_connect4"]))
    cg = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
    try:
        foreign_id = libbpf.prog_info(fd).id
        libbpf.prog_attach(fd, cg, libbpf.CGROUP_INET4_CONNECT, flags=libbpf.F_ALLOW_MULTI)
    finally:
        os.close(cg)
        os.close(fd)
    pins = anyio.run(dp.compile_programs, "sock", str(DATA / "count_connect.c"),
                     {"count_connect4": {"type": "CGROUP_SOCK_ADDR", "attach_type": libbpf.CGROUP_INET4_CONNECT}})
    second = dp.attach_cgroup(pins["count_connect4"], cgroup, libbpf.CGROUP_INET4_CONNECT)
    ids = [pid for pid, _ in dp.cgroup_programs(cgroup, libbpf.CGROUP_INET4_CONNECT)]
    assert second != first and first not in ids and second in ids and foreign_id in ids
    connect_from(cgroup)
    assert counter.get(ct.c_uint32(0)).value == 2  # the other program counts in its own map
    # detach removes ours only, even though the other one has the same name
    assert dp.detach_cgroup(pins["count_connect4"], cgroup, libbpf.CGROUP_INET4_CONNECT) == 1
    assert dp.cgroup_programs(cgroup, libbpf.CGROUP_INET4_CONNECT) == [(foreign_id, "count_connect4")]

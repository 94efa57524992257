"""Network namespaces without forking: pyroute2's netns support forks a child process, and a
forked child that receives a signal writes it into the agent's own signal wake-up pipe (the
agent then stops as if it had been signalled). A thread enters the namespace only to create
the netlink socket, which stays bound to that namespace."""

from __future__ import annotations

import ctypes
import os
import socket
import threading

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL("libc.so.6", use_errno=True)


SO_NETNS_COOKIE = 71


def netlink_socket(netns_path: str, protocol: int = 0) -> socket.socket:
    """A netlink socket (NETLINK_ROUTE by default) living in the namespace at `netns_path`."""
    return socket_in(netns_path, socket.AF_NETLINK, socket.SOCK_DGRAM, protocol)


def netns_cookie(netns_path: str) -> int:
    """The kernel's cookie of a network namespace (what bpf_get_netns_cookie() returns)."""
    with socket_in(netns_path, socket.AF_INET, socket.SOCK_DGRAM, 0) as s:
        return int.from_bytes(s.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8), "little")


def socket_in(netns_path: str, family: int, kind: int, protocol: int) -> socket.socket:
    """A socket created in the namespace at `netns_path` (it stays bound to it)."""
    result: dict = {}

    def enter_and_create() -> None:
        here = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        try:
            target = os.open(netns_path, os.O_RDONLY)
        except OSError as e:
            os.close(here)
            result["error"] = e
            return
        try:
            if _libc.setns(target, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                result["error"] = OSError(err, f"setns {netns_path}: {os.strerror(err)}")
                return
            try:
                result["sock"] = socket.socket(family, kind, protocol)
            finally:
                if _libc.setns(here, CLONE_NEWNET) != 0:
                    os._exit(70)  # a thread stranded in a foreign namespace must not live on
        finally:
            os.close(target)
            os.close(here)

    worker = threading.Thread(target=enter_and_create, name="netns-enter")
    worker.start()
    worker.join()
    if "error" in result:
        raise result["error"]
    return result["sock"]


def iproute(netns_path: str):
    """pyroute2 IPRoute speaking to another namespace (use as a context manager)."""
    from pyroute2.iproute.linux import IPRoute

    return IPRoute(fileno=netlink_socket(netns_path).detach())

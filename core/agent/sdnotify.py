"""systemd's notify protocol: one datagram per state change to $NOTIFY_SOCKET (see sd_notify(3))."""

from __future__ import annotations

import os
import socket


class Notifier:
    """Sends READY=1 / STATUS= / WATCHDOG=1 / STOPPING=1; does nothing when not under systemd."""

    def __init__(self, environ: dict[str, str] | None = None):
        env = os.environ if environ is None else environ
        path = env.get("NOTIFY_SOCKET", "")
        self._address: str | bytes | None = None
        if path.startswith("@"):  # abstract namespace socket
            self._address = b"\0" + path[1:].encode()
        elif path.startswith("/"):
            self._address = path
        self.watchdog_interval = self._watchdog(env)
        self._sock: socket.socket | None = None

    @staticmethod
    def _watchdog(env) -> float | None:
        """Seconds between WATCHDOG=1 pings: half of WatchdogSec, if it applies to us."""
        usec = env.get("WATCHDOG_USEC")
        pid = env.get("WATCHDOG_PID")
        if not usec or (pid and pid != str(os.getpid())):
            return None
        try:
            return int(usec) / 2e6
        except ValueError:
            return None

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, *fields: str) -> None:
        if self._address is None:
            return
        if self._sock is None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            self._sock.sendto("\n".join(fields).encode(), self._address)
        except OSError:
            pass  # systemd gone or socket full: never let notification break the agent

    def ready(self, status: str) -> None:
        self.notify("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def status(self, status: str) -> None:
        self.notify(f"STATUS={status}")

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")

    def stopping(self, status: str = "Stopping") -> None:
        self.notify("STOPPING=1", f"STATUS={status}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

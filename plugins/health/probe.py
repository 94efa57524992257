"""Probes of a node's health: ICMP to its address (three echoes 100 ms apart; one reply is
enough, as Cilium's), HTTP GET /hello to its health responder. Results per node."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import h11
import icmplib

from pylium.core.api_for_plugins import http_server


@dataclass
class Probe:
    ok: bool
    latency: float | None = None  # seconds
    error: str = ""

    def text(self) -> str:
        if self.ok:
            return f"OK, RTT={_rtt(self.latency)}"
        return self.error or "failed"


@dataclass
class NodeHealth:
    name: str
    ip: str
    local: bool = False
    icmp: Probe | None = None
    http: Probe | None = None
    probed_at: float = 0.0  # Unix time of the last probe (0: never)

    @property
    def status(self) -> str:
        """reachable, unreachable, or unknown (not probed yet: counted as healthy, as Cilium's)."""
        if self.icmp is None or self.http is None:
            return "unknown"
        return "reachable" if self.icmp.ok and self.http.ok else "unreachable"

    def as_dict(self) -> dict:
        d = asdict(self)
        d["status"] = self.status
        return d


def _rtt(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    return f"{seconds * 1e6:.0f}µs" if seconds < 0.001 else f"{seconds * 1e3:.3f}ms"


async def probe_icmp(ip: str, timeout: float) -> Probe:
    try:
        host = await icmplib.async_ping(ip, count=3, interval=0.1, timeout=timeout, privileged=True)
    except icmplib.ICMPLibError as e:
        return Probe(False, error=f"ICMP: {e}")
    if host.is_alive:
        return Probe(True, host.min_rtt / 1000)
    return Probe(False, error="Connection timed out")


async def probe_http(ip: str, port: int, timeout: float) -> Probe:
    started = time.perf_counter()
    try:
        status = await http_server.get_status(ip, port, "/hello", timeout)
        if status != 200:
            return Probe(False, error=f"HTTP {status}")
    except (h11.ProtocolError, TimeoutError, OSError) as e:
        return Probe(False, error=f"{type(e).__name__}: {e}".rstrip(": ") if str(e) else "Connection timed out")
    return Probe(True, time.perf_counter() - started)

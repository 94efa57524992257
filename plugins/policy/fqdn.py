"""The FQDN cache behind toFQDNs: which addresses pods looked up under which names, until
their TTL runs out (at least `dnsProxy.minTtl`). Kept in the plugin's state directory, so a
restarted agent still allows the connections of lookups made before. `labels_of(ip)` gives the
`fqdn:<selector>` labels of the node-local identity an address gets in the ipcache."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from pylium.plugins.policy.l7 import DnsRule, fqdn

CACHE_FILE = "fqdn_cache.json"


@dataclass
class Lookup:
    endpoint: int
    name: str  # lower-case, final dot
    ips: list[str]
    ttl: int
    lookup_time: float  # Unix seconds
    expires: float

    def row(self) -> dict:
        """As `cilium-dbg fqdn cache list -o json` prints an entry."""
        return {"endpoint-id": self.endpoint, "fqdn": self.name, "ips": self.ips, "ttl": self.ttl,
                "lookup-time": _rfc3339(self.lookup_time), "expiration-time": _rfc3339(self.expires),
                "source": "lookup"}


def _rfc3339(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class FqdnCache:
    def __init__(self, state_dir: Path, min_ttl: int = 0):
        self.path = state_dir / CACHE_FILE
        self.min_ttl = min_ttl
        self.lookups: dict[tuple[int, str], Lookup] = {}
        if self.path.exists():
            for item in json.loads(self.path.read_text()):
                lookup = Lookup(**item)
                self.lookups[(lookup.endpoint, lookup.name)] = lookup

    def observe(self, endpoint: int, name: str, ips: list[str], ttl: int, now: float | None = None) -> bool:
        """Remember a lookup; True when its addresses are new (else only its expiry moved)."""
        now = time.time() if now is None else now
        ttl = max(ttl, self.min_ttl)
        old = self.lookups.get((endpoint, fqdn(name)))
        new = self.lookups[(endpoint, fqdn(name))] = Lookup(endpoint, fqdn(name), sorted(set(ips)), ttl, now,
                                                            now + ttl)
        self.save()
        return old is None or not set(new.ips) <= set(old.ips)

    def expire(self, now: float | None = None) -> bool:
        """Forget what ran out; True when something did."""
        now = time.time() if now is None else now
        gone = [k for k, v in self.lookups.items() if v.expires <= now]
        for key in gone:
            del self.lookups[key]
        if gone:
            self.save()
        return bool(gone)

    def forget_endpoint(self, endpoint: int) -> bool:
        gone = [k for k in self.lookups if k[0] == endpoint]
        for key in gone:
            del self.lookups[key]
        if gone:
            self.save()
        return bool(gone)

    def addresses(self) -> dict[str, set[str]]:
        """Every cached address with the names it was looked up under."""
        out: dict[str, set[str]] = {}
        for lookup in self.lookups.values():
            for ip in lookup.ips:
                out.setdefault(ip, set()).add(lookup.name)
        return out

    @staticmethod
    def labels_of(names: set[str], selectors: list[DnsRule]) -> dict[str, str]:
        labels = {f"fqdn:{s.text}": "" for s in selectors if any(s.allows(n) for n in names)}
        return {**labels, "reserved:world": ""} if labels else {}  # outside the cluster, as CIDR identities

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump([vars(v) for v in self.lookups.values()], f)
        tmp.replace(self.path)

"""Durable endpoint records: <state-dir>/endpoints/<id>.json."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import msgspec

from pylium.core.endpoints.model import Endpoint
from pylium.core.plugin_api import EndpointError


class EndpointStore:
    """One JSON file per endpoint, replaced atomically (temp file, rename).

    No fsync: records must survive the agent's crash (the page cache does that), and after a
    power loss there is nothing to restore: every pod's network namespace died with the
    machine. Addresses, which must never be handed out twice, are fsynced by IPAM."""

    def __init__(self, directory: Path):
        self.dir = directory
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)

    def save(self, ep: Endpoint) -> None:
        final = self.dir / f"{ep.id}.json"
        tmp = self.dir / f".{ep.id}.json.tmp"
        try:
            tmp.write_bytes(msgspec.json.format(msgspec.json.encode(ep)))
            os.replace(tmp, final)
        except OSError as e:  # a full or read-only state directory: the old record stays as it was
            tmp.unlink(missing_ok=True)
            raise EndpointError("internal", f"cannot write the record of endpoint {ep.id} in {self.dir}: "
                                            f"{e.strerror}", 500) from None

    def remove(self, ep_id: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.dir / f"{ep_id}.json").unlink()

    def load_all(self) -> tuple[list[Endpoint], list[str]]:
        out, problems = [], []
        for path in sorted(self.dir.glob("*.json")):
            try:
                out.append(msgspec.json.decode(path.read_bytes(), type=Endpoint))
            except (OSError, msgspec.DecodeError, msgspec.ValidationError) as e:
                problems.append(f"{path}: {e}")
        return out, problems

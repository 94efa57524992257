"""Fault injection for the crash tests: with PYLIUM_CRASH_AT=<point> in its environment, the
agent kills itself with SIGKILL (as `kill -9` would) when it reaches that point, so a test
can prove that a restart cleans up whatever a crash there leaves. Inert unless set.

Points: the steps of a CNI ADD (docs/cni.md): endpoint-recorded, address-allocated,
veth-created, endpoint-plugged, endpoint-programmed, endpoint-ready."""

from __future__ import annotations

import os
import signal

CNI_ADD_POINTS = ("endpoint-recorded", "address-allocated", "veth-created", "endpoint-plugged",
                  "endpoint-programmed", "endpoint-ready")
_AT = os.environ.get("PYLIUM_CRASH_AT", "")


def crash_point(name: str) -> None:
    if _AT == name:
        os.kill(os.getpid(), signal.SIGKILL)

"""The churn soak's short variant (bench/soak.py, 40 s): pods, services and policies churned,
the agent killed with SIGKILL under them and restarted; nothing may leak and every pod pair
must reach each other afterwards."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SOAK = Path(__file__).parent.parent / "bench" / "soak.py"


def test_short_soak_leaks_nothing():
    r = subprocess.run([sys.executable, str(SOAK), "--duration", "40", "--seed", "7", "--json"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode in (0, 1) and r.stdout, r.stderr[-3000:]
    report = json.loads(r.stdout)
    assert report["leaks"] == [] and report["unreachable_pairs"] == [], report
    assert report["by_operation"].get("restarts", 0) >= 1 and report["operations"] >= 40, report
    assert r.returncode == 0

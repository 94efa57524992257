"""The shipped systemd unit passes `systemd-analyze verify` and keeps its contract."""

from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path

from helpers import BIN

UNIT = Path(__file__).parent.parent / "packaging" / "systemd" / "pylium-agent.service"


def test_unit_verifies_cleanly(tmp_path):
    # verify checks that ExecStart exists: point it at this checkout's binary, change nothing else
    text = UNIT.read_text().replace("/usr/local/bin/pylium-agent", str(BIN / "pylium-agent"))
    unit = tmp_path / "pylium-agent.service"
    unit.write_text(text)
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "" and r.stderr.strip() == "", f"warnings:\n{r.stdout}{r.stderr}"


def test_verify_would_catch_a_broken_unit(tmp_path):
    unit = tmp_path / "pylium-agent.service"
    unit.write_text(UNIT.read_text().replace("Type=notify", "Type=notifyy").replace(
        "/usr/local/bin/pylium-agent", str(BIN / "pylium-agent")))
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert "Failed to parse service type" in r.stderr


def test_unit_contract():
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read(UNIT)
    svc = parser["Service"]
    assert svc["Type"] == "notify"
    assert svc["Restart"] == "on-failure"
    assert svc["RestartPreventExitStatus"] == "78"
    assert int(svc["WatchdogSec"]) > 0
    assert "CAP_BPF" in svc["CapabilityBoundingSet"] and "CAP_NET_ADMIN" in svc["CapabilityBoundingSet"]
    assert "AF_NETLINK" in svc["RestrictAddressFamilies"]
    assert shutil.which("systemd-analyze")

"""Packaging: import paths under `pylium.`, no top-level `core`/`plugins`, console scripts."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

from helpers import BIN


def test_no_top_level_core_or_plugins_module(tmp_path):
    code = ("import importlib.util as u; import pylium.core, pylium.plugins, pylium.bpf;"
            "print(u.find_spec('core'), u.find_spec('plugins'))")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["None", "None"]
    site = Path(sysconfig.get_paths()["purelib"])
    assert not (site / "core").exists() and not (site / "plugins").exists()


def test_console_scripts_installed():
    for name in ("pylium-agent", "pylium", "pylium-cni"):
        assert (BIN / name).exists(), name
    r = subprocess.run([str(BIN / "pylium-agent"), "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and "pylium-agent" in r.stdout


def test_bcc_comes_from_debian():
    site = Path(sysconfig.get_paths()["purelib"])
    assert (site / "bcc").resolve() == Path("/usr/lib/python3/dist-packages/bcc")
    r = subprocess.run([sys.executable, "-c", "import bcc; print(bcc.__file__)"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr

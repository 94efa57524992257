"""The leak check catches what a test leaves behind: a throw-away run of a module that leaks on
purpose fails, naming the leftover."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import uuid

LEAKY = textwrap.dedent("""
    import subprocess

    def test_leaks_a_namespace():
        subprocess.run(["ip", "netns", "add", "NAME"], check=True)
""")


def test_a_module_that_leaves_a_namespace_behind_fails_naming_it(tmp_path):
    name = f"pl-leak-{uuid.uuid4().hex[:6]}"
    (tmp_path / "test_leaky.py").write_text(LEAKY.replace("NAME", name))
    try:
        run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "pylium.testing.leakcheck",
                              "-p", "no:cacheprovider", "--rootdir", str(tmp_path), str(tmp_path)],
                             capture_output=True, text=True, timeout=120)
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)
    assert run.returncode != 0, run.stdout
    assert f"test_leaky left behind:\n  netns {name}" in run.stdout, run.stdout

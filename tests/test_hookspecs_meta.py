"""Meta-tests: every hook is documented (docstring and docs/plugins.md) and called by a real
agent in a test; the docs say what the code does."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from pylium.core import hookspecs

ROOT = Path(__file__).parent.parent
HOOKS = sorted(
    name for name, fn in vars(hookspecs).items()
    if name.startswith("pylium_") and inspect.isfunction(fn) and hasattr(fn, "pylium_spec")
)


def test_there_are_hooks():
    assert {"pylium_config_model", "pylium_declare", "pylium_lifespan", "pylium_status_details"} <= set(HOOKS)


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_has_a_real_docstring(hook):
    doc = inspect.getdoc(getattr(hookspecs, hook)) or ""
    assert len(doc) >= 80, f"{hook} needs a docstring that explains when it is called and what it returns"


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_in_the_plugin_guide(hook):
    assert f"`{hook}" in (ROOT / "docs" / "plugins.md").read_text(), f"docs/plugins.md does not mention {hook}"


def test_the_probe_plugin_implements_every_hook():
    """tests/data/epwatch_plugin.py records every call it gets, and
    test_datapath.py::test_endpoint_hooks_run_in_order_and_a_refusal_leaves_nothing checks that
    a real agent called each of its hooks: so each hook of the contract is called by a test."""
    import sys

    sys.path.insert(0, str(ROOT / "tests" / "data"))
    try:
        from epwatch_plugin import EpWatch
    finally:
        sys.path.pop(0)
    implemented = {name for name in dir(EpWatch) if name.startswith("pylium_")}
    assert implemented == set(HOOKS), f"epwatch does not implement {sorted(set(HOOKS) - implemented)}"


def test_a_failing_declare_exits_as_documented(start_agent, tmp_path):
    import re

    from helpers import write_plugin_dist

    site = write_plugin_dist(tmp_path / "site", "baddecl", "0.1", "baddecl", """
        from pylium.core.api_for_plugins import hookimpl

        @hookimpl
        def pylium_declare(declare):
            raise RuntimeError("no can do")
    """, {"baddecl": "baddecl"})
    agent = start_agent(env={"PYTHONPATH": str(site)})
    code = agent.proc.wait(30)
    assert "plugin baddecl: pylium_declare failed: RuntimeError: no can do" in agent.log
    documented = re.search(r"exit code (\d+)", inspect.getdoc(hookspecs.pylium_declare))
    assert documented and int(documented.group(1)) == code == 78
    assert "`pylium_declare`" in (ROOT / "docs" / "plugins.md").read_text()
    assert re.search(r"pylium_declare.*?exit code 78", (ROOT / "docs" / "plugins.md").read_text(), re.S)

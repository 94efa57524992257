"""Meta-tests: every hook is documented (docstring and docs/plugins.md) and tested."""

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


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_exercised_by_a_test(hook):
    me = Path(__file__).name
    # tests and the plugins they load (tests/data) count
    users = [p.name for p in (ROOT / "tests").rglob("*.py") if p.name != me and hook in p.read_text()]
    assert users, f"no test uses {hook}"

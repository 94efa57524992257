"""A pytest plugin: the machine after each test module, and after the run, must be as before
the run (see leaks.py for what is compared); a module that leaves something behind fails,
naming each leftover. Use: `pytest_plugins = ("pylium.testing.leakcheck",)` in a conftest,
or `pytest -p pylium.testing.leakcheck`."""

from __future__ import annotations

import pytest

from pylium.testing import leaks

_baseline: set[str] = set()  # the machine before the run (and leftovers already reported)


def pytest_sessionstart(session) -> None:
    _baseline.update(leaks.snapshot())


@pytest.fixture(scope="module", autouse=True)
def nothing_left_behind(request):
    """After each test module: everything it created is gone (namespaces, links, rules, pins,
    processes, files), or the module fails naming each leftover."""
    yield
    found = leaks.leftovers(_baseline)
    if found:
        _baseline.update(found)  # reported once, not again by every later module
        pytest.fail(f"{request.module.__name__} left behind:\n  " + "\n  ".join(found), pytrace=False)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session, exitstatus) -> None:
    """After the whole run too (the shared fixtures' BPF directory goes at its very end)."""
    found = leaks.leftovers(_baseline)
    if found:
        print("\nleft behind after the run:\n  " + "\n  ".join(found))
        session.exitstatus = 1

"""Keeps libraries' parts the agent never uses out of its memory (issue 20: ~7 MiB of an idle
agent's ~88). `pylium-agent` imports this module before anything else.

- pyroute2's package `__init__` imports every netlink family it knows, NDB and IPDB; the
  agent only uses `pyroute2.iproute.linux.IPRoute`. The package is registered without running
  its `__init__`; its submodules import as usual. Agent code therefore imports from pyroute2's
  submodules, never names from the package itself.
- structlog formats exceptions with rich (and rich with pygments) when it can import it; the
  agent logs JSON lines for the journal and plain tracebacks on a terminal. rich stays for the
  `pylium` CLI.
"""

from __future__ import annotations

import importlib.util
import sys
import types


def _package_without_init(name: str) -> None:
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None or spec.submodule_search_locations is None:
        return  # not installed: the first real import says so
    package = types.ModuleType(name, "(registered by pylium.core.agent.lean_imports: __init__ not run)")
    package.__spec__, package.__path__ = spec, list(spec.submodule_search_locations)
    sys.modules[name] = package


_package_without_init("pyroute2")
sys.modules.setdefault("rich", None)  # None: `import rich` raises ImportError, as if not installed

"""Keeps libraries' parts the agent never uses out of its memory (issue 20). `pylium-agent`
imports this module before anything else.

- Some packages' `__init__` imports far more than the agent uses: pyroute2's every netlink
  family, NDB and IPDB (~7 MiB); prometheus_client's exposition servers (http.server, wsgiref,
  urllib.request: ~2 MiB). Such a package is registered lazily: its submodules import as
  usual, and its `__init__` runs on the first name taken from the package itself
  (`from pyroute2 import IPRoute` still works, for third-party plugins too). The agent's own
  code imports from the submodules.
- structlog formats exceptions with rich (and rich with pygments) when it can import it; the
  agent logs JSON lines for the journal and plain tracebacks on a terminal. rich stays for the
  `pylium` CLI.
"""

from __future__ import annotations

import importlib.util
import sys
import threading
import types

LAZY_PACKAGES = ("pyroute2", "prometheus_client")


def _lazy_package(name: str) -> None:
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None or spec.submodule_search_locations is None:
        return  # not installed: the first real import says so
    package = types.ModuleType(name, f"(registered by {__name__}: __init__ runs on first use)")
    package.__spec__, package.__path__, package.__file__ = spec, list(spec.submodule_search_locations), spec.origin
    package.__loader__ = spec.loader
    initialized = False
    lock = threading.RLock()  # a second thread waits for the first one's __init__

    def __getattr__(attribute: str):
        nonlocal initialized
        with lock:
            if initialized:
                if attribute in package.__dict__:
                    return package.__dict__[attribute]
                raise AttributeError(f"module {name!r} has no attribute {attribute!r}")
            if importlib.util.find_spec(f"{name}.{attribute}") is not None:  # `from pyroute2 import config`
                return importlib.import_module(f"{name}.{attribute}")
            initialized = True
            spec.loader.exec_module(package)
            return getattr(package, attribute)

    package.__getattr__ = __getattr__
    sys.modules[name] = package


for _name in LAZY_PACKAGES:
    _lazy_package(_name)
sys.modules.setdefault("rich", None)  # None: `import rich` raises ImportError, as if not installed

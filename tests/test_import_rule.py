"""Plugins never import each other (they talk over the bus), and the core imports no plugin."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).parent.parent


def forbidden_imports(plugins_dir: Path, core_dir: Path | None = None) -> list[str]:
    """Every import of one plugin's code from another plugin, or of any plugin from the core."""
    problems = []

    def imported(path: Path, package: list[str]):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    yield alias.name, node.lineno
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: resolve against the module's package
                    base = package[: len(package) - node.level + 1]
                    name = ".".join(base + ([node.module] if node.module else []))
                    yield name, node.lineno
                    if not node.module:
                        for alias in node.names:
                            yield f"{name}.{alias.name}", node.lineno
                else:
                    yield node.module or "", node.lineno
                    for alias in node.names:
                        yield f"{node.module}.{alias.name}", node.lineno

    for plugin in sorted(p for p in plugins_dir.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))):
        for path in plugin.rglob("*.py"):
            package = ["pylium", "plugins", *path.relative_to(plugins_dir).parent.parts]
            for name, line in imported(path, package):
                parts = name.split(".")
                if parts[:2] == ["pylium", "plugins"] and len(parts) > 2 and parts[2] != plugin.name:
                    problems.append(f"{path.relative_to(plugins_dir.parent)}:{line}: plugin {plugin.name} imports {name}")
    if core_dir is not None:
        for path in core_dir.rglob("*.py"):
            package = ["pylium", "core", *path.relative_to(core_dir).parent.parts]
            for name, line in imported(path, package):
                if name.split(".")[:2] == ["pylium", "plugins"] and name != "pylium.plugins":
                    problems.append(f"{path.relative_to(core_dir.parent)}:{line}: the core imports {name}")
    return problems


def test_no_plugin_imports_another_and_the_core_imports_none():
    assert forbidden_imports(ROOT / "plugins", ROOT / "core") == []


def test_the_checker_catches_every_form(tmp_path):
    plugins = tmp_path / "plugins"
    (plugins / "ipam").mkdir(parents=True)
    (plugins / "lb").mkdir()
    (plugins / "lb" / "plugin.py").write_text("from pylium.plugins.lb import maglev\nfrom . import maglev\n")
    (plugins / "ipam" / "plugin.py").write_text(
        "import pylium.plugins.lb.maglev\n"
        "from pylium.plugins.lb import maglev\n"
        "from pylium.plugins import lb\n"
        "from ..lb import maglev\n"
        "from .allocator import Allocator\n"
    )
    problems = forbidden_imports(plugins)
    assert len([p for p in problems if "plugin ipam" in p]) >= 4
    assert not any("plugin lb" in p for p in problems)
    assert all(":5:" not in p for p in problems)  # own-package relative import is fine


def core_imports_outside_the_facade(*dirs: Path) -> list[str]:
    """Imports of pylium.core by plugin code other than pylium.core.api_for_plugins: absolute,
    relative (resolved as if the folder were installed under pylium/), `from pylium import
    core`, and importlib.import_module("...") with a literal name."""
    problems = []
    for top in dirs:
        for path in top.rglob("*.py"):
            package = ["pylium", top.name, *path.relative_to(top).parent.parts]
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom):
                    module = ".".join(package[:len(package) - node.level + 1] + [node.module or ""]).strip(".") \
                        if node.level else node.module or ""
                    names = [f"{module}.{a.name}" for a in node.names]
                elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == \
                        "import_module" and node.args and isinstance(node.args[0], ast.Constant):
                    names = [str(node.args[0].value)]
                else:
                    continue
                for name in names:
                    if (name == "pylium.core" or name.startswith("pylium.core.")) and \
                            not name.startswith("pylium.core.api_for_plugins"):
                        problems.append(f"{path.relative_to(top.parent)}:{node.lineno}: imports {name}")
                        break
    return problems


def test_plugins_use_only_the_core_facade():
    assert core_imports_outside_the_facade(ROOT / "plugins", ROOT / "examples") == []


def test_the_facade_check_catches_every_form(tmp_path):
    plugins = tmp_path / "plugins" / "probe"
    plugins.mkdir(parents=True)
    (plugins / "probe.py").write_text("from pylium.core.datapath.structs import IpcacheKey\n"
                                      "import pylium.core.config\n"
                                      "from pylium import core\n"
                                      "from ...core.datapath import maps\n"
                                      "importlib.import_module('pylium.core.datapath.libbpf')\n"
                                      "from pylium.core.api_for_plugins import Slot\n"
                                      "from ...core import api_for_plugins\n"
                                      "from . import sibling\n")
    lines = sorted(int(p.split(":")[1]) for p in core_imports_outside_the_facade(tmp_path / "plugins"))
    assert lines == [1, 2, 3, 4, 5]


def test_every_facade_name_resolves_and_loads_lazily():
    import subprocess
    import sys

    from pylium.core import api_for_plugins

    for name in api_for_plugins.__all__:
        assert getattr(api_for_plugins, name) is not None, name
    code = ("import sys; from pylium.core.api_for_plugins import print_table, emit; "
            "print(sorted(m for m in ('pydantic', 'zmq', 'aiohttp') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]", "a CLI command's imports must not pull in the agent's libraries"


def test_the_agent_leaves_out_what_it_never_uses():
    """Idle memory (issue 20): no NDB or IPDB from pyroute2's package, no rich or
    pygments through structlog, no L7 proxy modules (dnspython) and no aiohttp (its client,
    websockets and multipart: the agent serves HTTP with h11) in the agent's process."""
    import subprocess
    import sys

    code = ("import sys, importlib.metadata as md; import pylium.core.agent.main; "
            "[ep.load() for ep in md.entry_points(group='pylium.plugins')]; "
            "from pyroute2.iproute.linux import IPRoute; IPRoute().close(); "
            "print(sorted(m for m in ('pyroute2.ndb', 'pyroute2.ipdb', 'rich', 'pygments', 'dns', 'aiohttp', "
            "'prometheus_client.exposition') "
            "if sys.modules.get(m) is not None))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]"


def test_a_lazily_registered_package_still_gives_its_names():
    """A third-party plugin's `from pyroute2 import IPRoute` or `from prometheus_client import
    Counter` works in the agent: the package's `__init__` runs then, once."""
    import subprocess
    import sys

    code = ("import sys; import pylium.core.agent.lean_imports; "
            "from prometheus_client.core import Counter; assert 'prometheus_client.exposition' not in sys.modules; "
            "from prometheus_client import Counter as C, generate_latest; assert C is Counter; "
            "from pyroute2 import config, IPRoute; import pyroute2.iproute.linux as l; assert IPRoute is l.IPRoute; "
            "import pyroute2; print(pyroute2.__version__ > '0', hasattr(pyroute2, 'no_such_name'))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert (r.returncode, r.stdout.strip()) == (0, "True False"), r.stderr

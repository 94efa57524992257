"""Docs cannot drift: generated blocks match the code, and the README leads with its commands."""

from __future__ import annotations

from pathlib import Path

import click
import pytest

from pylium.core import docs

ROOT = Path(__file__).parent.parent


@pytest.mark.parametrize("rel", sorted(docs.BLOCKS))
def test_generated_blocks_are_current(rel):
    text = (ROOT / rel).read_text()
    for name, fn in docs.BLOCKS[rel].items():
        assert docs.render(text, name, fn()) == text, f"{rel} is stale: run `make docs`"


def test_cli_reference_covers_every_command_and_option():
    from pylium.core.cli.main import main

    text = (ROOT / "docs" / "cli.md").read_text()

    def walk(group, path):
        for name, cmd in group.commands.items():
            yield f"{path} {name}", cmd
            if isinstance(cmd, click.Group):
                yield from walk(cmd, f"{path} {name}")

    for name, cmd in walk(main, "pylium"):
        assert f"### `{name}`" in text
        for p in cmd.params:
            if not isinstance(p, click.Option):
                assert p.make_metavar(click.Context(cmd)) in text  # arguments appear in the usage line
                continue
            for opt in p.opts:
                assert opt in text, f"{name} {opt} undocumented"


def test_readme_documents_setup_run_test_first():
    readme = (ROOT / "README.md").read_text()
    first = [readme.index(f"make {c}") for c in ("setup", "run", "test")]
    assert first == sorted(first)
    assert all(i < readme.index("## ", readme.index("make test")) for i in first)


def _leaf_commands(group: click.Group, path: tuple = ()):
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            yield from _leaf_commands(cmd, path + (name,))
        else:
            yield path + (name,)


def _cli_invocations(files) -> set[tuple[str, ...]]:
    """The command words of every CLI invocation written in the tests: the arguments of
    run_cli(dirs, ...) / cli(lab, ...) / node.cli(...), and argv lists that start with the pylium binary
    (`[str(BIN / "pylium"), ...]`); options and values that are not literals left out."""
    import ast

    def is_pylium(node) -> bool:  # the binary's path (BIN / "pylium"), not a module path's first part
        return not isinstance(node, ast.Constant) and any(
            isinstance(n, ast.Constant) and n.value == "pylium" for n in ast.walk(node))

    out = set()
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") in ("run_cli", "cli"):
                args = node.args[1:]  # run_cli(dirs, ...), cli(lab, ...)
            elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "cli":
                args = node.args  # node.cli(...) of pylium.testing.cluster
            elif isinstance(node, ast.List) and node.elts and is_pylium(node.elts[0]):
                args = node.elts[1:]
            else:
                continue
            words = [a.value for a in args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
            out.add(tuple(w for w in words if not w.startswith("-")))
    return out


def test_every_cli_command_is_run_by_a_test():
    from pylium.core.cli.main import main

    calls = _cli_invocations((ROOT / "tests").glob("*.py"))
    untested = [" ".join(c) for c in _leaf_commands(main) if not any(call[:len(c)] == c for call in calls)]
    assert untested == [], f"commands no test runs: {untested}"


def test_the_cli_coverage_check_can_fail(tmp_path):
    (tmp_path / "test_x.py").write_text('run_cli(d, "bpf", "ipcache", "list", "-o", "json")\n'
                                        'lab.nodes[0].cli("node", "list")\n'
                                        'subprocess.run([str(BIN / "pylium"), "--run-dir", str(d), "status"])\n')
    assert _cli_invocations([tmp_path / "test_x.py"]) == {("bpf", "ipcache", "list", "json"), ("status",),
                                                                   ("node", "list")}
    (tmp_path / "test_y.py").write_text('import_names = ["pylium", "plugins", "lb"]\n'  # not a command line
                                        'run_cli(d, "endpoint", "config", "3")\n')
    calls = _cli_invocations([tmp_path / "test_y.py"])
    assert calls == {("endpoint", "config", "3")}
    assert not any(call[:1] == ("config",) for call in calls), "`config` is not run by `endpoint config`"

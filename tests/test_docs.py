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
    """The command words of every CLI invocation written in the tests: arguments of
    run_cli(dirs, ...) / cli(lab, ...) and argv lists, options left out."""
    import ast

    out = set()
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) in (
                    "run_cli", "cli"):
                args = node.args[1:]
            elif isinstance(node, ast.List):
                args = node.elts
            else:
                continue
            words = [a.value for a in args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
            out.add(tuple(w for w in words if not w.startswith("-")))
    return out


def test_every_cli_command_is_run_by_a_test():
    from pylium.core.cli.main import main

    calls = _cli_invocations((ROOT / "tests").glob("*.py"))

    def run_somewhere(command: tuple) -> bool:
        n = len(command)
        return any(call[i:i + n] == command for call in calls for i in range(len(call) - n + 1))

    untested = [" ".join(c) for c in _leaf_commands(main) if not run_somewhere(c)]
    assert untested == [], f"commands no test runs: {untested}"


def test_the_cli_coverage_check_can_fail(tmp_path):
    (tmp_path / "test_x.py").write_text('run_cli(d, "bpf", "ipcache", "list", "-o", "json")\n'
                                        'subprocess.run([str(BIN / "pylium"), "--run-dir", str(d), "status"])\n')
    assert _cli_invocations([tmp_path / "test_x.py"]) == {("bpf", "ipcache", "list", "json"), ("status",)}

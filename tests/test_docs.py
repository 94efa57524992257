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

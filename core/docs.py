"""Generated parts of the docs (config keys, CLI reference), so they cannot drift from the code.

`make docs` rewrites the blocks between GENERATED markers; a test fails when they are stale.
"""

from __future__ import annotations

import inspect
import re
import sys
from pathlib import Path

import click

from pylium.core import config as cfg
from pylium.core.agent.plugin_host import discover, instantiate

BEGIN = "<!-- BEGIN GENERATED: {name} (make docs) -->"
END = "<!-- END GENERATED: {name} -->"


def builtin_config_models() -> dict[str, type[cfg.Section]]:
    """The config model of each built-in plugin, by plugin name."""
    contributions = {}
    for ep, info in discover():
        if info.builtin:
            instantiate(ep, info)
            model = info.obj.pylium_config_model() if hasattr(info.obj, "pylium_config_model") else None
            if model is not None:
                contributions[info.name] = model
    return contributions


def config_keys() -> str:
    lines = ["| Key | Default | Owner | Description |", "|---|---|---|---|"]
    for owner, model in [("core", cfg.CoreConfig), *builtin_config_models().items()]:
        for path, default, description in cfg.describe(model):
            lines.append(f"| `{path}` | `{default}` | {owner} | {description} |")
    return "\n".join(lines)


def cli_reference() -> str:
    from pylium.core.agent.main import main as agent_main
    from pylium.core.cli.main import main as cli_main

    out: list[str] = []
    _command_doc(out, agent_main, "pylium-agent")
    _command_doc(out, cli_main, "pylium")
    return "\n".join(out).rstrip()


def _command_doc(out: list[str], cmd: click.Command, path: str, parent: click.Context | None = None) -> None:
    ctx = click.Context(cmd, info_name=path.rsplit(" ", 1)[-1], parent=parent, **cmd.context_settings)
    out.append(f"### `{path}`\n")
    out.append(f"```\n{cmd.get_usage(ctx).removeprefix('Usage: ')}\n```\n")
    if cmd.help:
        out.append(inspect.cleandoc(cmd.help) + "\n")
    params = [p for p in cmd.get_params(ctx) if isinstance(p, click.Option) and p.get_help_record(ctx)]
    if params:
        out.append("| Option | Description |\n|---|---|")
        for p in params:
            names, help_text = p.get_help_record(ctx)
            out.append(f"| `{_cell(names)}` | {_cell(help_text)} |")
        out.append("")
    if isinstance(cmd, click.Group):
        for name in sorted(cmd.commands):
            _command_doc(out, cmd.commands[name], f"{path} {name}", ctx)


def event_reference() -> str:
    from pylium.core.bus import events as ev

    out = []
    types = sorted(ev.VOCABULARY.types.values(), key=lambda t: t.topic) + [ev.SYNCED_TYPE]
    for et in types:
        kind = f"state, family `{et.family}`, key `{et.key}`" + (", deletes" if et.deletes else "") \
            if et.kind == "state" else "stream"
        out.append(f"### `{et.topic}`\n\n{et.doc}\n\nKind: {kind}. Published by: {et.owner}.\n")
        out.append("| Field | Type |\n|---|---|")
        for f in et.model.__struct_fields__:
            hint = et.model.__annotations__.get(f, "")
            out.append(f"| `{f}` | `{_cell(str(hint))}` |")
        out.append("")
    return "\n".join(out).rstrip()


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


BLOCKS = {"docs/config.md": {"config-keys": config_keys}, "docs/cli.md": {"cli-reference": cli_reference},
          "docs/events.md": {"event-types": event_reference}}


def render(text: str, name: str, content: str) -> str:
    begin, end = BEGIN.format(name=name), END.format(name=name)
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
    if not pattern.search(text):
        raise ValueError(f"missing generated block {name!r}")
    return pattern.sub(lambda _: f"{begin}\n{content}\n{end}", text)


def update(root: Path) -> list[str]:
    changed = []
    for rel, blocks in BLOCKS.items():
        path = root / rel
        text = original = path.read_text()
        for name, fn in blocks.items():
            text = render(text, name, fn())
        if text != original:
            path.write_text(text)
            changed.append(rel)
    return changed


if __name__ == "__main__":
    for rel in update(Path(sys.argv[1] if len(sys.argv) > 1 else ".")):
        print(f"updated {rel}")

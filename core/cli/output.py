"""Output helpers shared by CLI commands: `-o table|json|yaml`, tables, errors, exit codes."""

from __future__ import annotations

import json
import sys
from typing import Any, Callable, Iterable

import click

EXIT_UNREACHABLE = 2

output_option = click.option(
    "-o", "--output", type=click.Choice(["table", "json", "yaml"]), default="table", show_default=True,
    help="Output format.",
)


def emit(data: Any, fmt: str, table: Callable[[Any], None]) -> None:
    if fmt == "json":
        click.echo(json.dumps(data, indent=2, default=str))
    elif fmt == "yaml":
        import yaml

        click.echo(yaml.safe_dump(data, sort_keys=False, default_flow_style=False), nl=False)
    else:
        table(data)


def print_table(headers: list[str], rows: Iterable[Iterable[Any]], title: str | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title, box=None, header_style="bold", pad_edge=False)
    for h in headers:
        t.add_column(h, overflow="fold")
    for row in rows:
        t.add_row(*["" if v is None else str(v) for v in row])
    Console(width=max(120, _terminal_width())).print(t)


def _terminal_width() -> int:
    import shutil

    return shutil.get_terminal_size((120, 24)).columns


def fail(message: str, code: int = 1) -> None:
    click.echo(f"Error: {message}", err=True)
    sys.exit(code)


def human_duration(seconds: float) -> str:
    seconds = int(seconds)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    parts.append(f"{seconds}s")
    return "".join(parts)

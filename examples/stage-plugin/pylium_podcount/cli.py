"""`pylium podcount list`: a command contributed through the `pylium.cli` entry points."""

from __future__ import annotations

import click

from pylium.core.api_for_plugins import emit, output_option, print_table


@click.group()
def podcount() -> None:
    """Packets and bytes per pod (the podcount plugin)."""


@podcount.command("list")
@output_option
@click.pass_obj
def podcount_list(client, output: str) -> None:
    """List each pod's sent and received packets and bytes."""
    emit(client.get("/v1/podcount"), output, lambda rows: print_table(
        ["ENDPOINT", "POD", "TX PACKETS", "TX BYTES", "RX PACKETS", "RX BYTES"],
        ([r["endpoint"], r["pod"], r.get("tx_packets", 0), r.get("tx_bytes", 0), r.get("rx_packets", 0),
          r.get("rx_bytes", 0)] for r in rows)))

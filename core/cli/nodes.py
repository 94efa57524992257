"""`pylium node ...`: the cluster's nodes as this agent knows them."""

from __future__ import annotations

import click

from pylium.core.cli.output import emit, output_option, print_table


@click.group()
def node() -> None:
    """The cluster's nodes (from the cluster store)."""


@node.command("list")
@output_option
@click.pass_obj
def node_list(client, output: str) -> None:
    """List the nodes: name, addresses, pod CIDRs (Endpoint CIDR) and where the record comes
    from (local: this node; kvstore: a peer's record in the cluster store)."""
    emit(client.get("/v1/nodes"), output, lambda rows: print_table(
        ["Name", "IPv4 Address", "Endpoint CIDR", "IPv6 Address", "Endpoint CIDR", "Source"],
        ([r["name"], r["ipv4"], ",".join(c for c in r["pod_cidrs"] if ":" not in c), r["ipv6"],
          ",".join(c for c in r["pod_cidrs"] if ":" in c), r["source"]] for r in rows)))

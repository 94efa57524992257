"""`pylium ipam ...` (registered through the `pylium.cli` entry points)."""

from __future__ import annotations

import click

from pylium.core.api_for_plugins import emit, output_option, print_table


@click.group()
def ipam() -> None:
    """IP address management: pools and allocations."""


@ipam.command("list")
@click.option("--all", "everything", is_flag=True, help="Also list every allocation (owner and addresses).")
@output_option
@click.pass_obj
def list_(client, everything: bool, output: str) -> None:
    """Pools with their CIDRs, this node's blocks, and used/free addresses."""
    data = client.get("/v1/ipam" + ("?all=true" if everything else ""))

    def table(d: dict) -> None:
        print_table(["POOL", "FAMILY", "CIDRS", "NODE BLOCKS", "ROUTER", "USED", "FREE", "CAPACITY"],
                    ([p["name"], p["family"], ", ".join(p["cidrs"]), ", ".join(p["blocks"]), ", ".join(p["routers"]),
                      p["used"], p["free"], p["capacity"]] for p in d["pools"]))
        if everything:
            click.echo()
            print_table(["OWNER", "POOL", "ADDRESSES"],
                        ([f"{a['owner']['container_id']}/{a['owner']['interface']}", a["pool"],
                          ", ".join(x["cidr"] for x in a["addresses"])] for a in d["allocations"]))

    emit(data, output, table)

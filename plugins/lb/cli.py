"""`pylium service list`, `pylium bpf lb list`, `pylium bpf lb maglev list` (registered through
the `pylium.cli` entry points)."""

from __future__ import annotations

import urllib.parse

import click

from pylium.core.api_for_plugins import emit, output_option, print_table


def _backend_lines(backends: list[dict]) -> str:
    return "\n".join(f"{i}) {b['address']}:{b['port']} ({b['state']})" for i, b in enumerate(backends, 1))


@click.group()
def service() -> None:
    """Services: frontends (service addresses) and their backends."""


@service.command("list")
@output_option
@click.pass_obj
def service_list(client, output: str) -> None:
    """Frontends: ID, FRONTEND, SERVICE TYPE, SERVICE, BACKEND (with its state: active,
    terminating, terminating-not-serving, quarantined). Manifests that could not be loaded
    are named on stderr."""
    answer = client.get("/v1/service")
    emit(answer["services"], output, lambda rows: print_table(
        ["ID", "FRONTEND", "SERVICE TYPE", "SERVICE", "BACKEND"],
        ([r["id"], r["frontend"], r["type"], r["service"], _backend_lines(r["backends"])] for r in rows)))
    for problem in answer["problems"]:
        click.echo(f"not loaded: {problem}", err=True)


@click.group("lb")
def bpf_lb() -> None:
    """The load balancer's maps: services, backends, reverse NAT, maglev tables."""


@bpf_lb.command("list")
@click.option("--backends", "table", flag_value="backends", help="The backends map.")
@click.option("--revnat", "table", flag_value="revnat", help="The reverse NAT map (frontends by id).")
@output_option
@click.pass_obj
def bpf_lb_list(client, table: str | None, output: str) -> None:
    """The services map: each frontend's slot 0 (REVNAT id, backend count, flags) and its
    backend slots; or, with --backends / --revnat, those maps."""
    table = table or "services"
    rows = client.get(f"/v1/bpf/lb?table={table}")[table]
    if table == "backends":
        emit(rows, output, lambda rows: print_table(["ID", "BACKEND ADDRESS", "PROTOCOL", "STATE"], (
            [r["id"], r["address"], r["protocol"], r["state"]] for r in rows)))
    elif table == "revnat":
        emit(rows, output, lambda rows: print_table(["ID", "FRONTEND ADDRESS"], ([r["id"], r["address"]]
                                                                               for r in rows)))
    else:
        emit(rows, output, lambda rows: print_table(["SERVICE ADDRESS", "SCOPE", "SLOT", "BACKEND / SERVICE"], (
            [r["frontend"], r["scope"], r["slot"],
             f"{r['backend']} (id {r['backend_id']})" if r["slot"] else
             f"revnat {r['rev_nat_index']}, {r['count']} active, {r['terminating']} terminating, "
             f"{r['algorithm']}" + (f" [{', '.join(r['flags'])}]" if r["flags"] else "")] for r in rows)))


@bpf_lb.group("maglev")
def bpf_lb_maglev() -> None:
    """Maglev lookup tables (services of loadBalancer.algorithm=maglev)."""


@bpf_lb_maglev.command("list")
@click.argument("service")
@output_option
@click.pass_obj
def bpf_lb_maglev_list(client, service: str, output: str) -> None:
    """The maglev table of SERVICE (a frontend ID from `pylium service list`, or
    NAMESPACE/NAME for all its frontends): how many of the table's slots each backend holds.
    -o json includes the whole table (backend id per slot)."""
    rows = client.get(f"/v1/bpf/lb/maglev/{urllib.parse.quote(service, safe='')}")["maglev"]
    emit(rows, output, lambda rows: print_table(["ID", "FRONTEND", "TABLE SIZE", "BACKEND", "SLOTS"], (
        [r["id"], r["frontend"], r["size"], "\n".join(r["slots"]) or "(no table)",
         "\n".join(str(n) for n in r["slots"].values())] for r in rows)))

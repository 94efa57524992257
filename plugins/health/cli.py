"""`pylium health status`: what this node's prober found."""

from __future__ import annotations

import time

import click

from pylium.core.api_for_plugins import emit, output_option


def _probe_text(probe: dict | None) -> str:
    if probe is None:
        return "not probed yet"
    if probe["ok"]:
        latency = probe["latency"]
        return f"OK, RTT={latency * 1e6:.0f}µs" if latency < 0.001 else f"OK, RTT={latency * 1e3:.3f}ms"
    return probe["error"] or "failed"


def _print(report: dict) -> None:
    if report.get("disabled"):
        click.echo("Health checking is disabled (healthChecking: false)")
        return
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(report["probe_time"])) if report["probe_time"] else "never"
    click.echo(f"Probe time:   {when}")
    click.echo(f"Cluster health: {report['reachable']}/{report['total']} reachable (Probe interval: "
               f"{report['interval']})")
    click.echo("Nodes:")
    for node in report["nodes"]:
        click.echo(f"  {node['name']}{' (localhost)' if node['local'] else ''}:")
        click.echo(f"    Host connectivity to {node['ip']}:")
        click.echo(f"      ICMP to stack:   {_probe_text(node['icmp'])}")
        click.echo(f"      HTTP to agent:   {_probe_text(node['http'])}")


@click.group()
def health() -> None:
    """Connectivity between the cluster's nodes, as this node probes it."""


@health.command("status")
@click.option("--probe", is_flag=True, help="Probe every node now instead of showing the last results.")
@output_option
@click.pass_obj
def status(client, probe: bool, output: str) -> None:
    """Each node's ICMP and HTTP reachability and latency; exit 1 when a node is unreachable."""
    report = client.call("POST", "/v1/health/probe") if probe else client.get("/v1/health")
    emit(report, output, _print)
    raise SystemExit(0 if report["reachable"] == report["total"] else 1)

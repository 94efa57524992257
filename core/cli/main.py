"""`pylium`: inspect and drive a running agent through its control API."""

from __future__ import annotations

import time
from pathlib import Path

import click

from pylium.core.cli.client import DEFAULT_RUN_DIR, AgentUnreachable, ApiFailure, Client
from pylium.core.cli.output import EXIT_UNREACHABLE, emit, fail, human_duration, output_option, print_table


class _Group(click.Group):
    """Turns an unreachable agent or an API error into a clear message and exit code."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except AgentUnreachable as e:
            fail(str(e), EXIT_UNREACHABLE)
        except ApiFailure as e:
            fail(e.message, 1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_RUN_DIR,
              envvar="PYLIUM_RUN_DIR", help="Run directory of the agent to talk to (its API socket is there).")
@click.option("--timeout", type=float, default=30.0, help="Seconds to wait for each API answer.")
@click.version_option(package_name="pylium", prog_name="pylium")
@click.pass_context
def main(ctx: click.Context, run_dir: Path, timeout: float) -> None:
    """Command-line client for the pylium node agent."""
    ctx.obj = Client.for_run_dir(run_dir, timeout)


# ------------------------------------------------------------------------------------------
# status
# ------------------------------------------------------------------------------------------


def _all_ok(status: dict) -> bool:
    kvstore = status.get("kvstore") or {"ok": True}
    return status["state"] == "running" and kvstore["ok"] and all(p["health"] == "OK" for p in status["plugins"])


def _print_status(s: dict) -> None:
    counts: dict[str, int] = {}
    for p in s["plugins"]:
        counts[p["health"]] = counts.get(p["health"], 0) + 1
    agent = "OK" if _all_ok(s) else s["state"].capitalize()
    click.echo(f"Agent:          {agent}   pylium {s['version']}, node {s['node']}, cluster {s['cluster']}, "
               f"up {human_duration(s['uptime_seconds'])}")
    if s.get("failure"):
        click.echo(f"Failure:        {s['failure']}")
    if s.get("kvstore"):
        store = s["kvstore"]
        click.echo(f"KVStore:        {'Ok' if store['ok'] else 'Failure'}   {store['message']}")
    summary = " ".join(f"{k}({counts.get(k, 0)})" for k in ("OK", "DEGRADED", "STARTING", "STOPPED"))
    click.echo(f"Plugins Health: {summary}")
    for label, text in sorted(s.get("details", {}).items()):
        click.echo(f"{label + ':':<15} {text}")
    if s["plugins"]:
        click.echo()
        print_table(["PLUGIN", "HEALTH", "MESSAGE", "VERSION", "SOURCE"],
                    ([p["name"], p["health"], p["message"], p["version"], p["source"]] for p in s["plugins"]))


@main.command()
@click.option("--wait", is_flag=True, help="Wait until the agent runs and every plugin is OK.")
@click.option("--wait-duration", type=float, default=300.0, help="Seconds --wait waits before giving up.")
@output_option
@click.pass_obj
def status(client: Client, wait: bool, wait_duration: float, output: str) -> None:
    """Show the agent's health and each plugin's health.

    Exit code 0 when the agent runs and every plugin is OK, 1 otherwise,
    2 when no agent answers.
    """
    deadline = time.monotonic() + wait_duration
    while True:
        try:
            s = client.get("/v1/status")
            if not wait or _all_ok(s) or time.monotonic() >= deadline:
                break
        except AgentUnreachable:
            if not wait or time.monotonic() >= deadline:
                raise
        time.sleep(0.2)
    emit(s, output, _print_status)
    raise SystemExit(0 if _all_ok(s) else 1)


# ------------------------------------------------------------------------------------------
# config and plugins
# ------------------------------------------------------------------------------------------


@main.command()
@click.option("-o", "--output", type=click.Choice(["yaml", "json"]), default="yaml", help="Output format.")
@click.pass_obj
def config(client: Client, output: str) -> None:
    """Print the agent's effective configuration."""
    emit(client.get("/v1/config"), output, lambda d: None)


@main.command()
@output_option
@click.pass_obj
def plugins(client: Client, output: str) -> None:
    """List loaded plugins in start order: source, version, and the hooks each implements."""
    data = client.get("/v1/plugins")
    emit(data, output, lambda rows: print_table(
        ["#", "PLUGIN", "VERSION", "SOURCE", "HOOKS"],
        ([p["start_order"], p["name"], p["version"], p["source"], ", ".join(p["hooks"])] for p in rows)))


from pylium.core.cli.endpoint import bpf, endpoint, install_cni, metrics  # noqa: E402
from pylium.core.cli.events import events  # noqa: E402
from pylium.core.cli.nodes import node  # noqa: E402

for _command in (events, endpoint, bpf, install_cni, metrics, node):
    main.add_command(_command)


def _plugin_commands() -> None:
    """Commands plugins contribute through the `pylium.cli` entry points (`pylium ipam ...`)."""
    from importlib.metadata import entry_points

    for ep in entry_points(group="pylium.cli"):
        group, _, name = ep.name.rpartition(".")  # "bpf.policy": `pylium bpf policy`
        parent = main.commands.get(group) if group else main
        if not isinstance(parent, click.Group) or name in parent.commands:
            continue
        try:
            parent.add_command(ep.load(), name)
        except Exception as e:  # a broken third-party command must not break the CLI
            click.echo(f"warning: cannot load command {ep.name!r} ({ep.value}): {e}", err=True)


_plugin_commands()

if __name__ == "__main__":
    main()

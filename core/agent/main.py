"""`pylium-agent`: the daemon's command line."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

from pylium.core.agent import lean_imports  # noqa: F401  (first: before pyroute2 and structlog are imported)

import anyio
import click

from pylium.core import EXIT_CONFIG, EXIT_FAILURE, __version__, config as cfg
from pylium.core.agent import log as logging_
from pylium.core.agent.agent import Agent, AgentError, AgentOptions
from pylium.core.agent.plugin_host import PluginLoadError


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--config", "config_files", multiple=True, type=click.Path(dir_okay=False),
              help="YAML config file (Helm-values shape); repeat to layer files, later wins.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Override one key, e.g. --set prometheus.port=0; repeatable, applied after files.")
@click.option("--print-config", is_flag=True, help="Print the effective configuration as YAML and exit.")
@click.option("--cleanup", is_flag=True,
              help="Remove what this node's agent left in the kernel (programs, BPF pins, iptables chains, devices, "
                   "routes, the L7 proxy) and exit; refused while an agent runs. The state directory stays.")
@click.option("--node-name", default=socket.gethostname, show_default="hostname", help="This node's name.")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), default="/var/lib/pylium",
              help="Durable local state (allocations, endpoints, keys).")
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path), default="/var/run/pylium",
              help="Runtime sockets: the API at <run-dir>/pylium.sock.")
@click.option("--bpf-root", type=click.Path(file_okay=False, path_type=Path), default="/sys/fs/bpf/pylium",
              help="Where BPF maps and programs are pinned, under <bpf-root>/<node-name>/.")
@click.option("--stop-timeout", type=float, default=10.0, help="Seconds a graceful stop may take before it is forced.")
@click.option("--log-format", type=click.Choice(["auto", "json", "console"]), default="auto",
              help="auto: console on a terminal, JSON lines otherwise.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default=None,
              help="Log level [default: info, or debug when debug.enabled].")
@click.version_option(__version__, prog_name="pylium-agent")
def main(config_files, sets, print_config, cleanup, node_name, state_dir, run_dir, bpf_root, stop_timeout,
         log_format, log_level) -> None:
    """Run the pylium node agent in the foreground (stop with SIGTERM or Ctrl-C).

    Exit codes: 0 stopped normally, 1 runtime failure, 78 configuration error.
    """
    logging_.configure(log_format, log_level or "info")
    os.umask(0o077)  # state, keys, pins and logs are root's (sockets get their mode explicitly)
    options = AgentOptions(node_name=node_name, state_dir=state_dir.absolute(), run_dir=run_dir.absolute(),
                           bpf_root=bpf_root.absolute(), stop_timeout=stop_timeout)
    try:
        agent = Agent.load(options, list(config_files), list(sets))
    except cfg.ConfigError as e:
        for line in e.problems:
            click.echo(f"config error: {line}", err=True)
        sys.exit(EXIT_CONFIG)
    except PluginLoadError as e:
        click.echo(f"plugin error: {e}", err=True)
        sys.exit(EXIT_CONFIG)
    if print_config:
        click.echo(cfg.to_yaml(agent.config), nl=False)
        return
    if cleanup:
        _cleanup(agent)
        return
    if log_level is None and agent.config.debug.enabled:
        logging_.configure(log_format, "debug")
    agent.log.info("starting agent", version=__version__, plugins=agent.order, state_dir=str(state_dir),
                   run_dir=str(run_dir), bpf_root=str(bpf_root))
    try:
        code = anyio.run(agent.run, backend_options={"use_uvloop": True})
    except AgentError as e:
        agent.log.error("cannot start", error=str(e))
        code = EXIT_FAILURE
    if agent.failure:
        click.echo(f"pylium-agent: {agent.failure}", err=True)
    sys.exit(code)


def _cleanup(agent: Agent) -> None:
    from pylium.core.agent import cleanup

    try:
        done, failed = cleanup.run(agent)
    except AgentError as e:
        click.echo(f"pylium-agent: {e}; stop it first", err=True)
        sys.exit(EXIT_FAILURE)
    for line in done:
        click.echo(f"removed {line}")
    for line in failed:
        click.echo(f"cleanup failed: {line}", err=True)
    if failed:
        sys.exit(EXIT_FAILURE)
    click.echo(f"node {agent.options.node_name}: clean ({len(done)} removed)")


if __name__ == "__main__":
    main()

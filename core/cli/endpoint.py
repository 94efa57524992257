"""`pylium endpoint ...`, `pylium bpf ...` and `pylium install-cni`."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from pylium.core.cli.client import ApiFailure
from pylium.core.cli.output import emit, output_option, print_table

ENDPOINT_HEADERS = ["ENDPOINT", "POLICY (ingress) ENFORCEMENT", "POLICY (egress) ENFORCEMENT", "IDENTITY",
                    "LABELS (source:key[=value])", "IPv6", "IPv4", "STATUS"]


def _endpoint_row(ep: dict) -> list:
    return [ep["id"], ep.get("policy_ingress", "Disabled"), ep.get("policy_egress", "Disabled"), ep["identity"],
            "\n".join(ep["labels"]) or "-", _ip(ep, "ipv6"), _ip(ep, "ipv4"), ep["state"]]


def _with_enforcement(client, eps: list[dict]) -> list[dict]:
    """Per-direction enforcement from the policy plugin, when it runs."""
    try:
        policy = {p["id"]: p for p in client.get("/v1/policy/endpoints")}
    except ApiFailure:
        return eps
    for ep in eps:
        p = policy.get(ep["id"], {})
        ep["policy_ingress"], ep["policy_egress"] = p.get("ingress", "Disabled"), p.get("egress", "Disabled")
    return eps


def _ip(ep: dict, family: str) -> str:
    return next((a["ip"] for a in ep["addresses"] if a["family"] == family), "")


@click.group()
def endpoint() -> None:
    """Endpoints (pods) on this node."""


@endpoint.command("list")
@output_option
@click.pass_obj
def endpoint_list(client, output: str) -> None:
    """List endpoints: id, policy enforcement per direction, identity, labels, addresses, state."""
    eps = _with_enforcement(client, client.get("/v1/endpoints"))
    emit(eps, output, lambda eps: print_table(ENDPOINT_HEADERS, map(_endpoint_row, eps)))


@endpoint.command("get")
@click.argument("endpoint_id", type=int)
@click.option("-o", "--output", type=click.Choice(["json", "yaml"]), default="json", help="Output format.")
@click.pass_obj
def endpoint_get(client, endpoint_id: int, output: str) -> None:
    """Show one endpoint in full."""
    emit(client.get(f"/v1/endpoints/{endpoint_id}"), output, lambda d: None)


def _label(text: str) -> tuple[str, str]:
    key, _, value = text.partition("=")
    if not key:
        raise click.BadParameter(f"{text!r}: expected [source:]key=value")
    return key, value


@endpoint.command("labels")
@click.argument("endpoint_id", type=int)
@click.option("-a", "--add", "adds", multiple=True, metavar="[SOURCE:]KEY=VALUE",
              help="Add or change a label (source 'unspec' when omitted); repeatable.")
@click.option("-d", "--delete", "deletes", multiple=True, metavar="[SOURCE:]KEY", help="Remove a label; repeatable.")
@output_option
@click.pass_obj
def endpoint_labels(client, endpoint_id: int, adds, deletes, output: str) -> None:
    """Show, add or delete an endpoint's labels."""
    if adds or deletes:
        ep = client.call("POST", f"/v1/endpoints/{endpoint_id}/labels",
                         {"add": dict(_label(a) for a in adds), "delete": list(deletes)})
    else:
        ep = client.get(f"/v1/endpoints/{endpoint_id}")
    emit(ep["labels"], output, lambda labels: click.echo("\n".join(labels) or "(no labels)"))


@click.group()
def bpf() -> None:
    """Inspect the datapath's BPF maps."""


@bpf.group("endpoint")
def bpf_endpoint() -> None:
    """The local endpoints map (address -> where to deliver)."""


@bpf_endpoint.command("list")
@output_option
@click.pass_obj
def bpf_endpoint_list(client, output: str) -> None:
    """List the endpoints map: IP ADDRESS, LOCAL ENDPOINT INFO."""
    emit(client.get("/v1/bpf/endpoints"), output, lambda rows: print_table(
        ["IP ADDRESS", "LOCAL ENDPOINT INFO"],
        ([r["ip"], f"id={r['endpoint']} ifindex={r['ifindex']} mac={r['mac']} nodemac={r['host_mac']} "
                   f"identity={r['identity']}"] for r in rows)))


@bpf.group("ipcache")
def bpf_ipcache() -> None:
    """The ipcache map (prefix -> identity)."""


@bpf_ipcache.command("list")
@output_option
@click.pass_obj
def bpf_ipcache_list(client, output: str) -> None:
    """List the ipcache: IP PREFIX/ADDRESS, IDENTITY, and the OWNER whose record is in the map
    (other owners' records of the prefix, which it shadows, in parentheses)."""
    emit(client.get("/v1/bpf/ipcache"), output, lambda rows: print_table(
        ["IP PREFIX/ADDRESS", "IDENTITY", "OWNER"],
        ([r["prefix"], f"identity={r['identity']} encryptkey={r['encrypt_key']} "
                       f"tunnelendpoint={r['tunnel_endpoint'] or '0.0.0.0'}",
          r["owner"] + (f" ({', '.join(r['shadowed'])})" if r["shadowed"] else "")] for r in rows)))


@bpf.group("tunnel")
def bpf_tunnel() -> None:
    """The tunnel map: other nodes' pod CIDRs and the node each is reached through."""


@bpf_tunnel.command("list")
@output_option
@click.pass_obj
def bpf_tunnel_list(client, output: str) -> None:
    """List the pod CIDRs of other nodes with their TUNNEL ENDPOINT (the node's address); kept in
    the ipcache (routingMode tunnel), like Cilium's since its tunnel map was folded into it."""
    rows = [{"prefix": r["prefix"], "tunnel_endpoint": r["tunnel_endpoint"], "identity": r["identity"],
             "owner": r["owner"]} for r in client.get("/v1/bpf/ipcache")
            if r["tunnel_endpoint"] and int(r["prefix"].split("/")[1]) < (32 if ":" not in r["prefix"] else 128)]
    emit(rows, output, lambda rows: print_table(["TUNNEL", "VALUE"], ([r["prefix"], r["tunnel_endpoint"]]
                                                                      for r in rows)))


@bpf.group("metrics")
def bpf_metrics() -> None:
    """The datapath's packet counters (forwarded, and dropped per reason), per direction."""


@bpf_metrics.command("list")
@output_option
@click.pass_obj
def bpf_metrics_list(client, output: str) -> None:
    """List the metrics map: REASON, DESCRIPTION, DIRECTION, PACKETS, BYTES (summed over CPUs)."""
    emit(client.get("/v1/bpf/metrics"), output, lambda rows: print_table(
        ["REASON", "DESCRIPTION", "DIRECTION", "PACKETS", "BYTES"],
        ([r["reason"], r["description"], r["direction"], r["packets"], r["bytes"]] for r in rows)))


@click.group("metrics")
def metrics() -> None:
    """The agent's Prometheus metrics."""


@metrics.command("list")
@click.option("-p", "--pattern", default="", help="Only metrics whose name matches this regular expression.")
@output_option
@click.pass_obj
def metrics_list(client, pattern: str, output: str) -> None:
    """List every metric sample: METRIC, LABELS, VALUE."""
    from urllib.parse import quote

    rows = client.get("/v1/metrics" + (f"?pattern={quote(pattern)}" if pattern else ""))
    emit(rows, output, lambda rows: print_table(
        ["METRIC", "LABELS", "VALUE"],
        ([r["name"], " ".join(f'{k}="{v}"' for k, v in sorted(r["labels"].items())), _number(r["value"])]
         for r in rows)))


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.6g}"


@click.command("install-cni")
@click.option("--conf-dir", type=click.Path(file_okay=False, path_type=Path), default="/etc/cni/net.d",
              show_default=True, help="Where the runtime reads CNI network configurations.")
@click.option("--bin-dir", type=click.Path(file_okay=False, path_type=Path), default="/opt/cni/bin",
              show_default=True, help="Where the runtime looks for CNI plugin binaries.")
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Run directory of the agent the plugin calls [default: the global --run-dir].")
@click.option("--portmap/--no-portmap", default=None,
              help="Chain Debian's portmap plugin after pylium [default: when a portmap binary is found].")
@click.option("--name", default="pylium", show_default=True, help="Network name in the configuration.")
@click.pass_context
def install_cni(ctx, conf_dir: Path, bin_dir: Path, run_dir: Path | None, portmap: bool | None, name: str) -> None:
    """Write 05-pylium.conflist and install the pylium-cni binary for the container runtime."""
    socket_path = Path(run_dir or Path(ctx.obj.socket_path).parent).absolute() / "pylium.sock"
    from pylium.core.cni import plugin as cni

    source = Path(cni.__file__)
    if portmap is None:
        portmap = any((d / "portmap").exists() for d in (bin_dir, Path("/usr/lib/cni")))
    plugins = [{"type": "pylium-cni", "socketPath": str(socket_path)}]
    if portmap:
        plugins.append({"type": "portmap", "capabilities": {"portMappings": True}})
    conf_dir.mkdir(parents=True, exist_ok=True)
    bin_dir.mkdir(parents=True, exist_ok=True)
    target = bin_dir / "pylium-cni"
    tmp_bin = bin_dir / ".pylium-cni.tmp"
    kind = _install_plugin(source, tmp_bin)
    if target.is_symlink():
        target.unlink()
    os.replace(tmp_bin, target)
    conflist = conf_dir / "05-pylium.conflist"
    tmp = conflist.with_suffix(".tmp")
    tmp.write_text(json.dumps({"cniVersion": "1.0.0", "name": name, "plugins": plugins}, indent=2) + "\n")
    os.replace(tmp, conflist)
    click.echo(f"wrote {conflist} (socketPath {socket_path}{', portmap chained' if portmap else ''}); "
               f"installed {target} ({kind})")


def _install_plugin(python_source: Path, target: Path) -> str:
    """The C plugin (~1 ms of CPU to start) when a C compiler is at hand, else a standalone
    copy of the Python one run with `python -SE` (~25 ms)."""
    import shutil
    import subprocess

    c_source = python_source.with_name("cni_plugin.c")
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler and c_source.exists():
        built = subprocess.run([compiler, "-O2", "-o", str(target), str(c_source)], capture_output=True, text=True)
        if built.returncode == 0:
            return "C plugin"
        click.echo(f"warning: compiling {c_source} failed, installing the Python plugin: {built.stderr.strip()}",
                   err=True)
    target.write_text(f"#!{sys.executable} -SE\n" + python_source.read_text())
    target.chmod(0o755)
    return "Python plugin"

"""`pylium observe`, `pylium monitor` and `pylium service-map` (registered through the
`pylium.cli` entry points)."""

from __future__ import annotations

import datetime as dt
import json

import click

from pylium.core.api_for_plugins import fail, print_table
from pylium.plugins.observability import render

_FILTERS = [  # (option names, flag, help); every one may be repeated
    (("--pod",), "pod", "Flows from or to a pod: [namespace/]name-prefix (namespace default: default)."),
    (("--from-pod",), "from-pod", "Flows from a pod."),
    (("--to-pod",), "to-pod", "Flows to a pod."),
    (("-n", "--namespace"), "namespace", "Flows from or to pods of a namespace."),
    (("--from-namespace",), "from-namespace", "Flows from pods of a namespace."),
    (("--to-namespace",), "to-namespace", "Flows to pods of a namespace."),
    (("-l", "--label"), "label", "Flows from or to endpoints matching a label selector (k8s:app=x, app, "
                                 "reserved:world, app!=x, !app; comma: and)."),
    (("--from-label",), "from-label", "Flows from endpoints matching a label selector."),
    (("--to-label",), "to-label", "Flows to endpoints matching a label selector."),
    (("--ip",), "ip", "Flows from or to an address or CIDR."),
    (("--from-ip",), "from-ip", "Flows from an address or CIDR."),
    (("--to-ip",), "to-ip", "Flows to an address or CIDR."),
    (("--port",), "port", "Flows from or to a TCP/UDP port."),
    (("--from-port",), "from-port", "Flows from a port."),
    (("--to-port",), "to-port", "Flows to a port."),
    (("--identity",), "identity", "Flows from or to a security identity."),
    (("--from-identity",), "from-identity", "Flows from an identity."),
    (("--to-identity",), "to-identity", "Flows to an identity."),
    (("--protocol",), "protocol", "L4 protocol: tcp, udp, icmp, icmpv4, icmpv6."),
    (("--verdict",), "verdict", "FORWARDED, DROPPED, AUDIT, REDIRECTED, ERROR, TRACED, TRANSLATED."),
    (("-t", "--type"), "type", "Event type: drop, trace, policy-verdict, l7; trace subtypes as trace:to-endpoint, "
                               "trace:from-endpoint, trace:to-stack, trace:from-stack ..."),
    (("--drop-reason-desc",), "drop-reason-desc", "Drop reason name, e.g. POLICY_DENIED, STALE_OR_UNROUTABLE_IP."),
    (("--traffic-direction",), "traffic-direction", "ingress or egress."),
    (("--node-name",), "node-name", "Flows observed on this node."),
    (("--uuid",), "uuid", "The flow with this UUID."),
    (("--http-status",), "http-status", "L7 flows with this HTTP status: a code (404) or a class (4+, 40+)."),
    (("--http-method",), "http-method", "L7 flows of this HTTP method (GET, POST ...)."),
    (("--http-path",), "http-path", "L7 flows whose URL path matches this regular expression."),
    (("--dns-query",), "dns-query", "L7 flows whose DNS query name matches this regular expression."),
]
_OPTION_FLAGS = {name: flag for names, flag, _ in _FILTERS for name in names}


class _OrderedCommand(click.Command):
    """Keeps the raw arguments: filter flags apply in the order given (`--not` negates the next)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta["raw_args"] = list(args)
        return super().parse_args(ctx, args)


def _ordered_filters(args: list[str]) -> list[tuple[str, str | None]]:
    out: list[tuple[str, str | None]] = []
    i = 0
    while i < len(args):
        token = args[i]
        i += 1
        if token == "--":
            break
        if token == "--not":
            out.append(("not", None))
            continue
        name, sep, value = token.partition("=") if token.startswith("--") else (token, "", "")
        if not sep and not token.startswith("--") and token[:2] in _OPTION_FLAGS and len(token) > 2:
            name, value, sep = token[:2], token[2:], "="
        if name in _OPTION_FLAGS:
            if not sep:
                value = args[i]
                i += 1
            out.append((_OPTION_FLAGS[name], value))
    return out


def _timestamp(text: str | None, option: str) -> str:
    """RFC 3339 (or a duration ago: 30s, 5m, 1h) as the agent's fixed-width UTC form."""
    if not text:
        return ""
    from pylium.core.api_for_plugins import parse_duration

    try:
        when = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=parse_duration(text))
    except ValueError:
        try:
            when = dt.datetime.fromisoformat(text)
        except ValueError:
            fail(f"{option} {text!r}: expected RFC 3339 (2026-11-26T14:00:00Z) or a duration ago (5m)")
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.timezone.utc)
    when = when.astimezone(dt.timezone.utc)
    return when.strftime("%Y-%m-%dT%H:%M:%S") + f".{when.microsecond * 1000:09d}Z"


def _filter_options(fn):
    for names, _flag, help_ in reversed(_FILTERS):
        fn = click.option(*names, multiple=True, help=help_)(fn)
    return fn


@click.command(cls=_OrderedCommand)
@click.option("--last", type=int, default=None, help="The last N matching flows of the observer's buffer "
                                                     "[default: 20, none with --follow].")
@click.option("--first", type=int, default=None, help="The first (oldest) N matching flows.")
@click.option("--all", "all_", is_flag=True, help="Every matching flow in the buffer.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new flows as they come.")
@click.option("--since", help="Flows since this time (RFC 3339) or duration ago (5m).")
@click.option("--until", help="Flows until this time or duration ago.")
@_filter_options
@click.option("--not", "not_", is_flag=True, multiple=True, help="Negate the filter flag that follows.")
@click.option("-o", "--output", type=click.Choice(["compact", "json", "jsonpb", "table"]), default="compact",
              show_default=True, help="compact: one line like Hubble's; json/jsonpb: one Hubble JSON object per "
                                      "line; table: columns.")
@click.option("--print-raw-filters", is_flag=True, help="Print the allow and deny filter lists and exit.")
@click.pass_context
def observe(ctx: click.Context, last, first, all_, follow, since, until, output, print_raw_filters, **_filters):
    """Show flows from the observer's buffer (and with -f, as they happen), like `hubble observe`.

    Filters of different kinds must all match; repeating one kind matches any of its values;
    two-sided filters (--pod, --ip, --label, --port, --identity, --namespace) match either
    end. --not negates the filter that follows it.
    """
    from pylium.plugins.observability.filters import FilterBuilder, FilterError

    builder = FilterBuilder()
    try:
        for flag, value in _ordered_filters(ctx.meta.get("raw_args", [])):
            builder.add(flag, value)
    except FilterError as e:
        fail(str(e))
    allow, deny = builder.lists()
    import msgspec

    if print_raw_filters:
        click.echo(json.dumps({"allowlist": msgspec.to_builtins(allow), "denylist": msgspec.to_builtins(deny)},
                              indent=2))
        return
    if sum(x is not None and x is not False for x in (last, first, all_ or None)) > 1:
        fail("use only one of --last, --first and --all")
    number = 0 if all_ else first if first is not None else last if last is not None else (0 if follow else 20)
    body = {"number": number, "first": first is not None, "follow": follow, "since": _timestamp(since, "--since"),
            "until": _timestamp(until, "--until"), "whitelist": msgspec.to_builtins(allow),
            "blacklist": msgspec.to_builtins(deny)}
    show = {"compact": render.compact, "table": render.table}.get(output, lambda r: json.dumps(r))
    if output == "table":
        click.echo(render.table_row(render.TABLE_HEADER))
    try:
        for record in ctx.obj.stream("POST", "/v1/flows", body):
            click.echo(show(record))
    except KeyboardInterrupt:
        pass


@click.command()
@click.option("-t", "--type", "types", multiple=True,
              type=click.Choice(["drop", "trace", "policy-verdict", "l7"]), help="Only these event types.")
@click.option("--from", "from_", multiple=True, type=int, help="Only events from this endpoint id.")
@click.option("--to", multiple=True, type=int, help="Only events to this endpoint id.")
@click.option("-j", "--json", "as_json", is_flag=True, help="One JSON object per event.")
@click.pass_obj
def monitor(client, types, from_, to, as_json):
    """Print datapath events as they happen (drops, traces, policy verdicts), like
    `cilium-dbg monitor`. Runs until interrupted."""
    body = {"types": list(types), "from": list(from_), "to": list(to)}
    click.echo("Listening for events... Press Ctrl-C to quit", err=True)
    try:
        for ev in client.stream("POST", "/v1/monitor", body):
            click.echo(json.dumps(ev) if as_json else render.monitor_line(ev))
    except KeyboardInterrupt:
        pass


@click.command("service-map")
@click.option("-o", "--output", type=click.Choice(["table", "json", "dot"]), default="table", show_default=True,
              help="table, json, or Graphviz dot (`| dot -Tsvg > map.svg`).")
@click.pass_obj
def service_map(client, output):
    """Workloads and who talks to whom: flows aggregated into edges (source -> destination,
    port, protocol, flows per verdict) since the agent started."""
    data = client.get("/v1/service-map")
    if output == "json":
        click.echo(json.dumps(data, indent=2))
    elif output == "dot":
        from pylium.plugins.observability.servicemap import to_dot

        click.echo(to_dot(data), nl=False)
    else:
        print_table(["SOURCE", "DESTINATION", "PORT", "PROTOCOL", "FLOWS", "VERDICTS"],
                    ([e["source"], e["destination"], e["port"] or "", e["protocol"], e["flows"],
                      ", ".join(f"{k}={v}" for k, v in sorted(e["verdicts"].items()))] for e in data["edges"]))

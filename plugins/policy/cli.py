"""`pylium policy ...`, `pylium identity ...`, `pylium bpf policy get`, `pylium bpf ct list`
(registered through the `pylium.cli` entry points)."""

from __future__ import annotations

import urllib.parse
from pathlib import Path

import click

from pylium.core.api_for_plugins import emit, fail, output_option, print_table


def _documents(files: tuple[str, ...]) -> list[dict]:
    import yaml

    docs = []
    for name in files:
        try:
            text = Path(name).read_text() if name != "-" else click.get_text_stream("stdin").read()
            docs.extend(d for d in yaml.safe_load_all(text) if d is not None)
        except OSError as e:
            fail(f"{name}: {e.strerror}")
        except yaml.YAMLError as e:
            fail(f"{name}: not YAML: {str(e).splitlines()[0]}")
    bad = [d for d in docs if not isinstance(d, dict)]
    if bad:
        fail(f"{', '.join(files)}: every document must be a mapping (a Kubernetes object)")
    return docs


@click.group()
def policy() -> None:
    """Network policies: CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy, NetworkPolicy."""


@policy.command("import")
@click.argument("files", nargs=-1, required=True)
@click.pass_obj
def policy_import(client, files: tuple[str, ...]) -> None:
    """Import the policies in FILES (YAML, several documents each; - reads stdin): all of
    them or, if one is invalid, none. Prints the new revision."""
    answer = client.call("POST", "/v1/policy", {"documents": _documents(files), "origin": ", ".join(files)})
    click.echo(f"Revision: {answer['revision']}")


@policy.command("validate")
@click.argument("files", nargs=-1, required=True)
@click.pass_obj
def policy_validate(client, files: tuple[str, ...]) -> None:
    """Check the policies in FILES as import would, applying nothing."""
    answer = client.call("POST", "/v1/policy/validate", {"documents": _documents(files), "origin": ", ".join(files)})
    click.echo(f"Valid: {', '.join(answer['policies'])}")


@policy.command("delete")
@click.argument("name", required=False)
@click.option("-n", "--namespace", default="default", show_default=True, help="Namespace of the policy.")
@click.option("--all", "all_", is_flag=True, help="Delete every imported policy.")
@click.pass_obj
def policy_delete(client, name: str | None, namespace: str, all_: bool) -> None:
    """Delete an imported policy by NAME, or --all of them. Prints the new revision."""
    if bool(name) == all_:
        fail("give a policy NAME or --all (not both)")
    query = "all=true" if all_ else urllib.parse.urlencode({"name": name, "namespace": namespace})
    answer = client.call("DELETE", f"/v1/policy?{query}")
    click.echo(f"Revision: {answer['revision']}")


@policy.command("get")
@output_option
@click.pass_obj
def policy_get(client, output: str) -> None:
    """The policies in force (-o yaml prints them as written)."""
    data = client.get("/v1/policy")
    if output == "yaml":
        import yaml

        click.echo(yaml.safe_dump_all([p["document"] for p in data["policies"]], sort_keys=False), nl=False)
        return
    emit(data, output, lambda d: print_table(
        ["ID", "KIND", "NAMESPACE", "NAME", "SOURCE", "AUDIT"],
        ([p["id"], p["kind"], p["namespace"], p["name"], p["origin"], "yes" if p["audit"] else ""]
         for p in d["policies"]), title=f"Revision: {d['revision']}"))


@policy.command("wait")
@click.argument("revision", type=int)
@click.option("--timeout", type=float, default=30, show_default=True, help="Seconds to wait.")
@click.pass_obj
def policy_wait(client, revision: int, timeout: float) -> None:
    """Wait until REVISION is in force on every endpoint of this node."""
    answer = client.call("GET", f"/v1/policy/wait?revision={revision}&timeout={timeout}")
    click.echo(f"Revision {answer['revision']} realized")


@policy.command("trace")
@click.option("--src-endpoint", type=int, help="Source: a local endpoint id.")
@click.option("--src-labels", "-s", multiple=True,
              help="Source labels (key=value, repeatable; source k8s: and namespace default unless given).")
@click.option("--src-identity", type=int, help="Source: a security identity.")
@click.option("--dst-endpoint", type=int, help="Destination: a local endpoint id.")
@click.option("--dst-labels", "-d", multiple=True, help="Destination labels (key=value, repeatable).")
@click.option("--dst-identity", type=int, help="Destination: a security identity.")
@click.option("--dport", default="0/ANY", show_default=True, help="Destination port and protocol: 80/TCP.")
@click.option("--http-method", help="L7: an HTTP request with this method (GET when only other --http-* are given).")
@click.option("--http-path", help="L7: the request's path (with any query string), e.g. /api/x.")
@click.option("--http-host", help="L7: the request's Host header.")
@click.option("--http-header", "http_headers", multiple=True, help="L7: a request header, Name: value (repeatable).")
@output_option
@click.pass_obj
def policy_trace(client, src_endpoint, src_labels, src_identity, dst_endpoint, dst_labels, dst_identity,
                 dport: str, http_method, http_path, http_host, http_headers, output: str) -> None:
    """Would SRC reach DST on --dport? The verdict of egress and ingress policy and the rules
    that decide it, computed by the code that fills the BPF maps; with --http-* options also
    whether the L7 proxy lets that request through. Exit 1 when denied."""
    body = {"src_endpoint": src_endpoint, "src_labels": list(src_labels) or None, "src_identity": src_identity,
            "dst_endpoint": dst_endpoint, "dst_labels": list(dst_labels) or None, "dst_identity": dst_identity,
            "dport": dport, "http_method": http_method, "http_path": http_path, "http_host": http_host,
            "http_headers": list(http_headers) or None}
    answer = client.call("POST", "/v1/policy/trace", {k: v for k, v in body.items() if v is not None})

    def show(a):
        click.echo(f"Tracing from identity {a['src_identity']} to identity {a['dst_identity']} on {dport}")
        for step in a["steps"]:
            rules = ", ".join(step["rules"]) or ("default deny" if step["verdict"] != "allowed"
                                                 and step["enforced"] else "not enforced")
            click.echo(f"  {step['direction']:7} of {step['endpoint']}: {step['verdict'].upper()} ({rules})")
            if "proxy_port" in step:
                click.echo(f"    redirected to the L7 proxy (port {step['proxy_port']})")
            if "l7" in step:
                l7 = step["l7"]
                click.echo(f"    HTTP {http_method or 'GET'} {http_path or '/'}: {l7['verdict'].upper()} "
                           f"({', '.join(l7['rules']) or 'no L7 rule matches'})")
        click.echo(f"Final verdict: {a['verdict'].upper()}")

    emit(answer, output, show)
    if answer["verdict"] == "denied":
        raise SystemExit(1)


@click.group()
def identity() -> None:
    """Security identities: label sets and their numbers."""


@identity.command("list")
@output_option
@click.pass_obj
def identity_list(client, output: str) -> None:
    """Every identity this node knows: ID, LABELS."""
    emit(client.get("/v1/identity"), output, lambda rows: print_table(
        ["ID", "LABELS", "TYPE"], ([r["id"], "\n".join(r["labels"]), r["type"]] for r in rows)))


@identity.command("get")
@click.argument("number")
@output_option
@click.pass_obj
def identity_get(client, number: str, output: str) -> None:
    """One identity's labels."""
    emit(client.get(f"/v1/identity/{urllib.parse.quote(number)}"), output, lambda r: print_table(
        ["ID", "LABELS", "TYPE"], [[r["id"], "\n".join(r["labels"]), r["type"]]]))


@click.group("policy")
def bpf_policy() -> None:
    """The policy map: what endpoints may exchange with whom."""


@bpf_policy.command("get")
@click.argument("endpoint", required=False)
@click.option("--all", "all_", is_flag=True, help="Every endpoint.")
@output_option
@click.pass_obj
def bpf_policy_get(client, endpoint: str | None, all_: bool, output: str) -> None:
    """Entries of ENDPOINT's policy (or --all): DIRECTION, IDENTITY, LABELS, PORT/PROTO, ACTION, RULES."""
    if bool(endpoint) == all_:
        fail("give an ENDPOINT id or --all")
    path = "/v1/bpf/policy" + ("" if all_ else f"?endpoint={urllib.parse.quote(endpoint)}")
    emit(client.get(path), output, lambda rows: print_table(
        ["ENDPOINT", "DIRECTION", "IDENTITY", "LABELS", "PORT/PROTO", "ACTION", "RULES"],
        ([r["endpoint"], r["direction"].capitalize(), r["identity"], "\n".join(r["labels"]), r["port"],
          r["action"] + (" (audit)" if r["audit"] else ""), ", ".join(r["rules"])] for r in rows)))


@click.group("ct")
def bpf_ct() -> None:
    """The connection table policy keeps (replies of allowed connections pass)."""


@bpf_ct.command("list")
@output_option
@click.pass_obj
def bpf_ct_list(client, output: str) -> None:
    """Connections: SOURCE, DESTINATION, PROTOCOL, IDLE, CHECKS passed."""
    emit(client.get("/v1/bpf/ct"), output, lambda rows: print_table(
        ["SOURCE", "DESTINATION", "PROTOCOL", "IDLE", "CHECKS"],
        ([f"{r['source']}:{r['source_port']}", f"{r['destination']}:{r['destination_port']}", r["protocol"],
          f"{r['idle_seconds']}s", ",".join(r["checks"])] for r in rows)))


@click.command("config")
@click.argument("endpoint_id", type=int)
@click.argument("options", nargs=-1, required=True)
@click.pass_obj
def endpoint_config(client, endpoint_id: int, options: tuple[str, ...]) -> None:
    """Set endpoint options: PolicyAuditMode=Enabled|Disabled (report what policy would deny
    instead of dropping it)."""
    body = {}
    for option in options:
        key, sep, value = option.partition("=")
        if not sep:
            fail(f"{option!r}: expected OPTION=VALUE, e.g. PolicyAuditMode=Enabled")
        body[key] = value
    answer = client.call("POST", f"/v1/policy/endpoints/{endpoint_id}/config", body)
    click.echo(f"Endpoint {answer['id']}: PolicyAuditMode={answer['PolicyAuditMode']}")


@click.group()
def fqdn() -> None:
    """DNS-based policy (toFQDNs): what pods looked up."""


@fqdn.group("cache")
def fqdn_cache() -> None:
    """The names pods looked up and the addresses toFQDNs allows for them."""


@fqdn_cache.command("list")
@click.option("-e", "--endpoint", help="Only lookups of this endpoint id.")
@click.option("-p", "--matchpattern", help="Only names matching this pattern (toFQDNs matchPattern syntax).")
@output_option
@click.pass_obj
def fqdn_cache_list(client, endpoint, matchpattern, output: str) -> None:
    """Cached lookups: endpoint, source, name, TTL, expiration and addresses (as cilium-dbg)."""
    query = urllib.parse.urlencode({k: v for k, v in (("endpoint", endpoint), ("matchpattern", matchpattern)) if v})
    rows = client.get("/v1/fqdn/cache" + (f"?{query}" if query else ""))
    emit(rows, output, lambda rs: print_table(
        ["Endpoint", "Source", "FQDN", "TTL", "ExpirationTime", "IPs"],
        [[r["endpoint-id"], r["source"], r["fqdn"], r["ttl"], r["expiration-time"], ",".join(r["ips"])] for r in rs]))

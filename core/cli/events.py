"""`pylium events`: stream the agent's event bus (plain pyzmq, like any outside subscriber)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import click

from pylium.core.cli.output import EXIT_UNREACHABLE, fail


def _format_time(ns: int) -> str:
    t = time.gmtime(ns / 1e9)
    return time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{(ns // 1_000_000) % 1000:03d}Z"


def _compact(topic: str, header: dict, payload) -> str:
    tag = " [replay]" if header.get("replay") else ""
    key = f" {header['key']}@{header['rev']}" if header.get("key") is not None else ""
    body = json.dumps(payload, separators=(",", ":"))
    return (f"{_format_time(header.get('time', 0))} {topic} {header.get('source')}@{header.get('node')}"
            f"#{header.get('seq')}{tag}{key} {body}")


@click.command()
@click.argument("prefixes", nargs=-1, metavar="[TOPIC-PREFIX]...")
@click.option("-o", "--output", type=click.Choice(["compact", "json"]), default="compact",
              help="compact: one readable line per event; json: one JSON object per line.")
@click.option("--count", type=int, default=0, help="Exit after this many events (0: follow until Ctrl-C).")
@click.option("--connect", "endpoint", default=None,
              help="Bus endpoint; default ipc://<run-dir>/bus.sock. A tcp:// endpoint needs the CURVE keys.")
@click.option("--server-key", type=click.Path(exists=True, dir_okay=False),
              help="The agent's public key file (server.key) for a tcp:// endpoint.")
@click.option("--client-key", type=click.Path(exists=True, dir_okay=False),
              help="This client's secret key file (*.key_secret), whose public key the agent authorised.")
@click.pass_context
def events(ctx: click.Context, prefixes, output, count, endpoint, server_key, client_key) -> None:
    """Stream events from the bus, optionally only topics starting with TOPIC-PREFIX.

    State families are replayed first (marked [replay]), then `<family>.synced`, then live
    events. Lost events (sequence gaps) are reported on stderr.
    """
    import zmq

    run_dir = Path(ctx.obj.socket_path).parent
    if endpoint is None:
        path = run_dir / "bus.sock"
        if not path.exists():
            fail(f"no pylium agent is running (no bus socket at {path})", EXIT_UNREACHABLE)
        if not os.access(path, os.W_OK):
            fail(f"permission denied on {path} (the bus is root-only)", EXIT_UNREACHABLE)
        endpoint = f"ipc://{path}"
    sock = zmq.Context.instance().socket(zmq.SUB)
    if endpoint.startswith("tcp://"):
        if not (server_key and client_key):
            fail("a tcp:// endpoint needs --server-key and --client-key (CURVE)")
        import zmq.auth

        server_public, _ = zmq.auth.load_certificate(server_key)
        public, secret = zmq.auth.load_certificate(client_key)
        if secret is None:
            fail(f"{client_key} holds no secret key")
        sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = server_public, public, secret
    sock.connect(endpoint)
    for prefix in prefixes or ("",):
        sock.subscribe(prefix.encode())
    last: dict[tuple, int] = {}
    seen = 0
    try:
        while not count or seen < count:
            frames = sock.recv_multipart()
            try:
                topic, header, payload = frames[0].decode(), json.loads(frames[1]), json.loads(frames[2])
            except (ValueError, IndexError):
                click.echo(f"!! undecodable message of {len(frames)} frames", err=True)
                continue
            seen += 1
            if not header.get("replay"):
                stream = (header.get("node"), header.get("source"), topic)
                if stream in last and header.get("seq", 0) > last[stream] + 1:
                    click.echo(f"!! lost {header['seq'] - last[stream] - 1} {topic} events from "
                               f"{header.get('source')}@{header.get('node')}", err=True)
                last[stream] = header.get("seq", 0)
            if output == "json":
                click.echo(json.dumps({"topic": topic, "header": header, "payload": payload}))
            else:
                click.echo(_compact(topic, header, payload))
            sys.stdout.flush()
    except KeyboardInterrupt:
        pass
    finally:
        sock.close(0)

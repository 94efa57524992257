"""A span receiver for tests (no tracing backend installs here): OTLP over HTTP
(`POST /v1/traces`, protobuf) and Zipkin v2 (`POST /api/v2/spans`, JSON). Each request body is
written to OUT as otlp-<n>.bin or zipkin-<n>.json; tests decode them with the official
OpenTelemetry protobuf definitions.

    python -m pylium.testing.trace_receiver --port 14318 --out DIR    # prints "ready"
"""

from __future__ import annotations

import argparse
import http.server
import itertools
import socketserver
from pathlib import Path

PATHS = {"/v1/traces": "otlp-{}.bin", "/api/v2/spans": "zipkin-{}.json"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--address", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    counter = itertools.count()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            name = PATHS.get(self.path.split("?")[0])
            if name is None:
                self.send_response(404)
            else:
                path = args.out / name.format(next(counter))
                path.with_suffix(".tmp").write_bytes(body)
                path.with_suffix(".tmp").replace(path)  # readers never see half a body
                self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *a):
            pass

    class Server(socketserver.ThreadingMixIn, socketserver.TCPServer):
        allow_reuse_address = True
        daemon_threads = True

    server = Server((args.address, args.port), Handler)
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()

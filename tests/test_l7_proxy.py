"""L7 policy with real pods: connections redirected in BPF (bpf_sk_assign) to pylium's HTTP
proxy process, requests checked against `rules.http`, 403 `Access denied` for denied ones,
keep-alive connections checked request by request, the proxy surviving the agent."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from helpers import run_cli
from pylium.testing.lab import OUTSIDE_IP
from test_policy import PODS, import_policy, metric, reaches

L7_RULE = textwrap.dedent("""
    apiVersion: cilium.io/v2
    kind: CiliumNetworkPolicy
    metadata: {name: rule1}
    spec:
      description: L7 policy to restrict access to specific HTTP call
      endpointSelector:
        matchLabels: {org: empire, class: deathstar}
      ingress:
      - fromEndpoints:
        - matchLabels: {org: empire}
        toPorts:
        - ports:
          - {port: "80", protocol: TCP}
          rules:
            http:
            - {method: POST, path: /v1/request-landing}
            - {method: GET, path: "/public.*", headers: ["X-Token"]}
""")

# A small HTTP/1.1 server (no name lookups: pods here have no resolver). It answers with the
# method, path and the client address it saw.
HTTP_SERVER = textwrap.dedent("""
    import http.server, json, socketserver, sys
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        def answer(self):
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else b""
            out = json.dumps({"method": self.command, "path": self.path, "body": body.decode(),
                              "client": self.client_address[0]}).encode()
            self.send_response(200)
            self.send_header("content-length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)
        do_GET = do_POST = do_PUT = do_HEAD = answer
        def log_message(self, *a):
            pass
    class Server(socketserver.ThreadingMixIn, socketserver.TCPServer):
        allow_reuse_address = True
        daemon_threads = True
    server = Server((sys.argv[1], int(sys.argv[2])), Handler)
    print("ready", flush=True)
    server.serve_forever()
""")

# Requests over one keep-alive connection; prints [status, body] per request as JSON.
HTTP_CLIENT = textwrap.dedent("""
    import http.client, json, sys
    ip, port, requests = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
    conn = http.client.HTTPConnection(ip, port, timeout=5)
    out = []
    for method, path, headers in requests:
        try:
            conn.request(method, path, body="x" if method in ("POST", "PUT") else None, headers=headers)
            r = conn.getresponse()
            out.append([r.status, r.read().decode(), dict((k.lower(), v) for k, v in r.getheaders())])
        except OSError as e:
            out.append([0, type(e).__name__, {}])
            conn.close()
    print(json.dumps(out))
""")


def http(lab, pod, ip: str, *requests, port: int = 80) -> list:
    reqs = [list(r) + [{}] if len(r) == 2 else list(r) for r in requests]
    out = lab.exec(pod.netns, sys.executable, "-c", HTTP_CLIENT, ip, str(port), json.dumps(reqs), timeout=60)
    return json.loads(out.stdout)


def serve_http(lab, pod, port: int = 80) -> subprocess.Popen:
    proc = subprocess.Popen(["ip", "netns", "exec", pod.netns, sys.executable, "-c", HTTP_SERVER, pod.ip, str(port)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    lab.servers = getattr(lab, "servers", []) + [proc]
    return proc


@pytest.fixture
def empire(lab):
    lab.manifests.joinpath("pods.yaml").write_text(PODS)
    agent = lab.start_agent()
    pods = {name: lab.pod(name[:2], k8s_namespace="default", k8s_pod_name=name)
            for name in ("deathstar", "tiefighter", "xwing")}
    serve_http(lab, pods["deathstar"])
    yield lab, agent, pods
    for proc in getattr(lab, "servers", []):
        proc.kill()


def wait_for_proxy(lab, pod, ip: str, timeout: float = 20) -> None:
    """The proxy process starts in the background once L7 rules exist."""
    deadline = time.monotonic() + timeout
    while http(lab, pod, ip, ("POST", "/v1/request-landing"))[0][0] != 200:
        assert time.monotonic() < deadline, (lab.dirs.run_dir / "l7proxy.log").read_text()
        time.sleep(0.2)


def test_star_wars_l7_landing_allowed_exhaust_port_denied_xwing_dropped(empire, tmp_path):
    lab, _, pods = empire
    death = pods["deathstar"]
    import_policy(lab, tmp_path, L7_RULE)
    wait_for_proxy(lab, pods["tiefighter"], death.ip)
    # one keep-alive connection: each request is checked on its own
    landing, exhaust, public, no_token, again = http(
        lab, pods["tiefighter"], death.ip, ("POST", "/v1/request-landing"), ("PUT", "/v1/exhaust-port"),
        ("GET", "/public/x", {"X-Token": "1"}), ("GET", "/public/x"), ("POST", "/v1/request-landing"))
    assert landing[0] == 200 and json.loads(landing[1])["path"] == "/v1/request-landing"
    assert exhaust[0] == 403 and exhaust[1] == "Access denied\r\n"
    assert exhaust[2]["content-length"] == "15" and exhaust[2]["content-type"] == "text/plain"
    assert public[0] == 200, "a regex path and a header that must be present"
    assert no_token[0] == 403
    assert again[0] == 200, "the connection goes on after a denied request"
    # path regexes match the whole path; methods too
    assert [r[0] for r in http(lab, pods["tiefighter"], death.ip, ("POST", "/v1/request-landing/x"),
                                ("GET", "/v1/request-landing"))] == [403, 403]
    # the alliance is dropped at L3, before any proxy
    assert not reaches(lab, pods["xwing"], death.ip, 80)
    # the L4 verdict of the redirected connection
    flows = observe(lab, "--verdict", "REDIRECTED")
    assert any(f.get("source", {}).get("pod_name") == "tiefighter" for f in flows)
    # L7 flows: the denied request, then the proxy's 403 going back
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    traceparent = f"00-{trace}-00f067aa0ba902b7-01"
    http(lab, pods["tiefighter"], death.ip, ("PUT", "/v1/exhaust-port", {"traceparent": traceparent}))
    deadline = time.monotonic() + 10
    while not (denied := [f for f in observe(lab, "--type", "l7", "--http-method", "PUT")
                          if f.get("trace_context")]) and time.monotonic() < deadline:
        time.sleep(0.2)
    request = next(f for f in denied if f["l7"]["type"] == "REQUEST")
    response = next(f for f in denied if f["l7"]["type"] == "RESPONSE")
    assert request["verdict"] == "DROPPED" and request["Type"] == "L7" and request["event_type"]["type"] == 129
    assert request["l7"]["http"]["protocol"] == "HTTP/1.1" and request["l7"]["http"]["url"].endswith("/v1/exhaust-port")
    assert request["source"]["pod_name"] == "tiefighter" and request["destination"]["pod_name"] == "deathstar"
    assert request["traffic_direction"] == "INGRESS"
    assert response["verdict"] == "FORWARDED" and response["l7"]["http"]["code"] == 403 and response["is_reply"]
    assert response["l7"]["latency_ns"] > 0 and response["source"]["pod_name"] == "deathstar"
    assert request["trace_context"]["parent"]["trace_id"] == response["trace_context"]["parent"]["trace_id"] == trace
    # filters and Hubble's compact lines
    assert all(f["l7"]["http"]["code"] == 403 for f in observe(lab, "--http-status", "4+"))
    assert observe(lab, "--http-status", "4+") and not observe(lab, "--http-status", "5+")
    assert all("/public" in f["l7"]["http"]["url"] for f in observe(lab, "--http-path", "^/public"))
    lines = run_cli(lab.dirs, "observe", "--all", "--type", "l7", "--http-method", "PUT").stdout.splitlines()
    assert any(f"http-request DROPPED (HTTP/1.1 PUT http://{death.ip}/v1/exhaust-port)" in x for x in lines), lines
    assert any("http-response FORWARDED (HTTP/1.1 403 " in x and "ms (PUT http://" in x for x in lines), lines
    # the service map has the HTTP edge, with its requests
    edges = json.loads(run_cli(lab.dirs, "service-map", "-o", "json").stdout)["edges"]
    edge = next(e for e in edges if e["protocol"] == "HTTP")
    assert (edge["source"], edge["destination"], edge["port"]) == ("default/tiefighter", "default/deathstar", 80)
    assert edge["http"]["PUT /v1/exhaust-port 403"] >= 2 and edge["http"]["POST /v1/request-landing 200"] >= 2
    # policy trace answers for the request, as the proxy decided it
    def trace(method, path):
        return run_cli(lab.dirs, "policy", "trace", "--src-endpoint", str(pods["tiefighter"].endpoint["id"]),
                       "--dst-endpoint", str(death.endpoint["id"]), "--dport", "80/TCP", "--http-method", method,
                       "--http-path", path)

    out = trace("PUT", "/v1/exhaust-port")
    assert out.returncode == 1 and "HTTP PUT /v1/exhaust-port: DENIED" in out.stdout, out.stdout + out.stderr
    assert "Final verdict: DENIED" in out.stdout and "redirected to the L7 proxy" in out.stdout
    out = trace("POST", "/v1/request-landing")
    assert out.returncode == 0 and "HTTP POST /v1/request-landing: ALLOWED (CiliumNetworkPolicy/default/rule1)" \
        in out.stdout, out.stdout
    # metrics
    assert metric(lab, "cilium_policy_l7_total", rule="denied", proxy_type="envoy") >= 5
    assert metric(lab, "hubble_http_requests_total", method="PUT", status="403", reporter="server") >= 2
    assert metric(lab, "hubble_http_request_duration_seconds_count", method="POST", reporter="server") >= 1


def observe(lab, *args: str) -> list[dict]:
    out = run_cli(lab.dirs, "observe", "--all", "-o", "json", *args)
    assert out.returncode == 0, out.stderr
    return [json.loads(line)["flow"] for line in out.stdout.splitlines() if "flow" in json.loads(line)]


def test_bad_requests_get_clear_answers_and_the_proxy_serves_the_others(empire, tmp_path):
    lab, _, pods = empire
    death = pods["deathstar"]
    import_policy(lab, tmp_path, L7_RULE)
    wait_for_proxy(lab, pods["tiefighter"], death.ip)
    big, = http(lab, pods["tiefighter"], death.ip, ("GET", "/public", {"X-Token": "1", "X-Big": "x" * 70000}))
    assert big[0] == 431, big
    garbage = lab.exec(pods["tiefighter"].netns, sys.executable, "-c", RAW_CLIENT, death.ip, "80",
                       "NOT HTTP AT ALL\r\n\r\n").stdout
    assert garbage.startswith("HTTP/1.1 400"), garbage
    h2 = lab.exec(pods["tiefighter"].netns, sys.executable, "-c", RAW_CLIENT, death.ip, "80",
                  "PRI * HTTP/2.0\\r\\n\\r\\nSM\\r\\n\\r\\n").stdout
    assert h2.startswith("HTTP/1.1 505"), h2
    assert http(lab, pods["tiefighter"], death.ip, ("POST", "/v1/request-landing"))[0][0] == 200


RAW_CLIENT = textwrap.dedent("""
    import socket, sys
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
    s.sendall(sys.argv[3].encode().decode("unicode_escape").encode())
    print(s.recv(4096).decode(errors="replace"))
""")


# One keep-alive connection: a request, then one more after each line read from stdin.
KEEPALIVE = textwrap.dedent("""
    import http.client, sys
    conn = http.client.HTTPConnection(sys.argv[1], 80, timeout=5)
    for line in sys.stdin:
        method, path = line.split()
        conn.request(method, path, body="x" if method in ("POST", "PUT") else None)
        r = conn.getresponse()
        r.read()
        print(r.status, conn.sock.getsockname()[1], flush=True)
""")


def test_the_proxy_keeps_serving_while_the_agent_is_killed(empire, tmp_path):
    lab, agent, pods = empire
    death = pods["deathstar"]
    import_policy(lab, tmp_path, L7_RULE)
    wait_for_proxy(lab, pods["tiefighter"], death.ip)
    pid = int((lab.dirs.run_dir / "l7proxy.pid").read_text())
    held = subprocess.Popen(["ip", "netns", "exec", pods["tiefighter"].netns, sys.executable, "-c", KEEPALIVE,
                             death.ip], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def ask(line: str) -> tuple[int, str]:
        held.stdin.write(line + "\n")
        held.stdin.flush()
        status, port = held.stdout.readline().split()
        return int(status), port

    status, port = ask("POST /v1/request-landing")
    assert status == 200
    agent.stop(signal.SIGKILL)
    assert ask("PUT /v1/exhaust-port") == (403, port), "the held connection is still checked by the proxy"
    assert ask("POST /v1/request-landing") == (200, port)
    # the proxy is its own process: requests are still checked while no agent runs
    assert [r[0] for r in http(lab, pods["tiefighter"], death.ip, ("POST", "/v1/request-landing"),
                                ("PUT", "/v1/exhaust-port"))] == [200, 403]
    lab.start_agent()
    assert int((lab.dirs.run_dir / "l7proxy.pid").read_text()) == pid, "the new agent adopts the running proxy"
    assert [r[0] for r in http(lab, pods["tiefighter"], death.ip, ("PUT", "/v1/exhaust-port"))] == [403]
    assert ask("POST /v1/request-landing") == (200, port), "the held connection outlived the agent"
    held.stdin.close()
    held.wait(10)
    # a proxy that dies is started again by the agent
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while True:
        pid_file = lab.dirs.run_dir / "l7proxy.pid"
        new_pid = int(pid_file.read_text()) if pid_file.exists() else pid
        if new_pid != pid and http(lab, pods["tiefighter"], death.ip, ("PUT", "/v1/exhaust-port"))[0][0] == 403:
            break
        assert time.monotonic() < deadline
        time.sleep(0.2)


SEED_PODS = textwrap.dedent("""
    apiVersion: v1
    kind: Pod
    metadata: {name: web, labels: {app: web-server}}
    ---
    apiVersion: v1
    kind: Pod
    metadata: {name: client, labels: {app: client}}
    ---
    apiVersion: v1
    kind: Pod
    metadata: {name: other, labels: {app: other}}
""")
SEED_L7 = textwrap.dedent("""
    apiVersion: "cilium.io/v2"
    kind: CiliumNetworkPolicy
    metadata:
      name: "l7-http-policy"
    spec:
      endpointSelector:
        matchLabels:
          app: web-server
      ingress:
      - fromEndpoints:
        - matchLabels:
            app: client
        toPorts:
        - ports:
          - port: "80"
            protocol: TCP
          rules:
            http:
            - method: "GET"
              path: "/api/.*"
            - method: "POST"
              path: "/api/users"
""")


def test_the_seed_l7_http_policy(lab, tmp_path):
    lab.manifests.joinpath("pods.yaml").write_text(SEED_PODS)
    lab.manifests.joinpath("policy.yaml").write_text(SEED_L7)
    lab.start_agent()
    pods = {name: lab.pod(name, k8s_namespace="default", k8s_pod_name=name) for name in ("web", "client", "other")}
    serve_http(lab, pods["web"])
    try:
        web = pods["web"].ip
        deadline = time.monotonic() + 20
        while http(lab, pods["client"], web, ("GET", "/api/x"))[0][0] != 200:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        codes = [r[0] for r in http(lab, pods["client"], web, ("GET", "/api/v1/items"), ("POST", "/api/users"),
                                    ("POST", "/api/items"), ("GET", "/admin"), ("DELETE", "/api/users"))]
        assert codes == [200, 200, 403, 403, 403]
        assert not reaches(lab, pods["other"], web, 80), "other pods are dropped at L3"
    finally:
        for proc in getattr(lab, "servers", []):
            proc.kill()


EGRESS_L7 = textwrap.dedent("""
    apiVersion: cilium.io/v2
    kind: CiliumNetworkPolicy
    metadata: {name: tiefighter-out}
    spec:
      endpointSelector:
        matchLabels: {class: tiefighter}
      egress:
      - toCIDR: [10.250.0.2/32]
        toPorts:
        - ports:
          - {port: "8080", protocol: TCP}
          rules:
            http:
            - {method: GET, path: /ok}
""")


def test_egress_http_rules_to_a_server_outside_the_node(empire, tmp_path):
    lab, _, pods = empire
    proc = subprocess.Popen(["ip", "netns", "exec", lab.out_ns, sys.executable, "-c", HTTP_SERVER, OUTSIDE_IP,
                             "8080"], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    lab.servers = getattr(lab, "servers", []) + [proc]
    import_policy(lab, tmp_path, EGRESS_L7)
    deadline = time.monotonic() + 20
    while http(lab, pods["tiefighter"], OUTSIDE_IP, ("GET", "/ok"), port=8080)[0][0] != 200:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    ok, denied = http(lab, pods["tiefighter"], OUTSIDE_IP, ("GET", "/ok"), ("GET", "/no"), port=8080)
    assert json.loads(ok[1])["path"] == "/ok" and denied[0] == 403
    flows = [f for f in observe(lab, "--type", "l7", "--http-path", "^/no$") if f["l7"]["type"] == "REQUEST"]
    assert flows and flows[0]["traffic_direction"] == "EGRESS" and flows[0]["verdict"] == "DROPPED"
    assert flows[0]["source"]["pod_name"] == "tiefighter"
    assert metric(lab, "hubble_http_requests_total", method="GET", status="200", reporter="client") >= 1


@pytest.mark.parametrize("exporter, path", [("otlp", "/v1/traces"), ("zipkin", "/api/v2/spans")])
def test_spans_of_proxied_requests_are_exported_under_the_callers_trace(lab, tmp_path, exporter, path):
    spans_dir = tmp_path / "spans"
    spans_dir.mkdir()
    receiver = subprocess.Popen(["nsenter", f"--net=/var/run/netns/{lab.node_ns}", sys.executable, "-m",
                                 "pylium.testing.trace_receiver", "--port", "14318", "--out", str(spans_dir)],
                                stdout=subprocess.PIPE, text=True)
    assert receiver.stdout.readline().strip() == "ready"
    lab.servers = [receiver]
    lab.manifests.joinpath("pods.yaml").write_text(PODS)
    lab.manifests.joinpath("policy.yaml").write_text(L7_RULE)
    lab.start_agent("--set", "tracing.enabled=true", "--set", f"tracing.exporter={exporter}",
                    "--set", f"tracing.endpoint=http://127.0.0.1:14318{path}")
    pods = {name: lab.pod(name[:2], k8s_namespace="default", k8s_pod_name=name)
            for name in ("deathstar", "tiefighter")}
    try:
        serve_http(lab, pods["deathstar"])
        wait_for_proxy(lab, pods["tiefighter"], pods["deathstar"].ip)
        trace, parent = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
        http(lab, pods["tiefighter"], pods["deathstar"].ip,
             ("PUT", "/v1/exhaust-port", {"traceparent": f"00-{trace}-{parent}-01"}))
        deadline = time.monotonic() + 15
        while not (spans := [s for s in _spans(spans_dir, exporter) if s["trace_id"] == trace]):
            assert time.monotonic() < deadline, "no span arrived"
            time.sleep(0.2)
        span = spans[0]
        assert span["parent_id"] == parent and span["name"].upper() == "HTTP PUT"
        assert span["status_code"] == "403" and span["verdict"] == "DROPPED"
    finally:
        for proc in getattr(lab, "servers", []):
            proc.kill()


def _spans(directory, exporter: str) -> list[dict]:
    """Received spans, decoded: OTLP with the official protobuf definitions, Zipkin as JSON."""
    out = []
    if exporter == "otlp":
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        for f in sorted(directory.glob("otlp-*.bin")):
            request = ExportTraceServiceRequest.FromString(f.read_bytes())
            for rs in request.resource_spans:
                for ss in rs.scope_spans:
                    for span in ss.spans:
                        attrs = {a.key: a.value for a in span.attributes}
                        out.append({"trace_id": span.trace_id.hex(), "parent_id": span.parent_span_id.hex(),
                                    "name": span.name,
                                    "status_code": str(attrs["http.response.status_code"].int_value),
                                    "verdict": attrs["pylium.verdict"].string_value})
    else:
        for f in sorted(directory.glob("zipkin-*.json")):
            for span in json.loads(f.read_text()):
                tags = span.get("tags", {})
                out.append({"trace_id": span["traceId"], "parent_id": span.get("parentId", ""),
                            "name": span["name"], "status_code": tags.get("http.response.status_code"),
                            "verdict": tags.get("pylium.verdict")})
    return out

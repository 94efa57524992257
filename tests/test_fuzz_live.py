"""Fuzzing a live agent's control API: hostile bodies (wrong types, nesting deeper than the
interpreter's limit, not JSON, oversized) on every route that takes one. Each answer is a
success or a 4xx with a JSON error, never a 500; afterwards the agent is healthy, no endpoint
or address came or went, and its pod still reaches the node."""

from __future__ import annotations

import http.client
import json

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pylium.core.cli.client import _UnixConnection

KEYS = ["container_id", "ifname", "netns", "labels", "add", "remove", "args", "kind", "metadata", "spec", "name",
        "namespace", "specs", "from", "to", "src", "dst", "dport", "protocol", "http", "ips", "names", "ttl",
        "endpointSelector", "ingress", "egress", "toPorts", "rules", "policyAuditMode", "enforcement", "count"]
LEAF = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(), st.text(max_size=12),
                 st.sampled_from(["", "\x00", "eth0", "/var/run/netns/none", "10.0.0.1", "any:app=x", "*"]))
VALUE = st.recursive(LEAF, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    st.sampled_from(KEYS) | st.text(max_size=6), inner, max_size=5), max_leaves=15)
BODY = st.one_of(
    VALUE.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(st.sampled_from(KEYS), VALUE, max_size=6).map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=64),
    st.sampled_from([b"[" * 100_000, b'{"a":' * 50_000, b"\xff\xfe", b"", b"null", b'"x"', b"1e999",
                     b'{"labels": {"a": "' + b"x" * 2_000_000 + b'"}}']))
ROUTES = ["/v1/cni/add", "/v1/cni/del", "/v1/cni/check", "/v1/endpoints/{ep}/labels", "/v1/endpoints/999/labels",
          "/v1/policy", "/v1/policy/validate", "/v1/policy/trace", "/v1/policy/endpoints/{ep}/config",
          "/v1/fqdn/observe", "/v1/health/probe"]


def post(socket_path: str, path: str, body: bytes, method: str = "POST") -> tuple[int, bytes]:
    conn = _UnixConnection(socket_path, 30)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    except (BrokenPipeError, ConnectionResetError):  # the server refused the body before reading it all
        return 413, b'{"error": "refused"}'
    finally:
        conn.close()


@pytest.fixture
def live(lab):
    lab.start_agent()
    pod = lab.pod("target")
    addresses = lab.api.get("/v1/ipam?all=true")
    yield lab, pod
    assert lab.api.get("/v1/healthz") == {"status": "ok"}
    assert [e["id"] for e in lab.api.get("/v1/endpoints")] == [pod.endpoint["id"]], "no endpoint came or went"
    assert lab.api.get("/v1/ipam?all=true") == addresses, "no address was taken or leaked"
    lab.exec(pod.netns, "ping", "-c1", "-W2", "10.250.0.1")  # the pod still reaches its node


@settings(max_examples=40, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(route=st.sampled_from(ROUTES), body=BODY, method=st.sampled_from(["POST", "POST", "DELETE"]))
@example(route="/v1/cni/add", body=b"[" * 100_000, method="POST")  # RecursionError: 500
@example(route="/v1/policy", body=b"[" * 100_000, method="POST")  # RecursionError: 500
def test_hostile_bodies_get_a_clear_error(live, route, body, method):
    lab, pod = live
    path = route.format(ep=pod.endpoint["id"])
    if method == "DELETE" and path != "/v1/policy":
        method = "POST"
    status, raw = post(str(lab.dirs.run_dir / "pylium.sock"), path, body, method)
    assert status < 500, (path, body[:200], raw[:500])
    if status >= 400:
        assert "error" in json.loads(raw), raw[:500]

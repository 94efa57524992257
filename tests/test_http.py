"""The agent's HTTP server (core/api/http.py) as clients see it: http.client over a unix
socket, as the CLI talks to the agent, and a raw socket where the test needs the bytes."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import threading

import pytest

from pylium.core.api.http import MAX_BODY, Request, Response, Router, Server, Stream, get_status
from pylium.core.cli.client import _UnixConnection


@pytest.fixture
def served(tmp_path):
    """A server on a unix socket, run by an event loop in a thread; yields (socket path, seen)."""
    seen: dict = {"gone": asyncio.Event()}
    router = Router()

    async def echo(request: Request) -> Response:
        seen["request"] = request
        return Response.json({"id": request.match_info.get("id"), "path": request.path, "query": request.query,
                              "body": request.json()})

    async def fails(_):
        raise RuntimeError("a bug")

    async def stream(request: Request) -> Stream:
        async def lines():
            try:
                for i in range(3):
                    yield b'{"n": %d}\n' % i
                while not request.disconnected():
                    await asyncio.sleep(0.01)
                    if request.query.get("end"):
                        return
            finally:
                seen["gone"].set()

        return Stream(lines())

    router.add_get("/v1/things/{id}", echo)
    router.add_post("/v1/things/{id}", echo)
    router.add_get("/v1/fails", fails)
    router.add_get("/v1/stream", stream)
    path = tmp_path / "api.sock"
    loop = asyncio.new_event_loop()
    server = Server(router)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen(8)
    sock.setblocking(False)
    loop.run_until_complete(server.listen_unix(sock))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    seen["loop"] = loop
    yield str(path), seen
    asyncio.run_coroutine_threadsafe(server.close(), loop).result(5)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


def request(path: str, method: str, target: str, body: bytes | None = None, conn=None):
    conn = conn or _UnixConnection(path, 5)
    conn.request(method, target, body=body, headers={"Content-Type": "application/json"} if body else {})
    resp = conn.getresponse()
    return resp.status, resp.read(), resp


def test_routes_path_parameters_query_and_body(served):
    path, seen = served
    status, body, resp = request(path, "POST", "/v1/things/default%2Fweb?a=1&b=x%20y", b'{"k": [1, 2]}')
    assert status == 200 and resp.getheader("Content-Type") == "application/json"
    assert json.loads(body) == {"id": "default/web", "path": "/v1/things/default/web", "query": {"a": "1", "b": "x y"},
                                "body": {"k": [1, 2]}}, "an encoded / stays inside its path parameter"
    assert seen["request"].headers["content-type"] == "application/json"


def test_unknown_paths_methods_and_bugs_answer_json_errors(served):
    path, _ = served
    assert request(path, "GET", "/v1/nosuch")[:2] == (404, b'{"error": "Not Found"}')
    assert request(path, "DELETE", "/v1/things/1")[:2] == (405, b'{"error": "Method Not Allowed"}')
    assert request(path, "GET", "/v1/fails")[:2] == (500, b'{"error": "Internal Server Error"}')


def test_a_connection_serves_one_request_after_another(served):
    path, _ = served
    conn = _UnixConnection(path, 5)
    for i in range(3):
        status, body, _ = request(path, "GET", f"/v1/things/{i}", conn=conn)
        assert status == 200 and json.loads(body)["id"] == str(i)
    assert request(path, "HEAD", "/v1/things/1", conn=conn)[:2] == (200, b"")
    conn.close()


def test_a_body_over_the_limit_is_refused_and_the_server_goes_on(served):
    path, _ = served
    try:
        status, body, _ = request(path, "POST", "/v1/things/1", b"x" * (MAX_BODY + 1))
        assert status == 413 and "larger than" in json.loads(body)["error"]
    except (BrokenPipeError, ConnectionResetError):
        pass  # refused before the client had sent it all
    assert request(path, "GET", "/v1/things/2")[0] == 200


def test_garbage_gets_400_and_closes_the_connection(served):
    path, _ = served
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    s.settimeout(5)
    s.sendall(b"NOT HTTP AT ALL\r\n\r\n")
    answer = b""
    while chunk := s.recv(4096):  # until the server closes the connection (a timeout fails)
        answer += chunk
    s.close()
    assert answer.startswith(b"HTTP/1.1 400") and answer.endswith(b'{"error": "Bad Request"}'), answer


def test_a_stream_arrives_chunk_by_chunk_and_ends_when_the_client_leaves(served):
    path, seen = served
    status, body, _ = request(path, "GET", "/v1/stream?end=1")
    assert status == 200 and body.splitlines() == [b'{"n": 0}', b'{"n": 1}', b'{"n": 2}']
    seen["gone"].clear()
    conn = _UnixConnection(path, 5)
    conn.request("GET", "/v1/stream")
    resp = conn.getresponse()
    assert resp.getheader("Transfer-Encoding") == "chunked"
    assert resp.readline() == b'{"n": 0}\n'
    conn.close()
    resp.close()
    asyncio.run_coroutine_threadsafe(asyncio.wait_for(seen["gone"].wait(), 5), seen["loop"]).result(6)


def test_get_status_asks_a_tcp_server():
    router = Router()

    async def hello(_):
        return Response(b"Hello", content_type="text/plain")

    router.add_get("/hello", hello)

    async def main():
        server = Server(router)
        await server.listen_tcp("127.0.0.1", 0)
        port = server._servers[0].sockets[0].getsockname()[1]
        try:
            return await get_status("127.0.0.1", port, "/hello", 2), await get_status("127.0.0.1", port, "/x", 2)
        finally:
            await server.close()

    assert asyncio.run(main()) == (200, 404)

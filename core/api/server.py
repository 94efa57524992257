"""The control API: HTTP/JSON on a root-only unix socket, described in core/openapi.yaml."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from pylium.core.api import routes as api_endpoints
from pylium.core.api.http import Request, Response, Router, Server, Stream
from pylium.core.plugin_api import ApiError, ApiRequest, ApiRoute, EndpointError, Health

if TYPE_CHECKING:
    from pylium.core.agent.agent import Agent

OPENAPI_PATH = Path(__file__).with_name("openapi.yaml")
SOCKET_MODE = 0o660


def _errors_as_json(agent: Agent):
    def answer(e: Exception) -> Response:
        if isinstance(e, ApiError):
            return Response.json({"error": e.message}, e.status)
        if isinstance(e, EndpointError):
            return Response.json({"error": e.message, "code": e.code}, e.status)
        agent.log.error("api handler failed", exc_info=e)
        return Response.json({"error": f"{type(e).__name__}: {e}"}, 500)

    return answer


def _plugin_handler(route: ApiRoute, agent: Agent):
    async def handle(request: Request) -> Response | Stream:
        health = agent.contexts[route.plugin].health
        if health.health in (Health.STARTING, Health.STOPPED):  # its handlers need a running plugin
            raise ApiError(503, f"{route.plugin} is not running ({health.message})")
        try:
            body = request.json()
        except (ValueError, RecursionError):  # nested deeper than the interpreter's limit too
            raise ApiError(400, "request body is not valid JSON") from None
        req = ApiRequest(request.method, request.path, request.match_info, request.query, body,
                         lambda: request.disconnected())  # the server sets what tells, streams their own
        try:
            result = await route.handler(req)
        except ApiError:
            raise
        except Exception as e:  # a plugin bug must answer 500, not kill the server
            agent.log.error("api handler failed", plugin=route.plugin, path=route.path, exc_info=e)
            raise ApiError(500, f"{route.plugin}: {type(e).__name__}: {e}") from None
        if hasattr(result, "__aiter__"):
            return Stream(_ndjson(result, route, agent))
        return Response.json(result)

    return handle


async def _ndjson(items, route: ApiRoute, agent: Agent):
    """An async iterator's items as NDJSON lines; an error after the first ends the stream
    with an error line (the status is out by then)."""
    try:
        async for item in items:
            yield item if isinstance(item, bytes) else msgspec.json.encode(item) + b"\n"
    except Exception as e:
        agent.log.error("api stream failed", plugin=route.plugin, path=route.path, exc_info=e)
        yield msgspec.json.encode({"error": f"{route.plugin}: {type(e).__name__}: {e}"}) + b"\n"
    finally:
        if hasattr(items, "aclose"):
            await items.aclose()


def build_server(agent: Agent) -> Server:
    router = Router()

    async def healthz(_):
        ok = agent.state == "running"
        return Response.json({"status": "ok" if ok else agent.state}, 200 if ok else 503)

    async def status(_):
        return Response.json(agent.status())

    async def config(_):
        return Response.json(agent.config.model_dump(mode="json"))

    async def plugins(_):
        return Response.json(agent.plugin_list())

    async def openapi(_):
        return Response(OPENAPI_PATH.read_bytes(), content_type="application/yaml")

    router.add_get("/v1/healthz", healthz)
    router.add_get("/v1/status", status)
    router.add_get("/v1/config", config)
    router.add_get("/v1/plugins", plugins)
    router.add_get("/v1/openapi.yaml", openapi)
    api_endpoints.add_routes(router, agent)
    for route in agent.api_routes:
        router.add(route.method, route.path, _plugin_handler(route, agent))
    return Server(router, _errors_as_json(agent))


def bind_unix_socket(path: Path) -> socket.socket:
    """Bind a root-only stream socket: created 0660 (umask), owned by root, never world-usable."""
    if path.exists() or path.is_symlink():
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o117)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    os.chmod(path, SOCKET_MODE)
    if os.geteuid() == 0:
        os.chown(path, 0, 0)
    sock.listen(128)
    sock.setblocking(False)
    return sock


def socket_in_use(path: Path) -> bool:
    """True when another live process answers on this unix socket path."""
    if not path.exists():
        return False
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        s.close()

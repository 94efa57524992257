"""The control API: HTTP/JSON on a root-only unix socket, described in core/openapi.yaml."""

from __future__ import annotations

import contextlib
import json
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
from aiohttp import web

from pylium.core.api import routes as api_endpoints
from pylium.core.plugin_api import ApiError, ApiRequest, ApiRoute, EndpointError, Health

if TYPE_CHECKING:
    from pylium.core.agent.agent import Agent

OPENAPI_PATH = Path(__file__).with_name("openapi.yaml")
SOCKET_MODE = 0o660


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(data, default=str), status=status, content_type="application/json")


@web.middleware
async def _errors_as_json(request: web.Request, handler):
    try:
        return await handler(request)
    except ApiError as e:
        return _json({"error": e.message}, e.status)
    except EndpointError as e:
        return _json({"error": e.message, "code": e.code}, e.status)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return _json({"error": e.reason}, e.status)


def _plugin_handler(route: ApiRoute, agent: Agent):
    async def handle(request: web.Request) -> web.Response:
        health = agent.contexts[route.plugin].health
        if health.health in (Health.STARTING, Health.STOPPED):  # its handlers need a running plugin
            raise ApiError(503, f"{route.plugin} is not running ({health.message})")
        body = None
        if request.can_read_body:
            try:
                body = await request.json()
            except (ValueError, RecursionError):  # nested deeper than the interpreter's limit too
                raise ApiError(400, "request body is not valid JSON") from None
        transport = request.transport

        def disconnected() -> bool:
            return transport is None or transport.is_closing()

        req = ApiRequest(request.method, request.path, dict(request.match_info), dict(request.query), body,
                         disconnected)
        try:
            result = await route.handler(req)
        except ApiError:
            raise
        except Exception as e:  # a plugin bug must answer 500, not kill the server
            agent.log.error("api handler failed", plugin=route.plugin, path=route.path, exc_info=e)
            raise ApiError(500, f"{route.plugin}: {type(e).__name__}: {e}") from None
        if hasattr(result, "__aiter__"):
            return await _stream(request, result, route, agent)
        return _json(result)

    return handle


async def _stream(request: web.Request, items, route: ApiRoute, agent: Agent) -> web.StreamResponse:
    """Send an async iterator as NDJSON until it ends or the client goes away."""
    resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    try:
        async for item in items:
            await resp.write(item if isinstance(item, bytes) else msgspec.json.encode(item) + b"\n")
        await resp.write_eof()
    except ConnectionResetError:
        pass  # the client left
    except Exception as e:  # headers are out: end the stream with an error line
        agent.log.error("api stream failed", plugin=route.plugin, path=route.path, exc_info=e)
        with contextlib.suppress(ConnectionResetError):
            await resp.write(msgspec.json.encode({"error": f"{route.plugin}: {type(e).__name__}: {e}"}) + b"\n")
    finally:
        if hasattr(items, "aclose"):
            await items.aclose()
    return resp


def build_app(agent: Agent) -> web.Application:
    app = web.Application(middlewares=[_errors_as_json])

    async def healthz(_):
        ok = agent.state == "running"
        return _json({"status": "ok" if ok else agent.state}, 200 if ok else 503)

    async def status(_):
        return _json(agent.status())

    async def config(_):
        return _json(agent.config.model_dump(mode="json"))

    async def plugins(_):
        return _json(agent.plugin_list())

    async def openapi(_):
        return web.Response(text=OPENAPI_PATH.read_text(), content_type="application/yaml")

    app.router.add_get("/v1/healthz", healthz)
    app.router.add_get("/v1/status", status)
    app.router.add_get("/v1/config", config)
    app.router.add_get("/v1/plugins", plugins)
    app.router.add_get("/v1/openapi.yaml", openapi)
    api_endpoints.add_routes(app, agent)
    for route in agent.api_routes:
        app.router.add_route(route.method, route.path, _plugin_handler(route, agent))
    return app


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

"""The agent's side of CNI: ADD, DEL, CHECK, GC and STATUS as control-API routes, and
/v1/cni/exec, where the C plugin hands over a whole CNI command (variables in headers, the
network configuration as the body) and the same Python logic as the standalone plugin runs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import msgspec

from pylium.core.api.http import Response, Router

from pylium.core.cni import plugin as cni
from pylium.core.plugin_api import EndpointError

if TYPE_CHECKING:
    from pylium.core.endpoints.manager import EndpointManager


class CniAdd(msgspec.Struct, forbid_unknown_fields=True):
    container_id: str
    ifname: str
    netns: str
    labels: dict[str, str] = {}
    k8s_namespace: str = ""
    k8s_pod_name: str = ""
    pool: str | None = None
    mtu: int = 0


class CniRef(msgspec.Struct, forbid_unknown_fields=True):
    container_id: str
    ifname: str | None = None
    netns: str = ""


class CniGc(msgspec.Struct, forbid_unknown_fields=True):
    valid: list[tuple[str, str]]  # (container id, ifname) pairs the runtime still uses


# Headers the C CNI plugin sends (one per CNI variable) to /v1/cni/exec.
CNI_HEADERS = {"CNI_COMMAND": "X-CNI-Command", "CNI_CONTAINERID": "X-CNI-ContainerID", "CNI_NETNS": "X-CNI-Netns",
               "CNI_IFNAME": "X-CNI-Ifname", "CNI_ARGS": "X-CNI-Args", "CNI_PATH": "X-CNI-Path"}


def _json(data, status: int = 200) -> Response:
    return Response(msgspec.json.encode(data), status)


def add_routes(router: Router, endpoints: Callable[[], EndpointManager],
               not_ok: Callable[[], list[str]]) -> None:
    """`endpoints()` is the running agent's endpoint manager (it raises while the agent is not
    running); `not_ok()` names the plugins that are not healthy (CNI STATUS)."""

    async def cni_call(method: str, path: str, body) -> object:
        """The CNI operations, shared by the HTTP routes and /v1/cni/exec."""
        if path == "/v1/cni/add":
            req = msgspec.convert(body, CniAdd)
            return (await endpoints().create(**msgspec.structs.asdict(req))).as_dict()
        if path == "/v1/cni/del":
            req = msgspec.convert(body, CniRef)
            return {"deleted": [ep.id for ep in await endpoints().delete(req.container_id, req.ifname)]}
        if path == "/v1/cni/check":
            req = msgspec.convert(body, CniRef)
            return (await endpoints().check(req.container_id, req.ifname or "", req.netns)).as_dict()
        if path == "/v1/cni/gc":
            req = msgspec.convert(body, CniGc)
            return {"deleted": [ep.id for ep in await endpoints().gc({tuple(v) for v in req.valid})]}
        endpoints()  # /v1/cni/status
        bad = not_ok()
        if bad:
            raise EndpointError("not_ready", "plugins not OK: " + ", ".join(bad), 503)
        return {"status": "ok"}

    async def cni_route(request):
        body = None
        if request.method == "POST":
            try:
                body = msgspec.json.decode(request.body)
            except (msgspec.DecodeError, RecursionError) as e:  # RecursionError: nested too deep
                raise EndpointError("bad_request", f"request body: {e}") from None
        try:
            return _json(await cni_call(request.method, request.path, body))
        except msgspec.ValidationError as e:
            raise EndpointError("bad_request", f"request body: {e}") from None

    async def cni_exec(request):
        """The whole CNI command for the C plugin; answers what the plugin prints and its exit code."""
        env = {name: request.headers.get(header.lower(), "") for name, header in CNI_HEADERS.items()}
        stdin = (request.body).decode(errors="replace")

        async def call(method, path, body):
            try:
                return await cni_call(method, path, body)
            except EndpointError as e:
                raise cni.ApiFailure(e.status, e.message, {"code": e.code}) from None
            except msgspec.ValidationError as e:
                raise cni.ApiFailure(400, f"request body: {e}", {"code": "bad_request"}) from None

        try:
            out, code = await cni.run_async(env, stdin, call), 0
        except cni.CniError as e:
            out, code = cni.error_output(e, stdin), 1
        text = msgspec.json.encode(out).decode() + "\n" if out is not None else ""
        return Response(text.encode(), headers={"X-CNI-Exit": str(code)})

    r = router
    for path in ("/v1/cni/add", "/v1/cni/del", "/v1/cni/check", "/v1/cni/gc"):
        r.add_post(path, cni_route)
    r.add_get("/v1/cni/status", cni_route)
    r.add_post("/v1/cni/exec", cni_exec)

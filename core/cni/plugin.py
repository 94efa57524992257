"""`pylium-cni`: the CNI plugin a container runtime executes (CNI spec 1.1.0; reads 0.3.x,
0.4.0 and 1.0.0 configurations and answers in the version asked for).

A thin client of the agent's API: ADD returns only once the agent has fully programmed the
endpoint. This file stands alone (standard library only, no pylium import): the runtime
starts it for every pod, so `pylium install-cni` installs a copy run with `python -S`, which
starts in ~15 ms instead of ~50 ms.
"""

from __future__ import annotations

import json
import os
import socket
import sys

SUPPORTED_VERSIONS = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
DEFAULT_SOCKET = "/var/run/pylium/pylium.sock"

# CNI spec error codes, and this plugin's own (100 and up).
ERR_INCOMPATIBLE_VERSION, ERR_UNSUPPORTED_FIELD, ERR_UNKNOWN_CONTAINER = 1, 2, 3
ERR_INVALID_ENV, ERR_IO, ERR_DECODE, ERR_INVALID_CONFIG, ERR_TRY_LATER = 4, 5, 6, 7, 11
ERR_NOT_AVAILABLE = 50
ERR_INTERNAL, ERR_EXHAUSTED, ERR_IFNAME_EXISTS, ERR_CONFLICT, ERR_UNKNOWN_POOL, ERR_CHECK_FAILED = range(100, 106)

AGENT_CODES = {  # the agent's error codes -> CNI codes
    "exhausted": ERR_EXHAUSTED, "ifname_exists": ERR_IFNAME_EXISTS, "conflict": ERR_CONFLICT,
    "unknown_pool": ERR_UNKNOWN_POOL, "netns_missing": ERR_UNKNOWN_CONTAINER, "not_found": ERR_UNKNOWN_CONTAINER,
    "bad_request": ERR_INVALID_CONFIG, "not_ready": ERR_TRY_LATER, "check_failed": ERR_CHECK_FAILED,
}


class AgentUnreachable(Exception):
    """No agent answers on the API socket."""


class ApiFailure(Exception):
    """The agent answered with an error: HTTP `status`, its `message`, the decoded body."""

    def __init__(self, status: int, message: str, data=None):
        super().__init__(message)
        self.status, self.message, self.data = status, message, data


class Client:
    """HTTP/1.1 over the agent's unix socket: one request per connection. (http.client would
    pull in the email package: ~15 ms of every pod's start.)"""

    def __init__(self, socket_path: str, timeout: float):
        self.socket_path, self.timeout = socket_path, timeout

    def call(self, method: str, path: str, body=None):
        payload = json.dumps(body).encode() if body is not None else b""
        request = (f"{method} {path} HTTP/1.1\r\nHost: pylium\r\nContent-Type: application/json\r\n"
                   f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n").encode() + payload
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            try:
                s.connect(self.socket_path)
            except (FileNotFoundError, ConnectionRefusedError) as e:
                raise AgentUnreachable(f"cannot connect to {self.socket_path}: {e.strerror}") from None
            s.sendall(request)
            chunks = []
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        finally:
            s.close()
        head, _, data = b"".join(chunks).partition(b"\r\n\r\n")
        try:
            status = int(head.split(b" ", 2)[1])
        except (IndexError, ValueError):
            raise ApiFailure(0, "the agent sent no valid HTTP answer") from None
        try:
            decoded = json.loads(data) if data else None
        except ValueError:
            decoded = data.decode(errors="replace")
        if status >= 400:
            message = decoded.get("error") if isinstance(decoded, dict) else str(decoded)
            raise ApiFailure(status, message or f"HTTP {status}", decoded)
        return decoded


class CniError(Exception):
    def __init__(self, code: int, msg: str, details: str = ""):
        super().__init__(msg)
        self.code, self.msg, self.details = code, msg, details


def _version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in v.split("."))


def load_config(stdin: str) -> dict:
    try:
        conf = json.loads(stdin)
    except (ValueError, RecursionError) as e:  # RecursionError: nested deeper than json can read
        raise CniError(ERR_DECODE, "network configuration on stdin is not valid JSON", str(e)) from None
    if not isinstance(conf, dict):
        raise CniError(ERR_DECODE, "network configuration must be a JSON object")
    version = conf.get("cniVersion")
    if not isinstance(version, str) or version not in SUPPORTED_VERSIONS:
        raise CniError(ERR_INCOMPATIBLE_VERSION, f"incompatible CNI version {version!r}",
                       f"supported: {', '.join(SUPPORTED_VERSIONS)}")
    for field, kind in (("name", str), ("type", str), ("socketPath", str), ("mtu", int), ("pool", str)):
        if field in conf and not isinstance(conf[field], kind):
            raise CniError(ERR_INVALID_CONFIG, f"network configuration field {field!r} must be a {kind.__name__}",
                           f"got {conf[field]!r}")
    if not conf.get("name"):
        raise CniError(ERR_INVALID_CONFIG, "network configuration needs a 'name'")
    return conf


def _object(value, path: str) -> dict:
    """An optional JSON object of the configuration (absent: empty)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise CniError(ERR_INVALID_CONFIG, f"{path} must be an object", f"got {type(value).__name__}")
    return value


def cni_labels(conf: dict) -> dict[str, str]:
    """Labels by the CNI convention `args.cni.labels: [{"key": k, "value": v}]`."""
    labels = {}
    items = _object(_object(conf.get("args"), "args").get("cni"), "args.cni").get("labels") or []
    if not isinstance(items, list):
        raise CniError(ERR_INVALID_CONFIG, "args.cni.labels must be a list of {key, value}")
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("key"), str) or not isinstance(item.get("value", ""), str):
            raise CniError(ERR_INVALID_CONFIG, f"args.cni.labels[{i}] must be an object with string key and value")
        labels[f"cni:{item['key']}"] = item.get("value", "")
    return labels


def parse_args(text: str) -> dict[str, str]:
    """CNI_ARGS: "K1=V1;K2=V2"."""
    out = {}
    for part in (text or "").split(";"):
        if "=" in part:
            k, v = part.split("=", 1)
            out[k.strip()] = v.strip()
    return out


def result(ep: dict, version: str, netns: str) -> dict:
    old = _version_tuple(version) < (1, 0, 0)
    ips, routes = [], []
    for a in ep["addresses"]:
        v6 = a["family"] == "ipv6"
        ip = {"address": f"{a['ip']}/{128 if v6 else 32}", "gateway": a["gateway"], "interface": 1}
        if old:
            ip["version"] = "6" if v6 else "4"
        ips.append(ip)
        routes.append({"dst": "::/0" if v6 else "0.0.0.0/0", "gw": a["gateway"]})
    return {"cniVersion": version,
            "interfaces": [{"name": ep["host_ifname"], "mac": ep["host_mac"]},
                           {"name": ep["ifname"], "mac": ep["mac"], "sandbox": netns}],
            "ips": ips, "routes": routes, "dns": {}}


def _require(env: dict, *names: str) -> None:
    missing = [n for n in names if not env.get(n)]
    if missing:
        raise CniError(ERR_INVALID_ENV, f"missing environment variable {', '.join(missing)}")


async def _call(call, method: str, path: str, body=None):
    try:
        return await call(method, path, body)
    except ApiFailure as e:
        code = AGENT_CODES.get(e.data.get("code"), ERR_INTERNAL) if isinstance(e.data, dict) else ERR_INTERNAL
        raise CniError(code, e.message) from None


def queue_delete(socket_path: str, container_id: str, ifname: str) -> str:
    """The agent is down: leave the DEL on disk; the agent carries it out when it starts."""
    queue = os.path.join(os.path.dirname(socket_path), "cni-del-queue")
    os.makedirs(queue, mode=0o700, exist_ok=True)
    import hashlib  # only here: loading it costs every start ~2 ms

    name = hashlib.sha256(f"{container_id}/{ifname}".encode()).hexdigest()[:32]
    tmp = os.path.join(queue, f".{name}.tmp")
    with open(tmp, "w") as f:
        f.write(json.dumps({"container_id": container_id, "ifname": ifname}))
        f.flush()
        os.fsync(f.fileno())
    final = os.path.join(queue, f"{name}.json")
    os.replace(tmp, final)
    return final


async def run_async(env: dict, stdin: str, call) -> dict | None:
    """Carry out one CNI command through `call(method, path, body)` (the agent's API: over
    HTTP here, in-process in the agent for the C plugin). Returns what to print on success;
    raises CniError."""
    command = env.get("CNI_COMMAND", "")
    if command == "VERSION":
        return {"cniVersion": "1.1.0", "supportedVersions": SUPPORTED_VERSIONS}
    if command not in ("ADD", "DEL", "CHECK", "STATUS", "GC"):
        raise CniError(ERR_INVALID_ENV, f"unknown CNI_COMMAND {command!r}",
                       "expected one of ADD, DEL, CHECK, STATUS, GC, VERSION")
    conf = load_config(stdin)
    container_id, ifname, netns = env.get("CNI_CONTAINERID", ""), env.get("CNI_IFNAME", ""), env.get("CNI_NETNS", "")
    if command == "ADD":
        _require(env, "CNI_CONTAINERID", "CNI_IFNAME", "CNI_NETNS")
        if not os.path.exists(netns):
            raise CniError(ERR_UNKNOWN_CONTAINER, f"network namespace {netns} does not exist")
        args = parse_args(env.get("CNI_ARGS", ""))
        body = {"container_id": container_id, "ifname": ifname, "netns": netns, "labels": cni_labels(conf),
                "k8s_namespace": args.get("K8S_POD_NAMESPACE", ""), "k8s_pod_name": args.get("K8S_POD_NAME", ""),
                "pool": conf.get("pool"), "mtu": conf.get("mtu", 0)}
        return result(await _call(call, "POST", "/v1/cni/add", body), conf["cniVersion"], netns)
    if command == "DEL":
        _require(env, "CNI_CONTAINERID")  # CNI_NETNS may be empty: the container is gone
        await _call(call, "POST", "/v1/cni/del", {"container_id": container_id, "ifname": ifname or None})
        return None
    if command == "CHECK":
        _require(env, "CNI_CONTAINERID", "CNI_IFNAME")
        await _call(call, "POST", "/v1/cni/check", {"container_id": container_id, "ifname": ifname, "netns": netns})
        return None
    if command == "STATUS":
        await _call(call, "GET", "/v1/cni/status")
        return None
    valid = conf.get("cni.dev/valid-attachments", [])  # GC
    if not isinstance(valid, list):
        raise CniError(ERR_INVALID_CONFIG, "cni.dev/valid-attachments must be a list")
    await _call(call, "POST", "/v1/cni/gc", {"valid": [[a.get("containerID", ""), a.get("ifname", "")]
                                                     for a in valid if isinstance(a, dict)]})
    return None


def run(env: dict, stdin: str) -> dict | None:
    """The Python plugin: the same steps over HTTP. (Driven by hand, without an event loop:
    nothing in it ever waits, and asyncio would cost every pod start milliseconds.)"""
    socket_path = DEFAULT_SOCKET
    try:
        conf = json.loads(stdin) if env.get("CNI_COMMAND") != "VERSION" else {}
        if isinstance(conf, dict) and isinstance(conf.get("socketPath"), str):
            socket_path = conf["socketPath"]
    except (ValueError, RecursionError):
        pass  # run_async reports it
    client = Client(socket_path, timeout=120)

    async def call(method, path, body):
        return client.call(method, path, body)

    coroutine = run_async(env, stdin, call)
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value
    except AgentUnreachable as e:
        if env.get("CNI_COMMAND") == "DEL":
            queue_delete(socket_path, env.get("CNI_CONTAINERID", ""), env.get("CNI_IFNAME", ""))
            return None
        code = ERR_NOT_AVAILABLE if env.get("CNI_COMMAND") == "STATUS" else ERR_TRY_LATER
        raise CniError(code, "the pylium agent is not reachable", str(e)) from None
    raise RuntimeError("the CNI steps waited on something")


def error_output(e: CniError, stdin: str) -> dict:
    try:
        version = json.loads(stdin).get("cniVersion")
    except (ValueError, AttributeError, RecursionError):  # not JSON, not an object, nested too deep
        version = None
    return {"cniVersion": version if isinstance(version, str) and version else "1.1.0", "code": e.code,
            "msg": e.msg, "details": e.details}


def main() -> None:
    env = dict(os.environ)
    stdin = sys.stdin.read() if env.get("CNI_COMMAND") != "VERSION" else ""
    try:
        out = run(env, stdin)
    except CniError as e:
        json.dump(error_output(e, stdin), sys.stdout)
        sys.stdout.write("\n")
        sys.exit(1)
    if out is not None:
        json.dump(out, sys.stdout)
        sys.stdout.write("\n")
    sys.exit(0)


if __name__ == "__main__":
    main()

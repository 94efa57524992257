"""A minimal JSON client for the agent's unix-socket HTTP API (stdlib only: fast to import)."""

from __future__ import annotations

import http.client
import json
import socket
from pathlib import Path
from typing import Any, Iterator

# Defined once, in the CNI plugin: it must stand alone (no pylium import), the CLI need not.
from pylium.core.cni.plugin import AgentUnreachable, ApiFailure  # noqa: F401  (re-exported)

DEFAULT_RUN_DIR = Path("/var/run/pylium")
API_SOCKET = "pylium.sock"


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


class Client:
    def __init__(self, socket_path: str | Path, timeout: float = 30.0):
        self.socket_path = str(socket_path)
        self.timeout = timeout

    @classmethod
    def for_run_dir(cls, run_dir: str | Path, timeout: float = 30.0) -> Client:
        return cls(Path(run_dir) / API_SOCKET, timeout)

    def _send(self, conn: _UnixConnection, method: str, path: str, body: Any) -> http.client.HTTPResponse:
        payload = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        try:
            conn.request(method, path, body=payload, headers=headers)
            return conn.getresponse()
        except (FileNotFoundError, ConnectionRefusedError) as e:
            raise AgentUnreachable(f"no pylium agent is running (cannot connect to {self.socket_path}: "
                                   f"{e.strerror})") from None
        except PermissionError:
            raise AgentUnreachable(f"permission denied on {self.socket_path} (the API is root-only)") from None

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        conn = _UnixConnection(self.socket_path, self.timeout)
        try:
            resp = self._send(conn, method, path, body)
            raw = resp.read()
            try:
                data = json.loads(raw) if raw else None
            except ValueError:
                data = raw.decode(errors="replace")
            return resp.status, data
        finally:
            conn.close()

    def stream(self, method: str, path: str, body: Any = None) -> Iterator[Any]:
        """Lines of an NDJSON answer, decoded, as they arrive (no timeout between them)."""
        conn = _UnixConnection(self.socket_path, self.timeout)
        try:
            resp = self._send(conn, method, path, body)
            if resp.status >= 400:
                raw = resp.read()
                try:
                    data = json.loads(raw)
                except ValueError:
                    data = {"error": raw.decode(errors="replace")}
                raise ApiFailure(resp.status, data.get("error") or f"HTTP {resp.status}", data)
            conn.sock.settimeout(None)
            for line in resp:
                if line.strip():
                    item = json.loads(line)
                    if isinstance(item, dict) and set(item) == {"error"}:
                        raise ApiFailure(500, item["error"], item)
                    yield item
        finally:
            conn.close()

    def get(self, path: str) -> Any:
        return self.call("GET", path)

    def call(self, method: str, path: str, body: Any = None) -> Any:
        status, data = self.request(method, path, body)
        if status >= 400:
            message = data.get("error") if isinstance(data, dict) else str(data)
            raise ApiFailure(status, message or f"HTTP {status}", data)
        return data

"""`pylium-cni`: the CNI plugin binary a container runtime executes.

Only VERSION is served so far; every other command answers the CNI spec's error 50
("plugin not available") until the connectivity plugin lands. Imports stay minimal: the
runtime starts this process for every pod.
"""

from __future__ import annotations

import json
import os
import sys

SUPPORTED_VERSIONS = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
ERR_INCOMPATIBLE_VERSION = 1
ERR_INVALID_ENV = 4
ERR_DECODE = 6
ERR_NOT_AVAILABLE = 50


def _error(code: int, msg: str, details: str = "", version: str = "1.1.0") -> int:
    json.dump({"cniVersion": version, "code": code, "msg": msg, "details": details}, sys.stdout)
    sys.stdout.write("\n")
    return 1


def run(environ: dict[str, str], stdin: str) -> int:
    command = environ.get("CNI_COMMAND", "")
    if command == "VERSION":
        json.dump({"cniVersion": "1.1.0", "supportedVersions": SUPPORTED_VERSIONS}, sys.stdout)
        sys.stdout.write("\n")
        return 0
    if command not in ("ADD", "DEL", "CHECK", "STATUS", "GC"):
        return _error(ERR_INVALID_ENV, f"unknown CNI_COMMAND {command!r}",
                      "expected one of ADD, DEL, CHECK, STATUS, GC, VERSION")
    try:
        conf = json.loads(stdin or "{}")
    except ValueError as e:
        return _error(ERR_DECODE, "network configuration on stdin is not valid JSON", str(e))
    version = conf.get("cniVersion", "1.1.0") if isinstance(conf, dict) else "1.1.0"
    return _error(ERR_NOT_AVAILABLE, "pylium CNI plugin cannot serve requests yet",
                  "this build of pylium has no connectivity plugin", version)


def main() -> None:
    sys.exit(run(dict(os.environ), sys.stdin.read() if os.environ.get("CNI_COMMAND") != "VERSION" else ""))


if __name__ == "__main__":
    main()

"""The OpenAPI document is valid and describes exactly the core's routes."""

from __future__ import annotations

from types import SimpleNamespace

import yaml
from openapi_spec_validator import validate

from pylium.core.api import server as api


def _spec() -> dict:
    return yaml.safe_load(api.OPENAPI_PATH.read_text())


def test_openapi_document_is_valid():
    validate(_spec())


def test_every_core_route_is_documented_and_vice_versa():
    server = api.build_server(SimpleNamespace(api_routes=[], endpoints=None, state="stopped", datapath=None))
    served = {(method.lower(), path) for method, path in server.router.paths}
    documented = {(m, path) for path, ops in _spec()["paths"].items() for m in ops}
    assert served == documented

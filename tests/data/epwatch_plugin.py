"""Test plugin: records the endpoint hooks it receives; refuses or fails checks on request
(labels cni:fail=plug, cni:check=bad)."""

import json

from pylium.core.hookspecs import hookimpl
from pylium.core.plugin_api import EndpointError


class EpWatch:
    def _record(self, ctx, hook, endpoint, **extra):
        with open(ctx.plugin_state_dir / "hooks.jsonl", "a") as f:
            f.write(json.dumps({"hook": hook, "endpoint": endpoint.id, "host_ifname": endpoint.host_ifname,
                                "addresses": [a["ip"] for a in endpoint.addresses], **extra}) + "\n")

    @hookimpl
    def pylium_declare(self, declare):
        declare.after("connectivity")

    @hookimpl
    async def pylium_endpoint_plug(self, ctx, endpoint):
        self._record(ctx, "plug", endpoint)
        if endpoint.labels.get("cni:fail") == "plug":
            raise EndpointError("refused", f"epwatch refuses endpoint {endpoint.id}")

    @hookimpl
    async def pylium_endpoint_unplug(self, ctx, endpoint):
        self._record(ctx, "unplug", endpoint)

    @hookimpl
    async def pylium_endpoint_restore(self, ctx, endpoint):
        self._record(ctx, "restore", endpoint)
        return None

    @hookimpl
    async def pylium_endpoint_update(self, ctx, endpoint, changed):
        self._record(ctx, "update", endpoint, changed=changed, labels=endpoint.label_list())

    @hookimpl
    async def pylium_endpoint_check(self, ctx, endpoint):
        self._record(ctx, "check", endpoint)
        return "epwatch says no" if endpoint.labels.get("cni:check") == "bad" else None

"""Test plugin: implements every hook and records each call (tests/test_hookspecs_meta.py checks that
a real agent calls them all); refuses, fails checks or oversteps on request (labels
cni:fail=plug|restore|update, cni:check=bad, cni:contribute=mtu), and writes into the labels it
is given (its own copy: the endpoint must not change)."""

import json

from pydantic import Field

from pylium.core.api_for_plugins import EndpointContribution, EndpointError, Section, hookimpl


class EpWatchConfig(Section):
    epwatch: dict = Field(default_factory=dict, description="Anything (the test plugin reads nothing).")


class EpWatch:
    def __init__(self):
        self.early = []  # hooks called before there is a state directory to record into
        self.ctx = None

    def _record(self, ctx, hook, endpoint=None, **extra):
        entry = {"hook": hook, **extra}
        if endpoint is not None:
            entry.update(endpoint=endpoint.id, host_ifname=endpoint.host_ifname,
                         addresses=[a["ip"] for a in endpoint.addresses])
        with open(ctx.plugin_state_dir / "hooks.jsonl", "a") as f:
            f.write(json.dumps(entry) + "\n")

    @hookimpl
    def pylium_config_model(self):
        self.early.append("config_model")
        return EpWatchConfig

    @hookimpl
    def pylium_declare(self, declare):
        self.early.append("declare")
        declare.after("connectivity")

    @hookimpl
    async def pylium_lifespan(self, ctx):
        self.ctx = ctx
        for hook in self.early:
            self._record(ctx, hook)
        self._record(ctx, "lifespan")
        yield

    @hookimpl
    def pylium_cleanup(self, ctx):
        self._record(ctx, "cleanup")
        return ["epwatch's records of nothing"]

    @hookimpl
    def pylium_status_details(self, ctx):
        self._record(ctx, "status_details")
        return {"EpWatch": "watching"}

    @hookimpl
    async def pylium_endpoint_plug(self, ctx, endpoint):
        self._record(ctx, "plug", endpoint)
        endpoint.labels["epwatch:scribbled"] = "yes"
        endpoint.addresses.clear()
        if endpoint.labels.get("cni:fail") == "plug":
            raise EndpointError("refused", f"epwatch refuses endpoint {endpoint.id}")
        if endpoint.labels.get("cni:contribute") == "mtu":  # a field connectivity owns
            return EndpointContribution(mtu=1280)
        return None

    @hookimpl
    async def pylium_endpoint_unplug(self, ctx, endpoint):
        self._record(ctx, "unplug", endpoint)

    @hookimpl
    async def pylium_endpoint_restore(self, ctx, endpoint):
        self._record(ctx, "restore", endpoint)
        if endpoint.labels.get("cni:fail") == "restore":
            raise RuntimeError(f"epwatch cannot restore endpoint {endpoint.id}")
        return None

    @hookimpl
    async def pylium_endpoint_update(self, ctx, endpoint, changed):
        self._record(ctx, "update", endpoint, changed=changed, labels=endpoint.label_list())
        if endpoint.labels.get("unspec:fail") == "update":
            raise EndpointError("refused", f"epwatch refuses the labels of endpoint {endpoint.id}")

    @hookimpl
    async def pylium_endpoint_check(self, ctx, endpoint):
        self._record(ctx, "check", endpoint)
        return "epwatch says no" if endpoint.labels.get("cni:check") == "bad" else None

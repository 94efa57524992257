"""hello-pylium: a minimal third-party pylium plugin (walked through in docs/plugins.md)."""

import anyio
from pydantic import Field

from pylium.core.api_for_plugins import ApiError, Section, hookimpl


class HelloSettings(Section):
    greeting: str = Field("hello", description="Word the plugin greets with.")
    interval: float = Field(1.0, gt=0, description="Seconds between heartbeats.")


class HelloConfig(Section):
    hello: HelloSettings = Field(default_factory=HelloSettings)


class HelloPlugin:
    """One instance per agent: state lives on the instance, not in module globals."""

    def __init__(self):
        self.beats = 0
        self.greeting = "hello"

    @hookimpl
    def pylium_config_model(self):
        return HelloConfig

    @hookimpl
    def pylium_declare(self, declare):
        self.greeting = declare.settings.hello.greeting  # this plugin's own keys
        declare.api_route("GET", "/v1/hello/{name}", self.greet)

    async def greet(self, request):
        name = request.path_params["name"]
        if not name.isalnum():
            raise ApiError(400, f"name {name!r}: use letters and digits only")
        return {"message": f"{self.greeting}, {name}", "beats": self.beats}

    @hookimpl
    async def pylium_lifespan(self, ctx):  # start-up before the yield, shutdown after it
        ctx.log.info("hello starting", greeting=self.greeting)
        ctx.start_task("heartbeat", self._heartbeat, ctx.settings.hello.interval)
        yield
        ctx.log.info("hello stopped", beats=self.beats)

    async def _heartbeat(self, interval):
        while True:
            self.beats += 1
            await anyio.sleep(interval)

    @hookimpl
    def pylium_status_details(self):
        return {"Hello": f"{self.beats} heartbeats"}

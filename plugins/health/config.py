"""Configuration keys owned by the health plugin."""

from __future__ import annotations

from pydantic import Field

from pylium.core.api_for_plugins import Duration, Section


class HealthSettings(Section):
    probeInterval: Duration = Field("60s", description="How often every other node is probed (ICMP and HTTP).")
    probeTimeout: Duration = Field("2s", description="How long one probe waits for its answer.")


class HealthConfig(Section):
    healthChecking: bool = Field(True, description="Answer health probes and probe the other nodes.")
    healthPort: int = Field(4240, ge=1, le=65535, description="TCP port of the health responder on every node "
                                                              "(GET /hello answers 200).")
    health: HealthSettings = Field(default_factory=HealthSettings)

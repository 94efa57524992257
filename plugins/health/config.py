"""Configuration keys owned by the health plugin."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from pylium.core.api_for_plugins import Section, parse_duration


class HealthSettings(Section):
    probeInterval: str = Field("60s", description="How often every other node is probed (ICMP and HTTP).")
    probeTimeout: str = Field("2s", description="How long one probe waits for its answer.")

    @field_validator("probeInterval", "probeTimeout", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> str:
        if parse_duration(v) <= 0:
            raise ValueError("must be longer than zero")
        return str(v) if not isinstance(v, (int, float)) else f"{v}s"


class HealthConfig(Section):
    healthChecking: bool = Field(True, description="Answer health probes and probe the other nodes.")
    healthPort: int = Field(4240, ge=1, le=65535, description="TCP port of the health responder on every node "
                                                              "(GET /hello answers 200).")
    health: HealthSettings = Field(default_factory=HealthSettings)

"""Configuration keys owned by the policy plugin (Cilium's names), `bpf.policyMapMax`,
`bpf.ctTcpTimeout` and `bpf.ctAnyTimeout` among them (the `bpf` section is shared)."""

from __future__ import annotations

from pydantic import Field, field_validator

from pylium.core.api_for_plugins import Section, parse_duration
from pylium.plugins.policy.identity import DEFAULT_LABEL_FILTER

MODES = ("default", "always", "never")


class PolicySettings(Section):
    identityLabels: list[str] = Field(
        default_factory=lambda: list(DEFAULT_LABEL_FILTER),
        description="Identity-relevant labels: regular expressions on the label key (without its source); a "
                    "leading ! excludes; the first match decides; unmatched labels are relevant. Cilium's "
                    "`labels` option.")
    allowLocalhost: str = Field("always", description="always: the node itself may reach its pods whatever the "
                                                      "policy (kubelet probes); policy: only where a rule allows "
                                                      "the host entity.")

    @field_validator("allowLocalhost")
    @classmethod
    def _localhost(cls, v: str) -> str:
        if v not in ("always", "policy"):
            raise ValueError("must be always or policy")
        return v


class PolicyBpfSettings(Section):
    policyMapMax: int = Field(16384, ge=256, le=65536, description="Policy entries one endpoint may have "
                                                                  "(256-65536); more is a policy map overflow.")
    ctTcpTimeout: str = Field("2h13m20s", description="How long an idle TCP connection policy allowed stays "
                                                     "allowed without a new policy decision.")
    ctAnyTimeout: str = Field("1m", description="The same for UDP, ICMP and other protocols.")

    @field_validator("ctTcpTimeout", "ctAnyTimeout")
    @classmethod
    def _duration(cls, v: str) -> str:
        if parse_duration(v) <= 0:
            raise ValueError("must be a positive duration, for example 60s")
        return v


class PolicyConfig(Section):
    aliases = {"policyEnforcement": "policyEnforcementMode"}  # the seed article's spelling

    policyEnforcementMode: str = Field(
        "default", description="default: an endpoint denies what is not allowed in a direction once a rule "
                               "selecting it has that direction; always: every endpoint, even unselected; "
                               "never: no enforcement. Alias: policyEnforcement.")
    policyAuditMode: bool = Field(False, description="Report what policy would deny (verdict AUDIT) instead of "
                                                     "dropping it, on every endpoint.")
    endpointLockdownOnMapOverflow: bool = Field(
        False, description="When an endpoint's policy needs more than bpf.policyMapMax entries, drop all its "
                           "traffic instead of keeping its previous policy.")
    policy: PolicySettings = Field(default_factory=PolicySettings)
    bpf: PolicyBpfSettings = Field(default_factory=PolicyBpfSettings)

    @field_validator("policyEnforcementMode")
    @classmethod
    def _enforcement_mode(cls, v: str) -> str:
        if v not in MODES:
            raise ValueError(f"must be one of {', '.join(MODES)}")
        return v

"""Configuration keys owned by the policy plugin (Cilium's names; `bpf.policyMapMax`,
`bpf.ctTcpTimeout` and `bpf.ctAnyTimeout` live in the core's `bpf` section)."""

from __future__ import annotations

from pydantic import Field, field_validator

from pylium.core.config import Section
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


class PolicyConfig(Section):
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

    @field_validator("policyEnforcementMode")
    @classmethod
    def _mode(cls, v: str) -> str:
        if v not in MODES:
            raise ValueError(f"must be one of {', '.join(MODES)}")
        return v

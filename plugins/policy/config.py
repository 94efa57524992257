"""Configuration keys owned by the policy plugin (Cilium's names), `bpf.policyMapMax`,
`bpf.ctTcpTimeout` and `bpf.ctAnyTimeout` among them (the `bpf` section is shared)."""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

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
    ctTcpMax: int = Field(196608, ge=256, le=1 << 24, description="TCP connections policy conntrack holds "
                                                                "(Cilium's bpf.ctTcpMax). One LRU map "
                                                                "(policy_ct) holds TCP and other protocols: "
                                                                "its size is ctTcpMax + ctAnyMax.")
    ctAnyMax: int = Field(65536, ge=256, le=1 << 24, description="Non-TCP flows policy conntrack holds "
                                                               "(Cilium's bpf.ctAnyMax).")
    ctTcpTimeout: str = Field("2h13m20s", description="How long an idle TCP connection policy allowed stays "
                                                     "allowed without a new policy decision.")
    ctAnyTimeout: str = Field("1m", description="The same for UDP, ICMP and other protocols.")

    @field_validator("ctTcpTimeout", "ctAnyTimeout")
    @classmethod
    def _duration(cls, v: str) -> str:
        if parse_duration(v) <= 0:
            raise ValueError("must be a positive duration, for example 60s")
        return v


class ProxySettings(Section):
    portRangeMin: int = Field(10000, ge=1024, le=65535, description="Lowest port the L7 proxies listen on "
                                                                   "(Cilium's --proxy-portrange-min).")
    portRangeMax: int = Field(20000, ge=1024, le=65535, description="Highest proxy port "
                                                                   "(Cilium's --proxy-portrange-max).")
    http403Message: str = Field("Access denied", description="Body of the 403 answer to a request L7 policy "
                                                             "denies (a CRLF is appended; Cilium's --http-403-msg).")
    maxRequestBytes: int = Field(65536, ge=1024, le=16 << 20, description="Largest request line plus headers "
                                                                        "the HTTP proxy accepts; larger gets "
                                                                        "431 and the connection closes.")


class DnsProxySettings(Section):
    rejectResponseCode: str = Field("refused", description="Answer to a query DNS policy denies: refused "
                                                           "(REFUSED) or nameError (NXDOMAIN).")
    minTtl: int = Field(0, ge=0, description="Shortest time (seconds) an address looked up stays allowed by "
                                            "toFQDNs; 0 keeps the answer's TTL (Cilium's --tofqdns-min-ttl).")
    proxyResponseMaxDelay: str = Field("100ms", description="How long a DNS answer waits for the agent to "
                                                            "allow its addresses (toFQDNs) before it goes to the "
                                                            "pod anyway.")

    @field_validator("rejectResponseCode")
    @classmethod
    def _rcode(cls, v: str) -> str:
        if v not in ("refused", "nameError"):
            raise ValueError("must be refused or nameError")
        return v

    @field_validator("proxyResponseMaxDelay")
    @classmethod
    def _delay(cls, v: str) -> str:
        if parse_duration(v) <= 0:
            raise ValueError("must be a positive duration, for example 100ms")
        return v


class TracingConfig(Section):
    enabled: bool = Field(False, description="Export one span per request the L7 proxy handles (parented to the "
                                             "caller's W3C traceparent) through the OpenTelemetry SDK.")
    exporter: str = Field("otlp", description="otlp (OTLP over HTTP/protobuf: Jaeger, Tempo, collectors) or "
                                              "zipkin (Zipkin JSON v2).")
    endpoint: str = Field("", description="Where spans go; empty: http://localhost:4318/v1/traces (otlp) or "
                                          "http://localhost:9411/api/v2/spans (zipkin).")

    @field_validator("exporter")
    @classmethod
    def _exporter(cls, v: str) -> str:
        if v not in ("otlp", "zipkin"):
            raise ValueError("must be otlp or zipkin")
        return v

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        if v and not v.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
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
    proxy: ProxySettings = Field(default_factory=ProxySettings)
    dnsProxy: DnsProxySettings = Field(default_factory=DnsProxySettings)
    tracing: TracingConfig = Field(default_factory=TracingConfig)

    @model_validator(mode="after")
    def _port_range(self):
        if self.proxy.portRangeMin > self.proxy.portRangeMax:
            raise ValueError(f"proxy.portRangeMin {self.proxy.portRangeMin} is above proxy.portRangeMax "
                             f"{self.proxy.portRangeMax}")
        return self

    @field_validator("policyEnforcementMode")
    @classmethod
    def _enforcement_mode(cls, v: str) -> str:
        if v not in MODES:
            raise ValueError(f"must be one of {', '.join(MODES)}")
        return v

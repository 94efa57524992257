"""Agent configuration: Helm-values-shaped YAML, `--set` overrides, seed-era aliases, validation.

The root model is assembled at start from the core's sections plus the model each plugin
declares through the `pylium_config_model` hook, so a plugin owns its keys, their older
spellings (`Section.aliases`), their validation and their docs. Two owners may share a
section (`bpf`): the section is combined, each leaf key keeps one owner. After validation each
owner gets its own part back (`project`): a plugin's `ctx.settings`, the core's `ctx.config`.
Any problem (unknown key, wrong type, bad value) is reported as one line per problem naming
the key path; the agent then exits 78 without starting anything.
"""

from __future__ import annotations

import copy
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Callable, ClassVar, Literal

import yaml
from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, create_model, field_validator,
                      model_validator)


#: Translates an older spelling: (value, the old key path, warn) -> {new key path: value};
#: raises ConfigError for a value it cannot translate.
Translation = Callable[[Any, str, Callable[[str], None]], dict[str, Any]]


class Section(BaseModel):
    """Base for every configuration section: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    #: On an owner's top-level model: older spellings of its keys, translated before
    #: validation. {"old.path": "new.path"}, or {"old.path": translation}.
    aliases: ClassVar[dict[str, str | Translation]] = {}


class ClusterSettings(Section):
    name: str = Field("default", description="Name of the cluster this node belongs to.")
    id: int = Field(0, ge=0, le=255, description="Numeric cluster id, unique within a cluster mesh (0-255).")


class PrometheusSettings(Section):
    enabled: bool = Field(True, description="Serve Prometheus metrics.")
    address: str = Field("", description="Address to bind the metrics server to; empty means all addresses.")
    port: int = Field(9962, ge=0, le=65535, description="Metrics port (Cilium's agent port); 0 disables.")


class PluginsSettings(Section):
    disabled: list[str] = Field(default_factory=list, description="Names of plugins not to load.")


class BusTcpSettings(Section):
    address: str = Field("", description="host:port of a TCP endpoint for remote subscribers, CURVE-authenticated; "
                                         "empty disables it.")
    keysDir: str = Field("", description="Directory of the agent's CURVE key pair (server.key, server.key_secret "
                                         "0600); default <state-dir>/bus.")
    authorizedKeysDir: str = Field("", description="Directory of authorised client public keys (*.key); default "
                                                   "<keysDir>/authorized_keys. Any other key gets nothing.")


class BusSettings(Section):
    subscriberQueue: int = Field(100_000, ge=100, description="Messages queued per subscriber before that "
                                                              "subscriber loses messages (others are unaffected).")
    publisherQueue: int = Field(100_000, ge=100, description="Messages an in-process publisher may queue before "
                                                             "publishing drops (counted in pylium_bus_dropped_total).")
    maxMessageBytes: int = Field(1 << 20, ge=1024, description="Largest message accepted from outside publishers.")
    requestTimeout: float = Field(5.0, gt=0, description="Default seconds a request waits for its answer.")
    tcp: BusTcpSettings = Field(default_factory=BusTcpSettings)


class FamilySettings(Section):
    enabled: bool = Field(True, description="Enable this address family.")
    nodeIP: str = Field("", description="This node's address for its peers (tunnel endpoint, direct routes, "
                                        "health probes); empty: detected (the default route's source, else the "
                                        "first global address with a prefix shorter than a host's).")


class Ipv6Settings(FamilySettings):
    enabled: bool = Field(False, description="Enable IPv6 (dual stack when IPv4 is enabled too).")


class StandaloneSettings(Section):
    manifestsDir: str = Field("/etc/pylium/manifests", description="Directory of Kubernetes-shaped YAML "
                                                                  "(Pods, Namespaces, policies, Services), watched.")


class DebugSettings(Section):
    enabled: bool = Field(False, description="Log at debug level.")


def parse_duration(value: Any) -> float:
    """Seconds from a number or a Go-style duration ("5s", "500ms", "1m30s"): a finite number."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value) if abs(value) < 1e300 else math.inf  # float() of a huge int overflows
    else:
        text = str(value).strip()
        parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text)
        if not parts or "".join(n + u for n, u in parts) != text:
            raise ValueError(f"not a duration: {value!r} (write for example 5s, 500ms or 1m)")
        seconds = sum(float(n) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[u] for n, u in parts)
    if not math.isfinite(seconds):  # NaN, inf, 1e999s: accepted here, they would fail where used
        raise ValueError("not a duration: not a finite number of seconds")
    return seconds


def _duration_text(value: Any) -> str:
    if parse_duration(value) <= 0:
        raise ValueError("must be longer than zero")
    return str(value) if not isinstance(value, (int, float)) else f"{value}s"


#: A config value that is a duration: a number of seconds or Go-style ("5s", "1m30s"), > 0.
Duration = Annotated[str, BeforeValidator(_duration_text)]


class EventToggle(Section):
    enabled: bool = Field(True, description="Report these events in the events ring buffer.")


class BpfEventsSettings(Section):
    drop: EventToggle = Field(default_factory=EventToggle, description="Drop events.")
    trace: EventToggle = Field(default_factory=EventToggle, description="Trace events.")
    policyVerdict: EventToggle = Field(default_factory=EventToggle, description="Policy verdict events.")
    ringBufferSize: int = Field(1 << 22, description="Bytes of the kernel ring buffer the datapath reports "
                                                     "events into (a power of two, at least 4096).")

    @field_validator("ringBufferSize")
    @classmethod
    def _power_of_two(cls, v: int) -> int:
        if v < 4096 or v & (v - 1):
            raise ValueError("must be a power of two of at least 4096")
        return v


class BpfFastPathSettings(Section):
    enabled: bool = Field(True, description="Forward the packets of established connections between local pods "
                                            "(IPv4 TCP and UDP) without running the stages again, while nothing "
                                            "they read changed, and at most a second; off when any installed "
                                            "stage does not declare that it keeps the fast path's contract, or "
                                            "when trace events are aggregated below medium (docs/datapath.md).")


class BpfSettings(Section):
    monitorAggregation: str = Field(
        "medium", description="How much the datapath aggregates trace events: none (every packet at every "
                              "observation point), lowest/low (no traces where packets are received), "
                              "medium/maximum (per connection: first packet, new TCP flags, every interval).")
    monitorAggregationInterval: str = Field(
        "5s", description="At medium and above, how often an active connection is reported again. "
                          "Alias: bpf.monitorInterval.")
    monitorAggregationFlags: str = Field(
        "syn,fin,rst", description="At medium and above, TCP flags whose first appearance on a connection is "
                                   "reported (comma-separated syn, fin, rst, psh, ack, urg, ece, cwr, or all). "
                                   "Alias: bpf.monitorFlags.")
    events: BpfEventsSettings = Field(default_factory=BpfEventsSettings)
    fastPath: BpfFastPathSettings = Field(default_factory=BpfFastPathSettings)

    @field_validator("monitorAggregation")
    @classmethod
    def _level(cls, v: str) -> str:
        from pylium.core.datapath.monitor import AGGREGATION_LEVELS

        if str(v).lower() not in AGGREGATION_LEVELS:
            raise ValueError(f"must be one of {', '.join(AGGREGATION_LEVELS)}")
        return str(v).lower()

    @field_validator("monitorAggregationInterval", mode="before")
    @classmethod
    def _interval(cls, v: Any) -> str:
        if parse_duration(v) <= 0:
            raise ValueError("must be longer than zero")
        return str(v) if not isinstance(v, (int, float)) else f"{v}s"

    @field_validator("monitorAggregationFlags", mode="before")
    @classmethod
    def _flags(cls, v: Any) -> str:
        from pylium.core.datapath.monitor import TCP_FLAGS

        names = [f.strip().lower() for f in str(v).replace(" ", ",").split(",") if f.strip()]
        bad = [n for n in names if n != "all" and n not in TCP_FLAGS]
        if bad or not names:
            raise ValueError(f"unknown TCP flag {', '.join(bad) or '(none given)'} "
                             f"(allowed: all, {', '.join(TCP_FLAGS)})")
        return ",".join(names)

    def aggregation_level(self) -> int:
        from pylium.core.datapath.monitor import AGGREGATION_LEVELS

        return AGGREGATION_LEVELS[self.monitorAggregation]

    def tcp_flag_mask(self) -> int:
        from pylium.core.datapath.monitor import TCP_FLAGS

        names = self.monitorAggregationFlags.split(",")
        return 0xFF if "all" in names else sum(TCP_FLAGS[n] for n in set(names))


class KvstoreSettings(Section):
    backend: Literal["local", "etcd"] = Field("local", description="Where nodes share state (identities, nodes, endpoints' "
                                              "addresses, pod CIDR claims): local (an embedded store, one "
                                              "machine) or etcd (etcd.endpoints). `kvstore: etcd` is short for "
                                              "kvstore.backend=etcd.")
    leaseTTL: Duration = Field("15m", description="Lifetime of this agent's keys in etcd (its node, its endpoints' "
                                             "addresses): a node gone for longer disappears from its peers.")
    connectTimeout: Duration = Field("5m", description="How long the agent keeps trying to reach etcd at start "
                                                  "before it exits with code 69 (systemd starts it again).")



class EtcdSettings(Section):
    endpoints: list[str] = Field(default_factory=list, description="etcd client URLs, e.g. "
                                                                   "https://10.0.0.1:2379; tried in order.")
    trustedCAFile: str = Field("", description="CA certificate (PEM) that signed etcd's server certificate "
                                               "(TLS; https:// endpoints).")
    certFile: str = Field("", description="This agent's client certificate (PEM), when etcd asks for one.")
    keyFile: str = Field("", description="The client certificate's private key (PEM).")


class CoreConfig(Section):
    """Keys the core owns. Plugins add their own top-level keys next to these (and keys in
    shared sections such as `bpf`)."""

    aliases = {"bpf.monitorInterval": "bpf.monitorAggregationInterval",  # Helm's spellings
               "bpf.monitorFlags": "bpf.monitorAggregationFlags"}

    cluster: ClusterSettings = Field(default_factory=ClusterSettings)
    ipv4: FamilySettings = Field(default_factory=FamilySettings)
    ipv6: Ipv6Settings = Field(default_factory=Ipv6Settings)
    prometheus: PrometheusSettings = Field(default_factory=PrometheusSettings)
    plugins: PluginsSettings = Field(default_factory=PluginsSettings)
    bus: BusSettings = Field(default_factory=BusSettings)
    standalone: StandaloneSettings = Field(default_factory=StandaloneSettings)
    debug: DebugSettings = Field(default_factory=DebugSettings)
    bpf: BpfSettings = Field(default_factory=BpfSettings)
    kvstore: KvstoreSettings = Field(default_factory=KvstoreSettings)
    etcd: EtcdSettings = Field(default_factory=EtcdSettings)

    @model_validator(mode="after")
    def _etcd_needs_endpoints(self) -> CoreConfig:
        if bool(self.etcd.certFile) != bool(self.etcd.keyFile):
            raise ValueError("etcd.certFile and etcd.keyFile: give both (a client certificate and its key) or neither")
        if self.kvstore.backend == "etcd" and not self.etcd.endpoints:
            raise ValueError("etcd.endpoints: empty, but kvstore is etcd: name etcd's client URLs, for example "
                             "--set etcd.endpoints={http://10.0.0.1:2379}")
        return self


# Sections that may also be written as one value, standing for one of their keys
# (`kvstore: etcd` is kvstore.backend=etcd, as Cilium's agent option reads).
SCALAR_SECTIONS = {"kvstore": "backend"}


def _scalar_sections(data: dict[str, Any]) -> dict[str, Any]:
    for section, key in SCALAR_SECTIONS.items():
        if section in data and not isinstance(data[section], dict):
            data[section] = {key: data[section]}
    return data


# Helm chart keys that describe how the chart deploys pods, not how the agent behaves.
# People paste whole values files; these are skipped with a warning instead of failing.
CHART_ONLY_KEYS = frozenset(
    {"image", "operator", "resources", "nodeSelector", "tolerations", "podAnnotations", "podLabels",
     "affinity", "priorityClassName", "rollOutCiliumPods", "securityContext", "updateStrategy"}
)


class ConfigError(Exception):
    """A configuration problem; `problems` holds one human-readable line per problem."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass
class RawConfig:
    """The merged, not yet validated configuration, and where each aliased key came from."""

    data: dict[str, Any] = field(default_factory=dict)
    aliased_from: dict[str, str] = field(default_factory=dict)
    set_keys: set[str] = field(default_factory=set)
    warnings: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# Loading and merging
# --------------------------------------------------------------------------------------------


def load_file(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError([f"{p}: cannot read config file: {e.strerror}"]) from None
    except UnicodeDecodeError as e:
        raise ConfigError([f"{p}: not UTF-8 text (byte {e.start})"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = " ".join(str(getattr(e, "problem", None) or e).split())  # one line per problem
        raise ConfigError([f"{p}{where}: invalid YAML: {problem}"]) from None
    except RecursionError:
        raise ConfigError([f"{p}: invalid YAML: nested too deeply"]) from None
    except ValueError as e:  # YAML that no Python value holds: the date 2001-13-01, a 5000-digit number
        raise ConfigError([f"{p}: invalid YAML value: {e}"]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([f"{p}: the top level must be a mapping of keys, not {type(data).__name__}"])
    return data


def parse_set_value(text: str) -> Any:
    """Interpret a `--set` value the way Helm does: scalars typed, `{a,b}` as a list of them."""
    if text.startswith("{") and text.endswith("}"):
        inner = text[1:-1].strip()
        return [_set_scalar(v.strip()) for v in inner.split(",")] if inner else []
    return _set_scalar(text)


def _set_scalar(text: str) -> Any:
    """Typed as YAML types it; text that YAML cannot read stays text."""
    try:
        return yaml.safe_load(text) if text else ""
    except (yaml.YAMLError, ValueError, RecursionError):  # ValueError: 2001-13-01 is no date
        return text


def apply_set(data: dict[str, Any], expr: str) -> str:
    """Apply one `a.b.c=value` override in place; returns the key path."""
    key, sep, value = expr.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError([f"--set {expr!r}: expected KEY=VALUE, for example --set prometheus.port=9962"])
    parts = key.split(".")
    if any(not p for p in parts):
        raise ConfigError([f"--set {expr!r}: empty segment in key path {key!r}"])
    if len(parts) == 1 and parts[0] in SCALAR_SECTIONS and isinstance(data.get(parts[0]), dict):
        parts.append(SCALAR_SECTIONS[parts[0]])  # `--set kvstore=etcd` keeps kvstore.leaseTTL
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            path = ".".join(parts[: i + 1])
            raise ConfigError([f"--set {expr!r}: {path} is a value ({child!r}), not a section"])
        node = child
    node[parts[-1]] = parse_set_value(value)
    return key


def _pop_path(data: dict[str, Any], path: str) -> tuple[bool, Any]:
    parts = path.split(".")
    node = data
    for part in parts[:-1]:
        node = node.get(part)
        if not isinstance(node, dict):
            return False, None
    if parts[-1] not in node:
        return False, None
    value = node.pop(parts[-1])
    # drop sections the alias emptied, so they do not show up as empty unknown sections
    if len(parts) > 1 and not node:
        _pop_path(data, ".".join(parts[:-1]))
    return True, value


def _put_path(raw: RawConfig, path: str, value: Any, old: str) -> None:
    parts = path.split(".")
    node = raw.data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError([f"{old}: cannot translate to {path}: {part} is not a section"])
    if parts[-1] in node and node[parts[-1]] != value:
        raise ConfigError([f"{old}: conflicts with {path}={node[parts[-1]]!r} (set only one of them)"])
    node[parts[-1]] = value
    raw.aliased_from[path] = old


def apply_aliases(raw: RawConfig, models: list[type[BaseModel]]) -> None:
    """Rewrite older spellings to the current keys, as each owner's model declares them
    (ARCHITECTURE §7); drop Helm chart deployment keys with a warning."""
    for model in models:
        for old, new in getattr(model, "aliases", {}).items():
            found, value = _pop_path(raw.data, old)
            if not found:
                continue
            translated = {new: value} if isinstance(new, str) else new(value, old, raw.warnings.append)
            for path, v in translated.items():
                _put_path(raw, path, v, old)
    for key in sorted(CHART_ONLY_KEYS & raw.data.keys()):
        raw.data.pop(key)
        raw.warnings.append(f"{key}: Helm chart deployment key, ignored by the agent")


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def gather(config_files: list[str | Path] = (), sets: list[str] = (), base: dict[str, Any] | None = None,
           models: list[type[BaseModel]] = ()) -> RawConfig:
    """Merge `base`, config files (later wins) and `--set` overrides, then translate the older
    spellings of the core and of `models` (the agent translates its plugins' once it knows them)."""
    raw = RawConfig(data=copy.deepcopy(base or {}))
    for f in config_files:
        raw.data = deep_merge(raw.data, _scalar_sections(load_file(f)))
    for expr in sets:
        raw.set_keys.add(apply_set(raw.data, expr))
        _scalar_sections(raw.data)
    apply_aliases(raw, [CoreConfig, *models])
    return raw


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


def build_model(contributions: dict[str, type[BaseModel]]) -> type[Section]:
    """Root model = the core's model combined with each contributor's. `contributions` maps an
    owner (a plugin name) to a model whose fields are its top-level keys."""
    problems: list[str] = []
    model = _combine("Config", [("core", CoreConfig), *contributions.items()], "", problems)
    if problems:
        raise ConfigError(problems)
    return model


def _combine(name: str, parts: list[tuple[str, type[BaseModel]]], path: str, problems: list[str]) -> type[Section]:
    """One model inheriting every part (so each keeps its validators). A key several parts
    declare must be a section in each of them, combined the same way; else it is claimed twice."""
    claims: dict[str, list[tuple[str, Any]]] = {}
    for owner, model in parts:
        for key, info in model.model_fields.items():
            claims.setdefault(key, []).append((owner, info))
    combined: dict[str, Any] = {}
    for key, owned in claims.items():
        if len(owned) == 1:
            continue
        sections = [(owner, _section(info)) for owner, info in owned]
        if any(sub is None for _, sub in sections):
            problems.append(f"plugin {owned[1][0]}: config key {path + key!r} is already owned by {owned[0][0]}")
            continue
        sub = _combine(key, sections, f"{path}{key}.", problems)
        combined[key] = (sub, Field(default_factory=sub))
    validators: dict[str, str] = {}
    for owner, model in parts:  # inherited validators are found by name: two of one name would hide one
        for fn in model.__pydantic_decorators__.field_validators | model.__pydantic_decorators__.model_validators:
            if validators.setdefault(fn, owner) != owner:
                problems.append(f"plugin {owner}: config section {path or '(top level)'} has a validator named "
                                f"{fn!r} like {validators[fn]}'s; rename one")
    # reversed: fields come in the parts' order (pydantic collects them along the reversed MRO)
    bases = tuple(reversed(dict.fromkeys(model for _, model in parts)))
    return create_model(name, __base__=bases if len(bases) > 1 else bases[0], **combined)


def _section(info: Any) -> type[BaseModel] | None:
    """The model of a field that is a plain section (not a list or dict of them)."""
    annotation = info.annotation
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def project(model: type[BaseModel], value: BaseModel) -> BaseModel:
    """`value`, validated by a combined model, as an instance of `model` (one owner's part):
    only that owner's keys, with its own methods. Nothing is validated again."""
    data = {}
    for key, info in model.model_fields.items():
        v = getattr(value, key)
        sub = _section(info)
        if sub is not None and type(v) is not sub:
            v = project(sub, v)
        data[key] = v
    return model.model_construct(**data)


def _allowed_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """Keys allowed at the mapping that contains loc[-1], found by walking the model."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        info = getattr(current, "model_fields", {}).get(part)
        if info is None:
            return []
        current = _model_of(info.annotation)
        if current is None:
            return []
    return sorted(getattr(current, "model_fields", {}))


def _model_of(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        m = _model_of(arg)
        if m is not None:
            return m
    return None


def _key_text(key: Any) -> str:
    """A key as written, quoted if it holds characters that would break the problem's line."""
    text = str(key)
    return text if text.isprintable() else repr(text)


def _format_error(model: type[BaseModel], raw: RawConfig, err: dict[str, Any]) -> str:
    loc = tuple(err["loc"])
    path = "".join(f"[{p}]" if isinstance(p, int) else (("." if i else "") + _key_text(p)) for i, p in enumerate(loc))
    origin = ""
    top = ".".join(str(p) for p in loc if not isinstance(p, int))
    if top in raw.aliased_from:
        origin = f" (written as {raw.aliased_from[top]})"
    elif top in raw.set_keys:
        origin = " (from --set)"
    if err["type"] == "extra_forbidden":
        allowed = _allowed_keys(model, loc)
        return f"{path}{origin}: unknown key (allowed here: {', '.join(allowed) or 'none'})"
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] not in ("missing",) and "input" in err and not isinstance(err["input"], dict):
        msg = f"{msg} (got {err['input']!r})"
    return f"{path}{origin}: {msg}" if path else msg


def validate(model: type[Section], raw: RawConfig) -> Section:
    try:
        return model.model_validate(raw.data)
    except ValidationError as e:
        raise ConfigError([_format_error(model, raw, err) for err in e.errors()]) from None


def to_yaml(config: BaseModel) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, default_flow_style=False)


def describe(model: type[BaseModel], prefix: str = "") -> list[tuple[str, str, str]]:
    """(key path, default, description) for every leaf key: the source of docs/config.md."""
    rows = []
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        sub = _model_of(info.annotation)
        if sub is not None and not getattr(info.annotation, "__args__", None):
            rows.extend(describe(sub, path + "."))
            continue
        default = info.get_default(call_default_factory=True)
        if isinstance(default, BaseModel):
            default = default.model_dump(mode="json")
        rows.append((path, json.dumps(default), info.description or ""))
    return rows

"""Property-based fuzzing of every parser that takes input from outside the agent: the CNI
plugin's stdin and environment, the config file and `--set`, bus messages, policy documents
(and their L7 rules), Service and EndpointSlice manifests, the L7 proxies' network input and
their policy snapshot.

The property, for each: any input, however hostile, gives a valid result or the parser's own
error naming what was wrong; never another exception (TypeError, KeyError, RecursionError ...),
never a changed input, never a half-applied change. Hostile documents are valid examples with
one to three mutations (a value replaced by null, a number, a huge or negative one, NaN, text
with NUL or odd Unicode, a list, a mapping, something nested deeper than the interpreter's
recursion limit; or a key deleted or misspelt). Every input that once failed is kept as an
`@example`. The budget is fixed (derandomized): the file runs in seconds."""

from __future__ import annotations

import asyncio
import copy
import json
import math
import re
import socket
import struct
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any
from unittest import mock

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import h11
import msgspec
import pytest
import yaml
from hypothesis import HealthCheck, assume, event, example, given, settings
from hypothesis import strategies as st

from pylium.core import config as cfg
from pylium.core.bus import events as ev
from pylium.core.bus.proxy import _Gate
from pylium.core.cni import plugin as cni
from pylium.plugins.lb import model as lb
from pylium.plugins.policy import l7
from pylium.plugins.policy import model as pm
from pylium.plugins.policy.identity import Identity
from pylium.plugins.policy.proxy import dns as dns_proxy
from pylium.plugins.policy.proxy import http as http_proxy
from pylium.plugins.policy.proxy.policy import L7Policy, snapshot
from pylium.plugins.policy.resolve import Resolver

FUZZ = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                       HealthCheck.data_too_large])
settings.register_profile("pylium-fuzz", FUZZ)
MORE = settings(FUZZ, max_examples=150)  # the cheap, pure parsers

DEEP = 5000  # deeper than the recursion limit: whatever recurses over a value fails on it


# =============================================================================================
# Mutating valid documents
# =============================================================================================

KINDS = ("null", "true", "int", "huge", "negative", "nan", "inf", "text", "nul", "list", "dict", "deep-list",
         "deep-dict", "retype", "delete", "rename")
ODD_TEXT = ("", " ", "\x00", "a\x00b", "²", "٣", "http\n", "80\n", "-1", "0x50", "1e400", "9" * 5000, "é" * 70,
            "{", "[", "*", "**.", "((", "a{99999999999999999999}", "2001-13-01", "!!python/object:os.system",
            "10.0.0.1", "::1", "10.0.0.0/8", "TCP", "In", "true", "None", "\udcff", "\u202e", "ß", "K" * 300)
TEXT = st.one_of(st.sampled_from(ODD_TEXT), st.text(max_size=16))
NUMBER = st.one_of(st.sampled_from([0, 1, 53, 80, 255, 256, 65535, 65536, 2**31, 2**63, -(2**63) - 1]),
                   st.integers(-10, 70000))


def _deep(kind: str) -> Any:
    """A value nested DEEP levels, built without recursion."""
    value: Any = [] if kind == "deep-list" else {}
    for _ in range(DEEP):
        value = [value] if kind == "deep-list" else {"a": value}
    return value


@dataclass(frozen=True)
class Mutation:
    """Replace (or delete, or misspell the key of) the value at `path` of a document."""

    path: tuple
    kind: str
    text: str = "x"
    number: int = 1

    def replacement(self, old: Any) -> Any:
        if self.kind in ("deep-list", "deep-dict"):
            return _deep(self.kind)
        if self.kind == "retype":  # the same content, the wrong type
            if isinstance(old, str):
                return int(old) if old.isascii() and old.isdigit() else [old]
            return to_json(old) if isinstance(old, (dict, list)) else str(old)
        return {"null": None, "true": True, "int": self.number, "huge": 2**70 + self.number,
                "negative": -1 - abs(self.number), "nan": math.nan, "inf": math.inf, "text": self.text,
                "nul": f"{self.text}\x00", "list": [self.text, self.number],
                "dict": {self.text: self.number, 7: None}}[self.kind]

    def apply(self, doc: Any) -> Any:
        """`doc` changed in place (or, for the root, replaced); a path that a previous
        mutation removed leaves it as it is."""
        if not self.path:
            return {} if self.kind in ("delete", "rename") else self.replacement(doc)
        parent = doc
        for step in self.path[:-1]:
            try:
                parent = parent[step]
            except (KeyError, IndexError, TypeError):
                return doc
        key = self.path[-1]
        if not isinstance(parent, (dict, list)) or (isinstance(parent, dict) and key not in parent) or (
                isinstance(parent, list) and not (isinstance(key, int) and key < len(parent))):
            return doc
        if self.kind == "delete":
            del parent[key]
        elif self.kind == "rename" and isinstance(parent, dict):
            parent[f"{key}{self.text}" if self.text else f"{key}s"] = parent.pop(key)
        elif self.kind != "rename":
            parent[key] = self.replacement(parent[key])
        return doc


@dataclass(frozen=True)
class Case:
    """One valid example (by name) and the mutations to make of it."""

    base: str
    mutations: tuple[Mutation, ...] = ()

    def doc(self, examples: dict[str, Any]) -> Any:
        doc = copy.deepcopy(examples[self.base])  # the examples are small: copy before adding deep values
        for m in self.mutations:
            doc = m.apply(doc)
        return doc


def paths(doc: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path in a (small, valid) document, containers and leaves, the root included."""
    out = [prefix]
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else ()
    for key, value in items:
        out += paths(value, prefix + (key,))
    return out


def leaves(doc: Any) -> list[tuple]:
    """Paths of the scalar values of a document."""
    out = []
    for path in paths(doc):
        value = doc
        for step in path:
            value = value[step]
        if not isinstance(value, (dict, list)):
            out.append(path)
    return out


def cases(examples: dict[str, Any], max_mutations: int = 3, kinds: tuple[str, ...] = KINDS) -> st.SearchStrategy[Case]:
    @st.composite
    def draw_case(draw) -> Case:
        base = draw(st.sampled_from(sorted(examples)))
        mutation = st.builds(Mutation, st.sampled_from(paths(examples[base])), st.sampled_from(kinds), TEXT, NUMBER)
        return Case(base, tuple(draw(st.lists(mutation, min_size=1, max_size=max_mutations))))

    return draw_case()


def dotted(path: tuple) -> str:
    """A path as the parsers write it: spec.ports[0].port."""
    out = ""
    for step in path:
        out += f"[{step}]" if isinstance(step, int) else f".{step}" if out else str(step)
    return out


def fingerprint(value: Any) -> list:
    """The structure and scalars of a value, walked without recursion (deep values too): to
    check a parser left its input as it was."""
    out, stack = [], [(0, "", value)]
    while stack:
        depth, key, v = stack.pop()
        if isinstance(v, dict):
            out.append((depth, key, "dict", len(v)))
            stack.extend((depth + 1, repr(k), x) for k, x in v.items())
        elif isinstance(v, list):
            out.append((depth, key, "list", len(v)))
            stack.extend((depth + 1, i, x) for i, x in enumerate(v))
        else:
            out.append((depth, key, repr(v)))
    return out


DEEP_JSON = "\x00deep\x00"


def to_json(doc: Any) -> str:
    """JSON text of a mutated document; deep values are written as text (json.dumps recurses)."""
    def shallow(v: Any) -> Any:
        if isinstance(v, (dict, list)) and _depth_over(v, 50):
            return DEEP_JSON
        return v

    def walk(v: Any) -> Any:
        v = shallow(v)
        if isinstance(v, dict):
            return {k if isinstance(k, (str, int, float, bool)) or k is None else str(k): walk(x)
                    for k, x in v.items()}
        return [walk(x) for x in v] if isinstance(v, list) else v

    text = json.dumps(walk(doc))
    return text.replace(json.dumps(DEEP_JSON), "[" * DEEP + "]" * DEEP)


def _depth_over(value: Any, limit: int) -> bool:
    stack = [(value, 0)]
    while stack:
        v, d = stack.pop()
        if d > limit:
            return True
        if isinstance(v, dict):
            stack.extend((x, d + 1) for x in v.values())
        elif isinstance(v, list):
            stack.extend((x, d + 1) for x in v)
    return False


def bytes_mutated(valid: list[bytes]) -> st.SearchStrategy[bytes]:
    """Valid encodings truncated, with bytes flipped, inserted or repeated; and random bytes."""
    @st.composite
    def draw_bytes(draw) -> bytes:
        data = bytearray(draw(st.sampled_from(valid)))
        for op, at, byte in draw(st.lists(st.tuples(st.sampled_from(["truncate", "flip", "insert", "repeat"]),
                                                     st.integers(0, 1 << 16), st.integers(0, 255)), max_size=3)):
            at = at % (len(data) + 1)
            if op == "truncate":
                del data[at:]
            elif op == "flip" and at < len(data):
                data[at] ^= byte or 0x80
            elif op == "insert":
                data[at:at] = bytes([byte])
            elif op == "repeat":
                data[at:at] = data[at:at + 64] * 3
        return bytes(data)

    return st.one_of(draw_bytes(), draw_bytes(), draw_bytes(), st.binary(max_size=300))  # mostly near-valid


def drive(coroutine) -> Any:
    """Run a coroutine that never waits (as the CNI plugin runs its steps)."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value
    raise AssertionError("the coroutine waited")


# =============================================================================================
# CNI: stdin, CNI_ARGS, the environment
# =============================================================================================

CNI_CONFS = {
    "full": {"cniVersion": "1.1.0", "name": "pylium", "type": "pylium-cni", "socketPath": "/nonexistent/p.sock",
             "mtu": 1450, "pool": "default", "args": {"cni": {"labels": [{"key": "team", "value": "shop"}]}},
             "cni.dev/valid-attachments": [{"containerID": "c1", "ifname": "eth0"}]},
    "old": {"cniVersion": "0.3.1", "name": "pylium", "type": "pylium-cni"},
}
CNI_CODES = {cni.ERR_DECODE, cni.ERR_INCOMPATIBLE_VERSION, cni.ERR_INVALID_CONFIG}
AGENT_ANSWER = {"addresses": [{"family": "ipv4", "ip": "10.0.0.5", "gateway": "10.0.0.1"}], "host_ifname": "lxc1",
                "host_mac": "02:00:00:00:00:01", "ifname": "eth0", "mac": "02:00:00:00:00:02"}
CNI_STDIN = st.one_of(cases(CNI_CONFS).map(lambda c: to_json(c.doc(CNI_CONFS))), TEXT,
                      st.sampled_from(["[" * DEEP, "{" * 100, '{"cniVersion": "1.1.0"', "null", "[]", '"x"', "1e999"]))


def check_cni_error(e: cni.CniError, stdin: str) -> None:
    assert isinstance(e.code, int) and e.msg and "\n" not in e.msg
    out = cni.error_output(e, stdin)  # what the runtime reads: must itself not fail
    assert isinstance(out["cniVersion"], str) and out["code"] == e.code
    json.dumps(out)


def test_cni_valid_configurations_load():
    for conf in CNI_CONFS.values():
        assert cni.load_config(json.dumps(conf)) == conf
    assert cni.cni_labels(CNI_CONFS["full"]) == {"cni:team": "shop"}


@MORE
@given(CNI_STDIN)
@example("[" * DEEP)  # RecursionError from json.loads
@example('{"cniVersion": "1.1.0", "name": "n", "args": "x"}')  # AttributeError in cni_labels
@example('{"cniVersion": "1.1.0", "name": "n", "args": {"cni": ["x"]}}')
def test_cni_stdin_loads_or_raises_cni_error(stdin):
    try:
        conf = cni.load_config(stdin)
        labels = cni.cni_labels(conf)
    except cni.CniError as e:
        assert e.code in CNI_CODES
        if e.code == cni.ERR_INVALID_CONFIG:  # the message names the field
            assert re.search(r"'(name|type|socketPath|mtu|pool)'|^args\b", e.msg), e.msg
        check_cni_error(e, stdin)
        return
    assert conf["cniVersion"] in cni.SUPPORTED_VERSIONS and isinstance(conf["name"], str) and conf["name"]
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items())


@MORE
@given(st.one_of(TEXT, st.lists(st.tuples(TEXT, TEXT), max_size=4).map(
    lambda kv: ";".join(f"{k}={v}" for k, v in kv))))
def test_cni_args_parse_to_strings(text):
    args = cni.parse_args(text)
    assert all(isinstance(k, str) and isinstance(v, str) and ";" not in k + v and "=" not in k
               for k, v in args.items())


@FUZZ
@given(st.dictionaries(st.from_regex(r"[A-Z_]{1,12}", fullmatch=True), st.from_regex(r"[a-z0-9._/-]{0,12}",
                                                                                   fullmatch=True), max_size=4))
def test_cni_args_round_trip(pairs):
    assert cni.parse_args(";".join(f"{k}={v}" for k, v in pairs.items())) == pairs


CNI_ENV_VALUE = st.one_of(st.sampled_from(["", "c1", "eth0", "/proc/self/ns/net", "/nonexistent", "a\x00b",
                                           "x" * 5000, "../../etc", "K8S_POD_NAME=web;K8S_POD_NAMESPACE=shop"]),
                          TEXT)


@FUZZ
@given(st.sampled_from(["ADD", "DEL", "CHECK", "STATUS", "GC", "VERSION", "", "add", "ADD\x00", "UNKNOWN"]),
       st.dictionaries(st.sampled_from(["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS", "CNI_PATH"]),
                       CNI_ENV_VALUE, max_size=5),
       CNI_STDIN)
@example("ADD", {"CNI_CONTAINERID": "c", "CNI_IFNAME": "eth0", "CNI_NETNS": "/proc/self/ns/net"},
         '{"cniVersion": "1.1.0", "name": "n", "args": {"cni": 5}}')  # AttributeError before the agent call
@example("GC", {}, '{"cniVersion": "1.1.0", "name": "n", "cni.dev/valid-attachments": {"a": 1}}')
def test_cni_environment_is_checked_before_the_agent_is_asked(command, env, stdin):
    calls = []

    async def call(method, path, body):
        calls.append((method, path, body))
        return copy.deepcopy(AGENT_ANSWER) if path == "/v1/cni/add" else {}

    env = {**env, "CNI_COMMAND": command}
    try:
        out = drive(cni.run_async(env, stdin, call))
    except cni.CniError as e:
        assert not calls, "a refused command must not reach the agent"
        assert e.code in CNI_CODES | {cni.ERR_INVALID_ENV, cni.ERR_UNKNOWN_CONTAINER}
        if e.code == cni.ERR_INVALID_ENV and e.msg.startswith("missing"):  # names each missing variable
            assert all(not env.get(name) for name in re.findall(r"CNI_[A-Z]+", e.msg))
        check_cni_error(e, stdin)
        return
    if command == "VERSION":
        assert out["supportedVersions"] == cni.SUPPORTED_VERSIONS
    elif command == "ADD":
        assert out["cniVersion"] == json.loads(stdin)["cniVersion"] and len(calls) == 1
        assert all(isinstance(v, str) for v in calls[0][2]["labels"].values())
    else:
        assert out is None and len(calls) == 1


@FUZZ
@given(CNI_STDIN)
@example("[" * DEEP)  # RecursionError in run(), reading socketPath before run_async
def test_cni_run_reads_any_stdin(stdin):
    with mock.patch.object(cni.Client, "call", side_effect=cni.AgentUnreachable("test: no agent")):
        try:
            cni.run({"CNI_COMMAND": "STATUS"}, stdin)
        except cni.CniError as e:
            assert e.code in CNI_CODES | {cni.ERR_NOT_AVAILABLE}
            check_cni_error(e, stdin)


# =============================================================================================
# The configuration: files, --set, durations, validation
# =============================================================================================

CONFIGS = {
    "defaults": cfg.CoreConfig().model_dump(mode="json"),
    "set": {"cluster": {"name": "east", "id": 3}, "prometheus": {"port": 0},
            "bpf": {"monitorAggregation": "low", "monitorAggregationInterval": "1m30s",
                    "monitorAggregationFlags": "syn,fin", "events": {"drop": {"enabled": False},
                                                                     "ringBufferSize": 8192}},
            "kvstore": {"backend": "etcd", "leaseTTL": "10m", "connectTimeout": 30},
            "etcd": {"endpoints": ["http://10.0.0.1:2379"], "certFile": "/c.pem", "keyFile": "/k.pem"},
            "plugins": {"disabled": ["lb"]}, "bus": {"requestTimeout": 2.5, "tcp": {"address": "0.0.0.0:4244"}}},
    "aliases": {"bpf": {"monitorInterval": "10s", "monitorFlags": "all"}, "kvstore": "local",
                "image": {"repository": "x"}, "debug": {"enabled": True}},
}
MODEL = cfg.build_model({})


def _key_paths(model, prefix: str = "") -> list[str]:
    out = []
    for name, info in model.model_fields.items():
        sub = cfg._section(info)
        out += _key_paths(sub, f"{prefix}{name}.") if sub else [prefix + name]
    return out


KEY_PATHS = _key_paths(cfg.CoreConfig) + list(cfg.CoreConfig.aliases) + ["kvstore", "image.tag"]
KEY_NAMES = sorted({part for p in KEY_PATHS for part in p.split(".")})
JSON_LEAF = st.one_of(st.none(), st.booleans(), NUMBER, st.floats(), TEXT)
# Configuration comes from YAML, which cannot nest deeper than a few hundred levels
# (deeper is a ConfigError of load_file): no deep values here.
SHALLOW = tuple(k for k in KINDS if not k.startswith("deep"))
RAW_CONFIG = st.one_of(
    cases(CONFIGS, kinds=SHALLOW).map(lambda c: c.doc(CONFIGS)),
    st.dictionaries(st.sampled_from(KEY_NAMES) | TEXT, st.recursive(
        JSON_LEAF, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(KEY_NAMES) | TEXT,
                                                                             inner, max_size=4),
        max_leaves=12), max_size=5))
SET_EXPR = st.one_of(st.tuples(st.sampled_from(KEY_PATHS), TEXT).map("=".join), TEXT,
                     st.tuples(st.sampled_from(KEY_PATHS), st.sampled_from(
                         ["{a,b}", "{}", "{" * 3000 + "}" * 3000, "[" * 3000, "2001-13-01", ".nan", ".inf", "1e999",
                          "9" * 400 + "s", "-5s", "0", "{1,{2}}", "~", "a: b"])).map("=".join))


def gather_file(fuzz_dir, data: Any, sets=()) -> cfg.RawConfig:
    """As the agent reads configuration: a values file, then --set."""
    path = fuzz_dir / "values.yaml"
    path.write_text(yaml.safe_dump(data))
    return cfg.gather([path], list(sets))


def test_valid_configurations_validate(fuzz_dir):
    for name, data in CONFIGS.items():
        config = cfg.validate(MODEL, gather_file(fuzz_dir, data))
        assert config.bpf.monitorAggregationInterval == {"set": "1m30s", "aliases": "10s"}.get(name, "5s")


@MORE
@given(st.one_of(NUMBER, st.floats(), TEXT, st.booleans(), st.none(),
                 st.lists(st.tuples(st.integers(0, 10**6), st.sampled_from(["ms", "s", "m", "h"])), min_size=1,
                          max_size=4).map(lambda parts: "".join(f"{n}{u}" for n, u in parts))))
@example(math.nan)  # accepted, then "nans" is no duration at the agent's start
@example(math.inf)
@example(10**400)  # OverflowError
@example("9" * 400 + "s")  # inf seconds
def test_parse_duration_is_a_finite_number_or_value_error(value):
    try:
        seconds = cfg.parse_duration(value)
    except ValueError as e:
        assert "duration" in str(e)
        return
    assert isinstance(seconds, float) and math.isfinite(seconds)
    if isinstance(value, str):  # a duration's text means the sum of its parts
        units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
        assert seconds == pytest.approx(sum(float(n) * units[u] for n, u in re.findall(r"(\d+)(ms|s|m|h)", value)))


@MORE
@given(st.one_of(TEXT, st.lists(st.from_regex(r"[a-z0-9]{1,6}", fullmatch=True), max_size=4).map(
    lambda words: "{" + ",".join(words) + "}")))
@example("2001-13-01")  # ValueError from YAML's timestamp
@example("{" * 3000 + "}" * 3000)  # RecursionError
@example("[" * 3000)
def test_set_value_is_typed_like_helm(text):
    value = cfg.parse_set_value(text)  # never fails: what YAML cannot read stays text
    if re.fullmatch(r"\{([a-z0-9]{1,6}(,[a-z0-9]{1,6})*)?\}", text):
        assert isinstance(value, list) and len(value) == (text.count(",") + 1 if len(text) > 2 else 0)


@MORE
@given(RAW_CONFIG.filter(lambda data: isinstance(data, dict)), SET_EXPR)
@example({"cluster": {"name": "x"}}, "cluster.name=" + "{" * 3000 + "}" * 3000)
@example({"a": 1}, "a.b.c=1")
def test_set_is_applied_whole_or_not_at_all(data, expr):
    before = fingerprint(data)
    try:
        key = cfg.apply_set(data, expr)
    except cfg.ConfigError as e:
        assert fingerprint(data) == before, "a refused --set changed the configuration"
        assert len(e.problems) == 1 and e.problems[0].startswith("--set ")
        return
    node = data
    for part in key.split(".")[:-1]:
        node = node[part]
    assert key.split(".")[-1] in node or key in cfg.SCALAR_SECTIONS


@FUZZ
@given(RAW_CONFIG, st.lists(SET_EXPR, max_size=2))
@example({"bpf": {"monitorAggregationInterval": math.nan}}, [])  # "nans" passed validation
@example({"kvstore": {"leaseTTL": 10**400}}, [])  # OverflowError out of validation
@example({"kvstore": {"connectTimeout": "9" * 400 + "s"}}, [])
@example({"cluster": {"name\nx": 1}}, [])  # a problem must stay on one line
def test_validation_gives_a_config_or_one_line_per_problem(fuzz_dir, data, sets):
    try:
        config = cfg.validate(MODEL, gather_file(fuzz_dir, data, sets))
    except cfg.ConfigError as e:
        assert e.problems and all(p and "\n" not in p for p in e.problems), e.problems
        return
    # what `pylium print-config` shows validates again to the same configuration
    assert cfg.validate(MODEL, cfg.RawConfig(yaml.safe_load(cfg.to_yaml(config)))) == config
    for duration in (config.kvstore.leaseTTL, config.kvstore.connectTimeout, config.bpf.monitorAggregationInterval):
        assert 0 < cfg.parse_duration(duration) < math.inf


@pytest.mark.parametrize("path", leaves(CONFIGS["set"]), ids=dotted)
def test_a_config_value_replaced_by_a_mapping_is_refused_at_its_path(path):
    data = Mutation(path, "dict").apply(copy.deepcopy(CONFIGS["set"]))
    with pytest.raises(cfg.ConfigError) as e:
        cfg.validate(MODEL, cfg.gather(base=data))
    assert any(p.startswith(dotted(path) + ":") for p in e.value.problems), e.value.problems


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


CONFIG_FILE = st.one_of(
    cases(CONFIGS, kinds=SHALLOW).map(lambda c: yaml.safe_dump(c.doc(CONFIGS), allow_unicode=True).encode(
        "utf-8", "surrogatepass")),
    TEXT.map(lambda t: t.encode("utf-8", "surrogatepass")), st.binary(max_size=100),
    st.sampled_from([b"\xff\xfe", b"a: \xe9t\xe9", b"when: 2001-13-01", b"[" * 3000, b"a: [" * 300, b"- 1",
                     b"!!python/object/apply:os.system [true]", b"a: &x 1\nb: *y", b"\t- a", b"? [a]\n: b"]))


@FUZZ
@given(CONFIG_FILE)
@example(b"\xff\xfe")  # UnicodeDecodeError
@example(b"when: 2001-13-01")  # ValueError from YAML's timestamp
@example(b"[" * 3000)  # RecursionError
def test_config_file_loads_or_names_the_file(fuzz_dir, content):
    path = fuzz_dir / "config.yaml"
    path.write_bytes(content)
    try:
        data = cfg.load_file(path)
    except cfg.ConfigError as e:
        assert len(e.problems) == 1 and e.problems[0].startswith(f"{path}") and "\n" not in e.problems[0]
        return
    assert isinstance(data, dict)


# =============================================================================================
# Bus messages
# =============================================================================================

def _sample(t: Any) -> Any:
    """A valid value of a msgspec type."""
    mi = msgspec.inspect
    if isinstance(t, mi.StructType):
        return {f.encode_name: _sample(f.type) for f in t.fields}
    if isinstance(t, mi.UnionType):
        return _sample(next(x for x in t.types if not isinstance(x, mi.NoneType)))
    if isinstance(t, mi.LiteralType):
        return t.values[-1]
    if isinstance(t, (mi.ListType, mi.TupleType)):
        return [_sample(t.item_type)]
    if isinstance(t, mi.DictType):
        return {"k": _sample(t.value_type)}
    return {mi.StrType: "x", mi.IntType: 7, mi.BoolType: True, mi.FloatType: 1.5}[type(t)]


TOPICS = sorted(ev.VOCABULARY.types) + [f"{f}.synced" for f in sorted(ev.VOCABULARY.families())]
EVENTS = {topic: _sample(msgspec.inspect.type_info(ev.VOCABULARY.lookup(topic).model)) for topic in TOPICS}
HEADER = {"v": 1, "type": "agent.ready", "source": "outsider", "node": "n1", "seq": 1, "time": 1, "key": "k",
          "rev": 2, "replay": True}


def check_decode_error(e: Exception) -> None:
    assert isinstance(e, msgspec.DecodeError) and str(e)
    if isinstance(e, msgspec.ValidationError) and " at `$" in str(e):
        assert re.search(r"at `\$(\.\w+|\[\d+\]|\[\.\.\.\])*`$", str(e)), e  # [...]: a mapping's value


@MORE
@given(st.one_of(cases({"header": HEADER}).map(lambda c: to_json(c.doc({"header": HEADER})).encode(
    "utf-8", "surrogatepass")), bytes_mutated([json.dumps(HEADER).encode()])))
@example(b'{"v":' + b"[" * DEEP)
@example(b'{"v":2,"type":"a","source":"s","node":"n","seq":1,"time":1}')
def test_header_decodes_to_its_types_or_decode_error(raw):
    try:
        header = ev.decode_header(raw)
    except msgspec.DecodeError as e:
        check_decode_error(e)
        return
    assert all(isinstance(getattr(header, f), str) for f in ("type", "source", "node"))
    assert all(isinstance(getattr(header, f), int) for f in ("v", "seq", "time"))
    assert isinstance(header.replay, bool) and ev.decode_header(ev.encode(header)) == header


@MORE
@given(st.one_of(
    cases(EVENTS).map(lambda c: (c.base, to_json(c.doc(EVENTS)).encode("utf-8", "surrogatepass"))),
    st.tuples(st.sampled_from(TOPICS), bytes_mutated([json.dumps(e).encode() for e in EVENTS.values()])),
    st.tuples(TEXT | st.sampled_from(["plugin", "x.synced", "policy.synced.synced", "l7."]), st.binary(max_size=50))))
def test_payload_decodes_to_its_model_or_decode_error(topic_payload):
    topic, payload = topic_payload
    try:
        event = ev.VOCABULARY.decode(topic, payload)
    except ev.UnknownTopic:
        assert ev.VOCABULARY.lookup(topic) is None
        return
    except msgspec.DecodeError as e:
        check_decode_error(e)
        return
    assert isinstance(event, ev.VOCABULARY.lookup(topic).model)
    assert ev.VOCABULARY.decode(topic, ev.encode(event)) == event


def test_every_event_type_decodes_its_sample():
    for topic, sample in EVENTS.items():
        assert ev.to_builtins(ev.VOCABULARY.decode(topic, json.dumps(sample).encode())) == sample


GATE_REASONS = {"malformed", "oversized", "schema_version", "unknown_topic", "invalid_payload"}


@MORE
@given(st.one_of(
    cases(EVENTS).map(lambda c: [c.base.encode(), json.dumps({**HEADER, "type": c.base}).encode(),
                                 to_json(c.doc(EVENTS)).encode("utf-8", "surrogatepass")]),
    cases({"header": HEADER}).map(lambda c: [b"agent.ready", to_json(c.doc({"header": HEADER})).encode(
        "utf-8", "surrogatepass"), json.dumps(EVENTS["agent.ready"]).encode()]),
    st.lists(st.binary(max_size=40) | bytes_mutated([json.dumps(HEADER).encode()]), max_size=4)))
@example([b"\xff", json.dumps({**HEADER, "type": "\xff"}).encode(), b"{}"])
def test_the_gate_accepts_only_valid_messages(frames):
    gate = _Gate(SimpleNamespace(registry=ev.VOCABULARY, settings=SimpleNamespace(maxMessageBytes=4096)), {})
    problem = gate._check(frames)
    if problem is None:  # accepted: every subscriber can decode it
        header = ev.decode_header(frames[1])
        assert header.v == ev.SCHEMA_VERSION and header.type == frames[0].decode()
        ev.VOCABULARY.decode(header.type, frames[2])
    else:
        source, reason, detail = problem
        assert reason in GATE_REASONS and isinstance(source, str) and detail


def test_the_gate_names_each_reason():
    gate = _Gate(SimpleNamespace(registry=ev.VOCABULARY, settings=SimpleNamespace(maxMessageBytes=4096)), {})
    payload = json.dumps(EVENTS["agent.ready"]).encode()

    def frames(topic=b"agent.ready", body=payload, **header):
        return [topic, json.dumps({**HEADER, **header}).encode(), body]

    assert gate._check(frames()) is None
    assert gate._check(frames(v=2))[1:] == ("schema_version", "schema version 2, this agent speaks 1")
    assert gate._check(frames(body=b" " * 5000))[1] == "oversized"
    assert gate._check(frames(topic=b"nope", type="nope"))[1] == "unknown_topic"
    assert gate._check(frames(body=b'{"node": 1}'))[1:] == ("invalid_payload", "agent.ready: Expected `str`, got "
                                                                                  "`int` - at `$.node`")
    assert gate._check(frames(topic=b"agent.stopping"))[1] == "malformed"  # the header names another topic
    assert gate._check(frames()[:2])[1] == "malformed"


def test_a_subscriber_skips_a_message_of_another_schema_version():
    """A subscriber built against another version than the agent's: it names the version and skips it."""
    from pylium.core.bus.client import Subscription

    rejected = []
    sub = Subscription.__new__(Subscription)
    sub.registry, sub.name, sub._last = ev.VOCABULARY, "outsider", {}
    sub.rejects = SimpleNamespace(reject=lambda *why: rejected.append(why))
    payload = json.dumps(EVENTS["agent.ready"]).encode()
    sub.metrics = SimpleNamespace(bus_lost=mock.MagicMock())
    assert sub._decode([b"agent.ready", json.dumps({**HEADER, "replay": True}).encode(), payload]) is not None
    assert sub._decode([b"agent.ready", json.dumps({**HEADER, "v": 2}).encode(), payload]) is None
    assert rejected == [("subscriber:outsider", "undecodable", "schema version 2, this subscriber speaks 1")]


# =============================================================================================
# Policy documents and their L7 rules
# =============================================================================================

POLICIES = {name: yaml.safe_load(text) for name, text in {
    "cnp": r"""
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: web-policy
  namespace: shop
  annotations: {policy.pylium.io/audit-mode: "false"}
spec:
  description: everything at once
  endpointSelector:
    matchLabels: {app: web}
    matchExpressions:
    - {key: "k8s:tier", operator: In, values: [front, back]}
    - {key: env, operator: Exists}
  enableDefaultDeny: {ingress: true, egress: false}
  log: {value: web}
  labels:
  - {key: team, value: shop, source: k8s}
  ingress:
  - fromEndpoints:
    - matchLabels: {app: client}
    toPorts:
    - ports: [{port: "80", protocol: TCP}, {port: 8080, protocol: TCP}]
      rules:
        http:
        - method: GET
          path: /public.*
          host: shop\.example
          headers: ["X-Token: a"]
          headerMatches: [{name: X-Env, value: prod, mismatch: LOG}]
  - fromCIDRSet:
    - {cidr: 10.0.0.0/8, except: [10.96.0.0/12]}
    fromEntities: [host, world]
    toPorts:
    - ports: [{port: "9000", endPort: 9100, protocol: UDP}]
  - fromCIDR: [192.0.2.0/24]
    icmps:
    - fields: [{family: IPv4, type: EchoRequest}, {family: IPv6, type: 128}]
  ingressDeny:
  - fromCIDR: [192.0.2.1]
    toPorts:
    - ports: [{port: "22", protocol: TCP}]
  egress:
  - toFQDNs: [{matchName: api.example.com}, {matchPattern: "*.example.org"}]
  - toEndpoints:
    - matchLabels: {"k8s:io.kubernetes.pod.namespace": kube-system, k8s-app: kube-dns}
    toPorts:
    - ports: [{port: "53", protocol: ANY}]
      rules:
        dns: [{matchPattern: "*"}, {matchName: example.com}]
  egressDeny:
  - toEntities: [world]
""",
    "ccnp": r"""
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: cluster-wide}
specs:
- endpointSelector: {}
  ingress: [{}]
- endpointSelector: {matchLabels: {"reserved:host": ""}}
  egress:
  - toCIDR: ["2001:db8::/32"]
    toPorts: [{ports: [{port: "443"}]}]
""",
    "knp": r"""
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db, namespace: shop}
spec:
  podSelector: {matchLabels: {app: db}}
  policyTypes: [Ingress, Egress]
  ingress:
  - from:
    - podSelector: {matchLabels: {app: web}}
    - namespaceSelector: {matchLabels: {team: ops}}
      podSelector: {matchExpressions: [{key: role, operator: NotIn, values: [test]}]}
    - ipBlock: {cidr: 172.16.0.0/12, except: [172.16.1.0/24]}
    ports: [{port: 5432, protocol: TCP}, {port: 6000, endPort: 6010}]
  egress:
  - to: [{ipBlock: {cidr: 0.0.0.0/0}}]
    ports: [{port: 53, protocol: UDP}]
"""}.items()}
TOP_KEYS = {"apiVersion", "kind", "metadata", "spec", "specs", "status"}
PATH_SYNTAX = re.compile(r"[^.\[\]]+(\[\d+\])*(\.[^.\[\]]+(\[\d+\])*|\.[^\[\]]*[./][^\[\]]*)*")


def test_policy_examples_parse():
    policies = pm.parse_documents(list(POLICIES.values()), "examples.yaml")
    assert [(p.kind, p.namespace, p.name) for p in policies] == [
        ("CiliumNetworkPolicy", "shop", "web-policy"), ("CiliumClusterwideNetworkPolicy", "", "cluster-wide"),
        ("NetworkPolicy", "shop", "db")]
    assert policies[0].rules[0].ingress[0].ports[0].http and policies[0].rules[0].egress[1].ports[0].dns


def check_policy(policy: pm.Policy) -> None:
    """A usable policy: hashable (policies are keys and set members) and of the model's types."""
    hash(policy)
    assert policy.kind in pm.API_VERSIONS and isinstance(policy.name, str) and isinstance(policy.namespace, str)
    for rule in policy.rules:
        for peer in rule.ingress + rule.egress + rule.ingress_deny + rule.egress_deny:
            for port in peer.ports:
                assert 0 <= port.port <= 65535 and 0 <= port.end_port <= 65535 and port.protocol in pm.PROTOCOLS
            for cidr in peer.cidrs:
                assert str(cidr.cidr)


@MORE
@given(cases(POLICIES))
@example(Case("cnp", (Mutation(("metadata", "name"), "deep-list"),)))  # RecursionError quoting the value
@example(Case("cnp", (Mutation(("spec", "ingress", 0, "toPorts", 0, "rules", "http", 0, "path"), "text",
                               "(" * 3000),)))  # RecursionError compiling the regex
@example(Case("cnp", (Mutation(("spec", "ingress", 0, "toPorts", 0, "rules", "http", 0, "method"), "text",
                               "a{99999999999999999999}"),)))  # OverflowError compiling the regex
@example(Case("knp", (Mutation(("kind",), "deep-dict"),)))
@example(Case("cnp", (Mutation(("spec", "description"), "rename", "\nx"),)))  # a key with a newline in a path
def test_policy_document_parses_or_names_the_field(case):
    doc = case.doc(POLICIES)
    before = fingerprint(doc)
    try:
        policies = pm.parse_documents([doc], "fuzz.yaml")
    except pm.PolicyError as e:
        assert e.origin == "fuzz.yaml (document 1)" and str(e).startswith(e.origin + ": ")
        assert "\n" not in str(e) and len(str(e)) < 1000, "one line, values quoted shortly"
        if e.path:  # a field path, starting at one of the document's keys (or a required one)
            heads = TOP_KEYS | ({pm._segment(k) for k in doc} if isinstance(doc, dict) else set())
            assert any(e.path == h or e.path.startswith((h + ".", h + "[")) for h in heads), e.path
            assert str(e) == f"{e.origin}: {e.path}: {e.message}"
    else:
        assert len(policies) <= 1
        for policy in policies:
            check_policy(policy)
    assert fingerprint(doc) == before, "parsing changed the document"


@pytest.mark.parametrize("name, path", [(name, path) for name, doc in POLICIES.items() for path in leaves(doc)],
                         ids=lambda v: dotted(v) if isinstance(v, tuple) else v)
def test_a_policy_value_replaced_by_a_mapping_is_refused_at_its_path(name, path):
    doc = Mutation(path, "dict").apply(copy.deepcopy(POLICIES[name]))
    with pytest.raises(pm.PolicyError) as e:
        pm.parse_policy(doc)
    # the audit annotation's key has dots of its own: the error names the annotations
    expected = "metadata.annotations" if path[:2] == ("metadata", "annotations") else dotted(path)
    assert e.value.path == expected


HTTP_FIELDS = st.one_of(TEXT, st.sampled_from(["(" * 3000 + ")" * 3000, "a{99999999999999999999}", "(?P<x>a)(?P<x>b)",
                                               "[", "(?<=a+)b", "\\", "a**", "(a|b)*c", "X-Token: a", ": x"]))


@MORE
@given(HTTP_FIELDS, HTTP_FIELDS, HTTP_FIELDS, TEXT)
@example("(" * 3000 + ")" * 3000, "", "", "")  # RecursionError
@example("a{99999999999999999999}", "", "", "")  # OverflowError
def test_l7_rules_compile_or_raise_value_error(regex, header, name, query):
    for make in (lambda: l7.full_match(regex, "path"), lambda: l7.header(header),
                 lambda: l7.header_match(name, header, regex), lambda: l7.match_name(name),
                 lambda: l7.match_pattern(name)):
        try:
            rule = make()
        except ValueError as e:
            assert str(e) and "\n" not in str(e).split(": ", 1)[0]
            continue
        if isinstance(rule, l7.DnsRule):
            assert rule.allows(query) in (True, False)
            assert rule.allows(rule.text.replace("*", "x").lstrip(".")) or rule.any_prefix or not rule.labels
        elif isinstance(rule, re.Pattern):
            assert l7.HttpRule(path=rule).allows("GET", query, "h", {}) in (True, False)


# =============================================================================================
# Service and EndpointSlice manifests
# =============================================================================================

RANGE = (30000, 32767)
SERVICES = {
    "clusterip": {"kind": "Service", "metadata": {"name": "web", "namespace": "shop"},
                  "spec": {"clusterIP": "10.96.0.10", "ports": [
                      {"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"},
                      {"name": "dns", "port": 53, "targetPort": "dns", "protocol": "UDP"}]}},
    "nodeport": {"kind": "Service", "metadata": {"name": "np"},
                 "spec": {"type": "NodePort", "clusterIPs": ["10.96.0.11", "fd00::11"],
                          "ports": [{"port": 80, "targetPort": "8080", "nodePort": 30080}],
                          "externalIPs": ["192.0.2.10"], "externalTrafficPolicy": "Local",
                          "internalTrafficPolicy": "Cluster"}},
    "loadbalancer": {"kind": "Service", "metadata": {"name": "lb", "namespace": "shop"},
                     "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.12",
                              "ports": [{"port": 443, "nodePort": 30443}], "sessionAffinity": "ClientIP",
                              "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 600}}},
                     "status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.1"}, {"hostname": "lb.example"}]}}},
    "headless": {"kind": "Service", "metadata": {"name": "hl", "namespace": "shop"},
                 "spec": {"clusterIP": "None", "ports": [{"port": 80}]}},
    "externalname": {"kind": "Service", "metadata": {"name": "ext", "namespace": "shop"},
                     "spec": {"type": "ExternalName", "externalName": "db.example.com"}},
}
SLICE_LABELS = {"kubernetes.io/service-name": "web"}
SLICES = {
    "ipv4": {"kind": "EndpointSlice", "addressType": "IPv4",
             "metadata": {"name": "web-1", "namespace": "shop", "labels": SLICE_LABELS},
             "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
             "endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"ready": True, "serving": True,
                                                                     "terminating": False}, "nodeName": "node-1"},
                           {"addresses": ["10.0.0.2"], "conditions": {"ready": False, "terminating": True}}]},
    "ipv6": {"kind": "EndpointSlice", "addressType": "IPv6", "metadata": {"name": "web-2", "labels": SLICE_LABELS},
             "ports": [{"port": 8080}], "endpoints": [{"addresses": ["fd00::1"]}]},
    "fqdn": {"kind": "EndpointSlice", "addressType": "FQDN", "metadata": {"name": "web-3", "labels": SLICE_LABELS},
             "endpoints": [{"addresses": ["a.example"]}]},
}


def is_ipv4(text: Any) -> bool:
    try:
        socket.inet_pton(socket.AF_INET, text)
    except (OSError, TypeError):
        return False
    return True


def test_manifest_examples_parse():
    services = {name: lb.parse_service(doc, RANGE) for name, doc in SERVICES.items()}
    assert services["clusterip"].ports[1].target_port == "dns" and services["nodeport"].ports[0].target_port == 8080
    assert services["loadbalancer"].lb_ips == ("198.51.100.1",) and services["headless"].cluster_ips == ()
    assert [e.state for e in lb.parse_endpoint_slice(SLICES["ipv4"]).endpoints] == ["active", "terminating-not-serving"]
    assert lb.parse_endpoint_slice(SLICES["ipv6"]) is None and lb.parse_endpoint_slice(SLICES["fqdn"]) is None


def check_model_error(e: lb.ModelError) -> None:
    assert PATH_SYNTAX.fullmatch(e.path) or e.path == f"metadata.labels[{lb.SERVICE_NAME_LABEL}]", e.path
    assert str(e).startswith(e.path + ": ") and len(str(e)) < 6000


@MORE
@given(cases(SERVICES))
@example(Case("clusterip", (Mutation(("spec", "ports", 0, "targetPort"), "text", "²"),)))  # ValueError from int()
@example(Case("clusterip", (Mutation(("spec", "ports", 0, "targetPort"), "text", "9" * 5000),)))
@example(Case("clusterip", (Mutation(("spec", "ports", 0, "protocol"), "list"),)))  # TypeError: unhashable
@example(Case("clusterip", (Mutation(("metadata", "namespace"), "int"),)))  # a namespace that is no string
@example(Case("clusterip", (Mutation(("spec", "clusterIP"), "true"),)))  # True read as 0.0.0.1
@example(Case("clusterip", (Mutation(("spec", "ports", 0, "name"), "text", "http\n"),)))
def test_service_parses_or_names_the_field(case):
    doc = case.doc(SERVICES)
    assume(isinstance(doc, dict))  # the manifests index hands over mappings only (by their kind)
    before = fingerprint(doc)
    try:
        service = lb.parse_service(doc, RANGE)
    except lb.ModelError as e:
        check_model_error(e)
    else:
        hash(service)
        assert isinstance(service.namespace, str) and service.namespace and isinstance(service.name, str)
        assert all(is_ipv4(ip) for ip in service.cluster_ips + service.external_ips + service.lb_ips)
        for port in service.ports:
            assert lb.PORT_NAME.fullmatch(port.name) or port.name == ""
            assert port.protocol in ("TCP", "UDP", "SCTP") and 1 <= port.port <= 65535
            assert (1 <= port.target_port <= 65535 if isinstance(port.target_port, int)
                    else lb.PORT_NAME.fullmatch(port.target_port))
            assert port.node_port == 0 or RANGE[0] <= port.node_port <= RANGE[1]
    assert fingerprint(doc) == before, "parsing changed the document"


@MORE
@given(cases(SLICES))
@example(Case("ipv4", (Mutation(("ports", 0, "name"), "list"),)))  # TypeError: unhashable
@example(Case("ipv4", (Mutation(("endpoints", 0, "nodeName"), "dict"),)))  # a node name that is no string
@example(Case("ipv4", (Mutation(("endpoints", 0, "addresses", 0), "int"),)))  # 80 read as 0.0.0.80
def test_endpoint_slice_parses_or_names_the_field(case):
    doc = case.doc(SLICES)
    assume(isinstance(doc, dict))
    before = fingerprint(doc)
    try:
        parsed = lb.parse_endpoint_slice(doc)
    except lb.ModelError as e:
        check_model_error(e)
    else:
        if parsed is not None:
            hash(parsed.ports)
            assert all(isinstance(x, str) for x in (parsed.namespace, parsed.name, parsed.service))
            assert all(isinstance(n, str) and p in ("TCP", "UDP", "SCTP") and 1 <= num <= 65535
                       for n, p, num in parsed.ports)
            assert all(is_ipv4(e.address) and isinstance(e.node_name, str) for e in parsed.endpoints)
    assert fingerprint(doc) == before, "parsing changed the document"


@pytest.mark.parametrize("name, path", [(name, path) for name, doc in {**SERVICES, **SLICES}.items()
                                        for path in leaves(doc)],
                         ids=lambda v: dotted(v) if isinstance(v, tuple) else v)
def test_a_manifest_value_replaced_by_a_mapping_is_refused_at_its_path(name, path):
    doc = Mutation(path, "dict").apply(copy.deepcopy({**SERVICES, **SLICES}[name]))
    parse = lb.parse_endpoint_slice if name in SLICES else lambda d: lb.parse_service(d, RANGE)
    ignored = {("kind",), ("spec", "externalName"), ("status", "loadBalancer", "ingress", 1, "hostname")}
    if path in ignored or (name != "loadbalancer" and path[:1] == ("status",)) or (
            name == "fqdn" and path[:2] == ("endpoints", 0)):
        parse(doc)  # fields the load balancer does not read
        return
    with pytest.raises(lb.ModelError) as e:
        parse(doc)
    labels = path[:2] == ("metadata", "labels")
    assert e.value.path == (f"metadata.labels[{path[2]}]" if labels else dotted(path))


MANIFEST_FILE = st.one_of(
    cases(SERVICES, kinds=SHALLOW).map(lambda c: yaml.safe_dump(c.doc(SERVICES), allow_unicode=True).encode(
        "utf-8", "surrogatepass")),
    TEXT.map(lambda t: t.encode("utf-8", "surrogatepass")), st.binary(max_size=100),
    st.sampled_from([b"[" * 3000, b"kind: [Service]", b"kind: Service\nmetadata: {name: [a]}",
                     b"kind: List\nitems: [{kind: {a: 1}}]", b"\xff\xfe"]))


@FUZZ
@given(MANIFEST_FILE)
@example(b"[" * 3000)  # RecursionError
@example(b"kind: [Service]")  # TypeError: unhashable kind in the index
@example(b"kind: Service\nmetadata: {name: [a]}")  # TypeError: unhashable name
def test_manifest_directory_reads_any_file(fuzz_dir, content):
    """A file in the manifests directory loads, or is named with one line of error while the
    others stay in force."""
    from pylium.core.state.manifests import Manifests

    directory = fuzz_dir / "manifests"
    directory.mkdir(exist_ok=True)
    (directory / "good.yaml").write_text("kind: Service\nmetadata: {name: good}\n")
    path = directory / "fuzz.yaml"
    path.write_bytes(content)
    manifests = Manifests(directory, SimpleNamespace(error=lambda *a, **k: None))
    manifests.scan()
    assert ("default", "good") in manifests.objects("Service"), "the other files stay in force"
    if path in manifests.problems:
        assert "\n" not in manifests.problems[path]


# =============================================================================================
# The L7 proxies: HTTP requests and responses, DNS queries and answers, the policy snapshot
# =============================================================================================

IDENTITIES = {300: Identity(300, {"k8s:app": "web", "k8s:io.kubernetes.pod.namespace": "default"}, "cluster_local"),
              301: Identity(301, {"k8s:app": "client", "k8s:io.kubernetes.pod.namespace": "default"},
                            "cluster_local")}
PROXY_PORTS = {"http-ingress": 15001, "http-egress": 15002, "dns-egress": 15003}
LOCAL_IP, PEER_IP, DNS_SERVER = "10.0.0.7", "10.0.0.8", "10.0.0.53"


def _snapshot() -> dict:
    doc = {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy", "metadata": {"name": "l7"},
           "spec": {"endpointSelector": {"matchLabels": {"app": "web"}},
                    "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "client"}}],
                                 "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}], "rules": {"http": [
                                     {"method": "GET", "path": "/public.*"},
                                     {"path": "/token", "headers": ["X-Token: a"]}]}}]}],
                    "egress": [{"toEndpoints": [{"matchLabels": {"app": "client"}}],
                                "toPorts": [{"ports": [{"port": "53", "protocol": "ANY"}],
                                             "rules": {"dns": [{"matchPattern": "*.example.com"}]}}]}]}}
    policy = pm.parse_policy(doc)
    ep = Resolver([policy], IDENTITIES, {policy.key: 10}, proxy_ports=PROXY_PORTS).endpoint(IDENTITIES[300].labels)
    return json.loads(json.dumps(snapshot({7: ([LOCAL_IP], 300, ep)}, PROXY_PORTS, "Go away",
                                          {"dnsRejectRcode": 5, "dnsMaxDelay": 0.1, "tracing": None})))


SNAPSHOTS = {"policy": _snapshot()}


@pytest.fixture(scope="module")
def proxy_policy(fuzz_dir) -> L7Policy:
    path = fuzz_dir / "valid_l7_policy.json"
    path.write_text(json.dumps(SNAPSHOTS["policy"]))
    return L7Policy.load(path)


def test_the_proxy_policy_decides_as_written(proxy_policy):
    assert proxy_policy.decide_http(LOCAL_IP, 0, 301, 80, "GET", "/public/x", "h", {}) == (True, [10])
    assert proxy_policy.decide_http(LOCAL_IP, 0, 301, 80, "POST", "/public/x", "h", {}) == (False, [10])
    assert proxy_policy.decide_dns(LOCAL_IP, 301, 17, 53, "www.example.com.") == (True, [10])
    assert proxy_policy.decide_dns(LOCAL_IP, 301, 17, 53, "www.example.org.") == (False, [10])


def check_record(record: ev.L7Record) -> None:
    """What the proxy publishes reaches the agent: it decodes as an L7 event."""
    assert ev.VOCABULARY.decode("l7", ev.encode(record)) == record


class FakeWriter:
    def __init__(self, peer=(PEER_IP, 40000), own=(LOCAL_IP, 80)):
        self.data, self.closed = bytearray(), False
        self.sock = SimpleNamespace(setsockopt=lambda *a: None, getpeername=lambda: peer, getsockname=lambda: own)

    def get_extra_info(self, name):
        return self.sock if name == "socket" else None

    def write(self, data: bytes) -> None:
        self.data += data

    async def drain(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def _reader(data: bytes) -> asyncio.StreamReader:
    reader = asyncio.StreamReader(limit=http_proxy.READ_SIZE)
    reader.feed_data(data)
    reader.feed_eof()
    return reader


REQUESTS = [b"GET /public/a HTTP/1.1\r\nHost: shop\r\ntraceparent: 00-" + b"a" * 32 + b"-" + b"b" * 16 + b"-01\r\n\r\n",
            b"POST /public HTTP/1.1\r\nHost: shop\r\nContent-Length: 5\r\n\r\nhello",
            b"GET /token HTTP/1.1\r\nHost: shop\r\nX-Token: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n0\r\n\r\n",
            b"GET /public HTTP/1.0\r\n\r\nGET /public HTTP/1.1\r\nHost: x\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"GET /public/" + b"\xe9" * 10 + b" HTTP/1.1\r\nHost: \xff\r\nX: \x01\r\n\r\n"]
RESPONSES = [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
             b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
             b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"]


@FUZZ
@given(bytes_mutated(REQUESTS), bytes_mutated(RESPONSES), st.sampled_from(["http-ingress", "http-egress"]))
@example(b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X: y\r\n" * 3000 + b"\r\n", RESPONSES[0], "http-ingress")
def test_http_proxy_answers_any_bytes(proxy_policy, request_bytes, response_bytes, listener_name):
    records = []
    ctx = http_proxy.ProxyContext(policy=lambda: proxy_policy, identity_of=lambda ip: 301, emit=records.append,
                                  max_request_bytes=4096, node="n1")
    listener = http_proxy.HttpListener(listener_name, 15001, ctx)
    writer = FakeWriter(*(((PEER_IP, 40000), (LOCAL_IP, 80)) if listener_name == "http-ingress"
                          else ((LOCAL_IP, 40000), (PEER_IP, 80))))
    upstream_writer = FakeWriter()

    async def connect(self, identity):
        return http_proxy._Stream(h11.CLIENT, _reader(response_bytes), upstream_writer, 1 << 20)

    async def serve():
        with mock.patch.object(http_proxy._Connection, "_connect", connect):
            await listener._serve(_reader(request_bytes), writer)

    asyncio.run(serve())  # nothing escapes the connection's task
    assert writer.closed
    event("answer: " + (bytes(writer.data[9:12]).decode("latin-1") or "none"))
    assert not writer.data or re.match(rb"HTTP/1\.1 [1-5]\d\d ", bytes(writer.data)), bytes(writer.data[:80])
    for record in records:
        check_record(record)
    if upstream_writer.data:  # only allowed requests reach the server
        assert any(r.verdict == "FORWARDED" and r.kind == "REQUEST" for r in records)


def _dns_wires() -> tuple[list[bytes], list[bytes]]:
    queries, answers = [], []
    for name, rdtype in (("www.example.com.", "A"), ("a.example.com.", "AAAA"), ("www.example.org.", "TXT")):
        q = dns.message.make_query(name, rdtype, use_edns=rdtype == "AAAA")
        queries.append(q.to_wire())
        r = dns.message.make_response(q)
        r.answer.append(dns.rrset.from_text(name, 60, "IN", "CNAME", "real.example.com."))
        r.answer.append(dns.rrset.from_text("real.example.com.", 30, "IN", "A", "192.0.2.1", "192.0.2.2"))
        r.answer.append(dns.rrset.from_text("real.example.com.", 30, "IN", "AAAA", "2001:db8::1"))
        answers.append(r.to_wire())
    return queries, answers


DNS_QUERIES, DNS_ANSWERS = _dns_wires()


@FUZZ
@given(bytes_mutated(DNS_QUERIES), bytes_mutated(DNS_ANSWERS), st.sampled_from([socket.IPPROTO_UDP,
                                                                                 socket.IPPROTO_TCP]))
def test_dns_proxy_answers_any_query_and_survives_any_answer(proxy_policy, query, answer, proto):
    records, observed = [], []
    ctx = http_proxy.ProxyContext(policy=lambda: proxy_policy, identity_of=lambda ip: 301, emit=records.append)

    async def observe(ep_id, name, ips, ttl):
        observed.append((ep_id, name, ips, ttl))

    async def upstream(self, wire, server, identity, proto):
        return answer

    async def handle():
        listener = dns_proxy.DnsListener(15003, ctx, observe)
        with mock.patch.object(dns_proxy.DnsListener, "_upstream", upstream):
            return await listener.handle(query, (LOCAL_IP, 5353), (DNS_SERVER, 53), proto)

    out = asyncio.run(handle())
    assert out is None or isinstance(out, bytes)
    event("answer: " + ("none" if out is None else "forwarded" if out == answer else f"rcode {out[3] & 0xF}"))
    if out is not None and out != answer:  # our own answer: the query's id, a response
        assert out[:2] == query[:2] and len(out) >= 12 and out[2] & 0x80
    for record in records:
        check_record(record)
    for ep_id, name, ips, ttl in observed:
        assert ep_id == 7 and isinstance(name, str) and all(isinstance(ip, str) for ip in ips) and ttl >= 0


@FUZZ
@given(st.lists(st.tuples(st.sampled_from([socket.SOL_IP, socket.IPPROTO_IPV6, 0]),
                          st.sampled_from([dns_proxy.IP_RECVORIGDSTADDR, dns_proxy.IPV6_RECVORIGDSTADDR, 1]),
                          st.binary(max_size=32)), max_size=3))
def test_original_destination_reads_any_ancillary_data(ancillary):
    found = dns_proxy.original_destination(ancillary)
    assert found is None or (isinstance(found[0], str) and 0 <= found[1] <= 65535)


SNAPSHOT_FILE = st.one_of(
    cases(SNAPSHOTS).map(lambda c: to_json(c.doc(SNAPSHOTS)).encode("utf-8", "surrogatepass")),
    bytes_mutated([json.dumps(SNAPSHOTS["policy"]).encode()]),
    st.sampled_from([b"", b"[]", b"null", b"\xff", b"[" * DEEP, b'{"ports": {}, "endpoints": {"x": {}}}']))


@FUZZ
@given(SNAPSHOT_FILE)
@example(b'{"ports": {}, "endpoints": {"7": {"ips": [], "identity": 1, "entries": [[0, 0, 6, 80, 96, false, '
         b'["{\\"path\\": \\"(\\"}"], [1], null]]}}}')  # PolicyError from the rule: not naming the entry
@example(b'{"ports": {}, "endpoints": {"7": {"ips": [], "identity": 1, "entries": [[0, 0]]}}}')  # ValueError: unpack
@example(b'{"ports": {}, "endpoints": {"7": {"ips": [], "identity": 1, "entries": [[[], 0, 6, 80, 96, false, '
         b'null, [], null]]}}}')  # TypeError: unhashable Key
@example(b'{"ports": [], "endpoints": {}}')  # TypeError
@example(b'{"ports": {}, "endpoints": {}, "tracing": ' + b"[" * DEEP + b"]" * DEEP + b"}")
def test_policy_snapshot_loads_or_names_the_field(fuzz_dir, content):
    path = fuzz_dir / "l7_policy.json"
    path.write_bytes(content)
    try:
        policy = L7Policy.load(path)
    except ValueError as e:  # the proxy keeps its previous policy
        text = str(e)
        if isinstance(e, msgspec.ValidationError) and "- at `$" in text:  # names the field
            assert re.search(r"at `\$(\.\w+|\[\d+\]|\[\.\.\.\])+`$", text), text
        elif not isinstance(e, msgspec.DecodeError):  # a rule: names the endpoint's entry
            assert re.match(r"(endpoints\.\d+\.entries\[\d+\]: .|nested too deeply)", text), text
        return
    assert all(isinstance(k, str) and isinstance(v, int) for k, v in policy.ports.items())
    assert isinstance(policy.deny_message, str) and isinstance(policy.dns_reject_rcode, int)
    assert math.isfinite(policy.dns_max_delay) and (policy.tracing is None or isinstance(policy.tracing, dict))
    for ip, local in policy.by_ip.items():
        assert isinstance(ip, str) and isinstance(local.ep_id, int) and isinstance(local.identity, int)
        hash(tuple(local.policy.entries))
        # and it can decide: the proxies call these on every request
        assert policy.decide_http(ip, 0, 301, 80, "GET", "/public", "h", {})[0] in (True, False)
        assert policy.decide_dns(ip, 301, 17, 53, "www.example.com.")[0] in (True, False)

"""Configuration: files, --set, aliases, validation messages, --print-config, exit 78."""

from __future__ import annotations

import subprocess

import pytest
import yaml
from pydantic import Field

from pylium.core import config as cfg
from pylium.core.config import ConfigError, Section
from pylium.plugins.connectivity.config import ConnectivityConfig
from pylium.plugins.policy.config import PolicyConfig
from helpers import BIN


class _Lb(Section):
    algorithm: str = Field("random", pattern="^(random|maglev)$")


class _Owned(Section):
    """Owns the keys the seed's spellings translate to, and the plugins' translations."""

    aliases = {**ConnectivityConfig.aliases, **PolicyConfig.aliases}

    loadBalancer: _Lb = Field(default_factory=_Lb)
    routingMode: str = "tunnel"
    tunnelProtocol: str = "vxlan"
    policyEnforcementMode: str = "default"


def _validate(data=None, sets=(), contributions=None, files=()):
    contributions = contributions or {}
    raw = cfg.gather(files, list(sets), base=data, models=list(contributions.values()))
    return cfg.validate(cfg.build_model(contributions), raw)


def test_defaults_are_cilium_like():
    c = _validate()
    assert c.cluster.name == "default"
    assert c.prometheus.port == 9962
    assert c.plugins.disabled == []


def test_set_overrides_types_like_helm():
    c = _validate(sets=["prometheus.port=0", "cluster.name=east", "plugins.disabled={a,b}", "debug.enabled=true"])
    assert c.prometheus.port == 0 and c.cluster.name == "east"
    assert c.plugins.disabled == ["a", "b"] and c.debug.enabled is True


def test_set_wins_over_file(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("cluster:\n  name: fromfile\n  id: 3\n")
    c = _validate(files=[f], sets=["cluster.name=fromset"])
    assert (c.cluster.name, c.cluster.id) == ("fromset", 3)


def test_later_file_wins(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("cluster: {name: a, id: 1}\n")
    b.write_text("cluster: {name: b}\n")
    c = _validate(files=[a, b])
    assert (c.cluster.name, c.cluster.id) == ("b", 1)


def test_unknown_key_names_path_and_allowed_keys():
    with pytest.raises(ConfigError) as e:
        _validate({"prometheus": {"prot": 1}, "nosuch": 1})
    problems = e.value.problems
    assert "prometheus.prot: unknown key (allowed here: address, enabled, port)" in problems
    assert any(p.startswith("nosuch: unknown key (allowed here: bpf, bus, cluster, debug, etcd, ipv4, ipv6, kvstore, plugins, prometheus, standalone)") for p in problems)
    assert len(problems) == 2  # one line per problem


def test_wrong_type_and_bad_value_each_reported():
    with pytest.raises(ConfigError) as e:
        _validate({"prometheus": {"port": "ninety"}, "cluster": {"id": 999}})
    text = "\n".join(e.value.problems)
    assert "prometheus.port: Input should be a valid integer" in text and "'ninety'" in text
    assert "cluster.id: Input should be less than or equal to 255 (got 999)" in text


def test_set_problem_is_attributed():
    with pytest.raises(ConfigError) as e:
        _validate(sets=["prometheus.port=-1"])
    assert e.value.problems == ["prometheus.port (from --set): Input should be greater than or equal to 0 (got -1)"]


@pytest.mark.parametrize("expr", ["noequals", "=1", "a..b=1"])
def test_malformed_set(expr):
    with pytest.raises(ConfigError, match="--set"):
        cfg.gather([], [expr])


def test_set_into_a_value_is_an_error():
    with pytest.raises(ConfigError, match="cluster.name is a value"):
        cfg.gather([], ["cluster.name=x", "cluster.name.deep=1"])


def test_yaml_errors_name_the_file_and_line(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("cluster:\n  name: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad.yaml \(line \d+, column \d+\): invalid YAML"):
        cfg.gather([f])
    f.write_text("- a list\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        cfg.gather([f])
    with pytest.raises(ConfigError, match="cannot read config file"):
        cfg.gather([tmp_path / "missing.yaml"])


def test_seed_aliases_translate_to_current_keys():
    seed = {"datapath": {"mode": "vxlan"}, "policyEnforcement": "always", "loadBalancer": {"algorithm": "maglev"}}
    c = _validate(seed, contributions={"owned": _Owned})
    assert (c.routingMode, c.tunnelProtocol, c.policyEnforcementMode) == ("tunnel", "vxlan", "always")
    c = _validate({"tunnel": "disabled"}, contributions={"owned": _Owned})
    assert c.routingMode == "native"


def test_the_seeds_routing_spellings_are_aliases():
    conn = {"connectivity": ConnectivityConfig}
    for written, mode, protocol in (({"datapath": {"mode": "native"}}, "native", "vxlan"),
                                    ({"tunnel": "disabled"}, "native", "vxlan"),
                                    ({"tunnel": "vxlan"}, "tunnel", "vxlan"),
                                    ({"tunnel": "geneve"}, "tunnel", "geneve")):
        c = _validate(written, contributions=conn)
        assert (c.routingMode, c.tunnelProtocol) == (mode, protocol), written
    with pytest.raises(ConfigError) as e:
        _validate({"tunnel": "gre"}, contributions=conn)
    assert e.value.problems == ["tunnel: must be one of 'vxlan', 'geneve', 'native' or 'disabled' (got 'gre')"]
    with pytest.raises(ConfigError) as e:
        _validate({"routingMode": "bgp"}, contributions=conn)
    assert e.value.problems[0].startswith("routingMode: Input should be 'tunnel' or 'native'")


def test_alias_conflicting_with_new_key():
    with pytest.raises(ConfigError, match="conflicts with policyEnforcementMode"):
        cfg.gather([], ["policyEnforcement=always", "policyEnforcementMode=never"], models=[PolicyConfig])


def test_chart_only_keys_warn_instead_of_failing():
    raw = cfg.gather([], ["operator.replicas=1", "image.pullPolicy=IfNotPresent"])
    assert "operator" not in raw.data and "image" not in raw.data
    assert any("operator" in w for w in raw.warnings)


def test_plugin_keys_conflicting_with_core_is_an_error():
    class Bad(Section):
        cluster: int = 1

    with pytest.raises(ConfigError, match="'cluster' is already owned by core"):
        cfg.build_model({"bad": Bad})


def test_plugin_section_validated_with_full_path():
    with pytest.raises(ConfigError) as e:
        _validate({"loadBalancer": {"algorithm": "fastest"}}, contributions={"owned": _Owned})
    assert e.value.problems[0].startswith("loadBalancer.algorithm: String should match pattern")


class _CoreBpfToo(Section):
    class Bpf(Section):
        policyMapMax: int = Field(16384, ge=256)

    bpf: Bpf = Field(default_factory=Bpf)


def test_a_shared_section_gets_keys_from_each_owner_and_each_sees_its_own():
    c = _validate(sets=["bpf.policyMapMax=300", "bpf.monitorInterval=7s"], contributions={"policy": _CoreBpfToo})
    assert (c.bpf.policyMapMax, c.bpf.monitorAggregationInterval) == (300, "7s")
    mine = cfg.project(_CoreBpfToo, c)
    assert mine.bpf.policyMapMax == 300 and not hasattr(mine.bpf, "monitorAggregation")
    core = cfg.project(cfg.CoreConfig, c)
    assert core.bpf.aggregation_level() == 3 and not hasattr(core.bpf, "policyMapMax")
    with pytest.raises(ConfigError) as e:
        _validate({"bpf": {"bogus": 1}}, contributions={"policy": _CoreBpfToo})
    assert "policyMapMax" in e.value.problems[0] and "monitorAggregation" in e.value.problems[0]


def test_one_leaf_key_of_a_shared_section_has_one_owner():
    class Clash(Section):
        class Bpf(Section):
            monitorAggregation: str = "x"

        bpf: Bpf = Field(default_factory=Bpf)

    with pytest.raises(ConfigError, match="'bpf.monitorAggregation' is already owned by core"):
        cfg.build_model({"clash": Clash})


def test_a_plugins_own_validators_apply_at_its_top_level():
    with pytest.raises(ConfigError) as e:
        _validate({"policyEnforcementMode": "bogus"}, contributions={"policy": PolicyConfig})
    assert e.value.problems == ["policyEnforcementMode: must be one of default, always, never (got 'bogus')"]


# --- through the real binary ------------------------------------------------------------------


def _agent(*args, timeout=60):
    return subprocess.run([str(BIN / "pylium-agent"), *args], capture_output=True, text=True, timeout=timeout)


def test_agent_exits_78_with_one_line_per_problem(agent_dirs, tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("prometheus:\n  port: high\nbogus: 1\n")
    r = _agent(*agent_dirs.args(), "--config", str(f), "--set", "cluster.id=300")
    assert r.returncode == 78, r.stderr
    lines = [l for l in r.stderr.splitlines() if l.startswith("config error:")]
    assert len(lines) == 3, r.stderr
    assert any("prometheus.port" in l for l in lines)
    assert any("bogus: unknown key" in l for l in lines)
    assert any("cluster.id (from --set)" in l for l in lines)
    assert not agent_dirs.run_dir.exists(), "nothing may start on a config error"


def test_seed_spellings_of_plugin_keys_through_the_agent(agent_dirs, tmp_path):
    f = tmp_path / "seed.yaml"
    f.write_text("policyEnforcement: always\nhostServices:\n  enabled: false\nkubeProxyReplacement: strict\n"
                 "bpf:\n  monitorInterval: 9s\n  lbMapMax: 1024\n")
    r = _agent(*agent_dirs.args(), "--config", str(f), "--print-config")
    assert r.returncode == 0, r.stderr
    printed = yaml.safe_load(r.stdout)
    assert printed["policyEnforcementMode"] == "always" and printed["socketLB"]["enabled"] is False
    assert printed["kubeProxyReplacement"] is True
    assert printed["bpf"]["monitorAggregationInterval"] == "9s" and printed["bpf"]["lbMapMax"] == 1024
    r = _agent(*agent_dirs.args(), "--set", "policyEnforcementMode=bogus", "--set", "serviceNoBackendResponse=x",
               "--print-config")
    assert r.returncode == 78
    assert "policyEnforcementMode (from --set): must be one of default, always, never" in r.stderr
    assert "serviceNoBackendResponse (from --set): must be reject or drop" in r.stderr


def test_print_config_is_effective_yaml(agent_dirs, tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("cluster:\n  name: fromfile\n")
    r = _agent(*agent_dirs.args(), "--config", str(f), "--set", "prometheus.port=1234", "--print-config")
    assert r.returncode == 0, r.stderr
    printed = yaml.safe_load(r.stdout)
    assert printed["cluster"] == {"name": "fromfile", "id": 0}
    assert printed["prometheus"]["port"] == 1234
    assert not agent_dirs.run_dir.exists()
    # the printed config is itself a valid config file
    again = tmp_path / "again.yaml"
    again.write_text(r.stdout)
    r2 = _agent(*agent_dirs.args(), "--config", str(again), "--print-config")
    assert r2.returncode == 0 and yaml.safe_load(r2.stdout) == printed

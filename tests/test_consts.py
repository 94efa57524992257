"""Numbers and layouts shared by C and Python are written once: the generated constant
modules are current, and every shared struct compiled by gcc has its ctypes mirror's layout."""

from __future__ import annotations

import ctypes as ct
from pathlib import Path

import pytest

from pylium.core.datapath import consts, constgen, structs
from pylium.plugins.connectivity import maps as connectivity_maps
from pylium.plugins.lb import maps as lb_maps
from pylium.plugins.policy import maps as policy_maps
from pylium.testing.layout import check_layout, structs_in

ROOT = Path(__file__).parent.parent
CORE = ROOT / "bpf" / "include" / "pylium_structs.h"
LB = ROOT / "plugins" / "lb" / "bpf" / "lb_structs.h"
POLICY = ROOT / "plugins" / "policy" / "bpf" / "policy_maps.h"
CONNECTIVITY = ROOT / "plugins" / "connectivity" / "bpf" / "connectivity_maps.h"

MIRRORS = {
    CORE: {"endpoint_key": structs.EndpointKey, "endpoint_info": structs.EndpointInfo, "lxc_info": structs.LxcInfo,
           "ipcache_key": structs.IpcacheKey, "ipcache_info": structs.IpcacheInfo,
           "metrics_value": structs.MetricsValue, "pylium_event": structs.Event, "flow_key": structs.FlowKey,
           "flow_state": structs.FlowState, "fast_key": structs.FastKey, "fast_entry": structs.FastEntry,
           "fast_state": structs.FastState},
    LB: {"lb4_key": lb_maps.Lb4Key, "lb4_service": lb_maps.Lb4Service, "lb4_backend": lb_maps.Lb4Backend,
         "lb4_reverse_nat": lb_maps.Lb4ReverseNat, "lb_affinity_key": lb_maps.LbAffinityKey,
         "lb_affinity_val": lb_maps.LbAffinityVal, "lb4_sk_key": lb_maps.Lb4SkKey, "lb4_sk_val": lb_maps.Lb4SkVal,
         "lb4_ct_key": lb_maps.Lb4CtKey, "lb4_ct_entry": lb_maps.Lb4CtEntry, "lb_device": lb_maps.LbDevice,
         "lb_maglev": lb_maps.maglev_struct(16381)},  # LB_MAGLEV_M's default, as gcc compiles it
    POLICY: {"policy_key": policy_maps.PolicyKey, "policy_entry": policy_maps.PolicyEntry,
             "policy_endpoint": policy_maps.PolicyEndpoint, "ct_entry": policy_maps.CtEntry,
             "policy_settings": policy_maps.PolicySettings},
    CONNECTIVITY: {"tunnel_config": connectivity_maps.TunnelConfig},
}


@pytest.mark.parametrize("header, module, groups, title", constgen.GENERATED, ids=[g[1] for g in constgen.GENERATED])
def test_generated_constants_are_current(header, module, groups, title):
    assert constgen._render_at(ROOT, header, groups, title) == (ROOT / module).read_text(), \
        f"{module} is stale: run `make consts`"


def test_groups_become_enums_and_tables():
    assert consts.Slot.FROM_POLICY.value == ("from-container", 2) and consts.Slot.TO_DELIVERY.index == 7
    assert consts.DropReason.POLICY == 133 and consts.DROP_REASONS[133] == ("POLICY_DENIED", "Policy denied")
    assert consts.OBSERVATION_POINTS[consts.TracePoint.TO_LXC] == ("to-endpoint", "TO_ENDPOINT")
    assert consts.RESERVED_IDENTITIES[consts.ReservedIdentity.WORLD] == "reserved:world"
    assert consts.MESSAGE_TYPES == {1: "drop", 4: "trace", 5: "policy-verdict", 129: "l7"}
    assert consts.EventFlag.REPLY | consts.EventFlag.REPLY_KNOWN == 0x3


def test_the_generator_reads_any_header(tmp_path):
    header = tmp_path / "x.h"
    header.write_text("#define X_A 1 /* first */\n#define X_B 0x10\n#define NOT_A_NUMBER foo()\n"
                      "#define LONG 5 /* a comment that goes on\n * below */\n")
    text = constgen.render(header, (constgen.Group("X_", "X", doc="X things."),))
    scope: dict = {}
    exec(text, scope)
    assert (scope["X_A"], scope["X_B"], scope["LONG"]) == (1, 0x10, 5) and "NOT_A_NUMBER" not in scope
    assert scope["X"].B == 16 and "X_A = 1  # first" in text and "LONG = 5  # a comment that goes on below" in text


# Structs that only the programs use (packet headers, bcc's ring buffer table): no mirror.
C_ONLY = {"events_table_t", "arp_eth", "l4_tuple", "icmp_reject"}


def test_every_struct_in_the_c_has_a_mirror_or_is_c_only():
    sources = [*(ROOT / "bpf").rglob("*.[ch]"), *(ROOT / "plugins").glob("*/bpf/*.[ch]")]
    found = {name: path.relative_to(ROOT) for path in sources for name in structs_in(path)}
    mirrored = {name for mirrors in MIRRORS.values() for name in mirrors}
    assert {n: str(p) for n, p in found.items() if n not in mirrored | C_ONLY} == {}, \
        "a struct without a mirror: add it to MIRRORS (or to C_ONLY if Python never reads it)"


@pytest.mark.parametrize("header", list(MIRRORS), ids=lambda h: h.name)
def test_every_shared_struct_has_its_mirrors_layout(header):
    mirrors = MIRRORS[header]
    assert sorted(structs_in(header)) == sorted(mirrors), "a struct without a checked mirror"
    first = [LB.with_name("lb_consts.h")] if header == LB else []  # what the programs include before it
    assert check_layout([*first, header], mirrors) == []


def test_the_layout_check_finds_a_difference(tmp_path):
    header = tmp_path / "s.h"
    header.write_text("struct thing {\n    __u32 a;\n    __u16 b;\n    __u16 c;\n};\n")

    class Wrong(ct.Structure):
        _fields_ = [("a", ct.c_uint32), ("b", ct.c_uint32), ("c", ct.c_uint16)]

    problems = check_layout([header], {"thing": Wrong})
    assert "struct thing: sizeof 8 in C, 12 in Wrong" in problems
    assert "struct thing.b: offset 4 size 2 in C, offset 4 size 4 in Wrong" in problems
    assert "struct thing.c: offset 6 size 2 in C, offset 8 size 2 in Wrong" in problems

    class Gappy(ct.Structure):  # a member C adds in the mirror's implicit padding would go unseen
        _fields_ = [("a", ct.c_uint32), ("b", ct.c_uint16)]

    header.write_text("struct thing {\n    __u32 a;\n    __u16 b;\n    __u16 c;\n};\n")
    assert check_layout([header], {"thing": Gappy}) == [
        "struct thing: Gappy leaves 2 bytes of padding unnamed (name them: a C member there would go unseen)"]

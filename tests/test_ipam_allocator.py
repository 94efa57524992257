"""The IPAM allocator as pure logic, including property tests over allocate/release sequences."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from pydantic import ValidationError

from pylium.plugins.ipam.allocator import Allocator, Conflict, Exhausted, IpamError, NeedsBlock, Owner, UnknownPool
from pylium.plugins.ipam.config import IpamSettings


def _alloc(cidr_v4="10.9.0.0/29", cidr_v6=None, can_grow=False) -> Allocator:
    a = Allocator()
    if cidr_v4:
        a.add_pool("default", 4, [cidr_v4], ipaddress.ip_network(cidr_v4).prefixlen, can_grow)
        a.add_block("default", 4, cidr_v4)
    if cidr_v6:
        a.add_pool("default", 6, [cidr_v6], ipaddress.ip_network(cidr_v6).prefixlen, can_grow)
        a.add_block("default", 6, cidr_v6)
    return a


def test_reserved_addresses_are_never_handed_out():
    a = _alloc("10.9.0.0/29")
    got = {a.allocate(Owner(f"c{i}", "eth0")).addresses[0].ip for i in range(5)}
    assert got == {"10.9.0.2", "10.9.0.3", "10.9.0.4", "10.9.0.5", "10.9.0.6"}
    with pytest.raises(Exhausted):
        a.allocate(Owner("c5", "eth0"))


def test_gateway_is_the_router_address():
    alloc = _alloc("10.9.0.0/24").allocate(Owner("c", "eth0"))
    assert alloc.addresses[0].gateway == "10.9.0.1"
    assert alloc.as_dict()["addresses"][0]["cidr"].endswith("/24")


def test_same_owner_gets_the_same_address():
    a = _alloc("10.9.0.0/24")
    first = a.allocate(Owner("c", "eth0"))
    again = a.allocate(Owner("c", "eth0"))
    assert again.addresses == first.addresses
    other = a.allocate(Owner("c", "eth1"))
    assert other.addresses[0].ip != first.addresses[0].ip


def test_exhaustion_names_pool_cidrs_and_usage():
    a = _alloc("10.9.0.0/29")
    for i in range(5):
        a.allocate(Owner(f"c{i}", "eth0"))
    with pytest.raises(Exhausted) as e:
        a.allocate(Owner("late", "eth0"))
    assert str(e.value) == ("pool default (ipv4) is exhausted: 5/5 addresses in use in this node's blocks "
                            "10.9.0.0/29 (pool CIDRs 10.9.0.0/29)")
    assert "late/eth0" not in a.by_owner


def test_dual_stack_is_all_or_nothing():
    a = _alloc("10.9.0.0/24", "fd00:9::/126")  # IPv6 /126: 4 addresses, network + router reserved
    ok = a.allocate(Owner("a", "eth0"))
    assert {x.family for x in ok.addresses} == {4, 6}
    a.allocate(Owner("b", "eth0"))
    used_v4 = a.pools["default"][4].used
    with pytest.raises(Exhausted):
        a.allocate(Owner("c", "eth0"))
    assert a.pools["default"][4].used == used_v4, "the IPv4 address must be given back"
    v4_only = a.allocate(Owner("c", "eth0"), families=[4])
    assert [x.family for x in v4_only.addresses] == [4]


def test_requested_addresses():
    a = _alloc("10.9.0.0/24")
    assert a.allocate(Owner("a", "eth0"), requested=["10.9.0.77"]).addresses[0].ip == "10.9.0.77"
    with pytest.raises(Conflict, match="already allocated to a/eth0"):
        a.allocate(Owner("b", "eth0"), requested=["10.9.0.77"])
    with pytest.raises(Conflict, match="router address"):
        a.allocate(Owner("b", "eth0"), requested=["10.9.0.1"])
    with pytest.raises(Conflict, match="broadcast address"):
        a.allocate(Owner("b", "eth0"), requested=["10.9.0.255"])
    with pytest.raises(IpamError, match="10.8.0.5 is outside pool default"):
        a.allocate(Owner("b", "eth0"), requested=["10.8.0.5"])
    with pytest.raises(IpamError, match="not an IP address"):
        a.allocate(Owner("b", "eth0"), requested=["10.9.0.x"])
    with pytest.raises(Conflict, match="already holds 10.9.0.77"):
        a.allocate(Owner("a", "eth0"), requested=["10.9.0.78"])
    assert "b/eth0" not in a.by_owner


def test_release_is_idempotent_and_per_container():
    a = _alloc("10.9.0.0/24")
    a.allocate(Owner("c", "eth0"))
    a.allocate(Owner("c", "eth1"))
    a.allocate(Owner("d", "eth0"))
    assert [x.owner.interface for x in a.release("c", "eth1")] == ["eth1"]
    assert a.release("c", "eth1") == []
    assert [x.owner.key for x in a.release("c")] == ["c/eth0"]
    assert a.release("nobody") == []
    assert list(a.by_owner) == ["d/eth0"]


def test_unknown_pool_and_growth():
    a = Allocator()
    a.add_pool("blue", 4, ["10.7.0.0/24"], 28, can_grow=True)
    with pytest.raises(UnknownPool, match="no pool given and there is no pool named 'default'"):
        a.allocate(Owner("c", "eth0"))
    with pytest.raises(UnknownPool, match="unknown pool 'red'"):
        a.allocate(Owner("c", "eth0"), pool="red")
    with pytest.raises(NeedsBlock):
        a.allocate(Owner("c", "eth0"), pool="blue")
    a.add_block("blue", 4, "10.7.0.0/28")
    assert a.allocate(Owner("c", "eth0"), pool="blue").addresses[0].block == "10.7.0.0/28"
    with pytest.raises(Conflict, match="already has addresses from pool blue"):
        a.allocate(Owner("c", "eth0"), pool="default")


def test_released_address_is_not_reused_at_once():
    a = _alloc("10.9.0.0/24")
    first = a.allocate(Owner("a", "eth0")).addresses[0].ip
    a.release("a")
    assert a.allocate(Owner("b", "eth0")).addresses[0].ip != first


@pytest.mark.parametrize("data, message", [
    ({"mode": "kubernetes"}, "kubernetes mode needs ipam.podCIDRs"),
    ({"mode": "multi-pool"}, "multi-pool mode needs at least one pool"),
    ({"operator": {"clusterPoolIPv4PodCIDRList": ["10.0.0.0/33"]}}, "is not a CIDR"),
    ({"operator": {"clusterPoolIPv4PodCIDRList": ["10.0.0.1/8"]}}, "is not a CIDR"),
    ({"operator": {"clusterPoolIPv4PodCIDRList": ["10.0.0.0/8", "10.1.0.0/16"]}}, "overlap"),
    ({"operator": {"clusterPoolIPv4PodCIDRList": ["fd00::/64"]}}, "is not an IPv4 CIDR"),
    ({"clusterPoolIPv4MaskSize": 4}, "mask size 4 is shorter than the prefix of 10.0.0.0/8"),
    ({"mode": "multi-pool", "pools": {"a": {"ipv4": {"cidrs": ["10.1.0.0/16"], "maskSize": 8}}}}, "maskSize 8"),
    ({"podCIDRs": ["10.1.0.0/24", "10.2.0.0/24"]}, "at most one CIDR per address family"),
])
def test_config_validation(data, message):
    with pytest.raises(ValidationError, match=message):
        IpamSettings.model_validate(data)


def test_flat_operator_keys_and_cilium_pool_name():
    s = IpamSettings.model_validate({"clusterPoolIPv4PodCIDRList": ["10.20.0.0/16"], "clusterPoolIPv4MaskSize": 26,
                                     "mode": "multi-pool", "operator": {"autoCreateCiliumPodIPPools": {
                                         "default": {"ipv4": {"cidrs": ["10.30.0.0/16"], "maskSize": 24}}}}})
    assert s.operator.clusterPoolIPv4PodCIDRList == ["10.20.0.0/16"] and s.operator.clusterPoolIPv4MaskSize == 26
    assert s.all_pools()["default"].ipv4.cidrs == ["10.30.0.0/16"]


# --- properties ---------------------------------------------------------------------------


class AllocatorMachine(RuleBasedStateMachine):
    """Any interleaving of allocations, re-allocations and releases over a small dual-stack
    pool: no address is ever held twice, reserved addresses are never held, and each owner
    holds exactly what it was last given."""

    def __init__(self):
        super().__init__()
        self.a = _alloc("10.5.0.0/28", "fd00:5::/124")
        self.expected: dict[str, set[str]] = {}

    owners = st.sampled_from([f"c{i}" for i in range(20)])
    ifaces = st.sampled_from(["eth0", "eth1"])

    @rule(cid=owners, ifname=ifaces)
    def allocate(self, cid, ifname):
        owner = Owner(cid, ifname)
        try:
            alloc = self.a.allocate(owner)
        except Exhausted:
            assert owner.key not in self.a.by_owner
            return
        ips = {x.ip for x in alloc.addresses}
        if owner.key in self.expected:
            assert ips == self.expected[owner.key]
        self.expected[owner.key] = ips

    @rule(cid=owners, ifname=st.one_of(st.none(), ifaces))
    def release(self, cid, ifname):
        self.a.release(cid, ifname)
        for key in [k for k in self.expected if k.split("/")[0] == cid and (ifname is None or k.endswith("/" + ifname))]:
            del self.expected[key]

    @invariant()
    def no_duplicates_and_no_reserved(self):
        held = [x.ip for alloc in self.a.by_owner.values() for x in alloc.addresses]
        assert len(held) == len(set(held))
        for ip in held:
            addr = ipaddress.ip_address(ip)
            net = ipaddress.ip_network("10.5.0.0/28" if addr.version == 4 else "fd00:5::/124")
            assert addr != net.network_address and addr != net.network_address + 1
            if addr.version == 4:
                assert addr != net.broadcast_address
        assert {k: {x.ip for x in v.addresses} for k, v in self.a.by_owner.items()} == self.expected
        for pf in self.a.pools["default"].values():
            assert pf.used == sum(1 for alloc in self.a.by_owner.values() for x in alloc.addresses
                                  if x.family == pf.family)


TestAllocatorMachine = AllocatorMachine.TestCase
TestAllocatorMachine.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 30)), max_size=200))
@settings(max_examples=100, deadline=None)
def test_requested_and_automatic_never_collide(ops):
    a = _alloc("10.6.0.0/27")
    held: dict[str, str] = {}
    for requested, n in ops:
        owner = Owner(f"o{n}", "eth0")
        want = [f"10.6.0.{n}"] if requested else []
        try:
            alloc = a.allocate(owner, requested=want)
        except IpamError:
            continue
        held[owner.key] = alloc.addresses[0].ip
    assert len(set(held.values())) == len(held)
    assert not {"10.6.0.0", "10.6.0.1", "10.6.0.31"} & set(held.values())

"""Blocking netlink work (pyroute2), run in worker threads: veth pairs, pod namespace setup,
host routes and neighbours, the host device with the gateway addresses."""

from __future__ import annotations

import errno
import hashlib
import os
import socket
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from pyroute2.iproute.linux import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from pylium.core.api_for_plugins import EndpointError, crash_point, netns as ns_util

IFA_F_NODAD = 0x02


def host_ifname(node: str, container_id: str, ifname: str) -> str:
    """lxc + 12 hex digits: unique per node, container and interface; fits IFNAMSIZ."""
    return "lxc" + hashlib.sha256(f"{node}/{container_id}/{ifname}".encode()).hexdigest()[:12]


def sysctl(path: str, value: str) -> None:
    Path("/proc/sys", path).write_text(value)


def _index(ipr: IPRoute, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return found[0] if found else None


@dataclass
class Plugged:
    host_ifindex: int
    host_mac: str
    mac: str
    mtu: int


def random_mac() -> str:
    """A locally administered unicast MAC."""
    raw = bytearray(os.urandom(6))
    raw[0] = (raw[0] & 0xFC) | 0x02
    return ":".join(f"{b:02x}" for b in raw)


def plug_commands(*, netns: str, ifname: str, host_name: str, mtu: int, addresses: list[dict],
                  host_mac: str, mac: str) -> tuple[list[str], list[str]]:
    """iproute2 batches: (on the node, inside the pod). The veth pair, the pod's addresses
    (/32, /128), a route to its gateway and a default route through it, and static
    neighbours both ways (no ARP or neighbour discovery needed)."""
    peer = "tmp" + host_name[3:]
    node = [f"link add {host_name} mtu {mtu} address {host_mac} type veth "
            f"peer name {peer} mtu {mtu} address {mac} netns {netns}",
            f"link set {host_name} up"]
    pod = [f"link set {peer} name {ifname}", f"link set {ifname} up", "link set lo up"]
    for a in addresses:
        v6 = a["family"] == "ipv6"
        bits = 128 if v6 else 32
        # `ip -batch` takes no per-line -6: the family comes from the addresses themselves.
        default = "::/0" if v6 else "0.0.0.0/0"
        node += [f"route add {a['ip']}/{bits} dev {host_name} scope link",
                 f"neigh add {a['ip']} lladdr {mac} dev {host_name} nud permanent"]
        pod += [f"addr add {a['ip']}/{bits} dev {ifname}" + (" nodad" if v6 else ""),
                f"route add {a['gateway']}/{bits} dev {ifname} scope link",
                f"neigh add {a['gateway']} lladdr {host_mac} dev {ifname} nud permanent",
                f"route add {default} via {a['gateway']} dev {ifname}"]
    return node, pod


async def _batch(prefix: list[str], commands: list[str]) -> str | None:
    """Run an `ip -batch`; None on success, else iproute2's complaint.

    Started with subprocess (vfork) in a worker thread: from the agent's large process that
    takes ~1 ms, against ~6 ms through the event loop's own process spawning (fork)."""
    import subprocess

    import anyio

    result = await anyio.to_thread.run_sync(lambda: subprocess.run(
        [*prefix, "ip", "-batch", "-"], input="\n".join(commands).encode() + b"\n", capture_output=True))
    if result.returncode == 0:
        return None
    return result.stderr.decode(errors="replace").strip() or f"ip -batch exited {result.returncode}"


async def plug(*, netns: str, ifname: str, host_name: str, mtu: int, addresses: list[dict]) -> Plugged:
    """Wire a pod with two iproute2 processes (~5 ms together). Running outside the agent's
    interpreter, twenty at once proceed in parallel instead of queueing on the GIL."""
    if not os.path.exists(netns):
        raise EndpointError("netns_missing", f"network namespace {netns} does not exist")
    if host_ifindex(host_name) is not None:  # left over by a crash: it is ours to replace
        await _batch([], [f"link del {host_name}"])
    host_mac, mac = random_mac(), random_mac()
    node_cmds, pod_cmds = plug_commands(netns=netns, ifname=ifname, host_name=host_name, mtu=mtu,
                                        addresses=addresses, host_mac=host_mac, mac=mac)
    problem = await _batch([], node_cmds)
    if problem:
        raise EndpointError("internal", f"creating {host_name}: {problem}")
    crash_point("veth-created")
    problem = await _batch(["nsenter", f"--net={netns}"], pod_cmds)
    if problem:
        if "File exists" in problem and "Command failed -:1" in problem:  # line 1 is the rename
            raise EndpointError("ifname_exists", f"interface {ifname} already exists in {netns}")
        raise EndpointError("internal", f"configuring {ifname} in {netns}: {problem}")
    return Plugged(socket.if_nametoindex(host_name), host_mac, mac, mtu)


def unplug(host_name: str) -> None:
    """Delete the host side (its peer, routes and neighbours go with it); gone already is fine."""
    with IPRoute() as host:
        idx = _index(host, host_name)
        if idx is not None:
            try:
                host.link("del", index=idx)
            except NetlinkError as e:
                if e.code != errno.ENODEV:
                    raise


def host_ifindex(host_name: str) -> int | None:
    try:
        return socket.if_nametoindex(host_name)
    except OSError:
        return None


def check(*, netns: str, ifname: str, host_name: str, addresses: list[dict]) -> str | None:
    with IPRoute() as host:
        if _index(host, host_name) is None:
            return f"host interface {host_name} is missing"
    try:
        pod = ns_util.iproute(netns)
    except OSError:
        return f"network namespace {netns} is gone"
    with pod:
        i = _index(pod, ifname)
        if i is None:
            return f"interface {ifname} is missing in {netns}"
        have = {a.get_attr("IFA_ADDRESS") for a in pod.get_addr(index=i)}
        for a in addresses:
            if a["ip"] not in have:
                return f"{ifname} in {netns} lacks address {a['ip']}"
    return None


def default_mtu() -> int:
    with IPRoute() as host:
        for route in host.get_default_routes():
            oif = route.get_attr("RTA_OIF")
            if oif:
                return host.get_links(oif)[0].get_attr("IFLA_MTU")
    return 1500


def host_device_peer(name: str) -> str:
    return name.replace("host", "net") if "host" in name else (name[:11] + "_net")


def ensure_host_device(name: str, routers: list[str]) -> None:
    """The node's end of a veth pair (like Cilium's cilium_host/cilium_net) holding each
    block's router address, so that pods reach their gateway on the node."""
    with IPRoute() as host:
        idx = _index(host, name)
        if idx is None:
            host.link("add", ifname=name, kind="veth", peer={"ifname": host_device_peer(name)})
            idx = _index(host, name)
            host.link("set", index=_index(host, host_device_peer(name)), state="up")
        host.link("set", index=idx, state="up")
        have = {(a.get_attr("IFA_ADDRESS"), a["prefixlen"]) for a in host.get_addr(index=idx)}
        want = {(r, 32 if ipaddress.ip_address(r).version == 4 else 128) for r in routers}
        for ip, bits in want - have:
            host.addr("add", index=idx, address=ip, prefixlen=bits,
                      **({"flags": IFA_F_NODAD} if bits == 128 else {}))
        for ip, bits in have - want:
            if not ipaddress.ip_address(ip).is_link_local:
                host.addr("del", index=idx, address=ip, prefixlen=bits)


def node_addresses() -> set[str]:
    """Global addresses of the node's own network namespace (reserved:host in the ipcache)."""
    with IPRoute() as ipr:
        return {a.get_attr("IFA_ADDRESS") for a in ipr.get_addr()
                if a["scope"] == 0 and a.get_attr("IFA_ADDRESS")}


# ---- between nodes -------------------------------------------------------------------------

ROUTE_PROTO = 0x70  # marks the routes to other nodes' pod CIDRs (found again after a restart)


class TunnelError(Exception):
    pass


def ensure_tunnel_device(name: str, protocol: str, port: int, mtu: int) -> int:
    """A collect-metadata (external) tunnel device on `port`, up, without ARP or IPv6 (the
    datapath addresses its packets); recreated if its port changed. Returns its ifindex."""
    with IPRoute() as ipr:
        idx = _index(ipr, name)
        if idx is not None:
            info = ipr.get_links(idx)[0].get_attr("IFLA_LINKINFO")
            data = info.get_attr("IFLA_INFO_DATA") if info else None
            kind = info.get_attr("IFLA_INFO_KIND") if info else None
            have_port = data.get_attr("IFLA_VXLAN_PORT" if kind == "vxlan" else "IFLA_GENEVE_PORT") if data else None
            if kind != protocol or have_port != port:
                ipr.link("del", index=idx)
                idx = None
        if idx is None:
            attrs = ({"vxlan_port": port, "vxlan_collect_metadata": 1, "vxlan_learning": 0}
                     if protocol == "vxlan" else {"geneve_port": port, "geneve_collect_metadata": 1})
            try:
                ipr.link("add", ifname=name, kind=protocol, mtu=mtu, **attrs)
            except NetlinkError as e:
                if e.code in (errno.EOPNOTSUPP, errno.ENOENT) or "Unknown device type" in str(e):
                    raise TunnelError(f"tunnelProtocol {protocol}: this kernel cannot create {protocol} devices "
                                      f"(CONFIG_{protocol.upper()} is not enabled); use tunnelProtocol vxlan or "
                                      f"routingMode native") from None
                if e.code == errno.EADDRINUSE:
                    raise TunnelError(f"tunnelPort {port}: UDP port in use by another device (another overlay "
                                      f"network?); choose another tunnelPort") from None
                raise TunnelError(f"creating the {protocol} device {name}: {e}") from None
            idx = _index(ipr, name)
    if Path(f"/proc/sys/net/ipv6/conf/{name}").exists():
        sysctl(f"net/ipv6/conf/{name}/disable_ipv6", "1")  # no neighbour discovery into the tunnel
    sysctl(f"net/ipv4/conf/{name}/rp_filter", "0")  # sources behind other nodes arrive here
    import subprocess

    result = subprocess.run(["ip", "link", "set", name, "arp", "off", "mtu", str(mtu), "up"],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise TunnelError(f"setting {name} up: {result.stderr.strip()}")
    return idx


def node_routes() -> dict[str, tuple[str, str]]:
    """The routes this plugin made to other nodes' pod CIDRs: cidr -> (device, gateway)."""
    with IPRoute() as ipr:
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        out = {}
        for route in ipr.get_routes(family=2, proto=ROUTE_PROTO):
            cidr = f"{route.get_attr('RTA_DST')}/{route['dst_len']}"
            out[cidr] = (names.get(route.get_attr("RTA_OIF"), ""), route.get_attr("RTA_GATEWAY") or "")
        return out


def set_node_route(cidr: str, *, device: str = "", gateway: str = "", src: str = "") -> None:
    """`cidr dev <tunnel> src <node IP>` (tunnel) or `cidr via <node IP>` (native routing).
    A route to `cidr` this plugin did not make is left alone (TunnelError)."""
    with IPRoute() as ipr:
        net = ipaddress.ip_network(cidr)
        for route in ipr.get_routes(family=2, table=254):
            if (route.get_attr("RTA_DST"), route["dst_len"]) == (str(net.network_address), net.prefixlen) and \
                    route["proto"] != ROUTE_PROTO:
                raise TunnelError(f"a route to {cidr} exists that pylium did not make")
        kw: dict = {"dst": cidr, "proto": ROUTE_PROTO}
        if device:
            kw["oif"] = _index(ipr, device)
        if gateway:
            kw["gateway"] = gateway
        if src:
            kw["prefsrc"] = src
        ipr.route("replace", **kw)


def delete_node_route(cidr: str) -> None:
    with IPRoute() as ipr:
        try:
            ipr.route("del", dst=cidr, proto=ROUTE_PROTO)
        except NetlinkError as e:
            if e.code != errno.ESRCH:
                raise


def remove_node_state(devices: list[str]) -> list[str]:
    """Cleanup: the routes to other nodes' pod CIDRs and `devices` (those that exist)."""
    done = []
    with IPRoute() as ipr:
        for family in (socket.AF_INET, socket.AF_INET6):
            for route in ipr.get_routes(family=family, proto=ROUTE_PROTO):
                cidr = f"{route.get_attr('RTA_DST')}/{route['dst_len']}"
                ipr.route("del", family=family, dst=cidr, proto=ROUTE_PROTO)
                done.append(f"route {cidr}")
        for name in devices:
            idx = _index(ipr, name)
            if idx is not None:
                ipr.link("del", index=idx)
                done.append(f"device {name}")
    return done


def device_of(ip: str) -> str | None:
    """The device that holds address `ip` (None: none does)."""
    if not ip:
        return None
    with IPRoute() as ipr:
        for a in ipr.get_addr(family=2):
            if a.get_attr("IFA_ADDRESS") == ip:
                return ipr.get_links(a["index"])[0].get_attr("IFLA_IFNAME")
    return None


def gateway_towards(ip: str) -> str | None:
    """The gateway the node's routes use to reach `ip` ("" when it is on a local network),
    None when there is no route at all."""
    with IPRoute() as ipr:
        try:
            routes = ipr.route("get", dst=ip)
        except NetlinkError:
            return None
        return routes[0].get_attr("RTA_GATEWAY") or "" if routes else None

"""A plugin's BPF stages in the real kernel, one packet at a time (BPF_PROG_TEST_RUN).

The plugin declares as it would in an agent (`pylium_declare`, with its config model's
defaults and `sets`); its maps are created and its stages compiled with the core's
dispatchers, pinned privately and attached nowhere. `endpoint()` makes a device look like a
pod's host-side veth, `run()` sends a packet through an attach point: the dispatcher, then
every installed stage, as in a node.

    h = StageHarness(MyPlugin(), root)
    h.endpoint(ep_id=3, ip="10.9.0.2")
    verdict, packet, ctx = h.run("from-container", ether(...) + ipv4(...))
    h.maps["my_map"].get(key)
"""

from __future__ import annotations

import ctypes as ct
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import structlog

from pylium.core import config as cfg
from pylium.core.agent.plugin_host import PluginInfo
from pylium.core.datapath import libbpf, structs as s
from pylium.core.datapath.datapath import Datapath
from pylium.core.plugin_api import Declarations
from pylium.testing.packets import SkBuff

TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT = 0, 2, 7
LOOPBACK = 1  # a test run needs a device that exists: the loopback device stands in for a veth


@dataclass(frozen=True)
class Result:
    verdict: int  # TC_ACT_*
    packet: bytes  # as the programs left it
    ctx: SkBuff  # skb->cb and the rest, after the run


class StageHarness:
    def __init__(self, plugin: Any, root: Path, name: str = "plugin", sets: list[str] = ()):
        self.name, self.root = name, root
        model = plugin.pylium_config_model() if hasattr(plugin, "pylium_config_model") else None
        settings = cfg.validate(model, cfg.gather([], list(sets), models=[model])) if model else None
        info = PluginInfo(name, "", "", "", obj=plugin)
        decl = Declarations(name, cfg.CoreConfig(), settings, info.package_dir)
        plugin.pylium_declare(decl)
        self.declared = decl
        self.dp = Datapath(root, "node", structlog.get_logger(), plugin_defines={name: decl.defines})
        try:
            self.dp.open_maps({name: decl.maps})
            anyio.run(self.dp.compile, decl.stages)
            self.dp.install_stages()
        except BaseException:
            self.close()
            raise

    @property
    def maps(self) -> dict[str, Any]:
        """The plugin's own maps, by name (PinnedMap: get, put, items, ...)."""
        return self.dp.plugin_maps.get(self.name, {})

    @property
    def core_maps(self) -> dict[str, Any]:
        return self.dp.maps

    def endpoint(self, ep_id: int, ip: str, ifindex: int = LOOPBACK, identity: int = 256,
                 mac: str = "02:00:00:00:00:0a", host_mac: str = "02:00:00:00:00:a0") -> None:
        """Make `ifindex` the host-side device of endpoint `ep_id` with address `ip`, as the core
        does for a pod (lxc_by_ifindex, endpoints, ipcache)."""
        addr = ipaddress.ip_address(ip)
        lxc = s.LxcInfo(ep_id=ep_id, identity=identity, mac=s.mac_bytes(mac), host_mac=s.mac_bytes(host_mac))
        ct.memmove(lxc.ip4 if addr.version == 4 else lxc.ip6, addr.packed, len(addr.packed))
        self.dp.maps["lxc_by_ifindex"].put(ct.c_uint32(ifindex), lxc)
        self.dp.maps["endpoints"].put(s.EndpointKey.of(ip), s.EndpointInfo(
            ifindex=ifindex, ep_id=ep_id, mac=s.mac_bytes(mac), host_mac=s.mac_bytes(host_mac), identity=identity))
        self.dp.maps["ipcache"].put(s.IpcacheKey.of(ip), s.IpcacheInfo(identity=identity))

    def run(self, attach: str, packet: bytes, ifindex: int = LOOPBACK) -> Result:
        """One packet through the dispatcher of `attach` ("from-container" or "to-container")."""
        ctx = SkBuff(ifindex=ifindex, ingress_ifindex=ifindex)
        verdict, out, ctx, _ = libbpf.test_run(self.dp.dispatch_fds[attach], packet, ctx)
        return Result(verdict, out, ctx)

    def close(self) -> None:
        self.dp.close()
        libbpf.remove_pins(self.root)

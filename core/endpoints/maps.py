"""What makes an endpoint reachable in the datapath: the core's endpoint maps (by address, by
host-side ifindex) and its ipcache records (owner core/endpoints, source local)."""

from __future__ import annotations

import ctypes as ct
import ipaddress
from typing import Iterable

from pylium.core.datapath import structs as s
from pylium.core.datapath.ipcache import Ipcache
from pylium.core.datapath.maps import PinnedMap
from pylium.core.endpoints.model import Endpoint

IPCACHE_OWNER = "core/endpoints"


class EndpointMaps:
    def __init__(self, by_address: PinnedMap, by_ifindex: PinnedMap, ipcache: Ipcache):
        self.by_address, self.by_ifindex, self.ipcache = by_address, by_ifindex, ipcache

    def program(self, ep: Endpoint) -> None:
        info = s.EndpointInfo(ifindex=ep.host_ifindex, ep_id=ep.id, mac=s.mac_bytes(ep.mac),
                              host_mac=s.mac_bytes(ep.host_mac), identity=ep.identity)
        lxc = s.LxcInfo(ep_id=ep.id, identity=ep.identity, mac=s.mac_bytes(ep.mac), host_mac=s.mac_bytes(ep.host_mac))
        for a in ep.addresses:
            packed = ipaddress.ip_address(a["ip"]).packed
            ct.memmove(lxc.ip4 if a["family"] == "ipv4" else lxc.ip6, packed, len(packed))
            self.ipcache.upsert(a["ip"], ep.identity, IPCACHE_OWNER)
            self.by_address.put(s.EndpointKey.of(a["ip"]), info)
        self.by_ifindex.put(ct.c_uint32(ep.host_ifindex), lxc)  # last: now packets flow

    def unprogram(self, ep: Endpoint) -> None:
        if ep.host_ifindex:
            self.by_ifindex.delete(ct.c_uint32(ep.host_ifindex))  # first: traffic stops here
        for a in ep.addresses:
            self.by_address.delete(s.EndpointKey.of(a["ip"]))
            self.ipcache.release(a["ip"], IPCACHE_OWNER)

    def reconcile(self, endpoints: Iterable[Endpoint]) -> None:
        """After restore: remove entries no endpoint owns any more (left by a crash or a lost
        endpoint). Their ipcache records go by themselves: the ipcache releases what an owner
        did not write again once the agent has started."""
        endpoints = list(endpoints)
        ips = {a["ip"] for ep in endpoints for a in ep.addresses}
        ifindexes = {ep.host_ifindex for ep in endpoints}
        for key in list(self.by_address.keys()):
            if key.ip not in ips:
                self.by_address.delete(key)
        for key in list(self.by_ifindex.keys()):
            if key.value not in ifindexes:
                self.by_ifindex.delete(key)

"""This node's address for its peers (tunnel endpoint, direct routes, health probes)."""

from __future__ import annotations

import ipaddress

from pyroute2.iproute.linux import IPRoute


def detect_ipv4() -> str:
    """The source address of the default route's device; without a default route, the first
    global IPv4 address (by interface index) with a prefix shorter than /32: the pods'
    gateway addresses on the node are /32 and never the node's own. "" when there is none."""
    with IPRoute() as ipr:
        addresses = [(a["index"], a.get_attr("IFA_ADDRESS"), a["prefixlen"])
                     for a in ipr.get_addr(family=2) if a["scope"] == 0]
        for route in ipr.get_default_routes(family=2):
            dev, src = route.get_attr("RTA_OIF"), route.get_attr("RTA_PREFSRC")
            if src:
                return src
            on_dev = [ip for index, ip, _ in addresses if index == dev]
            if on_dev:
                return on_dev[0]
    candidates = sorted((index, ip) for index, ip, length in addresses
                        if length < 32 and not ipaddress.ip_address(ip).is_loopback)
    return candidates[0][1] if candidates else ""

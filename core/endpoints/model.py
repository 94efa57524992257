"""The endpoint as plugins see it, and what a plugin adds to one.

An `Endpoint` is immutable: the core makes a new one for every change. Plugins never set its
fields; an endpoint hook returns an `EndpointContribution` with the fields the plugin declared
it owns (`declare.endpoint_fields(...)`, one owner per field, checked at load), and the core
applies it before the next plugin's hook runs."""

from __future__ import annotations

from typing import Any

import msgspec

from pylium.core.bus import events as ev
from pylium.core.datapath.consts import ID_INIT

#: Fields a plugin may own: the wiring (connectivity) and the security identity (policy).
CONTRIBUTED_FIELDS = ("host_ifname", "host_ifindex", "mac", "host_mac", "mtu", "identity")


class Endpoint(msgspec.Struct, kw_only=True, frozen=True):
    id: int
    container_id: str
    ifname: str
    netns: str
    netns_id: str = ""  # "<dev>:<inode>" of the namespace, to notice a recycled path
    state: str = "waiting-to-regenerate"
    labels: dict[str, str] = {}  # "source:key" -> value
    identity: int = ID_INIT  # reserved:init until a plugin (policy) contributes one
    pool: str | None = None
    addresses: list[dict] = []  # as IPAM answered: ip, family, cidr, block, gateway
    host_ifname: str = ""
    host_ifindex: int = 0
    mac: str = ""
    host_mac: str = ""
    requested_mtu: int = 0  # asked for by the runtime (0: the node's default)
    mtu: int = 0  # what the pod's interface got
    k8s_namespace: str = ""
    k8s_pod_name: str = ""
    created: float = 0.0

    def label_list(self) -> list[str]:
        return [f"{k}={v}" if v != "" else k for k, v in sorted(self.labels.items())]

    def ip(self, family: str) -> str | None:
        return next((a["ip"] for a in self.addresses if a["family"] == family), None)

    def replace(self, **changes: Any) -> Endpoint:
        return msgspec.structs.replace(self, **changes)

    def as_dict(self) -> dict:
        d = msgspec.to_builtins(self)
        d["labels"] = self.label_list()
        return d

    def event(self, kind: type[ev.Event]) -> ev.Event:
        return kind(id=self.id, container_id=self.container_id, ifname=self.ifname, netns=self.netns,
                    state=self.state, identity=self.identity, labels=self.label_list(),
                    addresses=[ev.EndpointAddress(ip=a["ip"], family=a["family"], cidr=a["cidr"],
                                                  gateway=a["gateway"]) for a in self.addresses],
                    host_ifname=self.host_ifname, host_ifindex=self.host_ifindex, mac=self.mac,
                    host_mac=self.host_mac, namespace=self.k8s_namespace, pod_name=self.k8s_pod_name)


class EndpointContribution(msgspec.Struct, kw_only=True, frozen=True):
    """What one plugin's endpoint hook sets: only fields it declared; the others stay unset."""

    host_ifname: str | msgspec.UnsetType = msgspec.UNSET  # host-side device
    host_ifindex: int | msgspec.UnsetType = msgspec.UNSET
    mac: str | msgspec.UnsetType = msgspec.UNSET  # the pod's interface
    host_mac: str | msgspec.UnsetType = msgspec.UNSET  # the host-side device: the pod's gateway
    mtu: int | msgspec.UnsetType = msgspec.UNSET
    identity: int | msgspec.UnsetType = msgspec.UNSET  # security identity

    def fields(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.__struct_fields__ if getattr(self, f) is not msgspec.UNSET}

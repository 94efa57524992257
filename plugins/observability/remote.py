"""Pods and identities of the other nodes, from the cluster store, so that a flow names a
remote pod (namespace, name) and shows an identity's labels like a local one's."""

from __future__ import annotations

from typing import Any, Callable

import anyio

from pylium.core.api_for_plugins import Mirror, store_keys
from pylium.plugins.observability.flow import Endpoint


class RemoteEndpoints:
    def __init__(self, store: Any, cluster: str, log: Any, changed: Callable[[], None] = lambda: None):
        self.cluster, self.changed = cluster, changed  # changed(): after every update
        self.labels: dict[int, tuple[str, ...]] = {}  # identity -> "source:key=value" labels
        self._pods: dict[str, dict] = {}  # address -> the cluster store's record (IP, ID, K8sNamespace, ...)
        self._cache: dict[str, Endpoint] = {}
        self._identities = Mirror(store, store_keys.IDENTITY_IDS, self._identity, log)
        self._addresses = Mirror(store, store_keys.IPS, self._address, log)

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._identities.run)
            tg.start_soon(self._addresses.run)

    def _identity(self, key: str, old: Any, new: Any) -> None:
        try:
            number = int(key.removeprefix(store_keys.IDENTITY_IDS))
        except ValueError:
            return
        if isinstance(new, dict):
            self.labels[number] = tuple(f"{k}={v}" if v else k for k, v in sorted(new.items()))
        else:
            self.labels.pop(number, None)
        self._cache.clear()
        self.changed()

    def _address(self, key: str, old: Any, new: Any) -> None:
        ip = key.removeprefix(store_keys.IPS)
        if isinstance(new, dict) and isinstance(new.get("ID"), int):
            self._pods[ip] = new
        else:
            self._pods.pop(ip, None)
        self._cache.pop(ip, None)
        self.changed()

    def endpoint(self, ip: str) -> Endpoint | None:
        """A pod of another node at `ip`, or None."""
        found = self._cache.get(ip)
        if found is None and ip in self._pods:
            pod = self._pods[ip]
            found = self._cache[ip] = Endpoint(
                identity=pod["ID"], cluster_name=self.cluster, namespace=pod.get("K8sNamespace", ""),
                pod_name=pod.get("K8sPodName", ""), labels=self.labels.get(pod["ID"], ()))
        return found

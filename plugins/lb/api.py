"""Control-API handlers of the load-balancing plugin (`pylium service list`, `pylium bpf lb`)."""

from __future__ import annotations

import ctypes as ct
from collections import Counter

from pylium.core.api_for_plugins import ApiError
from pylium.plugins.lb.maps import (ALGORITHMS, F_AFFINITY, F_EXTERNAL, F_LOCAL_EXT, F_NODEPORT, PROTOCOL_NAMES,
                                    STATES, addr_str, port_of)

ALGORITHM_NAMES = {v: k for k, v in ALGORITHMS.items()}
STATE_NAMES = {v: k for k, v in STATES.items()}
FLAG_NAMES = ((F_EXTERNAL, "external"), (F_NODEPORT, "nodeport"), (F_AFFINITY, "affinity"),
              (F_LOCAL_EXT, "local-external"))


def _backends(backends) -> list[dict]:
    return [{"address": b.address, "port": b.port, "state": b.state, **({"node": b.node} if b.node else {})}
            for b in backends]


class LbApi:
    ctx = None
    writer = None
    problems: dict = {}

    async def api_services(self, request) -> dict:
        rows = []
        for fid, f in self.writer.installed():
            row = {"id": fid, "frontend": f.label(), "type": f.type, "service": "/".join(f.service),
                   "port_name": f.port_name, "backends": _backends(f.backends)}
            if f.external_backends is not None:
                row["external_backends"] = _backends(f.external_backends)
            if f.affinity_timeout:
                row["session_affinity_timeout"] = f.affinity_timeout
            rows.append(row)
        return {"services": rows, "problems": [str(p) for p in self.problems.values()]}

    async def api_bpf_lb(self, request) -> dict:
        table = request.query.get("table", "services")
        maps = self.ctx.bpf_maps
        if table == "backends":
            return {"backends": sorted(({"id": k.value, "address": f"{addr_str(v.address)}:{port_of(v.port)}",
                                         "protocol": PROTOCOL_NAMES.get(v.proto, str(v.proto)),
                                         "state": STATE_NAMES.get(v.state, str(v.state))}
                                        for k, v in maps["lb4_backends"].items()), key=lambda r: r["id"])}
        if table == "revnat":
            return {"revnat": sorted(({"id": k.value, "address": f"{addr_str(v.address)}:{port_of(v.port)}"}
                                      for k, v in maps["lb4_reverse_nat"].items()), key=lambda r: r["id"])}
        if table != "services":
            raise ApiError(400, f"table: {table!r} is not services, backends or revnat")
        backends = {k.value: f"{addr_str(v.address)}:{port_of(v.port)}" for k, v in maps["lb4_backends"].items()}
        rows = []
        for k, v in maps["lb4_services"].items():
            row = {"frontend": f"{addr_str(k.address)}:{port_of(k.dport)}/{PROTOCOL_NAMES.get(k.proto, k.proto)}",
                   "scope": "external" if k.scope else "internal", "slot": k.slot}
            if k.slot == 0:
                row.update(rev_nat_index=v.rev_nat_index, count=v.count, terminating=v.qcount,
                           algorithm=ALGORITHM_NAMES.get(v.algorithm, str(v.algorithm)),
                           flags=[name for bit, name in FLAG_NAMES if v.flags & bit],
                           affinity_timeout=v.affinity_timeout)
            else:
                row.update(backend_id=v.backend_id, backend=backends.get(v.backend_id, "?"))
            rows.append(row)
        rows.sort(key=lambda r: (r["frontend"], r["scope"], r["slot"]))
        return {"services": rows}

    async def api_maglev(self, request) -> dict:
        wanted = request.path_params["service"]
        ids = []
        for key in self.writer.frontends:
            fid, f = self.writer.id_of(key), self.writer.frontend(key)
            if str(fid) == wanted or (f is not None and "/".join(f.service) == wanted):
                ids.append((fid, f.label() if f else "?"))
        if not ids:
            raise ApiError(404, f"service {wanted!r}: no such service id or namespace/name")
        backends = {k.value: f"{addr_str(v.address)}:{port_of(v.port)}" for k, v in
                    self.ctx.bpf_maps["lb4_backends"].items()}
        out = []
        for fid, label in sorted(ids):
            value = self.ctx.bpf_maps["lb4_maglev"].get(ct.c_uint32(fid))
            table = list(value.backend_ids) if value is not None else []
            out.append({"id": fid, "frontend": label, "size": len(table),
                        "slots": {backends.get(b, str(b)): n for b, n in sorted(Counter(table).items())},
                        "table": table})
        return {"maglev": out}

#!/usr/bin/env python3
"""Churn soak: pods created and deleted, services and policies changed, the agent killed with
SIGKILL at random points and started again, for --duration seconds (the first half with
kills, the second without, to measure the agent's RSS and open-fd slope); then every leak
check: veths, addresses, endpoint map entries, identities, services, iptables rules, the
agent's fds and tasks; and every pod pair must reach each other.

    .venv/bin/python bench/soak.py --duration 600 [--seed 1] [--json] [--set KEY=VALUE ...]

Exit status 1 when something leaked or a pod pair is unreachable."""

from __future__ import annotations

import argparse
import http.client
import json
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from pylium.core.cli.client import AgentUnreachable, ApiFailure
from pylium.testing.lab import Lab, Pod, sh

MAX_PODS = 10


class Soak:
    def __init__(self, lab: Lab, rng: random.Random, only: set[str] = frozenset(), agent_args: tuple = ()):
        self.lab, self.rng, self.only, self.agent_args = lab, rng, only, agent_args
        self.pods: dict[str, Pod] = {}  # container id -> pod
        self.services: set[str] = set()
        self.policies: set[str] = set()
        self.label_sets: set[str] = set()  # every pod label set used: the identities it may hold
        self.ops: dict[str, int] = {}
        self.serial = 0
        self.adding: str | None = None  # the pod whose ADD is in flight (its namespace's name)
        self.deleting: str | None = None  # the container whose DEL is in flight

    # ---- operations (each may meet the agent killed under it) -------------------------------

    def add_pod(self) -> None:
        self.serial += 1
        self.adding = name = f"s{self.serial}"
        app = self.rng.choice(["web", "db", "cache"])
        self.label_sets.add(app)
        pod = self.lab.pod(name, labels={"app": app})
        self.pods[pod.endpoint["container_id"]] = pod
        self.adding = None

    def delete_pod(self) -> None:
        self.deleting = cid = self.rng.choice(sorted(self.pods))
        self.delete_pod_named(cid)

    def delete_pod_named(self, cid: str) -> None:
        self.lab.api.call("POST", "/v1/cni/del", {"container_id": cid, "ifname": "eth0"})
        self.deleting = None
        pod = self.pods.pop(cid)
        sh("ip", "netns", "del", pod.netns)
        self.lab.namespaces.remove(pod.netns)

    def change_service(self) -> None:
        name = f"svc{self.rng.randrange(4)}"
        path = self.lab.manifests / f"{name}.json"
        if name in self.services and self.rng.random() < 0.3:
            path.unlink()
            self.services.discard(name)
            return
        backends = [p.ip for p in self.rng.sample(list(self.pods.values()), min(len(self.pods), 3))]
        docs = [{"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "soak"},
                 "spec": {"clusterIP": f"10.96.0.{10 + int(name[3:])}", "ports": [{"port": 80, "targetPort": 8080}]}},
                {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
                 "metadata": {"name": f"{name}-1", "namespace": "soak", "labels": {"kubernetes.io/service-name": name}},
                 "ports": [{"port": 8080}], "endpoints": [{"addresses": [b]} for b in backends]}]
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}))
        tmp.rename(path)
        self.services.add(name)

    def change_policy(self) -> None:
        name = f"pol{self.rng.randrange(4)}"
        if name in self.policies and self.rng.random() < 0.4:
            self.lab.api.call("DELETE", f"/v1/policy?name={name}")
            self.policies.discard(name)
            return
        app, port = self.rng.choice(["web", "db", "cache"]), self.rng.choice([80, 443, 5432, 6379])
        self.lab.api.call("POST", "/v1/policy", {"documents": [{
            "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy", "metadata": {"name": name},
            "spec": {"endpointSelector": {"matchLabels": {"app": app}},
                     "ingress": [{"fromEndpoints": [{}], "toPorts": [{"ports": [{"port": str(port)}]}]}]}}]})
        self.policies.add(name)

    def kill_agent(self) -> None:
        """SIGKILL a moment later: often in the middle of the next operation."""
        proc = self.lab.agents[-1].proc
        threading.Timer(self.rng.uniform(0, 0.2), lambda: proc.poll() is None and proc.kill()).start()
        time.sleep(0.01)

    def step(self, kills: bool) -> None:
        choices = [("add_pod", 3 if len(self.pods) < MAX_PODS else 0), ("delete_pod", 2 if self.pods else 0),
                   ("change_service", 2 if self.pods else 0), ("change_policy", 2), ("kill_agent", 1 if kills else 0)]
        if self.only:  # (adding pods stays possible: the other operations need some)
            choices = [(c, w if c in self.only or c == "add_pod" and not self.pods else 0) for c, w in choices]
        op = self.rng.choices([c for c, _ in choices], [w for _, w in choices])[0]
        self.ops[op] = self.ops.get(op, 0) + 1
        try:
            getattr(self, op)()
        except (ApiFailure, AgentUnreachable, OSError, http.client.HTTPException):
            time.sleep(0.3)
            if self.lab.agents[-1].proc.poll() is None:
                raise  # not the kill's doing
        if self.lab.agents[-1].proc.poll() is not None:
            self.restart()

    def restart(self) -> None:
        """Start the agent again; then do what a runtime does after a failed ADD (DEL it and
        remove its namespace) or DEL (DEL again)."""
        self.lab.agents[-1].proc.wait(10)
        self.lab.start_agent(*self.agent_args)
        self.ops["restarts"] = self.ops.get("restarts", 0) + 1
        if self.adding is not None:
            ns = next(n for n in self.lab.namespaces if n.endswith(f"-{self.adding}"))
            self.lab.api.call("POST", "/v1/cni/del", {"container_id": ns, "ifname": "eth0"})
            sh("ip", "netns", "del", ns)
            self.lab.namespaces.remove(ns)
            self.adding = None
        if self.deleting is not None:
            self.delete_pod_named(self.deleting)

    # ---- measurements -----------------------------------------------------------------------

    def sample(self) -> tuple[float, float, int, int]:
        pid = self.lab.agents[-1].proc.pid  # nsenter execs the agent: the same process
        rss = int(next(line.split()[1] for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                       if line.startswith("VmRSS:")))
        return (time.monotonic(), rss / 1024, len(list(Path(f"/proc/{pid}/fd").iterdir())),
                len(list(Path(f"/proc/{pid}/task").iterdir())))

    def leaks(self, baseline: dict) -> list[str]:
        lab, found, pods = self.lab, [], len(self.pods)
        now = counts(lab)
        for what, expected in (("veths", pods), ("addresses", pods), ("endpoint map entries", pods)):
            if now[what] - baseline[what] != expected:
                found.append(f"{what}: {now[what] - baseline[what]} for {pods} pods")
        if now["identities"] - baseline["identities"] > len(self.label_sets):
            found.append(f"identities: {now['identities'] - baseline['identities']} for {len(self.label_sets)} "
                         f"label sets")
        services = {s["service"] for s in lab.api.get("/v1/service")["services"] if s["service"].startswith("soak/")}
        if len(services) != len(self.services):
            found.append(f"services: {sorted(services)} for manifests {sorted(self.services)}")
        if now["iptables lines"] != baseline["iptables lines"]:
            found.append(f"iptables lines: {now['iptables lines']}, {baseline['iptables lines']} before")
        return found

    def unreachable(self) -> list[str]:
        pods = list(self.pods.values())
        return [f"{a.name} -> {b.name}" for a in pods for b in pods
                if a is not b and self.lab.exec(a.netns, "ping", "-c1", "-W2", b.ip, check=False).returncode != 0]


def counts(lab: Lab) -> dict[str, int]:
    return {"veths": len([link for link in lab.node_links() if link.startswith("lxc")]),
            "addresses": len(lab.api.get("/v1/ipam?all=true")["allocations"]),
            "endpoint map entries": len(lab.api.get("/v1/bpf/endpoints")),
            "identities": len([i for i in lab.api.get("/v1/identity") if i["id"] >= 256]),
            "iptables lines": len([line for line in lab.node("iptables-save").stdout.splitlines()
                                   if not line.startswith("#")])}


def slope_per_minute(samples: list[tuple[float, float]]) -> float:
    if len(samples) < 3:
        return 0.0
    xs, ys = [t for t, _ in samples], [v for _, v in samples]
    return statistics.linear_regression(xs, ys).slope * 60


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=600, help="seconds of churn")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--only", default="", help="only these operations, comma-separated (add_pod, delete_pod, "
                                                   "change_service, change_policy, kill_agent): where does memory go")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="an agent setting")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="pylium-soak-") as tmp:
        lab = Lab(Path(tmp))
        try:
            agent_args = tuple(a for kv in args.set for a in ("--set", kv))
            lab.start_agent(*agent_args)
            soak = Soak(lab, rng, set(filter(None, args.only.split(","))), agent_args)
            baseline = counts(lab)
            started = time.monotonic()
            half = started + args.duration / 2
            while time.monotonic() < half:
                soak.step(kills=True)
            time.sleep(0.3)  # a kill still pending from the last step
            if lab.agents[-1].proc.poll() is not None:
                soak.restart()
            samples, last_sample = [soak.sample()], time.monotonic()
            flows_buffered = [lab.api.get("/v1/observer")["num_flows"]]
            while time.monotonic() < started + args.duration:
                soak.step(kills=False)
                if time.monotonic() - last_sample >= 2:
                    samples.append(soak.sample())
                    last_sample = time.monotonic()
            flows_buffered.append(lab.api.get("/v1/observer")["num_flows"])
            lab.api.call("DELETE", "/v1/policy?all=true")  # reachability is checked without policies
            lab.api.call("GET", f"/v1/policy/wait?revision={lab.api.get('/v1/policy')['revision']}")
            time.sleep(1.5)  # the manifests directory's changes
            leaks, unreachable = soak.leaks(baseline), soak.unreachable()
            report = {
                "duration_s": round(time.monotonic() - started), "operations": sum(soak.ops.values()),
                "by_operation": soak.ops, "pods_at_end": len(soak.pods), "leaks": leaks,
                "unreachable_pairs": unreachable,
                "rss_mib": [round(samples[0][1], 1), round(samples[-1][1], 1)],
                "rss_slope_mib_per_min": round(slope_per_minute([(s[0], s[1]) for s in samples]), 3),
                "fds": [samples[0][2], samples[-1][2]],
                "fd_slope_per_min": round(slope_per_minute([(s[0], s[2]) for s in samples]), 3),
                "tasks": [samples[0][3], samples[-1][3]],
                "flows_buffered": flows_buffered,  # the observer's ring fills up to hubble.eventBufferCapacity
            }
        except ApiFailure as e:
            print(f"soak: the agent refused an operation: {e}\n{lab.agents[-1].log[-3000:]}", file=sys.stderr)
            return 1
        finally:
            lab.close()
    if args.json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            print(f"{key:24} {value}")
    return 1 if report["leaks"] or report["unreachable_pairs"] else 0


if __name__ == "__main__":
    sys.exit(main())

"""DNS policy with real pods: queries redirected in BPF to pylium's DNS proxy (UDP and TCP),
allowed names answered by the real server, others REFUSED (or NXDOMAIN), DNS flows and
metrics, toFQDNs allowing only the addresses answered, the FQDN cache, lookups that keep
working while the agent is killed."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from helpers import run_cli
from pylium.testing.lab import OUTSIDE_IP
from test_l7_proxy import observe
from test_policy import import_policy, metric, reaches

PODS = textwrap.dedent("""
    apiVersion: v1
    kind: Namespace
    metadata: {name: kube-system}
    ---
    apiVersion: v1
    kind: Pod
    metadata: {name: coredns, namespace: kube-system, labels: {k8s-app: kube-dns}}
    ---
    apiVersion: v1
    kind: Pod
    metadata: {name: client, namespace: default, labels: {app: client}}
""")
# The seed's dns-policy, as written there
SEED_DNS = textwrap.dedent("""
    apiVersion: "cilium.io/v2"
    kind: CiliumNetworkPolicy
    metadata:
      name: "dns-policy"
    spec:
      endpointSelector:
        matchLabels:
          app: client
      egress:
      - toEndpoints:
        - matchLabels:
            "k8s:io.kubernetes.pod.namespace": kube-system
            "k8s:k8s-app": kube-dns
        toPorts:
        - ports:
          - port: "53"
            protocol: UDP
          rules:
            dns:
            - matchName: "example.com"
            - matchPattern: "*.example.com"
""")
TO_FQDNS = textwrap.dedent("""
    apiVersion: "cilium.io/v2"
    kind: CiliumNetworkPolicy
    metadata:
      name: "to-example"
    spec:
      endpointSelector:
        matchLabels:
          app: client
      egress:
      - toFQDNs:
        - matchName: "example.com"
        toPorts:
        - ports:
          - {port: "8080", protocol: TCP}
      - toEndpoints:
        - matchLabels:
            "k8s:io.kubernetes.pod.namespace": kube-system
        toPorts:
        - ports:
          - {port: "53", protocol: ANY}
          rules:
            dns:
            - matchPattern: "*"
""")
ANSWERS = {"example.com.": "10.250.1.10", "www.example.com.": "10.250.1.11", "other.org.": "10.250.1.12"}

DNS_SERVER = textwrap.dedent("""
    import json, socket, socketserver, struct, sys, threading
    import dns.message, dns.rcode, dns.rrset
    answers = json.loads(sys.argv[2])
    def answer(wire):
        q = dns.message.from_wire(wire)
        r = dns.message.make_response(q)
        name = q.question[0].name.to_text().lower()
        if name in answers:
            r.answer.append(dns.rrset.from_text(name, 30, "IN", "A", answers[name]))
        else:
            r.set_rcode(dns.rcode.NXDOMAIN)
        return r.to_wire()
    class Udp(socketserver.BaseRequestHandler):
        def handle(self):
            data, sock = self.request
            sock.sendto(answer(data), self.client_address)
    class Tcp(socketserver.StreamRequestHandler):
        def handle(self):
            size, = struct.unpack("!H", self.rfile.read(2))
            out = answer(self.rfile.read(size))
            self.wfile.write(struct.pack("!H", len(out)) + out)
    class U(socketserver.ThreadingMixIn, socketserver.UDPServer):
        allow_reuse_address = True
    class T(socketserver.ThreadingMixIn, socketserver.TCPServer):
        allow_reuse_address = True
    u, t = U((sys.argv[1], 53), Udp), T((sys.argv[1], 53), Tcp)
    threading.Thread(target=t.serve_forever, daemon=True).start()
    print("ready", flush=True)
    u.serve_forever()
""")
# Prints [rcode or error, [addresses]] per name (UDP, or TCP with --tcp)
RESOLVE = textwrap.dedent("""
    import json, sys
    import dns.message, dns.query
    server, tcp, out = sys.argv[1], sys.argv[2] == "tcp", []
    for name in sys.argv[3:]:
        q = dns.message.make_query(name, "A")
        try:
            r = (dns.query.tcp if tcp else dns.query.udp)(q, server, timeout=3)
            out.append([r.rcode(), [a.address for rrset in r.answer for a in rrset]])
        except Exception as e:
            out.append([type(e).__name__, []])
    print(json.dumps(out))
""")
# Resolves a name every 50 ms for a while; prints how many lookups failed, of how many
RESOLVE_LOOP = textwrap.dedent("""
    import json, sys, time
    import dns.message, dns.query
    server, name, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    failed = total = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        total += 1
        try:
            r = dns.query.udp(dns.message.make_query(name, "A"), server, timeout=1)
            failed += r.rcode() != 0 or not r.answer
        except Exception:
            failed += 1
        time.sleep(0.05)
    print(json.dumps([failed, total]))
""")


TCP_SERVER = textwrap.dedent("""
    import socket, sys
    s = socket.create_server((sys.argv[1], 8080))
    print("ready", flush=True)
    while True:
        c, _ = s.accept()
        c.recv(10)
        c.sendall(b"ok")
        c.close()
""")


def resolve(lab, pod, server: str, *names: str, tcp: bool = False) -> list:
    out = lab.exec(pod.netns, sys.executable, "-c", RESOLVE, server, "tcp" if tcp else "udp", *names, timeout=60)
    return json.loads(out.stdout)


@pytest.fixture
def dns_lab(lab):
    lab.manifests.joinpath("pods.yaml").write_text(PODS)
    agent = lab.start_agent()
    pods = {"coredns": lab.pod("dns", k8s_namespace="kube-system", k8s_pod_name="coredns"),
            "client": lab.pod("client", k8s_namespace="default", k8s_pod_name="client")}
    server = subprocess.Popen(["ip", "netns", "exec", pods["coredns"].netns, sys.executable, "-c", DNS_SERVER,
                               pods["coredns"].ip, json.dumps(ANSWERS)], stdout=subprocess.PIPE, text=True)
    assert server.stdout.readline().strip() == "ready"
    # the answered addresses live behind the node, in the outside namespace
    for n in (10, 11, 12):
        lab.exec(lab.out_ns, "ip", "addr", "add", f"10.250.1.{n}/32", "dev", "lo")
    lab.node("ip", "route", "add", "10.250.1.0/24", "via", OUTSIDE_IP)
    yield lab, agent, pods
    server.kill()
    for proc in getattr(lab, "servers", []):
        proc.kill()


def wait_for_dns_proxy(lab, pod, server: str) -> None:
    deadline = time.monotonic() + 20
    while resolve(lab, pod, server, "example.com")[0][0] != 0:
        assert time.monotonic() < deadline, (lab.dirs.run_dir / "l7proxy.log").read_text()
        time.sleep(0.2)


def test_the_seed_dns_policy_refuses_other_names(dns_lab, tmp_path):
    lab, _, pods = dns_lab
    client, server = pods["client"], pods["coredns"].ip
    assert resolve(lab, client, server, "other.org")[0][1] == ["10.250.1.12"], "no policy yet: all names"
    import_policy(lab, tmp_path, SEED_DNS)
    wait_for_dns_proxy(lab, client, server)
    answers = resolve(lab, client, server, "example.com", "www.example.com", "EXAMPLE.com", "other.org",
                      "a.b.example.com", "missing.example.com")
    assert answers == [[0, ["10.250.1.10"]], [0, ["10.250.1.11"]], [0, ["10.250.1.10"]], [5, []], [5, []],
                       [3, []]], "allowed names are answered by the server, others REFUSED"
    # TCP is not in the seed policy's ports (UDP only): dropped, not proxied
    assert resolve(lab, client, server, "example.com", tcp=True)[0][0] != 0
    # flows: the refused query and an answered one
    deadline = time.monotonic() + 10
    while not (flows := observe(lab, "--type", "l7", "--dns-query", "other")) and time.monotonic() < deadline:
        time.sleep(0.2)
    refused = next(f for f in flows if f["l7"]["type"] == "REQUEST")
    assert refused["verdict"] == "DROPPED" and refused["l7"]["dns"]["query"] == "other.org."
    assert refused["l7"]["dns"]["qtypes"] == ["A"] and refused["l7"]["dns"]["observation_source"] == "proxy"
    answered = [f for f in observe(lab, "--type", "l7", "--dns-query", "^www") if f["l7"]["type"] == "RESPONSE"]
    assert answered[0]["l7"]["dns"]["ips"] == ["10.250.1.11"] and answered[0]["l7"]["dns"]["rrtypes"] == ["A"]
    assert answered[0]["source"]["pod_name"] == "coredns" and answered[0]["destination"]["pod_name"] == "client"
    lines = run_cli(lab.dirs, "observe", "--all", "--type", "l7", "--dns-query", "^www").stdout
    assert 'dns-response proxy FORWARDED (DNS Answer "10.250.1.11" TTL: 30 (Proxy www.example.com. A))' in lines
    assert "dns-request proxy FORWARDED (DNS Query www.example.com. A)" in lines
    assert metric(lab, "hubble_dns_queries_total", rcode="Policy denied") >= 2
    assert metric(lab, "cilium_policy_l7_total", rule="denied", proxy_type="fqdn") >= 2


def test_name_error_instead_of_refused(lab, tmp_path):
    lab.manifests.joinpath("pods.yaml").write_text(PODS)
    lab.manifests.joinpath("policy.yaml").write_text(SEED_DNS)
    lab.start_agent("--set", "dnsProxy.rejectResponseCode=nameError")
    coredns = lab.pod("dns", k8s_namespace="kube-system", k8s_pod_name="coredns")
    client = lab.pod("client", k8s_namespace="default", k8s_pod_name="client")
    # no server needed: a refused query never leaves the node
    deadline = time.monotonic() + 20
    while (answer := resolve(lab, client, coredns.ip, "other.org")[0])[0] != 3:
        assert time.monotonic() < deadline, answer
        time.sleep(0.2)


def test_to_fqdns_allows_only_the_answered_addresses(dns_lab, tmp_path):
    lab, _, pods = dns_lab
    client, server = pods["client"], pods["coredns"].ip
    for n in (10, 11, 12):
        p = subprocess.Popen(["ip", "netns", "exec", lab.out_ns, sys.executable, "-c", TCP_SERVER,
                              f"10.250.1.{n}"], stdout=subprocess.PIPE, text=True)
        assert p.stdout.readline().strip() == "ready"
        lab.servers = getattr(lab, "servers", []) + [p]
    import_policy(lab, tmp_path, TO_FQDNS)
    assert not reaches(lab, client, "10.250.1.10", 8080), "nothing looked up yet: nothing allowed"
    wait_for_dns_proxy(lab, client, server)
    assert not reaches(lab, client, "10.250.1.11", 8080), "www.example.com is not in toFQDNs"
    assert resolve(lab, client, server, "www.example.com", "other.org", tcp=True) == [
        [0, ["10.250.1.11"]], [0, ["10.250.1.12"]]], "DNS over TCP through the proxy"
    assert reaches(lab, client, "10.250.1.10", 8080), "example.com was looked up: its address is allowed"
    assert not reaches(lab, client, "10.250.1.11", 8080) and not reaches(lab, client, "10.250.1.12", 8080)
    # the cache, with Cilium's columns; its identity is labelled fqdn:<selector>
    rows = json.loads(run_cli(lab.dirs, "fqdn", "cache", "list", "-o", "json").stdout)
    row = next(r for r in rows if r["fqdn"] == "example.com.")
    assert row["ips"] == ["10.250.1.10"] and row["source"] == "lookup" and row["ttl"] == 30
    assert row["endpoint-id"] == client.endpoint["id"]
    table = run_cli(lab.dirs, "fqdn", "cache", "list").stdout
    assert table.split()[:6] == ["Endpoint", "Source", "FQDN", "TTL", "ExpirationTime", "IPs"]
    identities = json.loads(run_cli(lab.dirs, "identity", "list", "-o", "json").stdout)
    fqdn_ids = [i for i in identities if "fqdn:example.com" in i["labels"]]
    assert fqdn_ids and fqdn_ids[0]["id"] >= 1 << 24


def test_lookups_keep_working_while_the_agent_is_killed(dns_lab, tmp_path):
    lab, agent, pods = dns_lab
    client, server = pods["client"], pods["coredns"].ip
    import_policy(lab, tmp_path, SEED_DNS)
    wait_for_dns_proxy(lab, client, server)
    loop = subprocess.Popen(["ip", "netns", "exec", client.netns, sys.executable, "-c", RESOLVE_LOOP, server,
                             "example.com", "6"], stdout=subprocess.PIPE, text=True)
    time.sleep(1)
    agent.stop(signal.SIGKILL)
    time.sleep(2)
    lab.start_agent()
    failed, total = json.loads(loop.communicate(timeout=60)[0])
    assert total > 50 and failed == 0, (failed, total)
    assert resolve(lab, client, server, "other.org")[0][0] == 5, "still enforced after the restart"
    rows = json.loads(run_cli(lab.dirs, "fqdn", "cache", "list", "-o", "json").stdout)
    assert any(r["fqdn"] == "example.com." for r in rows), "the FQDN cache survives the restart"


MALFORMED = textwrap.dedent("""
    import socket, sys
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(3)
    s.sendto(bytes.fromhex(sys.argv[2]), (sys.argv[1], 53))
    print(s.recv(512).hex())
""")


def test_a_malformed_query_gets_formerr_and_the_proxy_serves_on(dns_lab, tmp_path):
    lab, _, pods = dns_lab
    client, server = pods["client"], pods["coredns"].ip
    import_policy(lab, tmp_path, SEED_DNS)
    wait_for_dns_proxy(lab, client, server)
    garbage = "abcd" + "0100" + "0001" + "0000" * 3 + "ff" * 20  # id abcd, one question, then nonsense
    answer = bytes.fromhex(lab.exec(client.netns, sys.executable, "-c", MALFORMED, server, garbage).stdout.strip())
    assert answer[:2] == bytes.fromhex("abcd") and answer[3] & 0x0F == 1, answer.hex()  # FORMERR
    assert resolve(lab, client, server, "example.com") == [[0, ["10.250.1.10"]]]


BEHIND_THE_NODE = textwrap.dedent("""
    apiVersion: "cilium.io/v2"
    kind: CiliumNetworkPolicy
    metadata:
      name: "dns-outside"
    spec:
      endpointSelector:
        matchLabels:
          app: client
      egress:
      - toCIDR: [10.250.0.2/32]
        toPorts:
        - ports:
          - port: "53"
            protocol: ANY
          rules:
            dns:
            - matchName: "example.com"
            - matchPattern: "*.example.com"
""")


def test_a_dns_server_behind_the_node(dns_lab, tmp_path):
    lab, _, pods = dns_lab
    client = pods["client"]
    outside = subprocess.Popen(["ip", "netns", "exec", lab.out_ns, sys.executable, "-c", DNS_SERVER, OUTSIDE_IP,
                                json.dumps(ANSWERS)], stdout=subprocess.PIPE, text=True)
    assert outside.stdout.readline().strip() == "ready"
    lab.servers = getattr(lab, "servers", []) + [outside]
    import_policy(lab, tmp_path, BEHIND_THE_NODE)
    wait_for_dns_proxy(lab, client, OUTSIDE_IP)
    assert resolve(lab, client, OUTSIDE_IP, "www.example.com", "other.org") == [[0, ["10.250.1.11"]], [5, []]]
    assert resolve(lab, client, OUTSIDE_IP, "example.com", "other.org", tcp=True) == [[0, ["10.250.1.10"]], [5, []]]

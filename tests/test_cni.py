"""The CNI plugin as runtimes call it: pylium-cni directly (every command and error),
cnitool built from Debian's CNI sources (with portmap chained), and containerd's `ctr run
--cni` with a busybox image."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import IN_CI, run_cli
from pylium.testing.lab import NODE_IP, OUTSIDE_IP, sh

TOOLS = Path(__file__).parent.parent / ".tools"


@pytest.fixture(params=["python", "c"])
def plugin(request, lab):
    """Each CNI test runs against both plugins: the Python one and the C one install-cni builds."""
    if request.param == "c":
        if not shutil.which("gcc"):
            pytest.fail("gcc is missing: make setup installs it") if IN_CI else pytest.skip("no gcc")
        lab.install_c_plugin()
    return request.param


def _env(lab, ns: str, cid: str, ifname: str = "eth0") -> dict:
    return {"CNI_CONTAINERID": cid, "CNI_IFNAME": ifname, "CNI_NETNS": f"/var/run/netns/{ns}"}


def _out(r: subprocess.CompletedProcess) -> dict:
    return json.loads(r.stdout) if r.stdout.strip() else {}


@pytest.mark.parametrize("version", ["0.3.1", "0.4.0", "1.0.0", "1.1.0"])
def test_add_check_del_in_each_spec_version(lab, plugin, version):
    lab.start_agent()
    ns = lab.netns("p")
    conf = lab.conf(cniVersion=version)
    r = lab.cni("ADD", _env(lab, ns, "c1"), conf)
    assert r.returncode == 0, r.stdout
    res = _out(r)
    assert res["cniVersion"] == version
    [ip] = res["ips"]
    assert ip["address"].startswith("10.210.0.") and ip["address"].endswith("/32") and ip["gateway"] == "10.210.0.1"
    assert ("version" in ip) == (version < "1.0.0")
    assert res["interfaces"][1] == {"name": "eth0", "mac": res["interfaces"][1]["mac"], "sandbox": f"/var/run/netns/{ns}"}
    assert res["routes"] == [{"dst": "0.0.0.0/0", "gw": "10.210.0.1"}]
    # retried ADD: the same answer, nothing new allocated
    again = lab.cni("ADD", _env(lab, ns, "c1"), conf)
    assert _out(again)["ips"] == res["ips"]
    assert len(lab.api.get("/v1/ipam?all=true")["allocations"]) == 1
    if version >= "0.4.0":
        assert lab.cni("CHECK", _env(lab, ns, "c1"), conf).returncode == 0
    assert lab.cni("DEL", _env(lab, ns, "c1"), conf).returncode == 0
    assert lab.cni("DEL", {**_env(lab, ns, "c1"), "CNI_NETNS": ""}, conf).returncode == 0  # idempotent
    assert lab.api.get("/v1/endpoints") == [] and lab.api.get("/v1/ipam?all=true")["allocations"] == []


def test_status_gc_and_version(lab, plugin):
    lab.start_agent()
    conf = lab.conf(cniVersion="1.1.0")
    assert lab.cni("STATUS", {}, conf).returncode == 0
    keep, drop = lab.netns("keep"), lab.netns("drop")
    assert lab.cni("ADD", _env(lab, keep, "keep"), conf).returncode == 0
    assert lab.cni("ADD", _env(lab, drop, "drop"), conf).returncode == 0
    gc = dict(conf, **{"cni.dev/valid-attachments": [{"containerID": "keep", "ifname": "eth0"}]})
    assert lab.cni("GC", {}, gc).returncode == 0
    assert [e["container_id"] for e in lab.api.get("/v1/endpoints")] == ["keep"]
    v = lab.cni("VERSION", {}, "")
    assert _out(v)["supportedVersions"] == ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
    lab.agents[0].stop()
    r = lab.cni("STATUS", {}, conf)
    assert r.returncode == 1 and _out(r)["code"] == 50


def _nothing_left(lab, before_links: set[str]) -> None:
    assert set(lab.node_links()) == before_links
    assert lab.api.get("/v1/endpoints") == [] and lab.api.get("/v1/ipam?all=true")["allocations"] == []


def test_bad_input_gives_the_right_code_and_leaves_nothing(lab, plugin):
    lab.start_agent("--set", "ipam.operator.clusterPoolIPv4MaskSize=30")  # 1 usable address per node
    conf = lab.conf()
    ns = lab.netns("p")
    links = set(lab.node_links())
    cases = [
        ("ADD", _env(lab, ns, "c"), "{not json", 6, "not valid JSON"),
        ("ADD", _env(lab, ns, "c"), dict(conf, cniVersion="9.9.9"), 1, "incompatible CNI version"),
        ("ADD", _env(lab, ns, "c"), dict(conf, mtu="big"), 7, "'mtu' must be a int"),
        ("ADD", _env(lab, ns, "c"), {k: v for k, v in conf.items() if k != "name"}, 7, "needs a 'name'"),
        ("ADD", _env(lab, ns, "c"), dict(conf, args={"cni": {"labels": "x"}}), 7, "args.cni.labels"),
        ("FROB", _env(lab, ns, "c"), conf, 4, "unknown CNI_COMMAND"),
        ("ADD", {**_env(lab, ns, "c"), "CNI_IFNAME": ""}, conf, 4, "CNI_IFNAME"),
        ("ADD", {**_env(lab, ns, "c"), "CNI_NETNS": "/var/run/netns/no-such-ns"}, conf, 3, "does not exist"),
        ("ADD", _env(lab, ns, "c", "lo"), conf, 102, "interface lo already exists"),
    ]
    for command, env, stdin, code, fragment in cases:
        r = lab.cni(command, env, stdin)
        err = _out(r)
        assert r.returncode == 1 and err["code"] == code and fragment in err["msg"], (command, err)
        _nothing_left(lab, links)
    # IPAM exhaustion: the /30 block has one usable address
    assert lab.cni("ADD", _env(lab, ns, "first"), conf).returncode == 0
    ns2 = lab.netns("q")
    links = set(lab.node_links())
    r = lab.cni("ADD", _env(lab, ns2, "second"), conf)
    assert _out(r)["code"] == 101 and "exhausted" in _out(r)["msg"]
    assert set(lab.node_links()) == links and "eth0" not in lab.exec(ns2, "ip", "link").stdout
    assert [a["owner"]["container_id"] for a in lab.api.get("/v1/ipam?all=true")["allocations"]] == ["first"]


def test_install_cni_writes_the_conflist_and_the_binary(tmp_path, agent_dirs):
    r = run_cli(agent_dirs, "install-cni", "--conf-dir", str(tmp_path / "net.d"), "--bin-dir", str(tmp_path / "bin"),
                "--portmap")
    assert r.returncode == 0, r.stderr
    conf = json.loads((tmp_path / "net.d" / "05-pylium.conflist").read_text())
    assert conf["plugins"][0] == {"type": "pylium-cni", "socketPath": str(agent_dirs.run_dir / "pylium.sock")}
    assert conf["plugins"][1]["type"] == "portmap"
    installed = tmp_path / "bin" / "pylium-cni"
    assert installed.read_bytes()[:4] == b"\x7fELF" and "(C plugin)" in r.stdout  # built with gcc
    r = subprocess.run([str(installed)], env={"CNI_COMMAND": "VERSION"}, capture_output=True, text=True)
    assert r.returncode == 0 and "1.1.0" in json.loads(r.stdout)["supportedVersions"]
    # without a compiler: a standalone copy of the Python plugin, run with -SE
    no_cc = tmp_path / "no-cc"
    no_cc.mkdir()
    r = run_cli(agent_dirs, "install-cni", "--conf-dir", str(tmp_path / "net.d"), "--bin-dir", str(no_cc),
                env={"PATH": str(Path(sys.executable).parent)})
    assert "(Python plugin)" in r.stdout, r.stderr
    assert (no_cc / "pylium-cni").read_text().startswith(f"#!{sys.executable} -SE\n")
    r = run_cli(agent_dirs, "install-cni", "--conf-dir", str(tmp_path / "net.d"), "--bin-dir", str(tmp_path / "bin"),
                "--no-portmap", "--run-dir", "/somewhere/else")
    conf = json.loads((tmp_path / "net.d" / "05-pylium.conflist").read_text())
    assert conf["plugins"] == [{"type": "pylium-cni", "socketPath": "/somewhere/else/pylium.sock"}]


def _tool(name: str) -> Path:
    path = TOOLS / name
    if not path.exists():
        if IN_CI:
            pytest.fail(f"{path} is missing: make setup builds it")
        pytest.skip(f"{path} is missing: run make setup")
    return path


def test_cnitool_add_check_del_with_portmap_chained(lab, tmp_path):
    cnitool = _tool("cnitool")
    lab.start_agent()
    netconf = tmp_path / "netconf"
    bindir = tmp_path / "cni-bin"
    r = run_cli(lab.dirs, "install-cni", "--conf-dir", str(netconf), "--bin-dir", str(bindir), "--portmap")
    assert r.returncode == 0, r.stderr
    os.symlink("/usr/lib/cni/portmap", bindir / "portmap")
    ns = lab.netns("web")
    env = {"PATH": os.environ["PATH"], "NETCONFPATH": str(netconf), "CNI_PATH": str(bindir),
           "CAP_ARGS": json.dumps({"portMappings": [{"hostPort": 18080, "containerPort": 8080, "protocol": "tcp"}]})}
    node = ["nsenter", f"--net=/var/run/netns/{lab.node_ns}"]  # the runtime's namespace is the node's
    add = subprocess.run([*node, str(cnitool), "add", "pylium", f"/var/run/netns/{ns}"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert add.returncode == 0, add.stderr + add.stdout
    result = json.loads(add.stdout)
    pod_ip = result["ips"][0]["address"].split("/")[0]
    assert pod_ip.startswith("10.210.0.")
    [ep] = lab.api.get("/v1/endpoints")
    assert ep["container_id"].startswith("cnitool-") and ep["addresses"][0]["ip"] == pod_ip
    # portmap, chained after pylium, maps the node's port 18080 to the pod
    from test_datapath import ask, serve

    server = serve(lab, ns, "tcp", pod_ip, 8080)
    try:
        assert ask(lab, lab.out_ns, "tcp", NODE_IP, 18080) == OUTSIDE_IP
    finally:
        server.kill()
    check_env = {k: v for k, v in env.items() if k != "CAP_ARGS"}  # portmap 1.1.1 CHECK needs IPv6 otherwise
    check = subprocess.run([*node, str(cnitool), "check", "pylium", f"/var/run/netns/{ns}"], env=check_env,
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr + check.stdout
    delete = subprocess.run([*node, str(cnitool), "del", "pylium", f"/var/run/netns/{ns}"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert delete.returncode == 0, delete.stderr + delete.stdout
    assert lab.api.get("/v1/endpoints") == []
    assert "eth0" not in lab.exec(ns, "ip", "link").stdout


@pytest.fixture
def containerd(lab, tmp_path):
    """A private containerd (no CRI) running in the lab's node namespace, with busybox imported."""
    image = _tool("busybox-oci.tar")
    if not shutil.which("containerd"):
        pytest.fail("containerd is missing: make setup installs it")
    root = Path(f"/run/pylium-test-containerd-{lab.id}")
    root.mkdir(parents=True)
    cfg = root / "config.toml"
    cfg.write_text(f"""version = 2
root = "{root}/root"
state = "{root}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{root}/containerd.sock"
[ttrpc]
  address = "{root}/containerd.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{root}/opt"
""")
    log = open(tmp_path / "containerd.log", "wb")
    daemon = subprocess.Popen(["nsenter", f"--net=/var/run/netns/{lab.node_ns}", "containerd", "--config", str(cfg)],
                              stdout=log, stderr=subprocess.STDOUT)
    env = {**os.environ, "CONTAINERD_ADDRESS": f"{root}/containerd.sock", "CONTAINERD_NAMESPACE": f"pl{lab.id}"}
    deadline = time.monotonic() + 20
    while subprocess.run(["ctr", "version"], env=env, capture_output=True).returncode != 0:
        assert time.monotonic() < deadline, (tmp_path / "containerd.log").read_text()
        time.sleep(0.1)
    sh("ctr", "image", "import", "--base-name", "docker.io/pylium/busybox", str(image), env=env)
    try:
        yield env
    finally:
        daemon.terminate()
        try:
            daemon.wait(20)
        except subprocess.TimeoutExpired:
            daemon.kill()
        subprocess.run(["umount", "-R", str(root)], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
        log.close()


def test_containerd_runs_a_busybox_pod_on_pylium(lab, containerd, tmp_path):
    lab.start_agent()
    other = lab.pod("other")
    conf_dir = Path("/etc/cni/net.d")  # ctr reads only this directory
    existing = sorted(p.name for p in conf_dir.glob("*.conf*")) if conf_dir.exists() else []
    assert not [n for n in existing if n < "05-pylium.conflist"], f"another CNI config would win: {existing}"
    bin_dir = Path("/opt/cni/bin")  # ctr searches only /opt/cni/bin and /usr/lib/cni
    made_bin_dir = not bin_dir.exists()
    r = run_cli(lab.dirs, "install-cni", "--conf-dir", str(conf_dir), "--bin-dir", str(bin_dir))
    assert r.returncode == 0, r.stderr
    try:
        run = subprocess.run(
            ["nsenter", f"--net=/var/run/netns/{lab.node_ns}", "ctr", "run", "--cni", "--rm",
             "docker.io/pylium/busybox:latest", f"bb{lab.id}", "/bin/sh", "-c",
             f"ip -4 addr show eth0; ping -c 2 -W 2 {other.ip}"],
            env=containerd, capture_output=True, text=True, timeout=120)
    finally:
        (conf_dir / "05-pylium.conflist").unlink(missing_ok=True)
        (bin_dir / "pylium-cni").unlink(missing_ok=True)
        if made_bin_dir:
            bin_dir.rmdir()
            if not any(bin_dir.parent.iterdir()):
                bin_dir.parent.rmdir()
    assert run.returncode == 0, run.stderr + run.stdout
    assert "inet 10.210.0." in run.stdout and "2 packets received" in run.stdout
    # ctr --rm called DEL: the container's endpoint and address are gone, the other pod stays
    assert [e["container_id"] for e in lab.api.get("/v1/endpoints")] == [other.endpoint["container_id"]]

#!/bin/sh
# One-command, idempotent machine + project setup (run as root). `make setup` calls this.
# A second run with everything in place only checks, and takes a few seconds.
set -eu
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
DEB_PACKAGES="python3-bpfcc linux-headers-amd64 iproute2 iputils-ping wireguard-tools wireguard-go \
etcd-server etcd-client bpftool iptables procps psmisc util-linux gcc \
containerd runc containernetworking-plugins umoci golang-go golang-github-appc-cni-dev"

say() { printf 'setup: %s\n' "$*"; }

[ "$(id -u)" = 0 ] || { echo "setup: run as root (it installs Debian packages and mounts bpffs)" >&2; exit 1; }

# 1. Debian packages: install only what is missing (dpkg-query is fast; apt-get update is not).
missing=""
for p in $DEB_PACKAGES; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    say "installing Debian packages:$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

# 2. Kernel headers for bcc: link Debian's headers when the running kernel has none.
KDIR=/lib/modules/$(uname -r)
if [ ! -e "$KDIR/build" ]; then
    hdr=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n1)
    common=$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -n1)
    [ -n "$hdr" ] && [ -n "$common" ] || { echo "setup: no kernel headers under /usr/src" >&2; exit 1; }
    say "linking kernel headers: $KDIR/build -> $hdr"
    mkdir -p "$KDIR"
    ln -sfn "$hdr" "$KDIR/build"
    ln -sfn "$common" "$KDIR/source"
fi

# 3. bpffs, where the datapath pins maps and programs so they outlive the agent.
if ! mountpoint -q /sys/fs/bpf; then
    say "mounting bpffs on /sys/fs/bpf"
    mkdir -p /sys/fs/bpf
    mount -t bpf bpffs /sys/fs/bpf
fi

# 4. The project's virtualenv; reinstall only when pyproject.toml changed.
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -c 'import sys; assert sys.version_info >= (3, 11), sys.version' \
        || { echo "setup: $PYTHON must be Python >= 3.11" >&2; exit 1; }
    say "creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.pylium-installed"
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    say "installing pylium and its test extras into $VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q -e '.[test]'
    echo "$want" > "$stamp"
fi

# 5. bcc comes from Debian (the PyPI package named bcc is unrelated): link only that package.
site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
if [ "$(readlink "$site/bcc" 2>/dev/null)" != /usr/lib/python3/dist-packages/bcc ]; then
    say "linking Debian's bcc into $site"
    ln -sfn /usr/lib/python3/dist-packages/bcc "$site/bcc"
fi
"$VENV/bin/python" -c 'import bcc' || { echo "setup: bcc is not importable from $VENV" >&2; exit 1; }

# 6. Real third-party peers for the tests: cnitool (built from Debian's CNI source with Debian's
#    Go), a busybox OCI image for containerd, and the request/response benchmark probe.
mkdir -p .tools
[ -x .tools/cnitool ] || { say "building cnitool"; ./scripts/build-cnitool.sh "$PWD/.tools/cnitool" >/dev/null; }
[ -s .tools/busybox-oci.tar ] || { say "building the busybox image"; ./scripts/build-busybox-image.sh "$PWD/.tools/busybox-oci.tar" >/dev/null; }
[ .tools/rrprobe -nt bench/rrprobe.c ] || gcc -O2 -o .tools/rrprobe bench/rrprobe.c
say "ok"

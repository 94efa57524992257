#!/bin/sh
# An OCI busybox image without a registry: Debian's busybox-static packed with umoci.
# Usage: build-busybox-image.sh OUTPUT.tar   (import with: ctr image import --base-name docker.io/pylium/busybox OUTPUT.tar)
set -eu
out=$1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
apt-get -o APT::Sandbox::User=root download -qq busybox-static      # not installed: it conflicts with Debian's busybox
dpkg-deb -x busybox-static_*.deb bbs
umoci init --layout oci
umoci new --image oci:latest
umoci unpack --rootless --image oci:latest bundle >/dev/null
mkdir -p bundle/rootfs/bin
cp bbs/bin/busybox bundle/rootfs/bin/
for app in sh ip ping sleep nc wget cat echo ifconfig route; do ln -s busybox "bundle/rootfs/bin/$app"; done
umoci repack --image oci:latest bundle
umoci config --image oci:latest --config.cmd /bin/sh --config.env PATH=/bin
tar -C oci -cf "$out" .
echo "built $out"

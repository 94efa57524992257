#!/bin/sh
# Build cnitool (a real CNI client nobody here wrote) from Debian's source package
# golang-github-appc-cni with Debian's Go, offline. Usage: build-cnitool.sh OUTPUT
set -eu
out=$1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/apt/lists/partial"
cat > "$work/apt/src.sources" <<SRC
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
# a private sources list: the system's apt configuration stays untouched
apt_private="-o APT::Sandbox::User=root -o Dir::Etc::SourceList=/dev/null -o Dir::Etc::SourceParts=$work/apt -o Dir::State::Lists=$work/apt/lists"
# shellcheck disable=SC2086
apt-get $apt_private update -qq
# shellcheck disable=SC2086
(cd "$work" && apt-get $apt_private source --download-only -qq golang-github-appc-cni)
tar -C "$work" -xf "$work"/golang-github-appc-cni_*.orig.tar.*
mkdir -p "$work/gopath/src/cnitool"
cp "$work"/golang-github-appc-cni-*/cnitool/cnitool.go "$work/gopath/src/cnitool/"
cd "$work/gopath/src/cnitool"
GO111MODULE=off GOPATH="$work/gopath:/usr/share/gocode" GOPROXY=off GOCACHE="$work/cache" go build -o "$out" .
echo "built $out"

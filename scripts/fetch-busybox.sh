#!/usr/bin/env bash
# Fetches Debian's busybox-static (apt-get download + dpkg-deb -x) into .cache/busybox/ for
# the full-boot test's initrd. Prints the path of the busybox binary. Idempotent.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
dest=$top/.cache/busybox
bin=$dest/root/bin/busybox
if [ -x "$bin" ]; then echo "$bin"; exit 0; fi
apt-cache show busybox-static >/dev/null 2>&1 || apt-get update -qq >&2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && apt-get download -q busybox-static >&2)
rm -rf "$dest" && mkdir -p "$dest"
dpkg-deb -x "$tmp"/busybox-static_*.deb "$dest/root"
echo "$bin"

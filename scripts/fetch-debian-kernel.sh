#!/usr/bin/env bash
# Fetches Debian's stock kernel package (the image linux-image-amd64 depends on) with
# apt-get download and unpacks it with dpkg-deb -x into .cache/debian-kernel/ (never a file
# from this machine's /boot). Prints the path of the vmlinuz on stdout. Idempotent.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
dest=${HVPROBE_DEBIAN_KERNEL_DIR:-$top/.cache/debian-kernel}
mkdir -p "$dest"
if ls "$dest"/root/boot/vmlinuz-* >/dev/null 2>&1; then
  ls "$dest"/root/boot/vmlinuz-* | head -n1
  exit 0
fi
command -v apt-get >/dev/null || { echo "fetch-debian-kernel: apt-get not found (Debian or Ubuntu host needed)" >&2; exit 1; }
if ! apt-cache show linux-image-amd64 >/dev/null 2>&1; then
  echo "fetch-debian-kernel: updating apt lists" >&2
  apt-get update -qq >&2
fi
pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
[ -n "$pkg" ] || { echo "fetch-debian-kernel: cannot tell which image linux-image-amd64 depends on" >&2; exit 1; }
echo "fetch-debian-kernel: downloading $pkg" >&2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && apt-get download -q "$pkg" >&2)
rm -rf "$dest/root"
dpkg-deb -x "$tmp"/"$pkg"_*.deb "$dest/root"
ls "$dest"/root/boot/vmlinuz-* | head -n1

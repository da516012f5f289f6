#!/usr/bin/env bash
# Fetches Debian's stock kernel: the image linux-image-amd64 depends on, resolved from fresh
# apt lists (apt-get update, every run) together with its linux-headers-<same version> as one
# pair: it refuses when the archive does not offer those headers at the image's version
# (Debian's archive moves: stale lists resolve an image whose headers are gone). Downloads the
# image with apt-get download and unpacks it with dpkg-deb -x into .cache/debian-kernel/root/
# (never a file from this machine's /boot); a cached image is kept only if it is that pair's.
# .cache/debian-kernel/vmlinuz is a version-free symlink to it (for configs and docs);
# .cache/debian-kernel/package names the pair (image package and version).
# Prints the real path, .cache/debian-kernel/root/boot/vmlinuz-<version>, on stdout.
#
# Usage: scripts/fetch-debian-kernel.sh [--cached]
#   --cached   no apt: print the kernel fetched last (fails if there is none)
# HVPROBE_DEBIAN_KERNEL_DIR replaces .cache/debian-kernel. Needs root (apt-get update).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
dest=${HVPROBE_DEBIAN_KERNEL_DIR:-$top/.cache/debian-kernel}
die() { echo "fetch-debian-kernel: $*" >&2; exit 1; }

cached() { # the cached pair's vmlinuz, if complete
  local link=$dest/vmlinuz
  [ -f "$dest/package" ] && [ -L "$link" ] && [ -f "$link" ] && readlink -f "$link"
}

case ${1:-} in
  --cached)
    cached || die "no kernel fetched yet in $dest: run scripts/fetch-debian-kernel.sh"
    exit 0
    ;;
  "") ;;
  *) die "unknown argument '$1' (usage: fetch-debian-kernel.sh [--cached])" ;;
esac

command -v apt-get >/dev/null || die "apt-get not found (Debian or Ubuntu host needed)"
mkdir -p "$dest"
exec 9>"$dest/.lock"
flock 9

echo "fetch-debian-kernel: updating apt lists (apt-get update)" >&2
apt-get update -qq >&2 ||
  die "apt-get update failed: the kernel is resolved from fresh apt lists (needs root and network); scripts/fetch-debian-kernel.sh --cached prints the kernel fetched last"
image=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ && !n++ {print $2}')
[ -n "$image" ] || die "cannot tell which image linux-image-amd64 depends on (apt-cache depends linux-image-amd64)"
kver=${image#linux-image-}
candidate() { apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ && !n++ {print $2}'; }
iver=$(candidate "$image")
hver=$(candidate "linux-headers-$kver")
[ -n "$iver" ] && [ "$iver" != "(none)" ] || die "linux-image-amd64 depends on $image, which the archive does not offer"
if [ -z "$hver" ] || [ "$hver" = "(none)" ]; then
  die "the archive offers $image $iver but not linux-headers-$kver: the image and its headers must be one pair (Debian's archive is moving?); retry later"
fi
[ "$hver" = "$iver" ] ||
  die "the archive offers $image $iver but linux-headers-$kver $hver: not one pair (Debian's archive is moving?); retry later"
pair="$image $iver"

if [ "$(cat "$dest/package" 2>/dev/null)" = "$pair" ] && [ -f "$dest/root/boot/vmlinuz-$kver" ]; then
  echo "fetch-debian-kernel: $image $iver (cached; linux-headers-$kver $hver offered)" >&2
else
  echo "fetch-debian-kernel: downloading $image $iver (linux-headers-$kver $hver offered)" >&2
  tmp=$(mktemp -d "$dest/.download.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  (cd "$tmp" && apt-get download -q "$image=$iver" >&2) || die "apt-get download $image=$iver failed"
  dpkg-deb -x "$tmp"/"$image"_*.deb "$tmp/root"
  [ -f "$tmp/root/boot/vmlinuz-$kver" ] || die "$image has no /boot/vmlinuz-$kver"
  rm -rf "$dest/root" "$dest/package" "$dest/vmlinuz"
  mv "$tmp/root" "$dest/root"
  echo "$pair" >"$dest/package"
fi
ln -sfn "root/boot/vmlinuz-$kver" "$dest/vmlinuz"
echo "$dest/root/boot/vmlinuz-$kver"

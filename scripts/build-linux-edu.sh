#!/usr/bin/env bash
# Builds tests/linux-edu/hvprobe_edu.ko (the Linux driver for hvprobe's edu device) against
# the headers of the Debian kernel fetched by scripts/fetch-debian-kernel.sh, in
# .cache/linux-edu/<version>/ (kbuild writes next to the sources, so they are copied there
# first and the source tree stays clean). Needs Debian's linux-headers-<version> (scripts/test.sh
# installs it). Fails on any compiler or modpost warning. Prints the .ko path on stdout.
# Usage: scripts/build-linux-edu.sh [KERNEL-VERSION]  (default: the fetched kernel's)
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
if [ $# -ge 1 ]; then
  ver=$1
else
  vmlinuz=$("$top/scripts/fetch-debian-kernel.sh" --cached)
  ver=${vmlinuz##*/vmlinuz-}
fi
kdir=${HVPROBE_LINUX_HEADERS:-/usr/src/linux-headers-$ver}
if [ ! -f "$kdir/Makefile" ]; then
  echo "build-linux-edu: $kdir missing: apt-get install linux-headers-$ver" >&2
  exit 1
fi
src=$top/tests/linux-edu
out=$top/.cache/linux-edu/$ver
mkdir -p "$out"
cp "$src/hvprobe_edu.c" "$src/Makefile" "$out/"
log=$out/build.log
if ! make -C "$kdir" M="$out" modules >"$log" 2>&1; then
  cat "$log" >&2
  echo "build-linux-edu: build failed" >&2
  exit 1
fi
if grep -qi 'warning' "$log"; then
  cat "$log" >&2
  echo "build-linux-edu: the build has warnings" >&2
  exit 1
fi
echo "$out/hvprobe_edu.ko"

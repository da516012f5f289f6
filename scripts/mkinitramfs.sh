#!/usr/bin/env bash
# Builds an uncompressed newc cpio initramfs for Linux guests: Debian's busybox-static
# (scripts/fetch-busybox.sh) at /bin/busybox with its applet links (symlinks), our /init
# (scripts/guest/init: mounts proc, sysfs, devtmpfs, runs a command script, prints marker
# lines, ends the VM; its options and markers are documented at its top), /dev/console, and
# the files the caller adds. Written by this script (no cpio tool, no root, no mknod needed):
# owner root, mtime 0, the same bytes for the same inputs. Prints the archive's path on stdout.
#
# Usage: scripts/mkinitramfs.sh [-o OUT] [--script FILE] [--add HOST:GUEST]... [--busybox PATH]
#   -o OUT             where to write it (default .cache/initramfs/initramfs.cpio)
#   --script FILE      the run script, at /hvprobe/run.sh (what /init runs by default)
#   --add HOST:GUEST   a file (a test program, a driver .ko) at GUEST, an absolute path;
#                      keeps its permission bits; missing parent directories are created;
#                      repeatable
#   --busybox PATH     a static busybox to use instead of Debian's busybox-static
# Example:
#   scripts/mkinitramfs.sh --script run.sh --add tests/linux-edu/hvprobe_edu.ko:/lib/edu.ko
#   hvprobe run --kernel .cache/debian-kernel/vmlinuz --initrd .cache/initramfs/initramfs.cpio
set -euo pipefail
export LC_ALL=C
top=$(cd "$(dirname "$0")/.." && pwd)
die() { echo "mkinitramfs: $*" >&2; exit 1; }

out=$top/.cache/initramfs/initramfs.cpio
script=
busybox=
adds=()
while [ $# -gt 0 ]; do
  case $1 in
    -o | --output) [ $# -ge 2 ] || die "$1 needs a path"; out=$2; shift 2 ;;
    --script) [ $# -ge 2 ] || die "--script needs a file"; script=$2; shift 2 ;;
    --add) [ $# -ge 2 ] || die "--add needs HOST:GUEST"; adds+=("$2"); shift 2 ;;
    --busybox) [ $# -ge 2 ] || die "--busybox needs a path"; busybox=$2; shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
[ -n "$busybox" ] || busybox=$("$top/scripts/fetch-busybox.sh")
[ -f "$busybox" ] || die "busybox not found at $busybox"
[ -z "$script" ] || [ -f "$script" ] || die "run script $script not found"
init=$top/scripts/guest/init
[ -f "$init" ] || die "$init is missing"

# The archive's entries, in order: type (d dir, f file, l symlink, c char device), mode,
# guest path (no leading /), and the file's host path, the link's target or "maj:min".
types=() modes=() names=() srcs=()
declare -A seen=()
add_entry() { # TYPE MODE NAME SRC
  [ -z "${seen[$3]:-}" ] || die "/$3 is in the archive twice"
  seen[$3]=1
  types+=("$1") modes+=("$2") names+=("$3") srcs+=("$4")
}
add_dirs() { # every missing parent directory of NAME
  local parent=${1%/*}
  [ "$parent" != "$1" ] || return 0
  add_dirs "$parent"
  [ -n "${seen[$parent]:-}" ] || add_entry d 0755 "$parent" ""
}
add_file() { # HOST NAME [MODE]
  local mode=${3:-}
  [ -f "$1" ] || die "$1 is not a regular file (only files can be added)"
  [ -n "$mode" ] || mode=$(stat -L -c '%a' "$1")
  add_dirs "$2"
  add_entry f "$mode" "$2" "$1"
}

for d in bin sbin usr usr/bin usr/sbin dev proc sys tmp run root etc hvprobe; do
  add_entry d 0755 "$d" ""
done
add_entry c 0600 dev/console 5:1
add_file "$busybox" bin/busybox 0755
add_file "$init" init 0755
# Applet links, if this host can run the busybox (else /init runs busybox --install -s)
if applets=$("$busybox" --list-full 2>/dev/null); then
  for a in $applets; do
    [ "$a" = bin/busybox ] || [ "$a" = linuxrc ] || { add_dirs "$a"; add_entry l 0777 "$a" /bin/busybox; }
  done
fi
[ -z "$script" ] || add_file "$script" hvprobe/run.sh 0755
for spec in "${adds[@]}"; do
  case $spec in *:/*) ;; *) die "--add $spec: expected HOST:GUEST with GUEST an absolute path" ;; esac
  host=${spec%:*} guest=${spec##*:}
  guest=${guest#/}
  [ -n "$guest" ] && [ -n "$host" ] || die "--add $spec: expected HOST:GUEST"
  add_file "$host" "$guest"
done

pad() { # NUL bytes up to the next multiple of 4 after offset $1
  case $(($1 % 4)) in 1) printf '\0\0\0' ;; 2) printf '\0\0' ;; 3) printf '\0' ;; esac
}
header() { # INO MODE SIZE RMAJ RMIN NAME
  printf '070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X' \
    "$1" "$2" 0 0 1 0 "$3" 0 0 "$4" "$5" $((${#6} + 1)) 0
  printf '%s\0' "$6"
  pad $((110 + ${#6} + 1))
}

mkdir -p "$(dirname "$out")"
tmp=$out.tmp.$$
trap 'rm -f "$tmp"' EXIT
{
  for i in "${!names[@]}"; do
    name=${names[$i]} src=${srcs[$i]} perm=$((8#${modes[$i]}))
    case ${types[$i]} in
      d) header $((i + 1)) $((8#040000 | perm)) 0 0 0 "$name" ;;
      c) header $((i + 1)) $((8#020000 | perm)) 0 "${src%:*}" "${src#*:}" "$name" ;;
      l)
        header $((i + 1)) $((8#120000 | perm)) ${#src} 0 0 "$name"
        printf '%s' "$src"
        pad ${#src}
        ;;
      f)
        size=$(stat -L -c '%s' "$src")
        header $((i + 1)) $((8#100000 | perm)) "$size" 0 0 "$name"
        cat "$src"
        pad "$size"
        ;;
    esac
  done
  header 0 0 0 0 0 'TRAILER!!!'
} >"$tmp"
mv -f "$tmp" "$out"
trap - EXIT
echo "$out"

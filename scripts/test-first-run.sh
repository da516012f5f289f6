#!/usr/bin/env bash
# Checks README's first command on a machine whose Rust toolchain lacks the
# x86_64-unknown-none target (a fresh rustup install): in a temporary RUSTUP_HOME holding a copy
# of the active toolchain without that target (hard links where possible),
#   1. `cargo run --release --bin hvprobe -- run` fails, and vmm/build.rs says to run
#      `rustup target add x86_64-unknown-none`;
#   2. README's first command, read from README.md's Quick start (`rustup target add ... &&
#      cargo run ...`), adds the target (rustup downloads it) and boots the bundled test kernel:
#      exit status 0.
# CARGO_HOME stays the real one (its crate cache; the build is --offline where it can be).
# Builds in $CARGO_TARGET_DIR/first-run (kept between runs; only vmm's build script reruns and
# vmm is rebuilt). Needs network access to rustup's dist server and /dev/kvm.
# Usage: scripts/test-first-run.sh   (from anywhere; scripts/test.sh runs it)
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
die() { echo "test-first-run: FAILED: $*" >&2; exit 1; }
target=x86_64-unknown-none

command -v rustup >/dev/null || die "rustup not found (this checks a rustup toolchain)"
sysroot=$(rustc --print sysroot)
name=${sysroot##*/}
[ -d "$sysroot/lib/rustlib" ] || die "no lib/rustlib in $sysroot"

# README's first command: the Quick start's first line, without its trailing comment
first=$(awk '/^## Quick start/ {q=1} q && /^cargo |^rustup / && !n++ {print}' "$top/README.md")
first=${first%%#*}
first=$(echo "$first" | sed 's/[[:space:]]*$//')
case $first in
  "rustup target add $target && cargo run --release --bin hvprobe -- run") ;;
  *) die "README's first command is not the expected one: '$first'" ;;
esac

base=${CARGO_TARGET_DIR:-$top/target}/first-run
work=$(mktemp -d "${TMPDIR:-/tmp}/hvprobe-first-run.XXXXXX")
trap 'rm -rf "$work"' EXIT
home=$work/rustup
tc=$home/toolchains/$name
mkdir -p "$tc/lib/rustlib" "$home/update-hashes"
link() { cp -al "$@" 2>/dev/null || cp -a "$@"; }
for e in "$sysroot"/*; do
  case ${e##*/} in
    lib | share) ;;  # lib: below; share: docs and man pages, not needed
    *) link "$e" "$tc/" ;;
  esac
done
for e in "$sysroot"/lib/*; do
  [ "${e##*/}" = rustlib ] || link "$e" "$tc/lib/"
done
for e in "$sysroot"/lib/rustlib/*; do
  case ${e##*/} in
    "$target" | "manifest-rust-std-$target") ;;
    *) if [ -d "$e" ]; then link "$e" "$tc/lib/rustlib/"; else cp "$e" "$tc/lib/rustlib/"; fi ;;  # rustup rewrites the files: real copies
  esac
done
grep -v "^rust-std-$target\$" "$sysroot/lib/rustlib/components" >"$tc/lib/rustlib/components"
# multirust-config.toml: blank-line separated records; drop the [[components]] of rust-std for it
awk -v RS= -v ORS='\n\n' -v t="target = \"$target\"" '!(index($0, "pkg = \"rust-std\"") && index($0, t))' \
  "$sysroot/lib/rustlib/multirust-config.toml" >"$tc/lib/rustlib/multirust-config.toml"
[ ! -f "$(dirname "$(dirname "$sysroot")")/update-hashes/$name" ] ||
  cp "$(dirname "$(dirname "$sysroot")")/update-hashes/$name" "$home/update-hashes/"
printf 'version = "12"\ndefault_toolchain = "%s"\nprofile = "minimal"\nauto_self_update = "disable"\n' "$name" >"$home/settings.toml"

export RUSTUP_HOME=$home CARGO_TARGET_DIR=$base
unset RUSTUP_TOOLCHAIN RUSTC RUSTDOC RUSTC_WRAPPER RUSTC_WORKSPACE_WRAPPER CARGO_BUILD_TARGET
if rustup target list --installed | grep -x "$target" >/dev/null; then
  die "the copied toolchain still lists $target"
fi
# vmm's build script must run again (its last run, with the target, is cached): forget it
for out in "$base"/release/build/vmm-*/output; do
  [ -e "$out" ] || continue
  run=$(basename "$(dirname "$out")")
  rm -rf "$base/release/.fingerprint/$run"
done

cd "$top"
echo "test-first-run: 1. cargo run without $target (toolchain $name, RUSTUP_HOME=$home)" >&2
t0=$(date +%s)
set +e
cargo run --release --bin hvprobe -- run >"$work/1.out" 2>"$work/1.err"
rc=$?
set -e
[ $rc -ne 0 ] || die "cargo run succeeded without the $target target"
grep -q "the Rust target $target is not installed" "$work/1.err" &&
  grep -q "rustup target add $target" "$work/1.err" ||
  { tail -n 30 "$work/1.err" >&2; die "vmm/build.rs's message is missing from cargo's output"; }
echo "test-first-run: 1. ok: exit status $rc after $(($(date +%s) - t0)) s, build.rs says: $(grep -m1 'rustup target add' "$work/1.err" | sed 's/^ *//')" >&2

echo "test-first-run: 2. README's first command: $first" >&2
t0=$(date +%s)
set +e
bash -c "$first" >"$work/2.out" 2>"$work/2.err"
rc=$?
set -e
[ $rc -eq 0 ] || { tail -n 30 "$work/2.err" >&2; die "README's first command exited $rc (expected 0)"; }
rustup target list --installed | grep -x "$target" >/dev/null || die "$target is still not installed"
echo "test-first-run: 2. ok: exit status 0 after $(($(date +%s) - t0)) s" >&2
echo "test-first-run: passed"

#!/usr/bin/env bash
# Builds guest-kmod/ (hvprobe's guest module: a C kbuild shim plus a no_std Rust staticlib,
# linked into one hvprobe_guest.ko) against Debian's linux-headers-<version>, in
# .cache/guest-kmod/<version>/ (kbuild writes next to its sources, so they are copied there;
# the source tree stays clean). Installs nothing and loads nothing on this host.
# Runs these checks on every build and fails on any of them (guest-kmod/README.md says why):
#   - no compiler, modpost or objtool warning (objtool runs on the Rust object too);
#   - relocation types in allocated sections only from the module loader's list;
#   - every undefined symbol of the .ko is in the headers' Module.symvers;
#   - no SIMD or x87 instruction in the Rust object;
#   - modinfo's vermagic is exactly the one these headers give the kernel.
# Prints the .ko path on stdout.
# Usage: scripts/build-guest-kmod.sh [KERNEL-VERSION]  (default: the fetched kernel's)
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
die() { echo "build-guest-kmod: $*" >&2; exit 1; }
if [ $# -ge 1 ]; then
  ver=$1
else
  vmlinuz=$("$top/scripts/fetch-debian-kernel.sh" --cached)
  ver=${vmlinuz##*/vmlinuz-}
fi
kdir=${HVPROBE_LINUX_HEADERS:-/usr/src/linux-headers-$ver}
[ -f "$kdir/Makefile" ] || die "$kdir missing: apt-get install linux-headers-$ver"
[ -f "$kdir/Module.symvers" ] || die "$kdir/Module.symvers missing"
src=$top/guest-kmod
out=$top/.cache/guest-kmod/$ver
mkdir -p "$out"
# One build at a time per output directory (tests build it concurrently).
exec 9>"$out/.lock"
flock 9
log=$out/build.log
: >"$log"

# 1. The Rust object: one relocatable with our crate and the parts of core it uses.
#    -C relocation-model=static and code-model=kernel: what the module loader can relocate;
#    thunked returns and retpolines (Debian's kernel has RETHUNK and RETPOLINE): objtool-clean.
#    RUSTC_BOOTSTRAP=1 for the -Z flags, as the kernel's own Makefile does for Rust.
rustflags="-C relocation-model=static -C code-model=kernel -C relro-level=off \
-C force-unwind-tables=no -C jump-tables=no -C target-cpu=x86-64 \
-Zfunction-return=thunk-extern -Zretpoline-external-thunk \
-Cunsafe-allow-abi-mismatch=retpoline,retpoline-external-thunk"
rtarget=$out/rust-target
if ! (cd "$src/rust" && RUSTC_BOOTSTRAP=1 RUSTFLAGS="$rustflags" CARGO_TARGET_DIR="$rtarget" \
      cargo rustc --quiet --release --target x86_64-unknown-none -- \
      --emit=obj="$out/rust-raw.o") >>"$log" 2>&1; then
  cat "$log" >&2
  die "the Rust object did not build"
fi
objcopy --strip-debug --remove-section=.comment "$out/rust-raw.o" "$out/rust.o.prebuilt"
# 2. GOT-relative sites (prebuilt core's memcpy/memset calls) to their direct forms.
python3 "$src/tools/kmodelf.py" relax "$out/rust.o.prebuilt" 2>>"$log" ||
  { cat "$log" >&2; die "GOT-relative relocations could not be rewritten"; }
# 3. No SIMD / x87 in the Rust object (the kernel does not save those registers for us).
simd=$(objdump -d --no-show-raw-insn "$out/rust.o.prebuilt" |
  grep -P '^\s+[0-9a-f]+:\s' |
  grep -P '%[xyz]mm|%mm[0-7]|%st\b|%st\(|\s(f[a-z0-9]+|ldmxcsr|stmxcsr|emms|v[a-z0-9]+ps|v[a-z0-9]+pd)\s' || true)
[ -z "$simd" ] || { echo "$simd" >&2; die "SIMD or x87 instructions in the Rust object"; }

# 4. kbuild: the shim, the Rust object (copied, then objtool), modpost, the .ko.
cp "$src/shim.c" "$src/Kbuild" "$out/"
if ! make -C "$kdir" M="$out" modules >>"$log" 2>&1; then
  cat "$log" >&2
  die "kbuild failed"
fi
if grep -qiE 'warning|error' "$log"; then
  cat "$log" >&2
  die "the build has warnings (compiler, objtool or modpost)"
fi
ko=$out/hvprobe_guest.ko
[ -f "$ko" ] || die "kbuild made no $ko"

# 5. The loader's relocation types only.
python3 "$src/tools/kmodelf.py" relocs "$ko" || die "relocations the module loader refuses"
# 6. Every undefined symbol is exported by this kernel.
missing=$(nm -u "$ko" | awk '{print $2}' | sort -u |
  comm -23 - <(awk '{print $2}' "$kdir/Module.symvers" | sort -u) || true)
[ -z "$missing" ] || { echo "$missing" >&2; die "undefined symbols not in Module.symvers"; }
# 7. vermagic exactly as these headers make the kernel's.
cfg=$kdir/.config
want="$ver "
grep -q '^CONFIG_SMP=y' "$cfg" && want+="SMP "
grep -q '^CONFIG_PREEMPT_BUILD=y' "$cfg" && want+="preempt "
grep -q '^CONFIG_MODULE_UNLOAD=y' "$cfg" && want+="mod_unload "
grep -q '^CONFIG_MODVERSIONS=y' "$cfg" && want+="modversions "
got=$(modinfo -F vermagic "$ko")
[ "$got" = "$want" ] || die "vermagic '$got', expected '$want'"
echo "$ko"

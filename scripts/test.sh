#!/usr/bin/env bash
# The whole test suite from a fresh machine: installs what it needs (rustup target, apt
# packages, Debian's kernel package, busybox), then checks formatting and lints, runs every
# test, and build-checks the fuzz target. Run from anywhere: bash scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '\n==> %s\n' "$*"; }

step "toolchain: rustup target x86_64-unknown-none (the test kernel), rustfmt, clippy"
rustup target add x86_64-unknown-none
rustup component add rustfmt clippy

step "apt packages"
# linux-headers-<version> of the Debian kernel the guest tests boot (fetched here first, to
# know its version; the headers pull in linux-kbuild) and kmod's modinfo build and check
# tests/linux-edu's module (scripts/build-linux-edu.sh). fetch-debian-kernel.sh runs
# apt-get update and checks that these lists offer the image's headers: install from the same
# lists (no second update). cpio lists the guest kit's initramfs, QEMU TCG boots it
# (vmm/tests/guest_kit.rs).
kver=$(scripts/fetch-debian-kernel.sh)
kver=${kver##*/vmlinuz-}
need=()
for pkg in build-essential pkg-config xz-utils dpkg gawk kmod bpftool babeltrace2 cpio qemu-system-x86 python3 "linux-headers-$kver"; do
  [ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null)" = "install ok installed" ] || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq "${need[@]}"
fi
[ -r /dev/kvm ] || { echo "test.sh: /dev/kvm is missing or not readable: hvprobe's tests run real VMs" >&2; exit 1; }

step "guest images: Debian's stock kernel package and busybox-static"
scripts/fetch-debian-kernel.sh --cached
scripts/fetch-busybox.sh

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "tests (cargo-nextest: each test's wall time; Linux boots one at a time, .config/nextest.toml)"
command -v cargo-nextest >/dev/null || cargo install --locked cargo-nextest
cargo nextest run --workspace
step "doc tests"
cargo test --workspace --doc

step "README's first command on a toolchain without x86_64-unknown-none"
scripts/test-first-run.sh

step "fuzz target build check"
cargo check --manifest-path fuzz/Cargo.toml

step "done"

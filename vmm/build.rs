//! Builds the test kernel (`tests/test-kernel`, a no_std crate for `x86_64-unknown-none`) and
//! leaves it at `$OUT_DIR/test-kernel.elf`, where `vmm::test_kernel` embeds it.
//!
//! The test kernel is its own workspace with its own `.cargo/config.toml`, so it is built by a
//! child `cargo build --release` run from its directory, with its own target directory and
//! none of the outer build's settings (flags, wrappers such as clippy-driver, profile
//! overrides, target, jobserver) in the child's environment.

use std::env;
use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

/// The test kernel's target triple.
const TARGET: &str = "x86_64-unknown-none";
/// The test kernel's binary name (its Cargo.toml `[[bin]]`).
const BIN: &str = "test-kernel";

/// Environment variables the child cargo must not inherit, by exact name.
const REMOVED_VARS: &[&str] = &[
    "RUSTFLAGS",
    "RUSTDOCFLAGS",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "RUSTC_LINKER",
    "RUSTDOC",
    "MAKEFLAGS",
    "MFLAGS",
    // Build-script inputs cargo sets for this script, meaningless to the child.
    "TARGET",
    "HOST",
    "OUT_DIR",
    "PROFILE",
    "OPT_LEVEL",
    "DEBUG",
    "NUM_JOBS",
];

/// `CARGO_*` variables the child keeps: where cargo lives and how it reaches the network.
const KEPT_CARGO_PREFIXES: &[&str] = &["CARGO_HOME", "CARGO_NET_", "CARGO_HTTP_"];

/// True if the child cargo must not see the variable `name`. Every other `CARGO_*` variable
/// goes: CARGO_ENCODED_RUSTFLAGS, CARGO_BUILD_*, CARGO_TARGET_* (including CARGO_TARGET_DIR
/// and runners), CARGO_PROFILE_*, CARGO_MAKEFLAGS, CARGO_CFG_*, CARGO_PKG_*, CARGO_INCREMENTAL...
fn is_removed(name: &OsStr) -> bool {
    let Some(name) = name.to_str() else {
        return false;
    };
    REMOVED_VARS.contains(&name)
        || name.starts_with("__CARGO")
        || (name.starts_with("CARGO_") && !KEPT_CARGO_PREFIXES.iter().any(|p| name.starts_with(p)))
}

fn main() -> ExitCode {
    match build() {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Fails with the fix when the toolchain building hvprobe has no standard library for
/// [`TARGET`] (a fresh rustup install has only the host's; a `rust-toolchain.toml` listing the
/// target does not add it here). Asks the same rustc cargo uses for its target libdir; if that
/// question cannot be asked, the child build below reports instead.
fn check_target_installed() -> Result<(), String> {
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let Ok(out) = Command::new(&rustc)
        .args(["--print", "target-libdir", "--target", TARGET])
        .output()
    else {
        return Ok(());
    };
    if !out.status.success() {
        return Ok(());
    }
    let libdir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let has_core = fs::read_dir(&libdir).is_ok_and(|entries| {
        entries
            .filter_map(Result::ok)
            .any(|e| e.file_name().to_string_lossy().starts_with("libcore-"))
    });
    if has_core {
        return Ok(());
    }
    let toolchain = env::var("RUSTUP_TOOLCHAIN")
        .map(|t| format!("toolchain {t}"))
        .unwrap_or_else(|_| "this toolchain".into());
    Err(format!(
        "the Rust target {TARGET} is not installed ({toolchain}: no core library in {}).\n\
         vmm/build.rs builds hvprobe's bundled test kernel for it. Run once:\n\
         \n    rustup target add {TARGET}\n",
        libdir.display()
    ))
}

fn build() -> Result<(), String> {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").ok_or("CARGO_MANIFEST_DIR is not set")?);
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or("OUT_DIR is not set")?);
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let kernel_dir = manifest_dir.join("../tests/test-kernel");
    let kernel_dir = kernel_dir.canonicalize().map_err(|e| {
        format!(
            "test kernel sources not found at {}: {e}",
            kernel_dir.display()
        )
    })?;

    for input in [
        "src",
        "Cargo.toml",
        "Cargo.lock",
        ".cargo/config.toml",
        "linker.ld",
        "build.rs",
    ] {
        println!(
            "cargo:rerun-if-changed={}",
            kernel_dir.join(input).display()
        );
    }

    check_target_installed()?;

    let target_dir = out_dir.join("test-kernel-target");
    let mut command = Command::new(&cargo);
    // The working directory selects the test kernel's own .cargo/config.toml.
    command
        .current_dir(&kernel_dir)
        .args([
            "build",
            "--release",
            "--offline",
            "--target",
            TARGET,
            "--manifest-path",
        ])
        .arg(kernel_dir.join("Cargo.toml"));
    for (name, _) in env::vars_os() {
        if is_removed(&name) {
            command.env_remove(name);
        }
    }
    command.env("CARGO_TARGET_DIR", &target_dir);

    let output = command.output().map_err(|e| {
        format!(
            "could not run {} to build the test kernel: {e}",
            Path::new(&cargo).display()
        )
    })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let hint = if stderr.contains("can't find crate for `core`")
            || stderr.contains("target may not be installed")
        {
            format!("the Rust target {TARGET} is not installed. Fix: rustup target add {TARGET}")
        } else {
            format!("if the output says the target is missing, run: rustup target add {TARGET}")
        };
        return Err(format!(
            "building the test kernel failed ({}: cargo build --release --target {TARGET} in {}, {}).\n\
             {hint}\n--- cargo output ---\n{stderr}",
            "vmm/build.rs",
            kernel_dir.display(),
            output.status,
        ));
    }

    let elf = target_dir.join(TARGET).join("release").join(BIN);
    let dest = out_dir.join("test-kernel.elf");
    fs::copy(&elf, &dest).map_err(|e| {
        format!(
            "could not copy {} to {}: {e}",
            elf.display(),
            dest.display()
        )
    })?;
    Ok(())
}

//! Test guests and helpers for hvprobe's tests.
//!
//! Tiny guests are written with iced-x86's `code_asm` (labels give addresses, no hand-encoded
//! bytes). They run in 64-bit long mode, exactly as hvprobe enters every guest (flat
//! segments, identity-mapped 0..4 GiB, `rsi` = boot_params), and talk to hvprobe's test
//! device: POINT at port 0x600, EXIT at port 0x604, SCRATCH at 0x60c, and the same registers
//! in the MMIO page at 0xd000_0000.

pub mod linux;

use std::collections::HashMap;
use std::path::PathBuf;

use iced_x86::BlockEncoderOptions;
use iced_x86::code_asm::{CodeAssembler, CodeLabel};

pub use iced_x86::code_asm;

/// Where tiny guests are loaded (and entered).
pub const PROGRAM_BASE: u64 = 0x10_0000;
/// Test device POINT / ID port.
pub const PORT_POINT: u16 = 0x600;
/// Test device EXIT port.
pub const PORT_EXIT: u16 = 0x604;
/// Test device SCRATCH port.
pub const PORT_SCRATCH: u16 = 0x60c;
/// Test device MMIO page.
pub const MMIO_TEST_DEVICE: u64 = 0xd000_0000;

/// An assembled guest program with the addresses of its labels.
#[derive(Clone, Debug)]
pub struct Program {
    /// Machine code.
    pub code: Vec<u8>,
    /// Load and entry address.
    pub base: u64,
    labels: HashMap<String, u64>,
}

impl Program {
    /// Address of label `name`. Panics on a name the builder did not define (a test bug).
    pub fn label(&self, name: &str) -> u64 {
        *self
            .labels
            .get(name)
            .unwrap_or_else(|| panic!("no label {name} in the test program"))
    }
}

/// Builds a program: `build` emits code into the assembler and names labels in `Labels`.
pub fn assemble(
    build: impl FnOnce(&mut CodeAssembler, &mut Labels) -> Result<(), iced_x86::IcedError>,
) -> Program {
    let mut a = CodeAssembler::new(64).expect("64-bit assembler");
    let mut labels = Labels::default();
    build(&mut a, &mut labels).expect("test program assembles");
    let result = a
        .assemble_options(
            PROGRAM_BASE,
            BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS,
        )
        .expect("test program encodes");
    let addrs = labels
        .names
        .iter()
        .map(|(name, l)| (name.clone(), result.label_ip(l).expect("label was placed")))
        .collect();
    Program {
        code: result.inner.code_buffer,
        base: PROGRAM_BASE,
        labels: addrs,
    }
}

/// Named labels of a program being built.
#[derive(Default)]
pub struct Labels {
    names: Vec<(String, CodeLabel)>,
}

impl Labels {
    /// Names a label the builder created (and places itself with `set_label`).
    pub fn name(&mut self, name: &str, label: CodeLabel) {
        self.names.push((name.to_string(), label));
    }

    /// Creates a label and places it at the current position.
    pub fn here(&mut self, a: &mut CodeAssembler, name: &str) -> Result<(), iced_x86::IcedError> {
        let mut l = a.create_label();
        a.set_label(&mut l)?;
        self.names.push((name.to_string(), l));
        Ok(())
    }
}

/// Emits `out PORT_EXIT, eax` with `eax` = `code` (the VM ends with that exit code).
pub fn emit_exit(a: &mut CodeAssembler, code: u32) -> Result<(), iced_x86::IcedError> {
    use code_asm::*;
    a.mov(eax, code)?;
    a.mov(dx, u32::from(PORT_EXIT))?;
    a.out(dx, eax)
}

/// Emits `out PORT_POINT, eax` with `eax` = `n`.
pub fn emit_point(a: &mut CodeAssembler, n: u32) -> Result<(), iced_x86::IcedError> {
    use code_asm::*;
    a.mov(eax, n)?;
    a.mov(dx, u32::from(PORT_POINT))?;
    a.out(dx, eax)
}

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Debian's stock kernel fetched by `scripts/fetch-debian-kernel.sh`: `$HVPROBE_DEBIAN_KERNEL`
/// or `.cache/debian-kernel/root/boot/vmlinuz-*`.
pub fn debian_kernel() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("HVPROBE_DEBIAN_KERNEL") {
        return Some(PathBuf::from(p));
    }
    let dir = workspace_root().join(".cache/debian-kernel/root/boot");
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
        .collect();
    found.sort();
    found.pop()
}

/// Prints the loud line every test that cannot run here prints. It goes straight to the
/// process's stderr (not through `eprintln!`, which the test harness captures), so it shows
/// in every `cargo test` run.
pub fn skip(what: &str, why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED (not tested): {what}: {why}");
}

/// Runs a checker from `scripts/trace-check/` (`program script file`) on `text`; a missing
/// program is a loud skip outside CI and a failure in CI.
pub fn trace_check(program: &str, script: &str, text: &str) {
    use std::io::Write;
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let file = std::env::temp_dir().join(format!("hvprobe-check-{}-{n}", std::process::id()));
    std::fs::write(&file, text).expect("a scratch file");
    let script = workspace_root().join("scripts/trace-check").join(script);
    let out = match std::process::Command::new(program)
        .arg(&script)
        .arg(&file)
        .output()
    {
        Ok(o) => o,
        Err(_) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must install {program}"
            );
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED (not tested): {program} not installed"
            );
            return;
        }
    };
    let _ = std::fs::remove_file(&file);
    assert!(
        out.status.success(),
        "{script:?} rejected the trace:\n{}\n{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

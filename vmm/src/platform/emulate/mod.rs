//! Host-side execution of the instructions our software KVM's ring-0 emulator cannot run.
//!
//! On `kvm_pvm` (see `shared/PLATFORM.md`) some instructions Linux uses end KVM_RUN with
//! `KVM_EXIT_INTERNAL_ERROR` suberror 1 (emulation failure), RIP on the instruction and the
//! guest state intact. [`Emulator::run`] executes such an instruction for the guest, exactly
//! as the CPU would: it fetches the bytes at RIP through the guest's page tables, decodes them
//! with iced-x86, applies the effect to registers, FPU/SSE state and memory (every operand
//! address translated with the access's permissions), and advances RIP. When the CPU would
//! fault, the fault (#PF with CR2 and error code, #GP(0), #UD, #NM, #MF, #SS) is injected
//! instead and RIP stays. Anything else is [`Emulated::Refused`], never skipped.
//!
//! The families, one submodule each: [`x87`] (`fwait`, `fninit`, `fnclex`), [`fxsave`]
//! (`fxsave`/`fxrstor` and their 64-bit forms), [`mxcsr`] (`ldmxcsr`, `stmxcsr`), [`bits`]
//! (`popcnt`), [`random`] (`rdrand`, `rdseed`), [`system`] (`xgetbv`, `clac`, `stac`) and
//! [`atomic`] (`cmpxchg16b`, with the other vCPUs paused). [`access`] is guest memory through
//! the page tables, [`cpu`] what the emulator needs from a vCPU, [`xsave`] how a real vCPU's
//! x87/SSE state (MXCSR included) is read and written.
//!
//! Not modelled: RFLAGS.TF single-step traps after an emulated instruction, and #AC
//! alignment checks (CR0.AM with RFLAGS.AC at CPL 3).

pub mod access;
pub mod atomic;
pub mod bits;
pub mod cpu;
pub mod fxsave;
pub mod mxcsr;
pub mod operands;
pub mod random;
pub mod system;
pub mod x87;
pub mod xsave;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::Mutex;

use iced_x86::{Decoder, DecoderError, DecoderOptions, Formatter, IntelFormatter, Mnemonic};

pub use cpu::{CpuError, EmuCpu, OthersPaused, VcpuCpu};

use crate::memory::GuestMem;
use access::{Guest, MemFault};
use operands::{Ctx, Stop};

/// The longest x86 instruction.
pub const MAX_INSN_LEN: usize = 15;

/// CR0.MP: `wait` honours CR0.TS.
pub const CR0_MP: u64 = 1 << 1;
/// CR0.EM: x87 emulation (x87 and SSE state instructions fault).
pub const CR0_EM: u64 = 1 << 2;
/// CR0.TS: the FPU state belongs to another task (#NM on use).
pub const CR0_TS: u64 = 1 << 3;
/// CR0.NE: x87 errors are reported as #MF (else through the legacy FERR# pin).
pub const CR0_NE: u64 = 1 << 5;
/// CR4.OSFXSR: the OS supports FXSAVE/FXRSTOR and SSE.
pub const CR4_OSFXSR: u64 = 1 << 9;
/// CR4.OSXSAVE: the OS enabled XSAVE (XGETBV works).
pub const CR4_OSXSAVE: u64 = 1 << 18;
/// EFER.LMA: long mode active.
const EFER_LMA: u64 = 1 << 10;
/// RFLAGS.RF: resume flag, cleared when an instruction completes.
const RFLAGS_RF: u64 = 1 << 16;

/// RFLAGS.CF.
pub const FLAG_CF: u64 = 1;
/// RFLAGS.PF.
pub const FLAG_PF: u64 = 1 << 2;
/// RFLAGS.AF.
pub const FLAG_AF: u64 = 1 << 4;
/// RFLAGS.ZF.
pub const FLAG_ZF: u64 = 1 << 6;
/// RFLAGS.SF.
pub const FLAG_SF: u64 = 1 << 7;
/// RFLAGS.OF.
pub const FLAG_OF: u64 = 1 << 11;
/// The six arithmetic flags.
pub const ARITH_FLAGS: u64 = FLAG_CF | FLAG_PF | FLAG_AF | FLAG_ZF | FLAG_SF | FLAG_OF;

/// An exception the emulated instruction raised (and the emulator injected).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exception {
    /// #UD: invalid opcode (vector 6).
    InvalidOpcode,
    /// #NM: device not available (vector 7).
    DeviceNotAvailable,
    /// #SS(0): stack-segment fault, for a non-canonical RSP/RBP-based address (vector 12).
    StackFault,
    /// #GP(0): general protection (vector 13).
    GeneralProtection,
    /// #PF: page fault (vector 14) at `cr2` with `error_code`.
    PageFault {
        /// The faulting linear address (loaded into CR2).
        cr2: u64,
        /// P, W/R, U/S, RSVD, I/D bits.
        error_code: u32,
    },
    /// #MF: x87 floating-point error (vector 16).
    MathFault,
}

impl Exception {
    /// The interrupt vector.
    pub fn vector(&self) -> u8 {
        match self {
            Exception::InvalidOpcode => 6,
            Exception::DeviceNotAvailable => 7,
            Exception::StackFault => 12,
            Exception::GeneralProtection => 13,
            Exception::PageFault { .. } => 14,
            Exception::MathFault => 16,
        }
    }

    /// The error code pushed with it, if it has one.
    pub fn error_code(&self) -> Option<u32> {
        match self {
            Exception::StackFault | Exception::GeneralProtection => Some(0),
            Exception::PageFault { error_code, .. } => Some(*error_code),
            _ => None,
        }
    }
}

impl std::fmt::Display for Exception {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exception::InvalidOpcode => write!(f, "#UD"),
            Exception::DeviceNotAvailable => write!(f, "#NM"),
            Exception::StackFault => write!(f, "#SS(0)"),
            Exception::GeneralProtection => write!(f, "#GP(0)"),
            Exception::PageFault { cr2, error_code } => {
                write!(f, "#PF(cr2={cr2:#x}, error code {error_code:#x})")
            }
            Exception::MathFault => write!(f, "#MF"),
        }
    }
}

/// What [`Emulator::run`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Emulated {
    /// The instruction ran; RIP is past it. Resume the guest.
    Done {
        /// What ran.
        mnemonic: &'static str,
    },
    /// The instruction faulted as the CPU would; the exception is injected and RIP is still
    /// on the instruction. Resume the guest (it enters its exception handler).
    Faulted {
        /// What faulted (`"fetch"` when the instruction bytes themselves did not translate).
        mnemonic: &'static str,
        /// The injected exception.
        exception: Exception,
    },
    /// Not run now and nothing changed: another vCPU is inside an emulated atomic, or the
    /// other vCPUs could not be paused. Resume the guest: it executes the instruction again
    /// and comes back here.
    Retry {
        /// What was postponed.
        mnemonic: &'static str,
        /// Why.
        reason: String,
    },
    /// hvprobe does not know this instruction or will not run it (MMIO operand, unsupported
    /// mode, a KVM ioctl failed). Nothing was changed; the VM must end with a crash report.
    Refused {
        /// The mnemonic (`"(unknown)"` if the bytes did not decode).
        mnemonic: String,
        /// Where it is.
        rip: u64,
        /// Its bytes (as many as could be fetched, up to 15).
        bytes: Vec<u8>,
        /// Why it was refused.
        reason: String,
    },
}

/// Runs guest instructions on the host. Shared by every vCPU thread.
#[derive(Debug, Default)]
pub struct Emulator {
    /// Instructions run (or faulted) per mnemonic.
    counts: Mutex<BTreeMap<&'static str, u64>>,
    /// Held while an emulated atomic (`cmpxchg16b`) has the other vCPUs paused: a second vCPU
    /// that tried to pause the first would wait for it forever.
    atomic: Mutex<()>,
}

/// The name hvprobe reports for a mnemonic it emulates; `None` for anything else.
fn supported(m: Mnemonic) -> Option<&'static str> {
    Some(match m {
        Mnemonic::Wait => "fwait",
        Mnemonic::Fninit => "fninit",
        Mnemonic::Fnclex => "fnclex",
        Mnemonic::Fxsave => "fxsave",
        Mnemonic::Fxsave64 => "fxsave64",
        Mnemonic::Fxrstor => "fxrstor",
        Mnemonic::Fxrstor64 => "fxrstor64",
        Mnemonic::Ldmxcsr => "ldmxcsr",
        Mnemonic::Stmxcsr => "stmxcsr",
        Mnemonic::Xgetbv => "xgetbv",
        Mnemonic::Popcnt => "popcnt",
        Mnemonic::Rdrand => "rdrand",
        Mnemonic::Rdseed => "rdseed",
        Mnemonic::Clac => "clac",
        Mnemonic::Stac => "stac",
        Mnemonic::Cmpxchg16b => "cmpxchg16b",
        _ => return None,
    })
}

impl Emulator {
    /// An emulator with zeroed counters.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many times each mnemonic was emulated (completed or faulted), by name.
    pub fn counts(&self) -> Vec<(String, u64)> {
        self.counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| ((*k).to_string(), *v))
            .collect()
    }

    fn count(&self, mnemonic: &'static str) {
        *self
            .counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(mnemonic)
            .or_insert(0) += 1;
    }

    /// Executes the instruction at the vCPU's RIP (which must be stopped on it, as after an
    /// emulation-failure exit) and says what happened. See [`Emulated`] for what the caller
    /// does next.
    pub fn run(&self, cpu: &mut dyn EmuCpu, mem: &GuestMem) -> Emulated {
        let refused = |mnemonic: &str, rip, bytes: &[u8], reason: String| Emulated::Refused {
            mnemonic: mnemonic.to_string(),
            rip,
            bytes: bytes.to_vec(),
            reason,
        };
        let (regs, sregs) = match cpu.regs().and_then(|r| Ok((r, cpu.sregs()?))) {
            Ok(x) => x,
            Err(e) => return refused("(unknown)", 0, &[], e.to_string()),
        };
        let rip = regs.rip;
        if sregs.efer & EFER_LMA == 0 || sregs.cs.l == 0 {
            return refused(
                "(unknown)",
                rip,
                &[],
                "the vCPU is not in 64-bit mode; only 64-bit code is emulated".into(),
            );
        }
        let cpl = sregs.cs.selector.to_le_bytes()[0] & 3;
        let mut guest = Guest::new(
            mem,
            sregs.cr0,
            sregs.cr3,
            sregs.cr4,
            sregs.efer,
            cpl,
            regs.rflags,
        );
        // In 64-bit mode the CS base is 0: RIP is the linear address.
        let (bytes, later_fault) = match guest.fetch(rip, MAX_INSN_LEN) {
            Ok(x) => x,
            Err(f) => return self.fetch_fault(cpu, rip, f),
        };
        let mut decoder = Decoder::with_ip(64, &bytes, rip, DecoderOptions::NONE);
        let insn = decoder.decode();
        if decoder.last_error() == DecoderError::NoMoreBytes {
            return match later_fault {
                Some(f) => self.fetch_fault(cpu, rip, f),
                None => refused("(unknown)", rip, &bytes, "truncated instruction".into()),
            };
        }
        let bytes = bytes[..insn.len().min(bytes.len())].to_vec();
        if insn.is_invalid() {
            return refused(
                "(unknown)",
                rip,
                &bytes,
                "the bytes do not decode as an x86-64 instruction".into(),
            );
        }
        let Some(mnemonic) = supported(insn.mnemonic()) else {
            let mut text = String::new();
            IntelFormatter::new().format(&insn, &mut text);
            return refused(
                &format!("{:?}", insn.mnemonic()).to_lowercase(),
                rip,
                &bytes,
                format!("hvprobe does not emulate `{text}`"),
            );
        };
        let mut ctx = Ctx {
            cpu,
            regs,
            sregs,
            insn,
            guest,
            cpl,
            atomic: &self.atomic,
        };
        let result = execute(&mut ctx, mnemonic).and_then(|()| {
            ctx.regs.rip = ctx.insn.next_ip();
            ctx.regs.rflags &= !RFLAGS_RF;
            ctx.cpu.set_regs(&ctx.regs).map_err(Stop::from)
        });
        match result {
            Ok(()) => {
                self.count(mnemonic);
                Emulated::Done { mnemonic }
            }
            Err(Stop::Fault(exception)) => match ctx.cpu.inject(&exception) {
                Ok(()) => {
                    self.count(mnemonic);
                    Emulated::Faulted {
                        mnemonic,
                        exception,
                    }
                }
                Err(e) => refused(
                    mnemonic,
                    rip,
                    &bytes,
                    format!("cannot inject {exception}: {e}"),
                ),
            },
            Err(Stop::Retry(reason)) => Emulated::Retry { mnemonic, reason },
            Err(Stop::Refuse(reason)) => refused(mnemonic, rip, &bytes, reason),
        }
    }

    /// The instruction bytes did not translate: the fault the fetch raises, or a refusal.
    fn fetch_fault(&self, cpu: &mut dyn EmuCpu, rip: u64, f: MemFault) -> Emulated {
        let stop = Stop::from(f);
        match stop {
            Stop::Fault(exception) => match cpu.inject(&exception) {
                Ok(()) => {
                    self.count("fetch");
                    Emulated::Faulted {
                        mnemonic: "fetch",
                        exception,
                    }
                }
                Err(e) => Emulated::Refused {
                    mnemonic: "(unknown)".into(),
                    rip,
                    bytes: Vec::new(),
                    reason: format!("cannot inject {exception} for the instruction fetch: {e}"),
                },
            },
            Stop::Refuse(reason) | Stop::Retry(reason) => Emulated::Refused {
                mnemonic: "(unknown)".into(),
                rip,
                bytes: Vec::new(),
                reason: format!("instruction fetch: {reason}"),
            },
        }
    }
}

/// Runs one supported instruction on `ctx`.
fn execute(ctx: &mut Ctx<'_>, mnemonic: &'static str) -> Result<(), Stop> {
    // A LOCK prefix is only valid on cmpxchg16b among these (iced already rejects most).
    if ctx.insn.has_lock_prefix() && ctx.insn.mnemonic() != Mnemonic::Cmpxchg16b {
        return Err(Stop::Fault(Exception::InvalidOpcode));
    }
    match ctx.insn.mnemonic() {
        Mnemonic::Wait => x87::fwait(ctx),
        Mnemonic::Fninit => x87::fninit(ctx),
        Mnemonic::Fnclex => x87::fnclex(ctx),
        Mnemonic::Fxsave | Mnemonic::Fxsave64 => fxsave::fxsave(ctx),
        Mnemonic::Fxrstor | Mnemonic::Fxrstor64 => fxsave::fxrstor(ctx),
        Mnemonic::Ldmxcsr => mxcsr::ldmxcsr(ctx),
        Mnemonic::Stmxcsr => mxcsr::stmxcsr(ctx),
        Mnemonic::Xgetbv => system::xgetbv(ctx),
        Mnemonic::Clac => system::set_ac(ctx, false),
        Mnemonic::Stac => system::set_ac(ctx, true),
        Mnemonic::Popcnt => bits::popcnt(ctx),
        Mnemonic::Rdrand | Mnemonic::Rdseed => random::rdrand(ctx),
        Mnemonic::Cmpxchg16b => atomic::cmpxchg16b(ctx),
        _ => Err(Stop::Refuse(format!("no handler for {mnemonic}"))),
    }
}

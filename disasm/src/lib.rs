//! Instruction analysis for hvprobe: iced-x86 behind a few small types of our own.
//!
//! - [`decode`]: one x86_64 instruction as an [`Insn`], classified by what matters when it is
//!   executed away from its usual flow ([`InsnKind`]: relative branches, calls, returns,
//!   RIP-relative operands, the guest's own int3, instructions that change privilege or flags).
//! - [`boundaries`]: whether an address starts an instruction when decoding linearly from a
//!   function's first byte.
//! - [`can_probe`]: whether an int3 probe may replace the first byte of the instruction at an
//!   address (kprobes' `can_probe`), with typed reasons ([`CannotProbe`]) a CLI can print.
//! - [`Insn::emulation`]: whether a probe hit may complete the instruction on the host
//!   (kprobes' "boost" / emulation of simple instructions) instead of single-stepping it
//!   ([`Emulation`]).
//!
//! - [`can_optimize`]: whether a probe may become a 5-byte jump to a trampoline (kprobes'
//!   optprobes), with typed reasons ([`CannotOptimize`]) and the displaced instructions.
//! - [`relocate`]: the displaced instructions re-encoded at the trampoline with iced's
//!   `BlockEncoder`, with a typed error beyond +/-2 GiB ([`RelocateError`]) and the map from
//!   original to new addresses.
//! - [`build_trampoline`]: the code a jump-optimized probe leads to (handler part, relocated
//!   instructions, jump back), with an exit doorbell or an in-guest ring-buffer handler.
//!
//! Always analyse the **original** bytes, never our own patches: callers read code through
//! the probe engine's `recover_probed_instruction`. No iced-x86 type appears in this API.

use std::fmt;

mod optimize;
mod relocate;
mod trampoline;

pub use optimize::{
    CannotOptimize, EX_TABLE_ENTRY, JUMP_LEN, OptimizeInfo, Unrelocatable, can_optimize,
    check_fixups, ex_table_insns,
};
pub use relocate::{RelocateError, Relocated, relocate};
pub use trampoline::{
    CpuSource, Fetch, Handler, MAX_FETCHES, RECORD_SIZE, RECORD_VALUES, RING_RECORDS, RING_TAIL,
    RingSpec, Trampoline, TrampolineError, TrampolineSpec, build_trampoline, gpr_number,
    jump_patch,
};

use iced_x86::{
    Code, Decoder, DecoderError, DecoderOptions, FlowControl, Formatter, Instruction,
    IntelFormatter, Mnemonic, OpKind, Register,
};

/// The longest x86 instruction, in bytes.
pub const MAX_INSN_LEN: usize = 15;

/// How many bytes of an undecodable instruction an error shows.
const SHOWN_BYTES: usize = 8;

/// What an instruction does to control flow and addressing, as far as running it somewhere
/// else than where it was decoded (out of line) or single-stepping it is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InsnKind {
    /// Nothing position-dependent: runs the same anywhere.
    Other,
    /// `jmp rel8/rel32`.
    RelJmp {
        /// Where it jumps.
        target: u64,
    },
    /// A conditional relative branch: `jcc`, `loop`, `loopcc`, `jrcxz`.
    RelJcc {
        /// Where it jumps when taken.
        target: u64,
    },
    /// `call rel32`: pushes the address of the next instruction.
    RelCall {
        /// The called function.
        target: u64,
    },
    /// A near `ret` (with or without an immediate).
    Ret,
    /// `jmp` or `call` through a register or memory (near).
    IndirectJmpOrCall,
    /// `int3` (0xCC): somebody's breakpoint.
    Int3,
    /// A memory operand addressed relative to RIP (`mov rax, [rip+0x10]`, `lea`).
    RipRelative {
        /// The address the operand refers to.
        target: u64,
    },
    /// An instruction with effects beyond the next instruction (see [`SpecialKind`]).
    Special(SpecialKind),
}

/// Instructions whose stepping or relocation needs care.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SpecialKind {
    /// `int n`, `int1`, `into`: raises an interrupt.
    Interrupt,
    /// `ud0` / `ud1` / `ud2`: raises #UD on purpose (the kernel's `BUG()` and `WARN()`).
    Undefined,
    /// Far or system transfers: far `jmp`/`call`/`ret`, `iret`, `syscall`, `sysret`,
    /// `sysenter`, `sysexit`, `vmcall` and friends.
    FarOrSystem,
    /// `pushf` / `popf`: read or write RFLAGS, including the trap flag single-stepping uses.
    Flags,
    /// `sti` and `mov ss`: the next instruction runs in an interrupt shadow, so a
    /// single-step trap arrives one instruction late.
    InterruptShadow,
    /// `hlt`: the vCPU stops until an interrupt.
    Halt,
    /// `xbegin` / `xabort` / `xend`: transactional memory.
    Transactional,
}

/// One decoded instruction.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    /// Its address.
    pub ip: u64,
    /// Its length in bytes (1 to 15).
    pub len: usize,
    /// What it does, for out-of-line execution.
    pub kind: InsnKind,
    instr: Instruction,
}

/// A 64-bit general-purpose register.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub enum Gpr {
    Rax,
    Rcx,
    Rdx,
    Rbx,
    Rsp,
    Rbp,
    Rsi,
    Rdi,
    R8,
    R9,
    R10,
    R11,
    R12,
    R13,
    R14,
    R15,
}

/// Every register with its iced register and its name (the one table all mappings use).
const GPRS: [(Gpr, Register, &str); 16] = [
    (Gpr::Rax, Register::RAX, "rax"),
    (Gpr::Rcx, Register::RCX, "rcx"),
    (Gpr::Rdx, Register::RDX, "rdx"),
    (Gpr::Rbx, Register::RBX, "rbx"),
    (Gpr::Rsp, Register::RSP, "rsp"),
    (Gpr::Rbp, Register::RBP, "rbp"),
    (Gpr::Rsi, Register::RSI, "rsi"),
    (Gpr::Rdi, Register::RDI, "rdi"),
    (Gpr::R8, Register::R8, "r8"),
    (Gpr::R9, Register::R9, "r9"),
    (Gpr::R10, Register::R10, "r10"),
    (Gpr::R11, Register::R11, "r11"),
    (Gpr::R12, Register::R12, "r12"),
    (Gpr::R13, Register::R13, "r13"),
    (Gpr::R14, Register::R14, "r14"),
    (Gpr::R15, Register::R15, "r15"),
];

impl Gpr {
    fn from_iced(r: Register) -> Option<Gpr> {
        GPRS.iter().find(|(_, i, _)| *i == r).map(|(g, _, _)| *g)
    }

    pub(crate) fn iced(self) -> Register {
        GPRS.iter()
            .find(|(g, _, _)| *g == self)
            .map_or(Register::None, |(_, r, _)| *r)
    }

    /// Its name, lower case (`rax`, `r8`).
    pub fn name(self) -> &'static str {
        GPRS.iter()
            .find(|(g, _, _)| *g == self)
            .map_or("?", |(_, _, n)| *n)
    }

    /// The register called `name` (lower case, as [`Gpr::name`] gives it).
    pub fn from_name(name: &str) -> Option<Gpr> {
        GPRS.iter().find(|(_, _, n)| *n == name).map(|(g, _, _)| *g)
    }
}

/// How a host can complete an instruction without the guest executing it: only instructions
/// common at function entries whose whole effect is on general-purpose registers, RIP and
/// (for `push`) eight bytes of stack. None of them changes RFLAGS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Emulation {
    /// No effect beyond RIP: `nop` (0x90), the `0f 1f /0` multi-byte nops (the 5-byte
    /// ftrace nop `0f 1f 44 00 00` included; their memory operand is never accessed) and
    /// `endbr64`.
    Nop,
    /// `push r64` (50+r, REX.B 41 50+r): RSP -= 8, then the register's value (its value
    /// *before* the push, for `push rsp`) is stored at [RSP].
    Push(Gpr),
    /// `mov r64, r64` between general-purpose registers (`mov rbp, rsp`: 48 89 e5).
    MovReg {
        /// The register written.
        dst: Gpr,
        /// The register read.
        src: Gpr,
    },
}

impl Insn {
    /// The address just past the instruction.
    pub fn next_ip(&self) -> u64 {
        self.instr.next_ip()
    }

    /// Whether it is an indirect near `jmp` (not a `call`).
    fn is_indirect_jump(&self) -> bool {
        self.instr.flow_control() == FlowControl::IndirectBranch
    }

    /// Whether a probe hit on this instruction may be completed by the host (see
    /// [`Emulation`]); `None` for everything else, which must be executed by the guest.
    pub fn emulation(&self) -> Option<Emulation> {
        let i = &self.instr;
        match i.code() {
            Code::Nopw
            | Code::Nopd
            | Code::Nopq
            | Code::Nop_rm16
            | Code::Nop_rm32
            | Code::Nop_rm64
            | Code::Endbr64 => Some(Emulation::Nop),
            Code::Push_r64 => Gpr::from_iced(i.op0_register()).map(Emulation::Push),
            Code::Mov_rm64_r64 | Code::Mov_r64_rm64
                if i.op0_kind() == OpKind::Register && i.op1_kind() == OpKind::Register =>
            {
                Some(Emulation::MovReg {
                    dst: Gpr::from_iced(i.op0_register())?,
                    src: Gpr::from_iced(i.op1_register())?,
                })
            }
            _ => None,
        }
    }
}

impl fmt::Display for Insn {
    /// Intel syntax with `0x` hex and RIP-relative operands as `[rip+0x10]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut fmt = IntelFormatter::new();
        let o = fmt.options_mut();
        o.set_space_after_operand_separator(true);
        o.set_hex_prefix("0x");
        o.set_hex_suffix("");
        o.set_uppercase_hex(false);
        o.set_rip_relative_addresses(true);
        o.set_branch_leading_zeros(false);
        let mut out = String::new();
        fmt.format(&self.instr, &mut out);
        f.write_str(&out)
    }
}

impl fmt::Debug for Insn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Insn")
            .field("ip", &format_args!("{:#x}", self.ip))
            .field("len", &self.len)
            .field("kind", &self.kind)
            .field("text", &format_args!("{self}"))
            .finish()
    }
}

/// Why bytes did not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The bytes are not a valid 64-bit instruction.
    #[error("Invalid instruction at {ip:#x} (bytes {})", hex(bytes))]
    Invalid {
        /// Where it starts.
        ip: u64,
        /// Its first bytes (at most 8).
        bytes: Vec<u8>,
    },
    /// The code given ends inside the instruction.
    #[error("The code ends inside the instruction at {ip:#x} (only {available} bytes given)")]
    Truncated {
        /// Where the instruction starts.
        ip: u64,
        /// How many of its bytes were given.
        available: usize,
    },
    /// The address asked about is not inside the code given.
    #[error("{addr:#x} is outside the code given ({start:#x}..{end:#x})")]
    OutOfRange {
        /// The address asked about.
        addr: u64,
        /// The first address of the code.
        start: u64,
        /// The address just past the code.
        end: u64,
    },
}

/// Why an int3 probe cannot go at an address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CannotProbe {
    /// The address is in the middle of an instruction.
    #[error("{addr:#x}: inside `{insn_text}` at {insn_ip:#x} ({insn_len} bytes)")]
    NotOnBoundary {
        /// The address asked about.
        addr: u64,
        /// The instruction that covers it.
        insn_ip: u64,
        /// Its length.
        insn_len: usize,
        /// It, in Intel syntax.
        insn_text: String,
    },
    /// The instruction there is already an int3: the guest's own breakpoint or another
    /// debugger's, which must keep trapping into the guest.
    #[error("{addr:#x} already holds an int3 (the guest's or another debugger's breakpoint)")]
    AlreadyInt3 {
        /// The address asked about.
        addr: u64,
    },
    /// The function's bytes up to (or at) the address do not decode.
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

/// Decodes the instruction at the start of `bytes`, which sit at address `ip`.
pub fn decode(bytes: &[u8], ip: u64) -> Result<Insn, DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::Truncated { ip, available: 0 });
    }
    let mut decoder = Decoder::with_ip(64, bytes, ip, DecoderOptions::NONE);
    let instr = decoder.decode();
    if instr.is_invalid() {
        let invalid = DecodeError::Invalid {
            ip,
            bytes: bytes[..bytes.len().min(SHOWN_BYTES)].to_vec(),
        };
        if decoder.last_error() != DecoderError::NoMoreBytes {
            return Err(invalid);
        }
        // The decoder ran out of bytes, possibly before seeing that the bytes it had are
        // invalid anyway: decode them again followed by zeros to tell the two apart.
        let mut padded = [0u8; MAX_INSN_LEN];
        let have = bytes.len().min(MAX_INSN_LEN);
        padded[..have].copy_from_slice(&bytes[..have]);
        let again = Decoder::with_ip(64, &padded, ip, DecoderOptions::NONE).decode();
        return Err(if again.is_invalid() {
            invalid
        } else {
            DecodeError::Truncated {
                ip,
                available: have,
            }
        });
    }
    Ok(Insn {
        ip,
        len: instr.len(),
        kind: classify(&instr),
        instr,
    })
}

/// Whether `upto_ip` starts an instruction when `code` (which sits at `start_ip`) is decoded
/// linearly from its first byte. `upto_ip` may be the address just past the code.
pub fn boundaries(code: &[u8], start_ip: u64, upto_ip: u64) -> Result<bool, DecodeError> {
    Ok(matches!(
        position(code, start_ip, upto_ip)?,
        Position::Start
    ))
}

/// Whether an int3 probe may go at `addr`, in the function whose code (from its first byte at
/// `func_start`) is `code`: `addr` must start an instruction when decoding from the function's
/// start, and that instruction must decode and not already be an int3. `code` must run at least
/// to the end of the instruction at `addr`. Returns that instruction.
pub fn can_probe(code: &[u8], func_start: u64, addr: u64) -> Result<Insn, CannotProbe> {
    match position(code, func_start, addr)? {
        Position::Inside(insn) => Err(CannotProbe::NotOnBoundary {
            addr,
            insn_ip: insn.ip,
            insn_len: insn.len,
            insn_text: insn.to_string(),
        }),
        Position::Start => {
            let off = offset(func_start, addr);
            let insn = decode(&code[off..], addr)?;
            if insn.kind == InsnKind::Int3 {
                return Err(CannotProbe::AlreadyInt3 { addr });
            }
            Ok(insn)
        }
    }
}

/// Where an address falls in linearly decoded code.
enum Position {
    /// It starts an instruction (or is the end of the code).
    Start,
    /// It is inside this instruction.
    Inside(Insn),
}

fn position(code: &[u8], start_ip: u64, addr: u64) -> Result<Position, DecodeError> {
    let end = start_ip.saturating_add(code.len() as u64);
    if addr < start_ip || addr > end {
        return Err(DecodeError::OutOfRange {
            addr,
            start: start_ip,
            end,
        });
    }
    let mut ip = start_ip;
    while ip < addr {
        let insn = decode(&code[offset(start_ip, ip)..], ip)?;
        if insn.next_ip() > addr {
            return Ok(Position::Inside(insn));
        }
        ip = insn.next_ip();
    }
    Ok(Position::Start)
}

/// `ip - start` as an index; callers guarantee `start <= ip <= start + code.len()`.
fn offset(start: u64, ip: u64) -> usize {
    usize::try_from(ip - start).unwrap_or(usize::MAX)
}

fn classify(i: &Instruction) -> InsnKind {
    match i.flow_control() {
        FlowControl::Next => classify_next(i),
        FlowControl::UnconditionalBranch if i.is_jmp_short_or_near() => InsnKind::RelJmp {
            target: i.near_branch_target(),
        },
        FlowControl::ConditionalBranch => InsnKind::RelJcc {
            target: i.near_branch_target(),
        },
        FlowControl::Call if i.is_call_near() => InsnKind::RelCall {
            target: i.near_branch_target(),
        },
        FlowControl::Return if i.mnemonic() == Mnemonic::Ret => InsnKind::Ret,
        FlowControl::IndirectBranch | FlowControl::IndirectCall
            if !i.is_jmp_far_indirect() && !i.is_call_far_indirect() =>
        {
            InsnKind::IndirectJmpOrCall
        }
        FlowControl::Interrupt if i.code() == Code::Int3 => InsnKind::Int3,
        FlowControl::Interrupt => InsnKind::Special(SpecialKind::Interrupt),
        FlowControl::Exception => InsnKind::Special(SpecialKind::Undefined),
        FlowControl::XbeginXabortXend => InsnKind::Special(SpecialKind::Transactional),
        FlowControl::UnconditionalBranch
        | FlowControl::Call
        | FlowControl::Return
        | FlowControl::IndirectBranch
        | FlowControl::IndirectCall => InsnKind::Special(SpecialKind::FarOrSystem),
    }
}

fn classify_next(i: &Instruction) -> InsnKind {
    match i.mnemonic() {
        Mnemonic::Pushf | Mnemonic::Pushfd | Mnemonic::Pushfq => {
            return InsnKind::Special(SpecialKind::Flags);
        }
        Mnemonic::Popf | Mnemonic::Popfd | Mnemonic::Popfq => {
            return InsnKind::Special(SpecialKind::Flags);
        }
        Mnemonic::Sti => return InsnKind::Special(SpecialKind::InterruptShadow),
        Mnemonic::Mov if i.op0_register() == Register::SS => {
            return InsnKind::Special(SpecialKind::InterruptShadow);
        }
        Mnemonic::Hlt => return InsnKind::Special(SpecialKind::Halt),
        _ => {}
    }
    if i.is_ip_rel_memory_operand() {
        InsnKind::RipRelative {
            target: i.ip_rel_memory_address(),
        }
    } else {
        InsnKind::Other
    }
}

fn hex(bytes: &[u8]) -> String {
    let parts: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
    parts.join(" ")
}

#[cfg(test)]
mod optimize_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod trampoline_tests;

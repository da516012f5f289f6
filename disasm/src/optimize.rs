//! Whether a probe at an address may be optimized into a 5-byte `jmp rel32` to a trampoline
//! (kprobes' `can_optimize` in `arch/x86/kernel/kprobes/opt.c`).

use crate::{CannotProbe, DecodeError, Insn, InsnKind, can_probe, decode, offset};

/// The length of the `jmp rel32` an optimized probe writes over the probed instructions.
pub const JUMP_LEN: usize = 5;

/// What an optimized probe at an address displaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptimizeInfo {
    /// The probed address.
    pub addr: u64,
    /// The instructions covering the 5-byte window, in order from `addr`: they run out of
    /// line in the trampoline.
    pub displaced: Vec<Insn>,
    /// Their total length in bytes (at least [`JUMP_LEN`]).
    pub len: usize,
}

/// What makes an instruction unfit to run out of line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unrelocatable {
    /// A near `call`: it would push a trampoline address as the return address.
    Call,
    /// A `ret`.
    Ret,
    /// An indirect `jmp` or `call`.
    Indirect,
    /// An `int3`: somebody's breakpoint.
    Int3,
    /// Interrupts, `ud2`, far or system transfers, flag or interrupt-shadow tricks, `hlt`,
    /// transactional memory.
    Special,
}

impl Unrelocatable {
    fn of(kind: InsnKind) -> Option<Unrelocatable> {
        match kind {
            InsnKind::RelCall { .. } => Some(Unrelocatable::Call),
            InsnKind::Ret => Some(Unrelocatable::Ret),
            InsnKind::IndirectJmpOrCall => Some(Unrelocatable::Indirect),
            InsnKind::Int3 => Some(Unrelocatable::Int3),
            InsnKind::Special(_) => Some(Unrelocatable::Special),
            InsnKind::Other
            | InsnKind::RelJmp { .. }
            | InsnKind::RelJcc { .. }
            | InsnKind::RipRelative { .. } => None,
        }
    }

    /// A short word for the kind.
    pub fn word(self) -> &'static str {
        match self {
            Unrelocatable::Call => "call",
            Unrelocatable::Ret => "ret",
            Unrelocatable::Indirect => "indirect jump or call",
            Unrelocatable::Int3 => "int3",
            Unrelocatable::Special => "special instruction",
        }
    }
}

/// Why a probe cannot be optimized into a jump (it can still be an int3 probe unless the
/// reason is [`CannotOptimize::Probe`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CannotOptimize {
    /// Not even an int3 probe may go there.
    #[error(transparent)]
    Probe(#[from] CannotProbe),
    /// An instruction in the window cannot run out of line.
    #[error(
        "{} `{insn_text}` at {insn_ip:#x} (+{:#x} in the 5-byte window)",
        what.word(),
        insn_ip - addr
    )]
    InWindow {
        /// The probed address.
        addr: u64,
        /// What the instruction is.
        what: Unrelocatable,
        /// Its address.
        insn_ip: u64,
        /// It, in Intel syntax.
        insn_text: String,
    },
    /// An instruction of the function jumps into the window's bytes after its first.
    #[error(
        "`{insn_text}` at {insn_ip:#x} jumps to {target:#x}, inside the window ({addr:#x}+{:#x})",
        target - addr
    )]
    JumpIntoWindow {
        /// The probed address.
        addr: u64,
        /// The jumping instruction's address.
        insn_ip: u64,
        /// It, in Intel syntax.
        insn_text: String,
        /// Where it jumps.
        target: u64,
    },
    /// The function has an indirect jump (a jump table, say), which might land in the window.
    #[error("`{insn_text}` at {insn_ip:#x}: the function has an indirect jump")]
    IndirectJumpInFunction {
        /// The jump's address.
        insn_ip: u64,
        /// It, in Intel syntax.
        insn_text: String,
    },
    /// The displaced instructions run past the function's end.
    #[error(
        "the 5-byte window at {addr:#x} needs {len} bytes, past the function's end at {func_end:#x}"
    )]
    PastFunctionEnd {
        /// The probed address.
        addr: u64,
        /// How many bytes the displaced instructions take.
        len: usize,
        /// The address just past the function.
        func_end: u64,
    },
    /// Part of the function does not decode, so jumps into the window cannot be ruled out.
    #[error("the function does not decode: {0}")]
    Decode(DecodeError),
    /// An instruction in the window has an exception-table fixup: run out of line, a fault
    /// there would find no fixup.
    #[error("the instruction at {insn_ip:#x} in the window has an exception-table fixup")]
    ExceptionFixup {
        /// The probed address.
        addr: u64,
        /// The instruction with the fixup.
        insn_ip: u64,
    },
}

/// Bytes of one x86-64 Linux exception-table entry (`struct exception_table_entry`: `int insn,
/// fixup, data`, each relative to its own field, since Linux 5.x).
pub const EX_TABLE_ENTRY: usize = 12;

/// The instruction addresses of an exception table (`__start___ex_table` .. `__stop___ex_table`)
/// read at `table_addr`, sorted. A trailing partial entry is ignored.
pub fn ex_table_insns(table: &[u8], table_addr: u64) -> Vec<u64> {
    let mut v: Vec<u64> = table
        .chunks_exact(EX_TABLE_ENTRY)
        .enumerate()
        .map(|(i, e)| {
            let rel = i32::from_le_bytes([e[0], e[1], e[2], e[3]]);
            let field = table_addr.wrapping_add((i * EX_TABLE_ENTRY) as u64);
            field.wrapping_add_signed(i64::from(rel))
        })
        .collect();
    v.sort_unstable();
    v
}

/// Refuses an optimization whose displaced instructions include one of `fixups` (sorted
/// instruction addresses with exception-table entries, from [`ex_table_insns`]).
pub fn check_fixups(info: &OptimizeInfo, fixups: &[u64]) -> Result<(), CannotOptimize> {
    for insn in &info.displaced {
        if fixups.binary_search(&insn.ip).is_ok() {
            return Err(CannotOptimize::ExceptionFixup {
                addr: info.addr,
                insn_ip: insn.ip,
            });
        }
    }
    Ok(())
}

impl CannotOptimize {
    /// A short name of the reason, for counting refusals.
    pub fn category(&self) -> &'static str {
        match self {
            CannotOptimize::Probe(CannotProbe::NotOnBoundary { .. }) => "not on a boundary",
            CannotOptimize::Probe(CannotProbe::AlreadyInt3 { .. }) => "already int3",
            CannotOptimize::Probe(CannotProbe::Decode(_)) | CannotOptimize::Decode(_) => {
                "does not decode"
            }
            CannotOptimize::InWindow { what, .. } => match what {
                Unrelocatable::Call => "call in window",
                Unrelocatable::Ret => "ret in window",
                Unrelocatable::Indirect => "indirect jump or call in window",
                Unrelocatable::Int3 => "int3 in window",
                Unrelocatable::Special => "special instruction in window",
            },
            CannotOptimize::JumpIntoWindow { .. } => "jump into window",
            CannotOptimize::IndirectJumpInFunction { .. } => "indirect jump in function",
            CannotOptimize::PastFunctionEnd { .. } => "window past function end",
            CannotOptimize::ExceptionFixup { .. } => "exception fixup in window",
        }
    }
}

/// Whether a probe at `addr` may be optimized into a 5-byte jump, in the function whose whole
/// code (from its first byte at `func_start` to its end) is `function_code`:
/// - `addr` may take an int3 probe ([`can_probe`]);
/// - the instructions covering [`addr`, `addr`+5) can run out of line: no `call`, `ret`,
///   indirect jump or call, `int3` or special instruction among them, and they end within
///   the function;
/// - no instruction of the function jumps (relative `jmp`, `jcc`, `call`) into the window
///   after its first byte, and the function has no indirect jump (which might).
pub fn can_optimize(
    function_code: &[u8],
    func_start: u64,
    addr: u64,
) -> Result<OptimizeInfo, CannotOptimize> {
    can_probe(function_code, func_start, addr)?;
    let func_end = func_start.saturating_add(function_code.len() as u64);
    let window_end = addr.saturating_add(JUMP_LEN as u64);
    let mut displaced = Vec::new();
    let mut ip = addr;
    while ip < window_end {
        if ip >= func_end {
            return Err(CannotOptimize::PastFunctionEnd {
                addr,
                len: offset(addr, window_end),
                func_end,
            });
        }
        let insn = decode(&function_code[offset(func_start, ip)..], ip).map_err(|e| match e {
            DecodeError::Truncated { .. } => CannotOptimize::PastFunctionEnd {
                addr,
                len: offset(addr, window_end),
                func_end,
            },
            e => CannotOptimize::Decode(e),
        })?;
        if let Some(what) = Unrelocatable::of(insn.kind) {
            return Err(CannotOptimize::InWindow {
                addr,
                what,
                insn_ip: insn.ip,
                insn_text: insn.to_string(),
            });
        }
        ip = insn.next_ip();
        displaced.push(insn);
    }
    let len = offset(addr, ip);
    // Any instruction landing in (addr, addr+len) would run the jump's displacement bytes.
    let mut ip = func_start;
    while ip < func_end {
        let insn =
            decode(&function_code[offset(func_start, ip)..], ip).map_err(CannotOptimize::Decode)?;
        match insn.kind {
            InsnKind::RelJmp { target }
            | InsnKind::RelJcc { target }
            | InsnKind::RelCall { target }
                if target > addr && target < ip_end(addr, len) =>
            {
                return Err(CannotOptimize::JumpIntoWindow {
                    addr,
                    insn_ip: insn.ip,
                    insn_text: insn.to_string(),
                    target,
                });
            }
            InsnKind::IndirectJmpOrCall if insn.is_indirect_jump() => {
                return Err(CannotOptimize::IndirectJumpInFunction {
                    insn_ip: insn.ip,
                    insn_text: insn.to_string(),
                });
            }
            _ => {}
        }
        ip = insn.next_ip();
    }
    Ok(OptimizeInfo {
        addr,
        displaced,
        len,
    })
}

fn ip_end(addr: u64, len: usize) -> u64 {
    addr.saturating_add(len as u64)
}

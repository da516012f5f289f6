//! The x86_64 side of the probe engine, as verbs (kprobes' `arch_*` seam): what a breakpoint
//! is, how to write and remove it, how to analyse the instruction it displaces, how to step
//! that instruction in place, and how to give a guest its own int3 back.
//!
//! Everything else in [`super`] is architecture-neutral.

use disasm::{CannotProbe, Emulation, Gpr, Insn};

use super::ProbeError;
use crate::addr::{Gpa, Gva};
use crate::paging::{self, PagingContext, PhysMemMut};
use crate::target::{GuestDebug, RFLAGS_TF, Regs, TargetError, VcpuAccess};

/// The breakpoint instruction: `int3`.
pub const BREAKPOINT_INSN: u8 = 0xcc;

/// The longest instruction the analysis may need to see after the probed address.
pub const MAX_INSN_LEN: usize = disasm::MAX_INSN_LEN;

/// Whether the instruction at `addr`, in the function whose original code from `func_start`
/// is `code`, may be replaced by a breakpoint.
pub(super) fn arch_can_probe(code: &[u8], func_start: u64, addr: u64) -> Result<Insn, CannotProbe> {
    disasm::can_probe(code, func_start, addr)
}

/// Writes the breakpoint over the byte at `gpa`.
pub(super) fn arch_arm<M: PhysMemMut + ?Sized>(mem: &M, gpa: Gpa) -> Result<(), ProbeError> {
    mem.write_phys(gpa, &[BREAKPOINT_INSN])
        .map_err(|source| ProbeError::Patch { gpa, source })
}

/// Puts the original byte back at `gpa`.
pub(super) fn arch_disarm<M: PhysMemMut + ?Sized>(
    mem: &M,
    gpa: Gpa,
    orig: u8,
) -> Result<(), ProbeError> {
    mem.write_phys(gpa, &[orig])
        .map_err(|source| ProbeError::Patch { gpa, source })
}

/// The debug state while probes are armed: int3 intercepted (hardware KVM), single-step as
/// asked, everything else (hardware breakpoints) from `base`.
pub(super) fn probe_debug(base: GuestDebug, single_step: bool) -> GuestDebug {
    GuestDebug {
        single_step,
        intercept_int3: true,
        ..base
    }
}

/// Makes the vCPU execute exactly one instruction (the displaced one, now back in memory at
/// RIP) and exit.
pub(super) fn arch_prepare_step(
    vcpu: &mut dyn VcpuAccess,
    base: GuestDebug,
) -> Result<(), TargetError> {
    vcpu.set_debug(&probe_debug(base, true))
}

/// Ends the single-step started by [`arch_prepare_step`].
pub(super) fn arch_finish_step(
    vcpu: &mut dyn VcpuAccess,
    base: GuestDebug,
) -> Result<(), TargetError> {
    vcpu.set_debug(&probe_debug(base, false))
}

/// Gives the guest the #BP its own int3 raised, as if no hypervisor were watching: RIP moves
/// past the one-byte int3 (a #BP is a trap: the guest's handler sees the next instruction's
/// address) and the exception is injected.
///
/// Call it when [`super::ProbeEngine::on_breakpoint`] said
/// [`super::BreakpointOutcome::NotOurs`] and the byte at RIP is an int3 (the caller's
/// decision: on hardware KVM the #BP exit says so; on our software KVM an emulation failure
/// that is not an int3 is a real error to report).
pub fn hand_back_int3(vcpu: &mut dyn VcpuAccess) -> Result<(), TargetError> {
    let mut regs = vcpu.regs()?;
    regs.rip = regs.rip.wrapping_add(1);
    vcpu.set_regs(&regs)?;
    vcpu.inject_breakpoint()
}

/// An instruction a hit completes on the host instead of single-stepping it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Emulated {
    /// What it does.
    pub(super) what: Emulation,
    /// Its length.
    pub(super) len: u8,
}

/// Whether a hit on `insn` (decoded from the original bytes) can complete it on the host.
pub(super) fn arch_emulation(insn: &Insn) -> Option<Emulated> {
    Some(Emulated {
        what: insn.emulation()?,
        len: u8::try_from(insn.len).ok()?,
    })
}

/// Completes `insn` (at `regs.rip`) on the host: performs its memory write, if any, and
/// returns the registers after it (for one `set_regs` by the caller). `None` when it cannot
/// here (the caller single-steps it instead; nothing was written then, or only the dead
/// stack bytes below RSP): the guest single-steps itself (TF: its #DB must come), a push
/// while a data watchpoint is armed (it must fire), a stack that does not translate to
/// kernel-writable memory with `paging` (the vCPU's own context; asked for only by a push).
pub(super) fn arch_emulate<M: PhysMemMut + ?Sized>(
    mem: &M,
    paging: impl FnOnce() -> Option<PagingContext>,
    insn: Emulated,
    regs: &Regs,
    debug: GuestDebug,
) -> Option<Regs> {
    if regs.rflags & RFLAGS_TF != 0 {
        return None;
    }
    let mut after = *regs;
    match insn.what {
        Emulation::Nop => {}
        Emulation::MovReg { dst, src } => *gpr_mut(&mut after, dst) = gpr(regs, src),
        Emulation::Push(r) => {
            if data_watchpoint_armed(debug) {
                return None;
            }
            // `push rsp` stores RSP as it was before the push.
            let value = gpr(regs, r);
            after.rsp = regs.rsp.wrapping_sub(8);
            write_virt(mem, &paging()?, Gva(after.rsp), &value.to_le_bytes())?;
        }
    }
    after.rip = regs.rip.wrapping_add(u64::from(insn.len));
    Some(after)
}

/// Whether `debug` arms a DR0-DR3 slot as a data (write or read/write) watchpoint.
fn data_watchpoint_armed(debug: GuestDebug) -> bool {
    debug.hw_breakpoints
        && (0..4).any(|i| (debug.dr7 >> (2 * i)) & 3 != 0 && (debug.dr7 >> (16 + 4 * i)) & 3 != 0)
}

/// Writes `bytes` at guest-virtual `gva` as kernel code would (the pages must be
/// kernel-writable), a range that crosses a page split. Translates every page first, so a
/// failed translation writes nothing. `None` if it did not translate or write.
fn write_virt<M: PhysMemMut + ?Sized>(
    mem: &M,
    ctx: &PagingContext,
    gva: Gva,
    bytes: &[u8],
) -> Option<()> {
    const PAGE: u64 = 0x1000;
    let mut parts: [(Gpa, &[u8]); 2] = [(Gpa(0), &[]); 2];
    let mut rest = bytes;
    let mut at = gva.raw();
    for part in &mut parts {
        if rest.is_empty() {
            break;
        }
        let room = usize::try_from(PAGE - (at & (PAGE - 1))).unwrap_or(usize::MAX);
        let (now, later) = rest.split_at(rest.len().min(room));
        let t = paging::translate(mem, ctx, Gva(at)).ok()?;
        if !t.kernel_writable {
            return None;
        }
        *part = (t.gpa, now);
        rest = later;
        at = at.wrapping_add(now.len() as u64);
    }
    if !rest.is_empty() {
        return None;
    }
    for (gpa, chunk) in parts {
        if !chunk.is_empty() {
            mem.write_phys(gpa, chunk).ok()?;
        }
    }
    Some(())
}

fn gpr(regs: &Regs, r: Gpr) -> u64 {
    match r {
        Gpr::Rax => regs.rax,
        Gpr::Rcx => regs.rcx,
        Gpr::Rdx => regs.rdx,
        Gpr::Rbx => regs.rbx,
        Gpr::Rsp => regs.rsp,
        Gpr::Rbp => regs.rbp,
        Gpr::Rsi => regs.rsi,
        Gpr::Rdi => regs.rdi,
        Gpr::R8 => regs.r8,
        Gpr::R9 => regs.r9,
        Gpr::R10 => regs.r10,
        Gpr::R11 => regs.r11,
        Gpr::R12 => regs.r12,
        Gpr::R13 => regs.r13,
        Gpr::R14 => regs.r14,
        Gpr::R15 => regs.r15,
    }
}

fn gpr_mut(regs: &mut Regs, r: Gpr) -> &mut u64 {
    match r {
        Gpr::Rax => &mut regs.rax,
        Gpr::Rcx => &mut regs.rcx,
        Gpr::Rdx => &mut regs.rdx,
        Gpr::Rbx => &mut regs.rbx,
        Gpr::Rsp => &mut regs.rsp,
        Gpr::Rbp => &mut regs.rbp,
        Gpr::Rsi => &mut regs.rsi,
        Gpr::Rdi => &mut regs.rdi,
        Gpr::R8 => &mut regs.r8,
        Gpr::R9 => &mut regs.r9,
        Gpr::R10 => &mut regs.r10,
        Gpr::R11 => &mut regs.r11,
        Gpr::R12 => &mut regs.r12,
        Gpr::R13 => &mut regs.r13,
        Gpr::R14 => &mut regs.r14,
        Gpr::R15 => &mut regs.r15,
    }
}

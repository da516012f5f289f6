//! The x86_64 side of the probe engine, as verbs (kprobes' `arch_*` seam): what a breakpoint
//! is, how to write and remove it, how to analyse the instruction it displaces, how to step
//! that instruction in place, and how to give a guest its own int3 back.
//!
//! Everything else in [`super`] is architecture-neutral.

use disasm::{CannotProbe, Insn};

use super::ProbeError;
use crate::addr::Gpa;
use crate::paging::PhysMemMut;
use crate::target::{GuestDebug, TargetError, VcpuAccess};

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

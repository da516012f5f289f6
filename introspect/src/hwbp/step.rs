//! Getting one vCPU past an execute breakpoint.
//!
//! An execute breakpoint is a fault: it fires before the instruction runs, with RIP on it, and
//! resuming as-is fires it again. Two ways past it:
//!
//! - [`StepMode::ResumeFlag`]: set RFLAGS.RF and continue; the CPU skips instruction
//!   breakpoints for one instruction. One exit per hit. Hardware KVM honours an RF set by the
//!   host.
//! - [`StepMode::DisableAndStep`]: disable the slot on this vCPU, single-step one instruction,
//!   re-enable it. Two exits per hit, but it works everywhere: our software KVM ignores RF in
//!   emulated ring-0 code and would hit the same breakpoint forever.
//!
//! An [`ExecStepper`] starts with RF and detects when it is ignored: if the next exit of the
//! vCPU after setting RF is the same slot firing at the same RIP with the registers exactly as
//! we left them (RF aside), no instruction ran: RF did nothing, and the stepper switches to
//! disable-and-step for good (reported once in [`StepOutcome::switched_mode`]; that re-fire
//! is not a new hit). A breakpoint hit again legitimately (a loop, a function called again)
//! comes with changed registers and is a hit. The one look-alike is a guest loop that returns
//! to the breakpoint with every general-purpose register unchanged (`jmp .`): it costs one
//! uncounted hit and the slower mode.

use super::dr7::{decode_dr6, dr7_slot_enable};
use super::{BreakpointId, BreakpointKind, SlotManager};
use crate::target::{GuestDebug, RFLAGS_RF, Regs, TargetError, VcpuAccess};

/// How an [`ExecStepper`] gets past an execute breakpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepMode {
    /// Set RFLAGS.RF and continue (one exit per hit).
    ResumeFlag,
    /// Disable the slot on this vCPU, single-step, re-enable (two exits per hit).
    DisableAndStep,
}

/// What [`ExecStepper::on_debug_exit`] made of a debug exit.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StepOutcome {
    /// The breakpoints that fired on this exit, in slot order: report these as hits.
    pub hits: Vec<BreakpointId>,
    /// This exit was the single-step completing a step-over (the slots are re-enabled): not a
    /// hit in itself, though `hits` holds any data watchpoint the stepped instruction fired.
    pub step_over_done: bool,
    /// DR6.BS was set and the step was not ours: the caller's own single-step
    /// ([`GuestDebug::single_step`] in its base state).
    pub single_step: bool,
    /// RF turned out to be ignored here and this stepper switched to
    /// [`StepMode::DisableAndStep`] on this exit (once per stepper): log e.g. "note: RF is
    /// ignored here, stepping over execute breakpoints".
    pub switched_mode: bool,
    /// A step-over is under way: the vCPU must run (resume it) before the breakpoint is
    /// passed.
    pub stepping: bool,
}

/// What the stepper did at the previous exit of its vCPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    None,
    /// RF was set at `rip` to pass the execute breakpoints in slot mask `mask`, leaving the
    /// registers `regs`.
    ResumeFlag {
        rip: u64,
        mask: u8,
        regs: Regs,
    },
    /// Some execute slots are disabled on this vCPU while it single-steps.
    Step,
}

/// Steps one vCPU past execute breakpoints; keep one per vCPU.
#[derive(Debug, Clone)]
pub struct ExecStepper {
    mode: StepMode,
    pending: Pending,
}

impl Default for ExecStepper {
    fn default() -> Self {
        ExecStepper::new()
    }
}

impl ExecStepper {
    /// A stepper that starts with RF and falls back to disable-and-step if RF is ignored.
    pub fn new() -> Self {
        ExecStepper::with_mode(StepMode::ResumeFlag)
    }

    /// A stepper in `mode` (e.g. [`StepMode::DisableAndStep`] once another vCPU found RF
    /// ignored). A stepper in disable-and-step mode never goes back.
    pub fn with_mode(mode: StepMode) -> Self {
        ExecStepper {
            mode,
            pending: Pending::None,
        }
    }

    /// The current mode.
    pub fn mode(&self) -> StepMode {
        self.mode
    }

    /// Whether a step-over is under way (the vCPU has not completed it yet).
    pub fn is_stepping(&self) -> bool {
        self.pending != Pending::None
    }

    /// Forgets a step-over under way (after a vCPU reset, which also resets its debug state:
    /// re-apply it with [`SlotManager::apply_to`]). Keeps the mode.
    pub fn reset(&mut self) {
        self.pending = Pending::None;
    }

    /// Handles a debug exit of `vcpu` with `dr6` and `rip`: works out which breakpoints of
    /// `mgr` fired and arranges for the vCPU to get past an execute breakpoint at `rip`
    /// (sets RF, or disables its slot on this vCPU and single-steps). `base` is the debug
    /// state the caller applies to every vCPU (single-step, int3 intercept). Resume the vCPU
    /// afterwards.
    pub fn on_debug_exit(
        &mut self,
        vcpu: &mut dyn VcpuAccess,
        mgr: &SlotManager,
        base: GuestDebug,
        dr6: u64,
        rip: u64,
    ) -> Result<StepOutcome, TargetError> {
        let fired = decode_dr6(dr6);
        let fired_mask = fired.mask();
        let mut out = StepOutcome::default();
        // Execute-breakpoint slots not to report as hits on this exit (an RF re-fire).
        let mut suppressed = 0u8;
        // Registers already read on this exit.
        let mut read_regs = None;

        match std::mem::replace(&mut self.pending, Pending::None) {
            Pending::Step if fired.single_step => {
                // The completing step: re-enable the slots. A data watchpoint the stepped
                // instruction hit traps with it; an execute breakpoint at the new RIP fires
                // on its own when the vCPU resumes.
                vcpu.set_debug(&mgr.debug_state(base))?;
                out.step_over_done = true;
                out.hits = fired
                    .slots
                    .iter()
                    .filter_map(|&s| mgr.in_slot(s))
                    .filter(|(_, req)| req.kind != BreakpointKind::Execute)
                    .map(|(id, _)| id)
                    .collect();
                return Ok(out);
            }
            Pending::Step => {
                // Something else came first (the state was re-applied under us): make sure no
                // slot stays disabled on this vCPU, then handle the exit as a new one.
                vcpu.set_debug(&mgr.debug_state(base))?;
            }
            Pending::ResumeFlag {
                rip: at,
                mask,
                regs,
            } if self.mode == StepMode::ResumeFlag && at == rip && fired_mask & mask != 0 => {
                // The same breakpoint again at the same instruction: if nothing ran in between
                // (registers as we left them, whatever RF now says), RF was ignored.
                let mut now = vcpu.regs()?;
                if same_but_rf(&now, &regs) {
                    self.mode = StepMode::DisableAndStep;
                    out.switched_mode = true;
                    suppressed = fired_mask & mask;
                    if now.rflags & RFLAGS_RF != 0 {
                        now.rflags &= !RFLAGS_RF;
                        vcpu.set_regs(&now)?;
                    }
                } else {
                    read_regs = Some(now);
                }
            }
            Pending::ResumeFlag { .. } | Pending::None => {}
        }

        let mut exec_mask = 0u8;
        for &slot in &fired.slots {
            let Some((id, req)) = mgr.in_slot(slot) else {
                continue;
            };
            if req.kind == BreakpointKind::Execute && req.addr.raw() == rip {
                exec_mask |= 1 << slot;
            }
            if suppressed & (1 << slot) == 0 {
                out.hits.push(id);
            }
        }
        out.single_step = fired.single_step;

        if exec_mask != 0 {
            match self.mode {
                StepMode::ResumeFlag => {
                    let mut regs = match read_regs {
                        Some(regs) => regs,
                        None => vcpu.regs()?,
                    };
                    regs.rflags |= RFLAGS_RF;
                    vcpu.set_regs(&regs)?;
                    self.pending = Pending::ResumeFlag {
                        rip,
                        mask: exec_mask,
                        regs,
                    };
                }
                StepMode::DisableAndStep => {
                    let mut debug = mgr.debug_state(base);
                    for slot in 0..4u8 {
                        if exec_mask & (1 << slot) != 0 {
                            debug.dr7 &= !dr7_slot_enable(slot);
                        }
                    }
                    debug.single_step = true;
                    vcpu.set_debug(&debug)?;
                    self.pending = Pending::Step;
                    out.stepping = true;
                }
            }
        }
        Ok(out)
    }
}

/// Whether two register sets are equal apart from RFLAGS.RF.
fn same_but_rf(a: &Regs, b: &Regs) -> bool {
    let strip = |r: &Regs| Regs {
        rflags: r.rflags & !RFLAGS_RF,
        ..*r
    };
    strip(a) == strip(b)
}

//! Hit handling on the vCPU's own thread: [`ProbeEngine::on_breakpoint`] and
//! [`ProbeEngine::on_single_step`].

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::arch::{
    BREAKPOINT_INSN, Emulated, arch_arm, arch_disarm, arch_emulate, arch_finish_step,
    arch_prepare_step,
};
use super::registry::Probe;
use super::{
    BreakpointOutcome, HitContext, HookDecision, NO_OWNER, ProbeEngine, ProbeError, StepState, lock,
};
use crate::addr::Gva;
use crate::paging;
use crate::target::{Regs, Target, VcpuAccess};

const CONTINUE: BreakpointOutcome = BreakpointOutcome::Handled(HookDecision::Continue);

impl ProbeEngine {
    /// A breakpoint exit on `vcpu` with RIP at `rip` (the int3's own address: hardware KVM's
    /// #BP debug exit and our software KVM's emulation failure both report that). Call it on
    /// the vCPU's thread, inside the exit. See the [module docs](super) for what it does.
    ///
    /// On [`BreakpointOutcome::Handled`] the vCPU may be left single-stepping: its next debug
    /// exit goes to [`Self::on_single_step`].
    pub fn on_breakpoint(
        &self,
        target: &dyn Target,
        vcpu: &mut dyn VcpuAccess,
        rip: u64,
    ) -> Result<BreakpointOutcome, ProbeError> {
        let me = vcpu.index();
        let site = Gva(rip);
        let found = {
            let reg = self.read_reg();
            match reg.site(site) {
                Some(s) if s.armed.is_some() => {
                    Some((s.probes.clone(), s.armed.and_then(|a| a.emulation)))
                }
                _ => None,
            }
        };
        let Some((probes, emulation)) = found else {
            return self.unarmed_hit(target, vcpu, site);
        };
        // Registers read once per hit, shared by the emulation attempt and the step path.
        let mut regs = None;
        if let Some(insn) = emulation {
            if self.step_owner.load(Ordering::Acquire) == me {
                return self.reentered(target, site, &probes);
            }
            let r = vcpu.regs()?;
            if let Some(done) = self.emulate_hit(target, vcpu, site, &probes, insn, &r)? {
                return Ok(done);
            }
            regs = Some(r);
        }
        match self
            .step_owner
            .compare_exchange(NO_OWNER, me, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => {}
            Err(owner) if owner == me => return self.reentered(target, site, &probes),
            // Another vCPU is handling a hit: run the int3 again later.
            Err(_) => return Ok(CONTINUE),
        }
        *lock(&self.step) = Some(StepState {
            sites: Vec::new(),
            paused_others: false,
        });
        let regs = match regs.map_or_else(|| vcpu.regs(), Ok) {
            Ok(r) => r,
            Err(e) => {
                // The read error is the one to report; cleaning up is best effort.
                let _ = self.end_step(target, me, None);
                return Err(e.into());
            }
        };
        let decision = self.call_handlers(&*vcpu, site, &probes, &regs);
        match self.begin_step(target, vcpu, site) {
            Ok(true) => Ok(BreakpointOutcome::Handled(decision)),
            Ok(false) => {
                // Disarmed under our feet: the original instruction is back, just run it.
                self.end_step(target, me, None)?;
                Ok(BreakpointOutcome::Handled(decision))
            }
            Err(e) => {
                let _ = self.end_step(target, me, Some(vcpu));
                Err(e)
            }
        }
    }

    /// A hit on a site whose original instruction the host can complete: one exit, the int3
    /// stays armed, no step lock (nothing in guest memory changes but a push's stack slot,
    /// so other vCPUs need not pause). Performs the instruction's memory write, calls the
    /// handlers with the registers at the hit, then sets the registers past the
    /// instruction. `None`: cannot here (nothing done, no handler called): step it.
    fn emulate_hit(
        &self,
        target: &dyn Target,
        vcpu: &mut dyn VcpuAccess,
        site: Gva,
        probes: &[Arc<Probe>],
        insn: Emulated,
        regs: &Regs,
    ) -> Result<Option<BreakpointOutcome>, ProbeError> {
        let paging = || vcpu.paging().ok();
        let Some(after) = arch_emulate(target, paging, insn, regs, self.debug_base()) else {
            return Ok(None);
        };
        let decision = self.call_handlers(&*vcpu, site, probes, regs);
        for p in probes {
            p.emulated();
        }
        vcpu.set_regs(&after)?;
        Ok(Some(BreakpointOutcome::Handled(decision)))
    }

    /// A single-step exit on `vcpu`: if it was stepping a probed instruction, re-arms the
    /// site, stops single-stepping, resumes the other vCPUs and returns
    /// `Some(Continue)`. `None`: not ours.
    pub fn on_single_step(
        &self,
        target: &dyn Target,
        vcpu: &mut dyn VcpuAccess,
    ) -> Result<Option<HookDecision>, ProbeError> {
        let me = vcpu.index();
        if self.step_owner.load(Ordering::Acquire) != me {
            return Ok(None);
        }
        self.end_step(target, me, Some(vcpu))?;
        Ok(Some(HookDecision::Continue))
    }

    /// Gives the guest its own int3 back ([`super::hand_back_int3`]).
    pub fn hand_back_int3(&self, vcpu: &mut dyn VcpuAccess) -> Result<(), ProbeError> {
        Ok(super::hand_back_int3(vcpu)?)
    }

    /// Calls every handler of the site with the registers at the hit.
    pub(super) fn call_handlers(
        &self,
        vcpu: &dyn VcpuAccess,
        site: Gva,
        probes: &[Arc<Probe>],
        regs: &Regs,
    ) -> HookDecision {
        let symbol_offset = self.symbols.as_deref().and_then(|t| t.lookup(site.raw()));
        let mut decision = HookDecision::Continue;
        for p in probes {
            let ctx = HitContext {
                vcpu: vcpu.index(),
                regs,
                site,
                symbol_offset,
                hit_count: p.hit(),
                probe: p.id,
            };
            if p.handler.on_hit(&ctx) == HookDecision::StopGuest {
                decision = HookDecision::StopGuest;
            }
        }
        decision
    }

    /// With the step lock held: pauses the other vCPUs, restores the site's original byte and
    /// single-steps it. `Ok(false)` if the site is no longer armed (nothing to step).
    fn begin_step(
        &self,
        target: &dyn Target,
        vcpu: &mut dyn VcpuAccess,
        site: Gva,
    ) -> Result<bool, ProbeError> {
        let me = vcpu.index();
        if target.vcpu_count() > 1 {
            target.pause_others(me)?;
            if let Some(st) = lock(&self.step).as_mut() {
                st.paused_others = true;
            }
        }
        if !self.restore_for_step(target, site)? {
            return Ok(false);
        }
        arch_prepare_step(vcpu, self.debug_base())?;
        Ok(true)
    }

    /// Puts `site`'s original byte back for a step and records it in the step state.
    /// `Ok(false)` if the site is not armed.
    fn restore_for_step(&self, target: &dyn Target, site: Gva) -> Result<bool, ProbeError> {
        let mut reg = self.write_reg();
        let Some(s) = reg.site_mut(site) else {
            return Ok(false);
        };
        let Some(armed) = s.armed else {
            return Ok(false);
        };
        if s.stepping == 0 {
            arch_disarm(target, armed.gpa, armed.orig)?;
        }
        s.stepping += 1;
        if let Some(st) = lock(&self.step).as_mut() {
            st.sites.push(site);
        }
        Ok(true)
    }

    /// A hit on `site` by the vCPU that holds the step lock (it is stepping another site):
    /// counted as missed, the instruction is still stepped (the single-step is already on).
    fn reentered(
        &self,
        target: &dyn Target,
        site: Gva,
        probes: &[Arc<Probe>],
    ) -> Result<BreakpointOutcome, ProbeError> {
        for p in probes {
            p.missed();
        }
        self.restore_for_step(target, site)?;
        Ok(CONTINUE)
    }

    /// Ends the step-lock holder's step: re-arms every site it restored (if still armed and
    /// nobody else steps it), stops single-stepping when given the vCPU, resumes the other
    /// vCPUs, releases the lock. Does all of it even when one part fails; returns the first
    /// error.
    fn end_step(
        &self,
        target: &dyn Target,
        me: usize,
        vcpu: Option<&mut dyn VcpuAccess>,
    ) -> Result<(), ProbeError> {
        let state = lock(&self.step).take();
        let mut result = Ok(());
        let mut keep = |r: Result<(), ProbeError>| {
            if result.is_ok() {
                result = r;
            }
        };
        if let Some(st) = &state {
            let mut reg = self.write_reg();
            for &site in st.sites.iter().rev() {
                let Some(s) = reg.site_mut(site) else {
                    continue;
                };
                s.stepping = s.stepping.saturating_sub(1);
                // Re-armed where it is armed now (disarm and arm may have run meanwhile).
                if s.stepping == 0 {
                    if let Some(a) = s.armed {
                        keep(arch_arm(target, a.gpa));
                    }
                }
                reg.drop_if_unused(site);
            }
        }
        if let Some(v) = vcpu {
            keep(arch_finish_step(v, self.debug_base()).map_err(ProbeError::from));
        }
        if state.is_some_and(|st| st.paused_others) {
            keep(target.resume_others(me).map_err(ProbeError::from));
        }
        self.step_owner.store(NO_OWNER, Ordering::Release);
        result
    }

    /// A breakpoint exit at an address with no armed site: the guest's own int3, a stale hit
    /// on an int3 of ours removed after the vCPU hit it (run the original instruction), or no
    /// int3 at all.
    fn unarmed_hit(
        &self,
        target: &dyn Target,
        vcpu: &mut dyn VcpuAccess,
        site: Gva,
    ) -> Result<BreakpointOutcome, ProbeError> {
        let ctx = vcpu.paging()?;
        let Ok(t) = paging::translate(target, &ctx, site) else {
            return Ok(BreakpointOutcome::NotOurs);
        };
        let mut byte = [0u8];
        if target.read_phys(t.gpa, &mut byte).is_err() {
            return Ok(BreakpointOutcome::NotOurs);
        }
        if byte[0] == BREAKPOINT_INSN {
            return Ok(BreakpointOutcome::GuestInt3);
        }
        if self.read_reg().knows(site) {
            return Ok(CONTINUE);
        }
        Ok(BreakpointOutcome::NotOurs)
    }
}

//! int3 probes on an unmodified guest kernel, in the kprobes model (seed 001,
//! `kernel/kprobes.c` over `arch/x86/kernel/kprobes/core.c`).
//!
//! A generic layer (this module: a [`ProbeRegistry`] by address, aggregation of several
//! probes at one address, hit dispatch, the step lock) over a small arch seam
//! (`arch.rs`: what a breakpoint is, arm / disarm, step the displaced instruction, hand a
//! guest's own int3 back). Everything lives in a [`ProbeEngine`] value: no globals, so tests
//! make as many as they like.
//!
//! # Life of a probe
//! 1. [`ProbeEngine::resolve`] an expression (`name`, `name+0x10`, `0xffff...`), then
//!    [`ProbeEngine::check`] it: refused with a typed [`ProbeError`] are unknown symbols, data
//!    (symbol type not `T`/`t`/`W`/`w`, or outside `_stext.._etext` when the table has no
//!    types, or a non-executable page), code the int3 / debug / NMI path runs
//!    ([`DENIED_FUNCTIONS`], [`DENIED_PREFIXES`], [`DENIED_SECTIONS`]) and addresses that are
//!    not on an instruction boundary of their function (`disasm::can_probe` over the
//!    function's **original** bytes).
//! 2. [`ProbeEngine::register`] a [`ProbeHandler`] at the address. Several probes at one
//!    address share one site and one int3.
//! 3. [`ProbeEngine::arm`] the site: translate with vCPU 0's paging context, pause every
//!    vCPU, save the original byte, write `0xCC` through guest-physical memory, resume.
//!    [`ProbeEngine::disarm`] writes the byte back the same way. ([`ProbeEngine::add_probe`]
//!    does 1 to 3.)
//! 4. Hits (below), then [`ProbeEngine::unregister`], which disarms with the last probe of a
//!    site.
//!
//! # What sees the int3
//! We patch real guest memory, as kprobes does, so **the guest reading its own text sees
//! `0xCC`** at every armed site. Everything that reads through introspection sees the
//! original bytes: [`ProbeEngine::recover_probed_instruction`] fixes a buffer read from
//! guest-physical memory, [`ProbeEngine::read_phys`] / [`ProbeEngine::read_virt`] and the
//! [`Recovered`] view do it for every read, and the engine's own instruction analysis reads
//! only through them.
//!
//! # Hits
//! Both platforms report a probe hit with RIP **at** the int3: hardware KVM as a debug exit
//! (exception 3), our software KVM as an emulation failure (PLATFORM.md). The VMM calls the
//! same [`ProbeEngine::on_breakpoint`] for both, on the vCPU's own thread, inside the exit:
//! - RIP on an armed site: take the **step lock** with a try-lock first. If another vCPU
//!   holds it, return [`BreakpointOutcome::Handled`]`(Continue)` without touching anything:
//!   the vCPU re-executes the int3 and retries later (pausing in between if asked to).
//!   Otherwise call every handler of the site with a [`HitContext`], then execute the
//!   displaced instruction in place: pause the other vCPUs, restore the original byte and
//!   single-step; [`ProbeEngine::on_single_step`] re-arms, stops single-stepping, resumes the
//!   others and releases the lock. So **the int3 is never missing while another vCPU runs**.
//!   A hit on a site while that vCPU is already stepping one (re-entry) counts in `nmissed`,
//!   as in kprobes, and its instruction is still executed.
//! - RIP on an armed site whose original instruction is one the host can complete
//!   (`disasm::Emulation`: nops of every length, `endbr64`, `push r64`, `mov r64, r64`;
//!   kprobes' "boost"): the hit takes **one exit**. No step lock, no pause, no byte restore
//!   (the int3 stays armed): the engine reads the registers once, writes a push's 8 bytes to
//!   the stack through the vCPU's own paging context, calls the handlers, and sets the
//!   registers past the instruction with one `set_regs`. It falls back to the single-step
//!   path when the stack does not translate to writable memory, when the guest itself
//!   single-steps (TF), or for a push when a data watchpoint is armed (it must fire).
//!   Counted in [`ProbeStats::emulated`].
//! - RIP on an int3 that is not ours (the guest's self-tests, `text_poke`, its own kprobes):
//!   [`BreakpointOutcome::GuestInt3`]; the VMM gives it back with [`hand_back_int3`].
//! - Anything else: [`BreakpointOutcome::NotOurs`]; on our software KVM that is a real
//!   emulation failure, which the VMM reports.
//!
//! # Locks
//! Never held across a pause or a handler call: the registry lock (an `RwLock`, held for
//! lookups and patches only) and the step-state mutex (touched by the step-lock holder only).
//! The step lock itself is an atomic owner word, taken with a try-lock, so a vCPU never waits
//! for another inside an exit (which would deadlock `pause_others`).
//!
//! # What the VMM provides
//! The [`Target`] / [`crate::target::VcpuAccess`] implementations; a debug-state base
//! ([`ProbeEngine::set_debug_base`]) when it also uses hardware breakpoints (the engine sets
//! whole [`GuestDebug`] states); nested pause counting (a `pause_all` while a vCPU has
//! paused the others).

mod arch;
pub mod arena;
#[cfg(test)]
mod arena_tests;
mod check;
mod error;
mod hit;
mod optimize;
mod registry;
pub mod ring;

#[cfg(test)]
mod tests;

use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::addr::{Gpa, Gva};
use crate::paging::{self, PageWalker, PagingContext, PhysMem, PhysMemError, VirtError};
use crate::symbols::{SymbolOffset, SymbolTable};
use crate::target::{GuestDebug, Regs, Target};

pub use arch::{BREAKPOINT_INSN, hand_back_int3};
pub use check::{DENIED_FUNCTIONS, DENIED_PREFIXES, DENIED_SECTIONS, MAX_FUNCTION_SCAN};
pub use disasm::{CpuSource, Fetch, Gpr};
pub use error::ProbeError;
pub use optimize::{
    ArmedAs, JumpHandler, JumpKind, MAX_DEFERRALS, MAX_SPLIT_REGION, Quiesce, locate_arena,
    locate_split_arena,
};
pub use registry::{ProbeId, ProbeInfo, ProbeRegistry, ProbeStats};

use arch::{arch_arm, arch_disarm};
use registry::Armed;

/// What a handler (and so a hit) asks of the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HookDecision {
    /// Let the guest run on.
    Continue,
    /// Stop the guest (for a debugger). The displaced instruction is still set up to be
    /// stepped: when the VMM lets the vCPU run again, the single-step completes the hit (an
    /// emulated instruction is already complete: the vCPU stops just past it).
    StopGuest,
}

/// What [`ProbeEngine::on_breakpoint`] made of a breakpoint exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakpointOutcome {
    /// One of our probes (or a retry / stale hit of one): resume the vCPU as decided.
    Handled(HookDecision),
    /// An int3 that is not ours: give it to the guest with [`hand_back_int3`].
    GuestInt3,
    /// No int3 at RIP: not a breakpoint at all (the caller decides; on our software KVM an
    /// emulation failure that is a real error).
    NotOurs,
}

/// What a handler learns about a hit.
#[derive(Debug, Clone, Copy)]
pub struct HitContext<'a> {
    /// The vCPU that hit.
    pub vcpu: usize,
    /// Its registers at the hit (RIP on the probed instruction).
    pub regs: &'a Regs,
    /// The probed address.
    pub site: Gva,
    /// The address as `symbol+offset`, with a symbol table.
    pub symbol_offset: Option<SymbolOffset<'a>>,
    /// This probe's hits so far, this one included.
    pub hit_count: u64,
    /// The probe whose handler is called.
    pub probe: ProbeId,
}

/// A probe's handler, called on the hitting vCPU's thread, inside the exit, before the
/// probed instruction runs.
///
/// Handlers must not block on the guest or on other vCPUs (the others may be waiting to
/// pause). Closures `Fn(&HitContext) -> HookDecision` are handlers.
pub trait ProbeHandler: Send + Sync {
    /// One hit.
    fn on_hit(&self, ctx: &HitContext<'_>) -> HookDecision;
}

impl<F> ProbeHandler for F
where
    F: Fn(&HitContext<'_>) -> HookDecision + Send + Sync,
{
    fn on_hit(&self, ctx: &HitContext<'_>) -> HookDecision {
        self(ctx)
    }
}

/// No vCPU holds the step lock.
const NO_OWNER: usize = usize::MAX;

/// The step-lock holder's work in progress.
#[derive(Debug)]
struct StepState {
    /// Sites whose original byte is in memory until the step ends (more than one on
    /// re-entry).
    sites: Vec<Gva>,
    /// Whether the holder paused the other vCPUs.
    paused_others: bool,
}

/// The probe engine: registry, arming, hit handling. Share it (`Arc`) between the
/// controlling thread and the vCPU threads.
#[derive(Debug)]
pub struct ProbeEngine {
    symbols: Option<Arc<SymbolTable>>,
    paging: Mutex<Option<PagingContext>>,
    registry: RwLock<ProbeRegistry>,
    /// The vCPU holding the step lock, or [`NO_OWNER`].
    step_owner: AtomicUsize,
    step: Mutex<Option<StepState>>,
    debug_base: Mutex<GuestDebug>,
    denied: Vec<String>,
    /// Jump optimization (taken before the registry lock when both are needed).
    opt: Mutex<optimize::OptState>,
    /// The in-guest handlers' rings, once an arena is attached.
    rings: Mutex<Option<ring::RingReader>>,
    /// Sites by trampoline tag, for every optimization ever made (outside `opt`: the
    /// doorbell path reads it; a tag is never reused, so a late hit from a given-up
    /// trampoline still finds its site).
    tags: RwLock<std::collections::HashMap<u32, Gva>>,
}

impl Default for ProbeEngine {
    fn default() -> Self {
        Self::new()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl ProbeEngine {
    /// An engine with no probes and no symbols (addresses only; boundary checks then cover
    /// just the instruction at the address).
    pub fn new() -> Self {
        ProbeEngine {
            symbols: None,
            paging: Mutex::new(None),
            registry: RwLock::new(ProbeRegistry::default()),
            step_owner: AtomicUsize::new(NO_OWNER),
            step: Mutex::new(None),
            debug_base: Mutex::new(GuestDebug::default()),
            denied: Vec::new(),
            opt: Mutex::new(optimize::OptState::default()),
            rings: Mutex::new(None),
            tags: RwLock::new(std::collections::HashMap::new()),
        }
    }

    /// Uses `symbols` to resolve names, describe hits and refuse bad addresses.
    pub fn with_symbols(mut self, symbols: Arc<SymbolTable>) -> Self {
        self.symbols = Some(symbols);
        self
    }

    /// Also refuses probes in function `name` (e.g. code hvprobe's guest module runs on the
    /// probe path).
    pub fn deny_function(&mut self, name: impl Into<String>) {
        self.denied.push(name.into());
    }

    /// The symbol table, if any.
    pub fn symbols(&self) -> Option<&SymbolTable> {
        self.symbols.as_deref()
    }

    /// Translates sites with `ctx` instead of asking vCPU 0 for its paging context at every
    /// arm (kernel text maps the same under every process's CR3).
    pub fn set_paging(&self, ctx: PagingContext) {
        *lock(&self.paging) = Some(ctx);
    }

    /// Like [`Self::set_paging`], unless a context is already set.
    pub fn set_paging_if_unset(&self, ctx: PagingContext) {
        lock(&self.paging).get_or_insert(ctx);
    }

    /// The debug state the engine's single-steps build on (hardware breakpoints set by the
    /// VMM); the engine adds `intercept_int3` and toggles `single_step`.
    pub fn set_debug_base(&self, base: GuestDebug) {
        *lock(&self.debug_base) = base;
    }

    /// The debug state a vCPU should have while probes are armed and it is not stepping
    /// (int3 intercepted, on top of the base).
    pub fn debug_state(&self) -> GuestDebug {
        arch::probe_debug(self.debug_base(), false)
    }

    fn debug_base(&self) -> GuestDebug {
        *lock(&self.debug_base)
    }

    fn read_reg(&self) -> RwLockReadGuard<'_, ProbeRegistry> {
        self.registry.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write_reg(&self) -> RwLockWriteGuard<'_, ProbeRegistry> {
        self.registry
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` with the registry (read-only).
    pub fn with_registry<R>(&self, f: impl FnOnce(&ProbeRegistry) -> R) -> R {
        f(&self.read_reg())
    }

    /// Registers `handler` at `site`, joining the site's other probes. Does not arm (nor
    /// check: see [`Self::check`], [`Self::add_probe`]).
    pub fn register(&self, site: Gva, handler: Box<dyn ProbeHandler>) -> ProbeId {
        self.write_reg().add(site, handler)
    }

    /// Removes probe `id`, disarming its site first if it was the site's last probe. Returns
    /// the probe's final counters.
    pub fn unregister(&self, target: &dyn Target, id: ProbeId) -> Result<ProbeStats, ProbeError> {
        let (site, last) = {
            let reg = self.read_reg();
            let site = reg.site_of(id).ok_or(ProbeError::UnknownProbe(id))?;
            (site, reg.probes_at(site).len() == 1)
        };
        if last {
            self.disarm(target, site)?;
        }
        self.write_reg()
            .remove(id)
            .ok_or(ProbeError::UnknownProbe(id))
    }

    /// Resolves `expr`, checks the address, registers `handler` there and arms the site.
    pub fn add_probe(
        &self,
        target: &dyn Target,
        expr: &str,
        handler: Box<dyn ProbeHandler>,
    ) -> Result<ProbeId, ProbeError> {
        let site = self.resolve(expr)?;
        let ctx = self.paging_context(target)?;
        self.check(target, &ctx, site)?;
        let id = self.register(site, handler);
        if let Err(e) = self.arm(target, site) {
            // Not armed by us: removing it touches no memory (unless another probe armed
            // the site meanwhile, in which case it stays).
            let _ = self.unregister(target, id);
            return Err(e);
        }
        Ok(id)
    }

    /// vCPU 0's paging context (or the one given with [`Self::set_paging`]).
    fn paging_context(&self, target: &dyn Target) -> Result<PagingContext, ProbeError> {
        if let Some(ctx) = *lock(&self.paging) {
            return Ok(ctx);
        }
        let (tx, rx) = std::sync::mpsc::channel();
        target.with_vcpu(
            0,
            Box::new(move |vcpu| {
                let _ = tx.send(vcpu.paging());
            }),
        )?;
        let ctx = rx.recv().map_err(|_| crate::target::TargetError::Vm {
            what: "reading vCPU 0's paging context",
            reason: "the job did not run".into(),
        })??;
        Ok(ctx)
    }

    /// Arms `site`: checks it (see [`Self::check`]), translates it with vCPU 0's paging
    /// context, then with every vCPU paused saves the original byte and writes the int3.
    /// Arming an armed site does nothing.
    pub fn arm(&self, target: &dyn Target, site: Gva) -> Result<(), ProbeError> {
        match self.read_reg().site(site) {
            None => return Err(ProbeError::NoProbeAt(site)),
            Some(s) if s.armed.is_some() => return Ok(()),
            Some(_) => {}
        }
        let ctx = self.paging_context(target)?;
        let t = paging::translate(target, &ctx, site)
            .map_err(|source| ProbeError::Translate { addr: site, source })?;
        let insn = self.check_translated(target, &ctx, site, &t)?;
        target.pause_all()?;
        let armed = self
            .unoptimize_around(target, site)
            .and_then(|()| self.arm_paused(target, site, t.gpa, arch::arch_emulation(&insn)));
        let resumed = target.resume_all();
        armed?;
        Ok(resumed?)
    }

    fn arm_paused(
        &self,
        target: &dyn Target,
        site: Gva,
        gpa: Gpa,
        emulation: Option<arch::Emulated>,
    ) -> Result<(), ProbeError> {
        let mut reg = self.write_reg();
        let stepping = match reg.site(site) {
            None => return Err(ProbeError::NoProbeAt(site)),
            Some(s) if s.armed.is_some() => return Ok(()),
            Some(s) => s.stepping,
        };
        if let Some(other) = reg.armed_at(gpa) {
            return Err(ProbeError::Alias {
                addr: site,
                other,
                gpa,
            });
        }
        let mut orig = [0u8];
        target
            .read_phys(gpa, &mut orig)
            .map_err(|source| ProbeError::Patch { gpa, source })?;
        if orig[0] == BREAKPOINT_INSN {
            // The guest put an int3 there since the check.
            return Err(ProbeError::CannotProbe {
                addr: site,
                symbol: site.to_string(),
                reason: disasm::CannotProbe::AlreadyInt3 { addr: site.raw() },
            });
        }
        // A vCPU still stepping the site's instruction re-arms it when its step ends.
        if stepping == 0 {
            arch_arm(target, gpa)?;
        }
        reg.set_armed(
            site,
            Armed {
                gpa,
                orig: orig[0],
                emulation,
                window: None,
            },
        );
        Ok(())
    }

    /// Disarms `site`: with every vCPU paused, writes the original byte back. Disarming a
    /// site that is not armed does nothing.
    pub fn disarm(&self, target: &dyn Target, site: Gva) -> Result<(), ProbeError> {
        if !self.read_reg().is_armed(site) {
            return Ok(());
        }
        target.pause_all()?;
        let disarmed = self
            .unoptimize_paused(target, site, None)
            .and_then(|_| self.disarm_paused(target, site));
        let resumed = target.resume_all();
        disarmed?;
        Ok(resumed?)
    }

    fn disarm_paused(&self, target: &dyn Target, site: Gva) -> Result<(), ProbeError> {
        let mut reg = self.write_reg();
        let Some(s) = reg.site(site) else {
            return Ok(());
        };
        let (Some(armed), stepping) = (s.armed, s.stepping) else {
            return Ok(());
        };
        // A vCPU stepping the site has the original byte in memory already, and will not
        // re-arm a disarmed site.
        if stepping == 0 {
            arch_disarm(target, armed.gpa, armed.orig)?;
        }
        reg.set_disarmed(site);
        reg.drop_if_unused(site);
        Ok(())
    }

    /// Whether `site` is armed.
    pub fn is_armed(&self, site: Gva) -> bool {
        self.read_reg().is_armed(site)
    }

    /// The vCPU currently single-stepping a probed instruction, if any.
    pub fn stepping_vcpu(&self) -> Option<usize> {
        match self.step_owner.load(std::sync::atomic::Ordering::Acquire) {
            NO_OWNER => None,
            v => Some(v),
        }
    }

    /// Whether any site is armed: the VMM must then intercept int3 on every vCPU
    /// ([`Self::debug_state`]).
    pub fn needs_int3_intercept(&self) -> bool {
        self.read_reg().armed_count() > 0
    }

    /// Probe `id`'s counters.
    pub fn stats(&self, id: ProbeId) -> Option<ProbeStats> {
        self.read_reg().stats(id)
    }

    /// Every probe, by id.
    pub fn probes(&self) -> Vec<ProbeInfo> {
        self.read_reg().infos()
    }

    /// kprobes' `recover_probed_instruction`: replaces, in `buf` (just read from
    /// guest-physical `gpa` on), every int3 of ours by the byte it replaced.
    pub fn recover_probed_instruction(&self, gpa: Gpa, buf: &mut [u8]) {
        self.read_reg().recover(gpa, buf);
    }

    /// Reads guest-physical memory as it would be without our int3s.
    pub fn read_phys<M: PhysMem + ?Sized>(
        &self,
        mem: &M,
        gpa: Gpa,
        buf: &mut [u8],
    ) -> Result<(), PhysMemError> {
        mem.read_phys(gpa, buf)?;
        self.recover_probed_instruction(gpa, buf);
        Ok(())
    }

    /// Reads guest-virtual memory as it would be without our int3s (any alias of a probed
    /// byte included: recovery goes by guest-physical address).
    pub fn read_virt<M: PhysMem + ?Sized>(
        &self,
        walker: &mut PageWalker,
        mem: &M,
        ctx: &PagingContext,
        gva: Gva,
        buf: &mut [u8],
    ) -> Result<(), VirtError> {
        walker.read_virt(&self.recovered(mem), ctx, gva, buf)
    }

    /// `mem` as it would be without our int3s, for any code that reads through [`PhysMem`].
    pub fn recovered<'a, M: PhysMem + ?Sized>(&'a self, mem: &'a M) -> Recovered<'a, M> {
        Recovered { engine: self, mem }
    }
}

/// Guest memory seen without the probe engine's int3s ([`ProbeEngine::recovered`]).
#[derive(Debug)]
pub struct Recovered<'a, M: ?Sized> {
    engine: &'a ProbeEngine,
    mem: &'a M,
}

impl<M: PhysMem + ?Sized> PhysMem for Recovered<'_, M> {
    fn read_phys(&self, gpa: Gpa, buf: &mut [u8]) -> Result<(), PhysMemError> {
        self.engine.read_phys(self.mem, gpa, buf)
    }
}

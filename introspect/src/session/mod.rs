//! An introspection session: the probe engine, the hardware breakpoint slots and the event
//! stream of one VM, behind the two calls a VMM makes at an exit ([`Introspector::on_debug`],
//! [`Introspector::on_emulation_failure`]). An `Introspector` value owns all its state, so
//! tests can make as many as they like.
//!
//! Software KVM note: ring-0 int3s surface as emulation failures with RIP on the int3, and RF
//! is ignored for execute breakpoints in emulated code; both paths below end in the same
//! handlers as on hardware KVM.

mod jumps;
mod runtime;

pub use jumps::{CALL_VALUES, FINAL_DRAIN, call_text};
pub use runtime::{RuntimeError, StepDone};

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use crate::addr::Gva;
use crate::events::{DEFAULT_REGS, Event, EventKind, EventSink, SourceId, Sources, select_regs};
use crate::hwbp::{
    BreakpointId, BreakpointKind, DR6_BS, ExecStepper, HwbpError, Request, SlotManager,
};
use crate::probes::{
    BreakpointOutcome, HitContext, HookDecision, JumpHandler, ProbeEngine, ProbeError, Quiesce,
    hand_back_int3,
};
use crate::symbols::{ResolveError, SymbolTable};
use crate::target::{GuestDebug, Target, TargetError, VcpuAccess};
use disasm::{Fetch, Gpr};

/// What the VMM does with the vCPU after an exit the session handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Resume the guest.
    Continue,
    /// End the VM (a handler asked the guest to stop).
    Stop,
    /// Keep this vCPU out of the guest until it is resumed (a client's single-step ended).
    Pause,
}

/// A watchpoint request (`--watch SYM|ADDR:LEN:w|rw`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchRequest {
    /// Where, as the user wrote it (`jiffies`, `0x1000`, `foo+8`).
    pub at: String,
    /// 1, 2, 4 or 8 bytes.
    pub len: u8,
    /// Writes only (`w`) or reads and writes (`rw`).
    pub write_only: bool,
}

/// How a probe is to be armed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeArm {
    /// Always an int3.
    Int3,
    /// A jump with this handler; refused (at once) where the code cannot take one. Until an
    /// arena exists and the site is quiescent, it is an int3.
    Jump(JumpHandler),
    /// A jump with this handler where the code allows one, else an int3 (with the reason).
    Auto(JumpHandler),
}

/// The values an in-guest handler records when none are chosen: [`DEFAULT_REGS`] but RIP
/// (the probe's address is known).
pub const DEFAULT_FETCHES: [Fetch; 6] = [
    Fetch::Reg(Gpr::Rsp),
    Fetch::Reg(Gpr::Rdi),
    Fetch::Reg(Gpr::Rsi),
    Fetch::Reg(Gpr::Rdx),
    Fetch::Reg(Gpr::Rcx),
    Fetch::Reg(Gpr::Rax),
];

/// One probe request: where, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeRequest {
    /// `SYM[+OFF]` or `ADDR`.
    pub at: String,
    /// How it is armed.
    pub arm: ProbeArm,
}

impl ProbeRequest {
    /// An int3 probe at `at`.
    pub fn int3(at: impl Into<String>) -> Self {
        ProbeRequest {
            at: at.into(),
            arm: ProbeArm::Int3,
        }
    }

    /// A jump probe at `at` with `handler` (`required`: `:jump`, else `:auto`).
    pub fn jump(at: impl Into<String>, handler: JumpHandler, required: bool) -> Self {
        ProbeRequest {
            at: at.into(),
            arm: if required {
                ProbeArm::Jump(handler)
            } else {
                ProbeArm::Auto(handler)
            },
        }
    }
}

/// What to instrument.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionSpec {
    /// Software probes.
    pub probes: Vec<ProbeRequest>,
    /// Hardware execute breakpoints.
    pub hbreaks: Vec<String>,
    /// Hardware data watchpoints.
    pub watches: Vec<WatchRequest>,
}

/// Why a session could not be set up. Each names the request and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// A probe was refused.
    #[error("--probe {at}")]
    Probe {
        /// The request.
        at: String,
        /// Why.
        #[source]
        source: ProbeError,
    },
    /// A location did not resolve.
    #[error("--{flag} {at}")]
    Resolve {
        /// `hbreak` or `watch`.
        flag: &'static str,
        /// The request.
        at: String,
        /// Why.
        #[source]
        source: ResolveError,
    },
    /// A hardware breakpoint or watchpoint was refused.
    #[error("--{flag} {at}")]
    Hwbp {
        /// `hbreak` or `watch`.
        flag: &'static str,
        /// The request.
        at: String,
        /// Why.
        #[source]
        source: HwbpError,
    },
    /// A name was given but the kernel has no symbols.
    #[error("{at}: this kernel has no symbol table; give an address (0x...)")]
    NoSymbols {
        /// The request.
        at: String,
    },
    /// The VM refused an operation.
    #[error(transparent)]
    Target(#[from] TargetError),
    /// A change to the running session was refused.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

/// A probed site's event sources, what its in-guest records hold, and its symbol+offset
/// (formatted once).
#[derive(Debug, Default)]
struct SiteSources {
    sources: Vec<SourceId>,
    fetches: Vec<Fetch>,
    /// Its records are the guest module handler's ([`crate::probes::JumpHandler::Call`]).
    call: bool,
    symbol: Option<Arc<str>>,
}

#[derive(Debug, Clone, Copy)]
struct HwSource {
    source: SourceId,
    kind: BreakpointKind,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One VM's instrumentation.
pub struct Introspector {
    symbols: Option<Arc<SymbolTable>>,
    engine: Arc<ProbeEngine>,
    slots: Mutex<SlotManager>,
    hw_sources: Mutex<HashMap<BreakpointId, HwSource>>,
    steppers: Vec<Mutex<ExecStepper>>,
    probe_sources: Mutex<Vec<(crate::probes::ProbeId, SourceId)>>,
    /// Each probed site's event sources and what its in-guest records hold.
    site_sources: Mutex<HashMap<Gva, SiteSources>>,
    /// A vCPU ran an optimizer pass: the sources' "how" needs refreshing.
    how_stale: std::sync::atomic::AtomicBool,
    sink: EventSink,
    /// The ring drain's batch buffer, kept from drain to drain (it takes the ticker's lock
    /// of `site_sources` first, so it is never contended).
    drain_buf: Mutex<Vec<crate::events::Event>>,
    notes: Mutex<Vec<String>>,
    /// Per vCPU: a client asked for one single-step ([`Introspector::request_step`]).
    client_steps: Vec<std::sync::atomic::AtomicBool>,
    /// While the arena needs a guest quiescence barrier before a pass (Linux's guest module):
    /// asks the guest for one; the VMM runs the pass when it completes.
    barrier: Mutex<Option<BarrierRequest>>,
}

/// Asks the guest for a quiescence barrier (see [`Introspector::set_barrier`]).
pub type BarrierRequest = Arc<dyn Fn() + Send + Sync>;

impl Introspector {
    /// While `ask` is set, a jump probe added at run time is not optimized at once: `ask`
    /// requests the guest's quiescence barrier (Linux's guest module runs
    /// `synchronize_rcu_tasks()`), and the VMM runs the pass on its completion
    /// ([`Introspector::optimize_from_vcpu`]). `None` when the arena goes.
    pub fn set_barrier(&self, ask: Option<BarrierRequest>) {
        *lock(&self.barrier) = ask;
    }

    /// A session for a VM with `vcpus` vCPUs, resolving names with `symbols` and writing
    /// events to `sink`.
    pub fn new(symbols: Option<Arc<SymbolTable>>, vcpus: usize, sink: EventSink) -> Self {
        let engine = match &symbols {
            Some(s) => ProbeEngine::new().with_symbols(s.clone()),
            None => ProbeEngine::new(),
        };
        Introspector {
            symbols,
            engine: Arc::new(engine),
            slots: Mutex::new(SlotManager::new()),
            hw_sources: Mutex::new(HashMap::new()),
            steppers: (0..vcpus).map(|_| Mutex::new(ExecStepper::new())).collect(),
            probe_sources: Mutex::new(Vec::new()),
            site_sources: Mutex::new(HashMap::new()),
            how_stale: std::sync::atomic::AtomicBool::new(false),
            sink,
            drain_buf: Mutex::new(Vec::new()),
            notes: Mutex::new(Vec::new()),
            barrier: Mutex::new(None),
            client_steps: (0..vcpus)
                .map(|_| std::sync::atomic::AtomicBool::new(false))
                .collect(),
        }
    }

    /// The probe engine.
    pub fn engine(&self) -> &Arc<ProbeEngine> {
        &self.engine
    }

    /// The event sources (for the per-source table at exit).
    pub fn sources(&self) -> &Arc<Sources> {
        self.sink.sources()
    }

    /// Notes worth telling the user once (e.g. how execute breakpoints are stepped here).
    pub fn take_notes(&self) -> Vec<String> {
        std::mem::take(&mut *lock(&self.notes))
    }

    fn resolve(&self, flag: &'static str, at: &str) -> Result<Gva, SessionError> {
        if let Some(hex) = at.strip_prefix("0x") {
            if let Ok(v) = u64::from_str_radix(hex, 16) {
                return Ok(Gva(v));
            }
        }
        let symbols = self
            .symbols
            .as_ref()
            .ok_or_else(|| SessionError::NoSymbols { at: at.to_string() })?;
        symbols
            .resolve(at)
            .map(Gva)
            .map_err(|source| SessionError::Resolve {
                flag,
                at: at.to_string(),
                source,
            })
    }

    /// Arms every probe and installs every breakpoint of `spec` on all vCPUs. Call it with
    /// the vCPUs paused before the guest runs (or while it runs: probes pause it to patch).
    pub fn setup(&self, target: &dyn Target, spec: &SessionSpec) -> Result<(), SessionError> {
        // The same operations a client uses on a running session (see `runtime`).
        for at in &spec.hbreaks {
            self.add_hbreak(target, at)?;
        }
        for w in &spec.watches {
            self.add_watch(target, w)?;
        }
        self.engine
            .set_debug_base(lock(&self.slots).debug_state(GuestDebug::default()));
        for req in &spec.probes {
            self.add_probe_as(target, req)?;
        }
        self.apply_debug_state(target)?;
        Ok(())
    }

    fn add_hw(&self, req: Request, flag: &'static str, at: &str) -> Result<SourceId, SessionError> {
        let kind = req.kind;
        let name = req.owner.trim_start_matches("--").to_string();
        let mut slots = lock(&self.slots);
        let id = slots.insert(req).map_err(|source| SessionError::Hwbp {
            flag,
            at: at.to_string(),
            source,
        })?;
        let how = match slots.slot_of(id) {
            Some(s) => format!(
                "{} slot {s}",
                if flag == "hbreak" {
                    "DR execute"
                } else {
                    "DR watch"
                }
            ),
            None => "DR (waiting for a slot)".to_string(),
        };
        let source = self.sources().register(name, how);
        lock(&self.hw_sources).insert(id, HwSource { source, kind });
        Ok(source)
    }

    /// Adds and arms one int3 probe while the session runs.
    pub fn add_probe(&self, target: &dyn Target, at: &str) -> Result<SourceId, SessionError> {
        self.add_probe_as(target, &ProbeRequest::int3(at))
    }

    /// Adds one probe while the session runs: armed as an int3 at once; a jump request is
    /// checked against the code (`:jump` refused where no jump can go), and optimized now if
    /// an arena is attached (after the guest's quiescence barrier when one is set, see
    /// [`Introspector::set_barrier`]), else once one is ([`Introspector::attach_arena`]).
    pub fn add_probe_as(
        &self,
        target: &dyn Target,
        req: &ProbeRequest,
    ) -> Result<SourceId, SessionError> {
        let at = req.at.as_str();
        let perr = |source| SessionError::Probe {
            at: at.to_string(),
            source,
        };
        let site = self.engine.resolve(at).map_err(perr)?;
        if let ProbeArm::Jump(JumpHandler::InGuest(f)) | ProbeArm::Auto(JumpHandler::InGuest(f)) =
            &req.arm
        {
            for fetch in f {
                if let Fetch::Mem(addr) = fetch {
                    self.engine.check_fetch(target, Gva(*addr)).map_err(perr)?;
                }
            }
        }
        let jump = match &req.arm {
            ProbeArm::Int3 => None,
            ProbeArm::Jump(h) => {
                self.engine.check_jump(target, site).map_err(perr)?;
                Some(h.clone())
            }
            // Code that can never take a jump says so now (the same check a pass makes), so
            // the probe's "how" does not depend on whether a pass ran before the guest ended.
            ProbeArm::Auto(h) => match self.engine.check_jump(target, site) {
                Ok(()) => Some(h.clone()),
                Err(ProbeError::CannotJump { reason, .. }) => {
                    self.engine.refuse_jump(site, reason);
                    None
                }
                Err(_) => Some(h.clone()),
            },
        };
        let source = self
            .sources()
            .register(format!("probe {at}"), "int3".to_string());
        let sink = self.sink.clone();
        // Every hit of the site has the same symbol+offset: format it once, not per hit on
        // the vCPU thread (callgrind: about half of a hit's host instructions otherwise).
        let symbol = self
            .symbols
            .as_ref()
            .and_then(|t| t.lookup(site.raw()))
            .map(|so| Arc::<str>::from(so.to_string()));
        let symbol_for_drain = symbol.clone();
        let handler = move |ctx: &HitContext<'_>| {
            sink.sources().hit(source);
            sink.emit(Event {
                time_ns: sink.now_ns(),
                vcpu: u32::try_from(ctx.vcpu).unwrap_or(u32::MAX),
                kind: EventKind::Probe,
                source,
                addr: ctx.site.raw(),
                symbol: symbol.clone(),
                regs: select_regs(ctx.regs, &DEFAULT_REGS),
                hit: ctx.hit_count,
            });
            HookDecision::Continue
        };
        let id = self
            .engine
            .add_probe(target, at, Box::new(handler))
            .map_err(perr)?;
        lock(&self.probe_sources).push((id, source));
        {
            let mut sites = lock(&self.site_sources);
            let entry = sites.entry(site).or_default();
            entry.sources.push(source);
            entry.symbol.clone_from(&symbol_for_drain);
            if let Some(JumpHandler::InGuest(f)) = &jump {
                entry.fetches = f.clone();
            }
            entry.call = matches!(jump, Some(JumpHandler::Call(_)));
        }
        if let Some(h) = jump {
            self.engine.request_jump(site, h);
            if self.engine.arena().is_some() {
                let barrier = lock(&self.barrier).clone();
                match barrier {
                    // The pass runs when the guest's barrier completes.
                    Some(ask) => ask(),
                    None => {
                        if let Err(e) = self.engine.optimize_pending(target, Quiesce::Controller) {
                            self.note(format!("jump optimization of {at} failed: {e}"));
                        }
                    }
                }
            }
        }
        self.refresh_how();
        Ok(source)
    }

    /// Writes the current debug state (probe int3 intercept, DR0-DR3, DR7) to every vCPU.
    pub fn apply_debug_state(&self, target: &dyn Target) -> Result<(), SessionError> {
        let base = self.engine.debug_state();
        for i in 0..target.vcpu_count() {
            target.with_vcpu(
                i,
                Box::new(move |v| {
                    let _ = v.set_debug(&base);
                }),
            )?;
        }
        Ok(())
    }

    /// The debug state a vCPU has when it is not stepping: DR0-DR3/DR7 and the int3 intercept.
    pub fn debug_state(&self) -> GuestDebug {
        self.engine.debug_state()
    }

    fn stepper_base(&self) -> GuestDebug {
        GuestDebug {
            intercept_int3: self.engine.needs_int3_intercept(),
            ..GuestDebug::default()
        }
    }

    /// A debug exit (#DB: single-step, hardware breakpoint; #BP on hardware KVM).
    pub fn on_debug(
        &self,
        target: &dyn Target,
        vcpu: &mut dyn VcpuAccess,
        exception: u32,
        pc: u64,
        dr6: u64,
    ) -> Decision {
        match exception {
            3 => self.on_int3(target, vcpu, pc).unwrap_or(Decision::Continue),
            1 => {
                if dr6 & DR6_BS != 0 && self.finish_client_step(vcpu, pc).is_some() {
                    return Decision::Pause;
                }
                if self.engine.stepping_vcpu() == Some(vcpu.index()) {
                    if let Some(d) = self.on_probe_step(target, vcpu, pc, dr6) {
                        return d;
                    }
                }
                self.on_hw_debug(vcpu, pc, dr6)
            }
            _ => Decision::Continue,
        }
    }

    /// A #DB while this vCPU steps a probed instruction.
    fn on_probe_step(
        &self,
        target: &dyn Target,
        vcpu: &mut dyn VcpuAccess,
        pc: u64,
        dr6: u64,
    ) -> Option<Decision> {
        if dr6 & DR6_BS == 0 {
            // An execute breakpoint on the very instruction being stepped fires before it
            // runs; its hit was reported when the vCPU first reached the address. Step the
            // instruction with the debug registers off (the step's end restores them).
            let step = GuestDebug {
                single_step: true,
                hw_breakpoints: false,
                dr7: 0,
                ..self.engine.debug_state()
            };
            return vcpu.set_debug(&step).is_ok().then_some(Decision::Continue);
        }
        match self.engine.on_single_step(target, vcpu) {
            Ok(Some(d)) => {
                // Data watchpoints the stepped instruction fired.
                let ids: Vec<_> = {
                    let slots = lock(&self.slots);
                    slots
                        .hit_breakpoints(dr6)
                        .into_iter()
                        .filter(|id| {
                            slots
                                .get(*id)
                                .is_some_and(|r| r.kind != BreakpointKind::Execute)
                        })
                        .collect()
                };
                self.emit_hw_hits(vcpu, pc, &ids);
                Some(decision(d))
            }
            Ok(None) => None,
            Err(e) => {
                self.note(format!(
                    "probe single-step failed on vCPU {}: {e}",
                    vcpu.index()
                ));
                None
            }
        }
    }

    /// An emulation failure (our software KVM's way of reporting a ring-0 int3): `None` if it
    /// is not an int3 at RIP, so the VMM reports the failure.
    pub fn on_emulation_failure(
        &self,
        target: &dyn Target,
        vcpu: &mut dyn VcpuAccess,
        rip: u64,
    ) -> Option<Decision> {
        self.on_int3(target, vcpu, rip)
    }

    fn on_int3(
        &self,
        target: &dyn Target,
        vcpu: &mut dyn VcpuAccess,
        rip: u64,
    ) -> Option<Decision> {
        match self.engine.on_breakpoint(target, vcpu, rip) {
            Ok(BreakpointOutcome::Handled(d)) => Some(decision(d)),
            Ok(BreakpointOutcome::GuestInt3) => match hand_back_int3(vcpu) {
                Ok(()) => Some(Decision::Continue),
                Err(e) => {
                    self.note(format!(
                        "cannot hand the guest's int3 at {rip:#x} back: {e}"
                    ));
                    None
                }
            },
            Ok(BreakpointOutcome::NotOurs) => None,
            Err(e) => {
                self.note(format!(
                    "probe hit at {rip:#x} on vCPU {} failed: {e}",
                    vcpu.index()
                ));
                None
            }
        }
    }

    fn on_hw_debug(&self, vcpu: &mut dyn VcpuAccess, pc: u64, dr6: u64) -> Decision {
        let index = vcpu.index();
        let Some(stepper) = self.steppers.get(index) else {
            return Decision::Continue;
        };
        let slots = lock(&self.slots);
        let outcome = match lock(stepper).on_debug_exit(vcpu, &slots, self.stepper_base(), dr6, pc)
        {
            Ok(o) => o,
            Err(e) => {
                self.note(format!(
                    "hardware breakpoint step on vCPU {index} failed: {e}"
                ));
                return Decision::Continue;
            }
        };
        if outcome.switched_mode {
            self.note(
                "RF is ignored by this KVM for execute breakpoints: stepping over them by \
                 disabling the slot and single-stepping (two exits per hit)"
                    .to_string(),
            );
        }
        drop(slots);
        self.emit_hw_hits(vcpu, pc, &outcome.hits);
        Decision::Continue
    }

    fn emit_hw_hits(&self, vcpu: &mut dyn VcpuAccess, pc: u64, ids: &[BreakpointId]) {
        if ids.is_empty() {
            return;
        }
        let index = vcpu.index();
        let slots = lock(&self.slots);
        let regs = vcpu.regs().ok();
        let sources = lock(&self.hw_sources);
        for &id in ids {
            let Some(src) = sources.get(&id) else {
                continue;
            };
            let addr = slots.get(id).map_or(pc, |r| r.addr.raw());
            let hit = self.sources().hit(src.source);
            let kind = match src.kind {
                BreakpointKind::Execute => EventKind::HwBreak,
                BreakpointKind::Write => EventKind::Watch { write: true },
                BreakpointKind::ReadWrite => EventKind::Watch { write: false },
            };
            self.sink.emit(Event {
                time_ns: self.sink.now_ns(),
                vcpu: u32::try_from(index).unwrap_or(u32::MAX),
                kind,
                source: src.source,
                addr,
                symbol: self
                    .symbols
                    .as_ref()
                    .and_then(|s| s.lookup(addr))
                    .map(|s| Arc::<str>::from(s.to_string())),
                regs: regs
                    .as_ref()
                    .map(|r| select_regs(r, &DEFAULT_REGS))
                    .unwrap_or_default(),
                hit,
            });
        }
    }

    /// Adds a note for the user (said once, at the end).
    pub fn add_note(&self, msg: String) {
        self.note(msg);
    }

    fn note(&self, msg: String) {
        let mut notes = lock(&self.notes);
        if !notes.contains(&msg) {
            notes.push(msg);
        }
    }

    /// Copies the probe engine's `nmissed` counters into the event sources (call once, at
    /// the end, before printing the table).
    pub fn finish(&self, target: Option<&dyn Target>) {
        if let Some(t) = target {
            self.drain_all(t);
        }
        if self.engine.arena().is_none() {
            self.engine.give_up_pending(
                "the guest offered no trampoline arena (Linux needs hvprobe's guest module)",
            );
        }
        self.refresh_how();
        for (id, source) in lock(&self.probe_sources).iter() {
            if let Some(stats) = self.engine.stats(*id) {
                for _ in 0..stats.nmissed {
                    self.sources().missed(*source);
                }
            }
        }
    }
}

fn decision(d: HookDecision) -> Decision {
    match d {
        HookDecision::Continue => Decision::Continue,
        HookDecision::StopGuest => Decision::Stop,
    }
}

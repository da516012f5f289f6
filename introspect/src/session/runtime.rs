//! Changing a running session: removing probes, adding and removing hardware breakpoints and
//! watchpoints, single-stepping a paused vCPU on request. What a control API client (or any
//! caller with a [`Target`]) does while the guest runs; `setup` is the same operations before
//! the first instruction.

use std::sync::atomic::Ordering;

use super::{Introspector, SessionError, WatchRequest, lock};
use crate::addr::Gva;
use crate::events::SourceId;
use crate::hwbp::{BreakpointKind, BreakpointLen, Request};
use crate::target::{GuestDebug, Target, VcpuAccess};

/// What a single-step requested through [`Introspector::request_step`] ended on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepDone {
    /// The vCPU.
    pub vcpu: usize,
    /// RIP after the instruction.
    pub rip: u64,
}

/// Why a runtime change was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RuntimeError {
    /// No probe, breakpoint or watchpoint has this id (or it was removed).
    #[error("No probe, breakpoint or watchpoint has id {0}")]
    UnknownSource(u32),
}

impl Introspector {
    /// Removes everything event source `source` stands for (a probe, or a hardware breakpoint
    /// or watchpoint) while the guest runs: the probe is unregistered (its site disarmed when
    /// it was the last one there), the debug registers rewritten on every vCPU. The source
    /// keeps its counters, marked `removed`, for the table at the end.
    pub fn remove_source(&self, target: &dyn Target, source: SourceId) -> Result<(), SessionError> {
        let probe = {
            let mut ps = lock(&self.probe_sources);
            ps.iter()
                .position(|(_, s)| *s == source)
                .map(|i| ps.remove(i).0)
        };
        if let Some(id) = probe {
            let site = self.engine.with_registry(|r| r.site_of(id));
            self.engine
                .unregister(target, id)
                .map_err(|e| SessionError::Probe {
                    at: format!("probe id {}", source.index()),
                    source: e,
                })?;
            if let Some(site) = site {
                let mut sites = lock(&self.site_sources);
                if let Some(entry) = sites.get_mut(&site) {
                    entry.sources.retain(|s| *s != source);
                    if entry.sources.is_empty() {
                        sites.remove(&site);
                    }
                }
            }
            self.sources().set_how(source, "removed".to_string());
            return Ok(());
        }
        let hw = {
            let mut map = lock(&self.hw_sources);
            let id = map
                .iter()
                .find(|(_, h)| h.source == source)
                .map(|(id, _)| *id);
            id.and_then(|id| map.remove(&id).map(|_| id))
        };
        let Some(id) = hw else {
            return Err(SessionError::Runtime(RuntimeError::UnknownSource(
                source.index(),
            )));
        };
        {
            let mut slots = lock(&self.slots);
            if let Some(req) = slots.get(id) {
                if req.kind == BreakpointKind::Execute {
                    self.engine.unreserve(req.addr);
                }
            }
            let _ = slots.remove(id);
            self.engine
                .set_debug_base(slots.debug_state(GuestDebug::default()));
        }
        self.sources().set_how(source, "removed".to_string());
        self.apply_debug_state(target)
    }

    /// Adds a hardware execute breakpoint at `at` while the guest runs (or before it starts).
    pub fn add_hbreak(&self, target: &dyn Target, at: &str) -> Result<SourceId, SessionError> {
        let addr = self.resolve("hbreak", at)?;
        self.engine.reserve(addr, format!("--hbreak {at}"));
        let source = self.add_hw(
            Request::execute(addr, format!("--hbreak {at}")).pinned(),
            "hbreak",
            at,
        );
        let source = match source {
            Ok(s) => s,
            Err(e) => {
                self.engine.unreserve(addr);
                return Err(e);
            }
        };
        self.engine
            .set_debug_base(lock(&self.slots).debug_state(GuestDebug::default()));
        self.apply_debug_state(target)?;
        Ok(source)
    }

    /// Adds a hardware watchpoint while the guest runs (or before it starts).
    pub fn add_watch(
        &self,
        target: &dyn Target,
        w: &WatchRequest,
    ) -> Result<SourceId, SessionError> {
        let addr = self.resolve("watch", &w.at)?;
        let kind = if w.write_only {
            BreakpointKind::Write
        } else {
            BreakpointKind::ReadWrite
        };
        let len =
            BreakpointLen::from_bytes(u64::from(w.len)).map_err(|source| SessionError::Hwbp {
                flag: "watch",
                at: w.at.clone(),
                source,
            })?;
        let owner = format!(
            "--watch {}:{}:{}",
            w.at,
            w.len,
            if w.write_only { "w" } else { "rw" }
        );
        let source = self.add_hw(
            Request::watch(addr, kind, len, owner).pinned(),
            "watch",
            &w.at,
        )?;
        self.engine
            .set_debug_base(lock(&self.slots).debug_state(GuestDebug::default()));
        self.apply_debug_state(target)?;
        Ok(source)
    }

    /// Marks vCPU `vcpu` as stepping for a client: its next single-step #DB is reported to
    /// [`Introspector::take_step`] instead of being taken for a breakpoint's. The caller sets
    /// the vCPU's single-step flag and lets only that vCPU run.
    pub fn request_step(&self, vcpu: usize) {
        if let Some(flag) = self.client_steps.get(vcpu) {
            flag.store(true, Ordering::SeqCst);
        }
    }

    /// Whether a client's step on `vcpu` is still in flight.
    pub fn step_pending(&self, vcpu: usize) -> bool {
        self.client_steps
            .get(vcpu)
            .is_some_and(|f| f.load(Ordering::SeqCst))
    }

    /// The step's #DB on `vcpu` (called from `on_debug`): ends the client's step, restores the
    /// session's debug state on that vCPU and returns where it stopped.
    pub(super) fn finish_client_step(
        &self,
        vcpu: &mut dyn VcpuAccess,
        pc: u64,
    ) -> Option<StepDone> {
        let flag = self.client_steps.get(vcpu.index())?;
        if !flag.swap(false, Ordering::SeqCst) {
            return None;
        }
        let _ = vcpu.set_debug(&self.engine.debug_state());
        let rip = vcpu.regs().map(|r| r.rip).unwrap_or(pc);
        Some(StepDone {
            vcpu: vcpu.index(),
            rip,
        })
    }

    /// The kernel's symbols, if it has any.
    pub fn symbols(&self) -> Option<&std::sync::Arc<crate::symbols::SymbolTable>> {
        self.symbols.as_ref()
    }

    /// The address `at` resolves to (a symbol, `symbol+off`, or `0x...`).
    pub fn resolve_location(&self, at: &str) -> Result<Gva, SessionError> {
        self.resolve("location", at)
    }
}

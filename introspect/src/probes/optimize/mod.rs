//! Jump optimization (kprobes' optprobes, `arch/x86/kernel/kprobes/opt.c`): an armed int3
//! probe becomes a `jmp rel32` to a trampoline in the guest's arena.
//!
//! # Life of an optimized probe
//! 1. The probe is armed as an int3 first (always: it is the fallback, and what runs until
//!    the jump is in).
//! 2. [`ProbeEngine::request_jump`] marks the site *pending* with a handler kind.
//! 3. [`ProbeEngine::optimize_pending`] (when an arena is attached) prepares each pending site
//!    with the vCPUs running: `disasm::can_optimize` over the function's **original** bytes,
//!    the window must be one physical range holding no other probe and no hardware
//!    breakpoint, a slot is taken and the trampoline written into it. Then, with **every vCPU
//!    paused**, it checks quiescence: no vCPU is stepping the site's int3 and no vCPU's RIP is
//!    inside the window after its first byte. Only then is the jump written: bytes 1..5 first,
//!    then byte 0 (`0xCC` -> `0xE9`). A site that is not quiescent stays pending and is tried
//!    again on the next pass ([`MAX_DEFERRALS`] times).
//! 4. Unoptimize is the reverse, also with every vCPU paused: byte 0 back to `0xCC`, then the
//!    original bytes 1..len. The slot becomes *dirty*: a vCPU may still be inside the
//!    trampoline, which stays intact and jumps back to original code; the slot is freed by a
//!    later pass that finds no vCPU's RIP in it.
//!
//! A probe armed later inside an optimized window unoptimizes that site (it stays an int3
//! probe, with the reason recorded); any failure leaves the site an int3 probe with its reason
//! ([`ArmedAs::Int3`]).
//!
//! # What the RIP check cannot see
//! A guest task interrupted (or preempted) with its RIP inside a window or a trampoline keeps
//! that RIP on its stack, not in a vCPU register. The test kernel runs its probed code with
//! interrupts off; for Linux, a pass runs only after the guest module's quiescence barrier
//! (`synchronize_rcu_tasks()`, requested by the VMM once the module's arena is attached) has
//! completed, so a task preempted inside a window has left it. Linux probes without the module
//! stay int3.

mod attach;
mod hits;
mod prepare;

pub use attach::{MAX_SPLIT_REGION, locate_arena, locate_split_arena};

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use disasm::{Fetch, JUMP_LEN, jump_patch};

use super::arena::{ArenaLayout, HEADER_GENERATION, SLOT_SIZE, SlotPool};
use super::registry::Window;
use super::{ProbeEngine, ProbeError, lock};
use crate::addr::{Gpa, Gva};
use crate::target::{Target, TargetError};

/// How often a pass may find a site not quiescent before it gives up on the jump.
pub const MAX_DEFERRALS: u32 = 100;
/// How long reading a paused vCPU's RIP may take.
const RIP_TIMEOUT: Duration = Duration::from_secs(5);

/// What a jump-optimized probe's trampoline does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JumpHandler {
    /// One doorbell exit per hit: the host handlers run with the full registers.
    Exit,
    /// No exit: the trampoline writes a record with these values into its vCPU's ring.
    InGuest(Vec<Fetch>),
    /// No exit: the trampoline calls the guest module's handler with the probed registers
    /// (see [`disasm::Handler::Call`]); it records pid, comm and the string this register
    /// points to.
    Call(Option<disasm::Gpr>),
}

impl JumpHandler {
    fn kind(&self) -> JumpKind {
        match self {
            JumpHandler::Exit => JumpKind::Exit,
            JumpHandler::InGuest(_) => JumpKind::InGuest,
            JumpHandler::Call(_) => JumpKind::Call,
        }
    }
}

/// The kind of a jump-optimized probe's handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JumpKind {
    /// Doorbell exit.
    Exit,
    /// In-guest ring buffer.
    InGuest,
    /// The guest module's handler, called in the guest.
    Call,
}

/// How a site is armed right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArmedAs {
    /// Not armed.
    Disarmed,
    /// An int3; with the reason when a jump was asked for but refused or undone.
    Int3 {
        /// Why it is not a jump (None: an int3 was asked for).
        reason: Option<String>,
    },
    /// An int3 now; a jump once an arena is there and the site is quiescent.
    Pending,
    /// A jump to a trampoline.
    Jump {
        /// Its handler.
        kind: JumpKind,
        /// Its slot in the arena.
        slot: u32,
        /// Bytes the jump displaced.
        len: usize,
    },
}

impl std::fmt::Display for ArmedAs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ArmedAs::Disarmed => write!(f, "disarmed"),
            ArmedAs::Int3 { reason: None } => write!(f, "int3"),
            ArmedAs::Int3 { reason: Some(why) } => write!(f, "int3 (no jump: {why})"),
            ArmedAs::Pending => write!(f, "int3, jump pending"),
            ArmedAs::Jump { kind, slot, len } => write!(
                f,
                "jump ({} handler, slot {slot}, {len} bytes displaced)",
                match kind {
                    JumpKind::Exit => "exit",
                    JumpKind::InGuest => "in-guest",
                    JumpKind::Call => "module",
                }
            ),
        }
    }
}

/// Who quiesces the guest for a pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quiesce {
    /// A controlling thread: the pass pauses and resumes every vCPU.
    Controller,
    /// vCPU `me`'s own thread, inside an exit at `rip`: the pass pauses the others.
    FromVcpu {
        /// The calling vCPU.
        me: usize,
        /// Its RIP.
        rip: u64,
    },
}

#[derive(Debug)]
struct Want {
    handler: JumpHandler,
    deferrals: u32,
}

#[derive(Debug, Clone)]
struct Optimized {
    slot: u32,
    gpa: Gpa,
    window: Window,
    kind: JumpKind,
    /// For each displaced instruction, its original address and its trampoline address.
    map: Vec<(u64, u64)>,
}

#[derive(Debug)]
struct ArenaState {
    layout: ArenaLayout,
    pool: SlotPool,
    generation: u64,
    /// The next trampoline tag (never reused).
    next_tag: u32,
    /// The site of every slot in use or dirty, for its `lost` counter.
    slot_site: HashMap<u32, Gva>,
    /// Each slot's `lost` counter as last read.
    lost_seen: HashMap<u32, u64>,
    /// Losses read from slots as they were freed, not yet taken.
    freed_lost: Vec<(Gva, u64)>,
}

/// The optimizer's state, inside the [`ProbeEngine`]. Lock order: this, then the registry.
#[derive(Debug, Default)]
pub(super) struct OptState {
    arena: Option<ArenaState>,
    wants: BTreeMap<Gva, Want>,
    optimized: BTreeMap<Gva, Optimized>,
    refused: HashMap<Gva, String>,
    /// Addresses a window may not cover (hardware execute breakpoints), with their owner.
    reserved: Vec<(u64, String)>,
    /// How in-guest handlers find their ring.
    cpu_source: disasm::CpuSource,
    /// The guest module's handler for [`JumpHandler::Call`] trampolines (guest-virtual).
    module_handler: Option<u64>,
    /// Instructions with exception-table fixups (Linux's `__ex_table`, read from guest
    /// memory once), sorted.
    fixups: Option<Vec<u64>>,
}

/// A site ready to be patched: trampoline written, slot taken.
struct Prepared {
    site: Gva,
    gpa: Gpa,
    slot: u32,
    tag: u32,
    window: Window,
    kind: JumpKind,
    map: Vec<(u64, u64)>,
}

fn target_err(what: &'static str) -> impl Fn(String) -> ProbeError {
    move |reason| ProbeError::Target(TargetError::Vm { what, reason })
}

impl ProbeEngine {
    /// Asks for `site` (armed, or about to be) to become a jump with `handler`.
    pub fn request_jump(&self, site: Gva, handler: JumpHandler) {
        let mut opt = lock(&self.opt);
        opt.refused.remove(&site);
        opt.wants.insert(
            site,
            Want {
                handler,
                deferrals: 0,
            },
        );
    }

    /// How in-guest trampolines find their CPU's ring (set before optimizing: a guest whose
    /// ring-0 code is emulated without `rdtscp` needs [`disasm::CpuSource::SharedRing`]).
    pub fn set_cpu_source(&self, cpu: disasm::CpuSource) {
        lock(&self.opt).cpu_source = cpu;
    }

    /// Keeps jump windows off `addr` (a hardware execute breakpoint there must stay reachable).
    pub fn reserve(&self, addr: Gva, owner: impl Into<String>) {
        lock(&self.opt).reserved.push((addr.raw(), owner.into()));
    }

    /// Undoes one [`Self::reserve`] of `addr` (the breakpoint there was removed).
    pub fn unreserve(&self, addr: Gva) {
        let mut opt = lock(&self.opt);
        if let Some(i) = opt.reserved.iter().position(|(a, _)| *a == addr.raw()) {
            opt.reserved.remove(i);
        }
    }

    /// Whether any site waits for a jump.
    pub fn has_pending(&self) -> bool {
        !lock(&self.opt).wants.is_empty()
    }

    /// How `site` is armed now.
    pub fn armed_as(&self, site: Gva) -> ArmedAs {
        let opt = lock(&self.opt);
        if let Some(o) = opt.optimized.get(&site) {
            return ArmedAs::Jump {
                kind: o.kind,
                slot: o.slot,
                len: o.window.len,
            };
        }
        if !self.is_armed(site) {
            return ArmedAs::Disarmed;
        }
        if opt.wants.contains_key(&site) {
            return ArmedAs::Pending;
        }
        ArmedAs::Int3 {
            reason: opt.refused.get(&site).cloned(),
        }
    }

    /// Gives up on every pending site (they stay int3 probes) with `why`: at the end of a
    /// session whose guest never offered an arena.
    pub fn give_up_pending(&self, why: &str) {
        let mut opt = lock(&self.opt);
        let pending: Vec<Gva> = opt.wants.keys().copied().collect();
        for site in pending {
            Self::refuse(&mut opt, site, why.to_string());
        }
    }

    /// Whether a pending site was found not quiescent and waits for another pass.
    pub fn has_deferred(&self) -> bool {
        lock(&self.opt).wants.values().any(|w| w.deferrals > 0)
    }

    /// Records that `site` stays an int3 because of `why` (an `:auto` probe on code that
    /// cannot take a jump), as a pass would.
    pub fn refuse_jump(&self, site: Gva, why: String) {
        Self::refuse(&mut lock(&self.opt), site, why);
    }

    fn refuse(opt: &mut OptState, site: Gva, why: String) {
        opt.wants.remove(&site);
        opt.refused.insert(site, why);
    }

    /// One optimizer pass: prepares every pending site, then with the guest quiesced patches
    /// the quiescent ones and frees dirty slots no vCPU is in. Returns how many sites became
    /// jumps. Sites that cannot be optimized stay int3 probes, with the reason
    /// ([`Self::armed_as`]).
    ///
    /// From a vCPU ([`Quiesce::FromVcpu`]) the pass is skipped when another pass holds the
    /// optimizer (that one is pausing this vCPU, and does the work).
    pub fn optimize_pending(&self, target: &dyn Target, q: Quiesce) -> Result<usize, ProbeError> {
        let mut opt = match q {
            Quiesce::Controller => lock(&self.opt),
            Quiesce::FromVcpu { .. } => match self.opt.try_lock() {
                Ok(g) => g,
                Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => return Ok(0),
            },
        };
        if opt.arena.is_none() {
            return Ok(0);
        }
        let ctx = match q {
            Quiesce::Controller => self.paging_context(target)?,
            Quiesce::FromVcpu { .. } => match *lock(&self.paging) {
                Some(c) => c,
                None => return Ok(0),
            },
        };
        let pending: Vec<Gva> = opt.wants.keys().copied().collect();
        let mut prepared = Vec::new();
        for site in pending {
            if opt.optimized.contains_key(&site) {
                opt.wants.remove(&site);
                continue;
            }
            if !self.is_armed(site) {
                continue;
            }
            match self.prepare(target, &ctx, &mut opt, site) {
                Ok(p) => prepared.push(p),
                Err(why) => Self::refuse(&mut opt, site, why),
            }
        }
        let dirty = opt.arena.as_ref().is_some_and(|a| a.pool.counts().2 > 0);
        if prepared.is_empty() && !dirty {
            return Ok(0);
        }
        self.quiesce(target, q)?;
        let result = self.patch_quiesced(target, q, &mut opt, prepared);
        let resumed = self.unquiesce(target, q);
        let n = result?;
        resumed?;
        Ok(n)
    }

    fn quiesce(&self, target: &dyn Target, q: Quiesce) -> Result<(), ProbeError> {
        match q {
            Quiesce::Controller => target.pause_all()?,
            Quiesce::FromVcpu { me, .. } => target.pause_others(me)?,
        }
        Ok(())
    }

    fn unquiesce(&self, target: &dyn Target, q: Quiesce) -> Result<(), ProbeError> {
        match q {
            Quiesce::Controller => target.resume_all()?,
            Quiesce::FromVcpu { me, .. } => target.resume_others(me)?,
        }
        Ok(())
    }

    /// Every vCPU's RIP, with the guest quiesced.
    fn rips(&self, target: &dyn Target, q: Quiesce) -> Result<Vec<u64>, ProbeError> {
        let mut rips = Vec::new();
        for i in 0..target.vcpu_count() {
            if let Quiesce::FromVcpu { me, rip } = q {
                if me == i {
                    rips.push(rip);
                    continue;
                }
            }
            let (tx, rx) = std::sync::mpsc::channel();
            target.with_vcpu(
                i,
                Box::new(move |v| {
                    let _ = tx.send(v.regs().map(|r| r.rip));
                }),
            )?;
            let rip = rx
                .recv_timeout(RIP_TIMEOUT)
                .map_err(|e| target_err("reading a paused vCPU's RIP")(e.to_string()))??;
            rips.push(rip);
        }
        Ok(rips)
    }

    fn patch_quiesced(
        &self,
        target: &dyn Target,
        q: Quiesce,
        opt: &mut OptState,
        prepared: Vec<Prepared>,
    ) -> Result<usize, ProbeError> {
        let rips = self.rips(target, q)?;
        let mut done = 0;
        for p in prepared {
            let inside = rips
                .iter()
                .any(|&r| r > p.site.raw() && r < p.site.raw() + p.window.len as u64);
            let stepping = self
                .read_reg()
                .site(p.site)
                .is_none_or(|s| s.stepping > 0 || s.armed.is_none());
            if inside || stepping || self.stepping_vcpu().is_some() {
                if let Some(a) = opt.arena.as_mut() {
                    a.pool.free_unused(p.slot);
                }
                let give_up = opt.wants.get_mut(&p.site).is_some_and(|w| {
                    w.deferrals += 1;
                    w.deferrals > MAX_DEFERRALS
                });
                if give_up {
                    Self::refuse(
                        opt,
                        p.site,
                        format!("a vCPU was inside the window on {MAX_DEFERRALS} passes"),
                    );
                }
                continue;
            }
            let (slot_va, _) = match opt.arena.as_ref() {
                Some(a) => a.layout.slot(p.slot),
                None => break,
            };
            let jmp = jump_patch(p.site.raw(), slot_va.raw())
                .map_err(|e| target_err("jump patch")(e.to_string()))?;
            let write = |gpa: Gpa, bytes: &[u8]| {
                target
                    .write_phys(gpa, bytes)
                    .map_err(|source| ProbeError::Patch { gpa, source })
            };
            // Bytes 1..5 first: a vCPU that still saw the int3 at byte 0 never reads them.
            let mut tail = p.window.bytes()[..].to_vec();
            tail[..JUMP_LEN].copy_from_slice(&jmp);
            write(Gpa(p.gpa.raw() + 1), &tail[1..JUMP_LEN])?;
            write(p.gpa, &jmp[..1])?;
            self.write_reg().set_window(p.site, Some(p.window));
            opt.wants.remove(&p.site);
            self.tags
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(p.tag, p.site);
            if let Some(a) = opt.arena.as_mut() {
                a.slot_site.insert(p.slot, p.site);
                a.lost_seen.insert(p.slot, 0);
            }
            opt.optimized.insert(
                p.site,
                Optimized {
                    slot: p.slot,
                    gpa: p.gpa,
                    window: p.window,
                    kind: p.kind,
                    map: p.map,
                },
            );
            done += 1;
        }
        if let Some(a) = opt.arena.as_mut() {
            let layout = a.layout.clone();
            let freed = a.pool.reclaim(|slot| {
                let (va, _) = layout.slot(slot);
                rips.iter()
                    .any(|&r| r >= va.raw() && r < va.raw() + u64::from(SLOT_SIZE))
            });
            // No vCPU is in a freed slot: its `lost` counter is final.
            for slot in freed {
                let site = a.slot_site.remove(&slot);
                let seen = a.lost_seen.remove(&slot).unwrap_or(0);
                let mut w = [0u8; 8];
                if let (Some(site), Ok(())) =
                    (site, target.read_phys(layout.slot_lost(slot).1, &mut w))
                {
                    let now = u64::from_le_bytes(w);
                    if now > seen {
                        a.freed_lost.push((site, now - seen));
                    }
                }
            }
            a.generation += 1;
            let gen_at = layout.pa(Gva(layout.base.raw() + HEADER_GENERATION));
            target
                .write_phys(gen_at, &a.generation.to_le_bytes())
                .map_err(|source| ProbeError::Patch {
                    gpa: gen_at,
                    source,
                })?;
        }
        Ok(done)
    }

    /// With every vCPU paused: turns optimized `site` back into an int3 (byte 0 first, then the
    /// rest of the window) and retires its slot. `why` is recorded as the reason it is no
    /// longer a jump. Returns whether it was optimized.
    pub(super) fn unoptimize_paused(
        &self,
        target: &dyn Target,
        site: Gva,
        why: Option<String>,
    ) -> Result<bool, ProbeError> {
        let mut opt = lock(&self.opt);
        let Some(o) = opt.optimized.remove(&site) else {
            return Ok(false);
        };
        let write = |gpa: Gpa, bytes: &[u8]| {
            target
                .write_phys(gpa, bytes)
                .map_err(|source| ProbeError::Patch { gpa, source })
        };
        write(o.gpa, &[super::BREAKPOINT_INSN])?;
        write(Gpa(o.gpa.raw() + 1), &o.window.bytes()[1..])?;
        self.write_reg().set_window(site, None);
        if let Some(a) = opt.arena.as_mut() {
            a.pool.retire(o.slot);
        }
        opt.wants.remove(&site);
        match why {
            Some(w) => {
                opt.refused.insert(site, w);
            }
            None => {
                opt.refused.remove(&site);
            }
        }
        Ok(true)
    }

    /// Turns optimized `site` back into an int3 probe (pausing every vCPU); `why` is kept as
    /// the reason. Returns whether it was optimized.
    pub fn unoptimize(
        &self,
        target: &dyn Target,
        site: Gva,
        why: impl Into<String>,
    ) -> Result<bool, ProbeError> {
        target.pause_all()?;
        let r = self.unoptimize_paused(target, site, Some(why.into()));
        let resumed = target.resume_all();
        let was = r?;
        resumed?;
        Ok(was)
    }

    /// With every vCPU paused, before `site` is armed: unoptimizes every optimized site whose
    /// window `site` is inside (kprobes does the same for a probe next to an optimized one).
    pub(super) fn unoptimize_around(
        &self,
        target: &dyn Target,
        site: Gva,
    ) -> Result<(), ProbeError> {
        let hit: Vec<Gva> = lock(&self.opt)
            .optimized
            .iter()
            .filter(|(s, o)| site > **s && site.raw() < s.raw() + o.window.len as u64)
            .map(|(s, _)| *s)
            .collect();
        for s in hit {
            self.unoptimize_paused(
                target,
                s,
                Some(format!("a probe at {site} is inside its window")),
            )?;
        }
        Ok(())
    }

    /// Every optimized site (for tests and tables).
    pub fn optimized_sites(&self) -> Vec<Gva> {
        lock(&self.opt).optimized.keys().copied().collect()
    }
}

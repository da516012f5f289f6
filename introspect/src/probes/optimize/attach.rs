//! Taking the guest's trampoline arena: finding it in guest memory, laying it out, writing its
//! header.

use std::collections::HashMap;

use super::super::arena::{ArenaError, ArenaLayout, PageMap, SlotPool};
use super::super::ring::RingReader;
use super::super::{ProbeEngine, ProbeError, lock};
use super::ArenaState;
use crate::addr::{Gpa, Gva};
use crate::paging::{self, PagingContext, PhysMem};
use crate::target::Target;

/// Finds the arena `[base, base+len)` in guest memory with `ctx` and lays it out for `vcpus`.
pub fn locate_arena<M: PhysMem + ?Sized>(
    mem: &M,
    ctx: &PagingContext,
    base: Gva,
    len: u64,
    vcpus: usize,
) -> Result<ArenaLayout, ArenaError> {
    if base.raw() % 0x1000 != 0 || len % 0x1000 != 0 || len == 0 {
        return Err(ArenaError::Unaligned { base, len });
    }
    let first = paging::translate(mem, ctx, base).map_err(|e| ArenaError::Unmapped {
        at: base,
        reason: e.to_string(),
    })?;
    let mut off = 0x1000;
    while off < len {
        let at = Gva(base.raw() + off);
        let t = paging::translate(mem, ctx, at).map_err(|e| ArenaError::Unmapped {
            at,
            reason: e.to_string(),
        })?;
        let expected = Gpa(first.gpa.raw() + off);
        if t.gpa != expected {
            return Err(ArenaError::NotContiguous { base, at, expected });
        }
        off += 0x1000;
    }
    ArenaLayout::plan(base, first.gpa, len, vcpus)
}

/// Why a guest module's split arena is refused, beyond [`ArenaError`]'s layout reasons.
fn refuse(base: Gva, why: impl Into<String>) -> ArenaError {
    ArenaError::Unmapped {
        at: base,
        reason: why.into(),
    }
}

/// Most bytes a split arena region may have (the guest module reports 64 KiB of code and
/// 1 MiB of data).
pub const MAX_SPLIT_REGION: u64 = 16 << 20;

/// Finds a guest module's split arena in guest memory with `ctx`: `code` (executable in the
/// guest) and `data` (writable), each page-aligned, at most [`MAX_SPLIT_REGION`], every page
/// translating to a page of `mem` (guest RAM), no physical page twice, none inside
/// `forbidden` (guest-physical ranges: the kernel image), and neither region over
/// `forbidden_va` (guest-virtual ranges: kernel text). Lays it out for `vcpus`.
#[allow(clippy::too_many_arguments)]
pub fn locate_split_arena<M: PhysMem + ?Sized>(
    mem: &M,
    ctx: &PagingContext,
    code: (Gva, u64),
    data: (Gva, u64),
    forbidden: &[(Gpa, Gpa)],
    forbidden_va: &[(Gva, Gva)],
    vcpus: usize,
) -> Result<ArenaLayout, ArenaError> {
    let mut seen = std::collections::HashSet::new();
    let mut pages_of = |(base, len): (Gva, u64)| -> Result<Vec<Gpa>, ArenaError> {
        if base.raw() % 0x1000 != 0 || len % 0x1000 != 0 || len == 0 {
            return Err(ArenaError::Unaligned { base, len });
        }
        if len > MAX_SPLIT_REGION {
            return Err(refuse(
                base,
                format!("{len:#x} bytes is more than {MAX_SPLIT_REGION:#x}"),
            ));
        }
        let end = base
            .raw()
            .checked_add(len)
            .ok_or_else(|| refuse(base, "the region wraps around"))?;
        if let Some((a, b)) = forbidden_va
            .iter()
            .find(|(a, b)| base.raw() < b.raw() && a.raw() < end)
        {
            return Err(refuse(
                base,
                format!("the region overlaps kernel text {a}..{b}"),
            ));
        }
        let mut pages = Vec::new();
        for off in (0..len).step_by(0x1000) {
            let at = Gva(base.raw() + off);
            let t = paging::translate(mem, ctx, at).map_err(|e| ArenaError::Unmapped {
                at,
                reason: e.to_string(),
            })?;
            let gpa = t.gpa.page_base();
            let mut probe = [0u8; 1];
            if mem.read_phys(gpa, &mut probe).is_err() {
                return Err(refuse(at, format!("{gpa} is not guest RAM")));
            }
            if forbidden.iter().any(|(a, b)| gpa >= *a && gpa < *b) {
                return Err(refuse(at, format!("{gpa} is inside the kernel image")));
            }
            if !seen.insert(gpa) {
                return Err(refuse(at, format!("{gpa} is mapped twice in the arena")));
            }
            pages.push(gpa);
        }
        Ok(pages)
    };
    let code_pages = pages_of(code)?;
    let data_pages = pages_of(data)?;
    ArenaLayout::plan_split(
        data.0,
        PageMap {
            data: data_pages,
            code: Some((code.0, code_pages)),
        },
        vcpus,
    )
}

impl ProbeEngine {
    /// The guest is letting go of the arena (its module is unloading): with every vCPU but
    /// `q`'s paused, turns every jump back into an int3 (`why` is the reason its table shows),
    /// then forgets the arena. Pending sites stay pending (a later arena may take them).
    /// Returns how many sites were unoptimized.
    pub fn release_arena(
        &self,
        target: &dyn Target,
        q: super::Quiesce,
        why: &str,
    ) -> Result<usize, ProbeError> {
        let sites: Vec<Gva> = lock(&self.opt).optimized.keys().copied().collect();
        match q {
            super::Quiesce::Controller => target.pause_all()?,
            super::Quiesce::FromVcpu { me, .. } => target.pause_others(me)?,
        }
        let mut n = 0;
        let mut result = Ok(());
        for site in sites {
            match self.unoptimize_paused(target, site, Some(why.to_string())) {
                Ok(true) => n += 1,
                Ok(false) => {}
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        let resumed = match q {
            super::Quiesce::Controller => target.resume_all(),
            super::Quiesce::FromVcpu { me, .. } => target.resume_others(me),
        };
        result?;
        resumed?;
        Ok(n)
    }

    /// The guest module's handler that [`JumpHandler::Call`] trampolines call (checked by the
    /// caller; `None`: such sites cannot become jumps).
    ///
    /// [`JumpHandler::Call`]: super::JumpHandler::Call
    pub fn set_module_handler(&self, func: Option<u64>) {
        lock(&self.opt).module_handler = func;
    }

    /// Forgets the arena (after [`Self::release_arena`] and a last ring drain).
    pub fn forget_arena(&self) {
        let mut opt = lock(&self.opt);
        opt.arena = None;
        opt.module_handler = None;
        *lock(&self.rings) = None;
    }

    /// Takes `layout` as the trampoline arena: writes its header and empties its rings.
    pub fn attach_arena(&self, mem: &dyn Target, layout: ArenaLayout) -> Result<(), ProbeError> {
        let mut opt = lock(&self.opt);
        if let Some(a) = &opt.arena {
            return Err(ProbeError::Arena(ArenaError::AlreadyAttached(
                a.layout.base,
            )));
        }
        let patch = |gpa: Gpa, bytes: &[u8]| {
            mem.write_phys(gpa, bytes)
                .map_err(|source| ProbeError::Patch { gpa, source })
        };
        for r in 0..layout.ring_count {
            // head and tail (the header is RING_RECORDS = 128 bytes).
            patch(layout.ring(r).1, &[0u8; 128])?;
        }
        patch(layout.pa(layout.base), &layout.header())?;
        *lock(&self.rings) = Some(RingReader::new(layout.clone()));
        opt.arena = Some(ArenaState {
            pool: SlotPool::new(layout.slot_count),
            layout,
            generation: 0,
            next_tag: 1,
            slot_site: HashMap::new(),
            lost_seen: HashMap::new(),
            freed_lost: Vec::new(),
        });
        Ok(())
    }

    /// Lets go of the arena before anything was optimized into it (the VMM could not set up
    /// its doorbell): pending sites stay pending, as if no arena had been offered.
    pub fn detach_arena(&self) {
        let mut opt = lock(&self.opt);
        if opt.optimized.is_empty() {
            opt.arena = None;
            *lock(&self.rings) = None;
        }
    }

    /// The attached arena.
    pub fn arena(&self) -> Option<ArenaLayout> {
        lock(&self.opt).arena.as_ref().map(|a| a.layout.clone())
    }
}

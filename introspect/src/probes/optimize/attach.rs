//! Taking the guest's trampoline arena: finding it in guest memory, laying it out, writing its
//! header.

use std::collections::HashMap;

use super::super::arena::{ArenaError, ArenaLayout, SlotPool};
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

impl ProbeEngine {
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
        patch(layout.gpa, &layout.header())?;
        *lock(&self.rings) = Some(RingReader::new(layout));
        opt.arena = Some(ArenaState {
            layout,
            pool: SlotPool::new(layout.slot_count),
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
        lock(&self.opt).arena.as_ref().map(|a| a.layout)
    }
}

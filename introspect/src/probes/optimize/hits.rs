//! Hits through jumps: the doorbell (exit handler), the in-guest rings and their losses, and
//! mapping trampoline addresses back to the original code.

use super::super::ring::RingRecord;
use super::super::{HookDecision, ProbeEngine, ProbeError, lock};
use crate::addr::{Gpa, Gva};
use crate::paging::{PhysMem, PhysMemMut};
use crate::target::VcpuAccess;

impl ProbeEngine {
    /// The site a trampoline tag belongs to. Takes only the tag map's read lock: the doorbell
    /// path calls it inside an exit, while an optimizer pass may hold the optimizer's lock
    /// waiting for that very vCPU to pause.
    pub fn tag_site(&self, tag: u32) -> Option<Gva> {
        self.tags
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&tag)
            .copied()
    }

    /// The original address of trampoline address `addr` (a vCPU stopped inside a
    /// trampoline's relocated instructions was, in the original code, there).
    pub fn original_address(&self, addr: u64) -> Option<u64> {
        let opt = lock(&self.opt);
        let slot = opt.arena.as_ref()?.layout.slot_containing(addr)?;
        let o = opt.optimized.values().find(|o| o.slot == slot)?;
        o.map
            .iter()
            .rev()
            .find(|(_, new)| *new <= addr)
            .map(|(old, _)| *old)
    }

    /// A doorbell exit from the trampoline tagged `value`: calls the site's handlers with the
    /// vCPU's registers (RIP set to the probed address). `None` if no trampoline had that
    /// tag.
    pub fn on_doorbell(&self, vcpu: &mut dyn VcpuAccess, value: u64) -> Option<HookDecision> {
        let tag = u32::try_from(value).ok()?;
        let site = self.tag_site(tag)?;
        let probes = self.read_reg().site(site)?.probes.clone();
        let mut regs = vcpu.regs().ok()?;
        regs.rip = site.raw();
        Some(self.call_handlers(vcpu, site, &probes, &regs))
    }

    /// Counts one in-guest hit on every probe at `site` (per drained record: no allocation).
    pub fn count_guest_hit(&self, site: Gva) {
        self.count_guest_hits(site, 1);
    }

    /// Counts `n` in-guest hits on every probe at `site` (once per site and drain).
    pub fn count_guest_hits(&self, site: Gva, n: u64) {
        if n == 0 {
            return;
        }
        if let Some(s) = self.read_reg().site(site) {
            for p in s.probes.iter() {
                p.hits_add(n);
            }
        }
    }

    /// Copies out committed ring records (up to `max` in all) and calls `f` with each record
    /// and its site. Returns how many records were taken.
    pub fn drain_rings(
        &self,
        mem: &(impl PhysMemMut + ?Sized),
        max: usize,
        f: &mut dyn FnMut(&RingRecord, Option<Gva>),
    ) -> Result<usize, ProbeError> {
        let mut rings = lock(&self.rings);
        let Some(reader) = rings.as_mut() else {
            return Ok(0);
        };
        // Held for the drain, not copied every tick: only an optimizer pass writes it, with
        // the vCPUs paused, and a drain never waits for a vCPU.
        let tags = self
            .tags
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Records of one drain mostly carry the same tag: look it up once per run.
        let mut last: Option<(u32, Option<Gva>)> = None;
        reader
            .drain(mem, max, &mut |r| {
                let site = match last {
                    Some((tag, site)) if tag == r.tag => site,
                    _ => {
                        let site = tags.get(&r.tag).copied();
                        last = Some((r.tag, site));
                        site
                    }
                };
                f(r, site)
            })
            .map_err(|source| ProbeError::Patch {
                gpa: Gpa(0),
                source,
            })
    }

    /// Records lost since the last call, by site: in-guest hits whose ring was full.
    pub fn take_lost(&self, mem: &(impl PhysMem + ?Sized)) -> Vec<(Gva, u64)> {
        let mut opt = lock(&self.opt);
        let Some(a) = opt.arena.as_mut() else {
            return Vec::new();
        };
        let mut out = std::mem::take(&mut a.freed_lost);
        for (&slot, &site) in &a.slot_site {
            let mut w = [0u8; 8];
            if mem.read_phys(a.layout.slot_lost(slot).1, &mut w).is_err() {
                continue;
            }
            let now = u64::from_le_bytes(w);
            let seen = a.lost_seen.entry(slot).or_insert(0);
            if now > *seen {
                out.push((site, now - *seen));
                *seen = now;
            }
        }
        out
    }
}

//! KVM memory slots, with guest RAM ranges carved out for tracing.
//!
//! A traced range either has no slot at all (every access by every vCPU exits as MMIO: the
//! hypervisor-side equivalent of mmiotrace's not-present pages, with no re-arm window) or a
//! read-only slot (reads run at native speed, writes exit). The backing memory stays mapped
//! on the host, so the MMIO handler performs the access on it. [`Memslots::plan`] is pure (unit
//! tested); [`Memslots::apply`] makes KVM match the plan, and must run with every vCPU out of
//! KVM_RUN (pause-all) so no access slips through while slots change.

use std::collections::BTreeMap;

use kvm_bindings::{KVM_MEM_READONLY, kvm_userspace_memory_region};
use kvm_ioctls::VmFd;

use crate::memory::GuestMem;

const PAGE: u64 = 4096;

/// How a traced RAM range exits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TraceMode {
    /// Reads and writes exit.
    All,
    /// Only writes exit (a read-only slot).
    WritesOnly,
}

/// One KVM memory slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotSpec {
    /// Slot number.
    pub slot: u32,
    /// Guest-physical start.
    pub gpa: u64,
    /// Length in bytes.
    pub len: u64,
    /// Host virtual address of the first byte.
    pub host: u64,
    /// KVM_MEM_READONLY.
    pub readonly: bool,
}

/// Why a traced range cannot be added or removed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MemslotError {
    /// Not page-aligned, or empty.
    #[error(
        "Traced RAM range {start:#x}+{len:#x} must be non-empty and 4 KiB-aligned at both ends"
    )]
    Unaligned {
        /// Start.
        start: u64,
        /// Length.
        len: u64,
    },
    /// Not entirely inside one RAM region.
    #[error("Traced RAM range {start:#x}+{len:#x} is not guest RAM (or crosses the MMIO hole)")]
    NotRam {
        /// Start.
        start: u64,
        /// Length.
        len: u64,
    },
    /// Overlaps a range already traced.
    #[error("Traced RAM range {start:#x}+{len:#x} overlaps the traced range at {other:#x}")]
    Overlap {
        /// Start.
        start: u64,
        /// Length.
        len: u64,
        /// The other range's start.
        other: u64,
    },
    /// No traced range starts there.
    #[error("No traced RAM range starts at {0:#x}")]
    NotTraced(u64),
    /// KVM refused a slot change.
    #[error("KVM refused a memory slot change ({0})")]
    Kvm(String),
}

/// Guest RAM as KVM slots, with traced ranges cut out.
#[derive(Debug)]
pub struct Memslots {
    ram: Vec<(u64, u64, u64)>,
    traced: BTreeMap<u64, (u64, TraceMode)>,
    current: Vec<SlotSpec>,
}

impl Memslots {
    /// The slots for `mem` with nothing traced (not applied yet).
    pub fn new(mem: &GuestMem) -> Self {
        let ram = mem
            .regions()
            .map(|(g, len, host)| (g.raw(), len, host as u64))
            .collect();
        Memslots {
            ram,
            traced: BTreeMap::new(),
            current: Vec::new(),
        }
    }

    /// Traced ranges: start -> (length, mode).
    pub fn traced(&self) -> &BTreeMap<u64, (u64, TraceMode)> {
        &self.traced
    }

    /// Adds a traced range (takes effect at the next [`Memslots::apply`]).
    pub fn add(&mut self, start: u64, len: u64, mode: TraceMode) -> Result<(), MemslotError> {
        if len == 0 || start % PAGE != 0 || len % PAGE != 0 {
            return Err(MemslotError::Unaligned { start, len });
        }
        let end = start
            .checked_add(len)
            .ok_or(MemslotError::NotRam { start, len })?;
        if !self.ram.iter().any(|&(g, l, _)| start >= g && end <= g + l) {
            return Err(MemslotError::NotRam { start, len });
        }
        if let Some((&other, _)) = self
            .traced
            .range(..end)
            .next_back()
            .filter(|(s, (l, _))| **s + *l > start)
        {
            return Err(MemslotError::Overlap { start, len, other });
        }
        self.traced.insert(start, (len, mode));
        Ok(())
    }

    /// Removes the traced range starting at `start`.
    pub fn remove(&mut self, start: u64) -> Result<(u64, TraceMode), MemslotError> {
        self.traced
            .remove(&start)
            .ok_or(MemslotError::NotTraced(start))
    }

    /// The slots KVM should have.
    pub fn plan(&self) -> Vec<SlotSpec> {
        let mut out = Vec::new();
        let mut push = |gpa: u64, len: u64, host: u64, readonly: bool| {
            if len > 0 {
                let slot = u32::try_from(out.len()).unwrap_or(u32::MAX);
                out.push(SlotSpec {
                    slot,
                    gpa,
                    len,
                    host,
                    readonly,
                });
            }
        };
        for &(g, l, host) in &self.ram {
            let mut at = g;
            for (&s, &(tl, mode)) in self.traced.range(g..g + l) {
                push(at, s - at, host + (at - g), false);
                if mode == TraceMode::WritesOnly {
                    push(s, tl, host + (s - g), true);
                }
                at = s + tl;
            }
            push(at, g + l - at, host + (at - g), false);
        }
        out
    }

    /// Makes KVM's slots match [`Memslots::plan`]: slots that change are deleted first, then
    /// the new ones created. Call with every vCPU paused.
    pub fn apply(&mut self, vm_fd: &VmFd) -> Result<(), MemslotError> {
        let plan = self.plan();
        for old in &self.current {
            if !plan.contains(old) {
                set_slot(vm_fd, SlotSpec { len: 0, ..*old })?;
            }
        }
        for new in &plan {
            if !self.current.contains(new) {
                set_slot(vm_fd, *new)?;
            }
        }
        self.current = plan;
        Ok(())
    }
}

fn set_slot(vm_fd: &VmFd, s: SlotSpec) -> Result<(), MemslotError> {
    let region = kvm_userspace_memory_region {
        slot: s.slot,
        flags: if s.readonly { KVM_MEM_READONLY } else { 0 },
        guest_phys_addr: s.gpa,
        memory_size: s.len,
        userspace_addr: s.host,
    };
    // SAFETY: `host` points into guest RAM mapped by the VM's GuestMem, which outlives the VM
    // fd; a zero size deletes the slot.
    unsafe { vm_fd.set_user_memory_region(region) }.map_err(|e| MemslotError::Kvm(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots() -> Memslots {
        Memslots {
            ram: vec![(0, 0x10_0000, 0x7000_0000)],
            traced: BTreeMap::new(),
            current: Vec::new(),
        }
    }

    #[test]
    fn plan_cuts_holes_and_readonly_ranges() {
        let mut m = slots();
        assert_eq!(
            m.plan(),
            vec![SlotSpec {
                slot: 0,
                gpa: 0,
                len: 0x10_0000,
                host: 0x7000_0000,
                readonly: false
            }]
        );
        m.add(0x2000, 0x1000, TraceMode::All).unwrap();
        m.add(0x8000, 0x2000, TraceMode::WritesOnly).unwrap();
        let p = m.plan();
        assert_eq!(p.len(), 4);
        assert_eq!((p[0].gpa, p[0].len), (0, 0x2000));
        assert_eq!(
            (p[1].gpa, p[1].len, p[1].host),
            (0x3000, 0x5000, 0x7000_3000)
        );
        assert_eq!((p[2].gpa, p[2].len, p[2].readonly), (0x8000, 0x2000, true));
        assert_eq!((p[3].gpa, p[3].len), (0xa000, 0x10_0000 - 0xa000));
        let covered: u64 = p.iter().map(|s| s.len).sum();
        assert_eq!(
            covered,
            0x10_0000 - 0x1000,
            "only the fully traced page has no slot"
        );
        assert_eq!(m.remove(0x2000), Ok((0x1000, TraceMode::All)));
        assert_eq!(m.plan().len(), 3);
    }

    #[test]
    fn bad_ranges_are_refused() {
        let mut m = slots();
        assert!(matches!(
            m.add(0x1001, 0x1000, TraceMode::All),
            Err(MemslotError::Unaligned { .. })
        ));
        assert!(matches!(
            m.add(0xff000, 0x2000, TraceMode::All),
            Err(MemslotError::NotRam { .. })
        ));
        m.add(0x4000, 0x2000, TraceMode::All).unwrap();
        assert_eq!(
            m.add(0x5000, 0x1000, TraceMode::All),
            Err(MemslotError::Overlap {
                start: 0x5000,
                len: 0x1000,
                other: 0x4000
            })
        );
        assert_eq!(m.remove(0x9000), Err(MemslotError::NotTraced(0x9000)));
    }
}

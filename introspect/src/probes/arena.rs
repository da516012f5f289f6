//! The trampoline arena: guest memory the guest reserves (the test kernel's
//! `.hvprobe_arena` section; later the guest module's), executable in the guest and within
//! +/-2 GiB of the probed text, which hvprobe lays out as
//!
//! | offset | what |
//! |---|---|
//! | 0 | header page (below), written by hvprobe |
//! | 0x1000 | doorbell page: carved out of guest RAM, so writes exit ([`ArenaLayout::doorbell`]) |
//! | `rings_offset` | one ring per vCPU, `ring_stride` apart (see `disasm::trampoline`) |
//! | `slots_offset` | `slot_count` trampoline slots of `slot_size` bytes |
//!
//! Header: +0x00 u32 magic [`ARENA_MAGIC`], +0x04 u32 version, +0x08 u32 ring_count,
//! +0x0c u32 ring_capacity, +0x10 u32 record_size, +0x18 u64 rings_offset, +0x20 u64
//! ring_stride, +0x28 u64 slots_offset, +0x30 u32 slot_size, +0x34 u32 slot_count, +0x38 u64
//! generation (bumped after every optimizer pass). The guest may read it (the test kernel
//! waits for its rings to drain); only hvprobe writes it.
//!
//! Each slot ends with its u64 `lost` counter (records its in-guest handler could not write).

use crate::addr::{Gpa, Gva};

/// "HVPA", little-endian.
pub const ARENA_MAGIC: u32 = 0x4150_5648;
/// Layout version in the header.
pub const ARENA_VERSION: u32 = 1;
/// Page size.
const PAGE: u64 = 0x1000;
/// Bytes per trampoline slot.
pub const SLOT_SIZE: u32 = 256;
/// Bytes of a slot usable for code (the last 8 hold its `lost` counter).
pub const SLOT_CODE: usize = 248;
/// Most slots an arena has.
const MAX_SLOTS: u64 = 256;
/// Fewest records a ring may have.
const MIN_CAPACITY: u64 = 64;
/// Offset of the generation word in the header.
pub const HEADER_GENERATION: u64 = 0x38;

/// Why an arena cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArenaError {
    /// Not page-aligned.
    #[error("the arena at {base} (+{len:#x}) is not 4 KiB-aligned at both ends")]
    Unaligned {
        /// Its start.
        base: Gva,
        /// Its length.
        len: u64,
    },
    /// Too small for a header, a doorbell, rings of at least 64 records and one slot.
    #[error("the arena at {base} is {len:#x} bytes: too small for {vcpus} vCPUs' rings and a slot")]
    TooSmall {
        /// Its start.
        base: Gva,
        /// Its length.
        len: u64,
        /// vCPUs.
        vcpus: usize,
    },
    /// Its pages are not one guest-physical range.
    #[error("the arena at {base} is not physically contiguous (page at {at} is not at {expected})")]
    NotContiguous {
        /// Its start.
        base: Gva,
        /// The page that breaks the run.
        at: Gva,
        /// Where it should have been.
        expected: Gpa,
    },
    /// A page does not translate.
    #[error("the arena page at {at} is not mapped: {reason}")]
    Unmapped {
        /// The page.
        at: Gva,
        /// Why.
        reason: String,
    },
    /// An arena is already attached.
    #[error("an arena is already attached at {0}")]
    AlreadyAttached(Gva),
}

/// Where everything in an arena is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArenaLayout {
    /// First byte (guest-virtual).
    pub base: Gva,
    /// First byte (guest-physical; the arena is one physical range).
    pub gpa: Gpa,
    /// Length in bytes.
    pub len: u64,
    /// One ring per vCPU.
    pub ring_count: u32,
    /// Records per ring (a power of two).
    pub ring_capacity: u32,
    /// Offset of ring 0.
    pub rings_offset: u64,
    /// Bytes between rings.
    pub ring_stride: u64,
    /// Offset of slot 0.
    pub slots_offset: u64,
    /// Number of slots.
    pub slot_count: u32,
}

fn page_up(x: u64) -> u64 {
    x.div_ceil(PAGE) * PAGE
}

impl ArenaLayout {
    /// Lays out `len` bytes at `base` (guest-physical `gpa`) for `vcpus` vCPUs: 256 slots
    /// (fewer in a small arena), and the largest power-of-two rings that fit in the rest.
    pub fn plan(base: Gva, gpa: Gpa, len: u64, vcpus: usize) -> Result<ArenaLayout, ArenaError> {
        if base.raw() % PAGE != 0 || len % PAGE != 0 || gpa.raw() % PAGE != 0 {
            return Err(ArenaError::Unaligned { base, len });
        }
        let too_small = ArenaError::TooSmall { base, len, vcpus };
        let rings = u64::try_from(vcpus.max(1)).map_err(|_| too_small.clone())?;
        let fixed = 2 * PAGE;
        let min_ring = page_up(disasm::RING_RECORDS + MIN_CAPACITY * disasm::RECORD_SIZE);
        let room = len
            .checked_sub(fixed + rings * min_ring)
            .ok_or_else(|| too_small.clone())?;
        // Slots take at most a quarter of what is left, at most MAX_SLOTS.
        let slots = (room / 4 / u64::from(SLOT_SIZE)).clamp(0, MAX_SLOTS);
        if slots == 0 {
            return Err(too_small);
        }
        let slots_bytes = page_up(slots * u64::from(SLOT_SIZE));
        let per_ring = (len - fixed - slots_bytes) / rings;
        let mut capacity = MIN_CAPACITY;
        while page_up(disasm::RING_RECORDS + capacity * 2 * disasm::RECORD_SIZE) <= per_ring
            && capacity < (1 << 24)
        {
            capacity *= 2;
        }
        let ring_stride = page_up(disasm::RING_RECORDS + capacity * disasm::RECORD_SIZE);
        Ok(ArenaLayout {
            base,
            gpa,
            len,
            ring_count: u32::try_from(rings).map_err(|_| too_small.clone())?,
            ring_capacity: u32::try_from(capacity).map_err(|_| too_small.clone())?,
            rings_offset: fixed,
            ring_stride,
            slots_offset: fixed + rings * ring_stride,
            slot_count: u32::try_from(slots).map_err(|_| too_small)?,
        })
    }

    /// The doorbell page (guest-virtual, guest-physical).
    pub fn doorbell(&self) -> (Gva, Gpa) {
        (Gva(self.base.raw() + PAGE), Gpa(self.gpa.raw() + PAGE))
    }

    /// Ring `i`'s header (guest-virtual, guest-physical).
    pub fn ring(&self, i: u32) -> (Gva, Gpa) {
        let off = self.rings_offset + u64::from(i) * self.ring_stride;
        (Gva(self.base.raw() + off), Gpa(self.gpa.raw() + off))
    }

    /// Slot `i`'s first byte (guest-virtual, guest-physical).
    pub fn slot(&self, i: u32) -> (Gva, Gpa) {
        let off = self.slots_offset + u64::from(i) * u64::from(SLOT_SIZE);
        (Gva(self.base.raw() + off), Gpa(self.gpa.raw() + off))
    }

    /// Slot `i`'s `lost` counter (guest-virtual, guest-physical).
    pub fn slot_lost(&self, i: u32) -> (Gva, Gpa) {
        let (v, p) = self.slot(i);
        let off = SLOT_CODE as u64;
        (Gva(v.raw() + off), Gpa(p.raw() + off))
    }

    /// The slot whose bytes contain `addr`, if any.
    pub fn slot_containing(&self, addr: u64) -> Option<u32> {
        let start = self.base.raw() + self.slots_offset;
        let off = addr.checked_sub(start)?;
        let i = off / u64::from(SLOT_SIZE);
        (i < u64::from(self.slot_count))
            .then(|| u32::try_from(i).ok())
            .flatten()
    }

    /// Whether `addr` is inside the arena.
    pub fn contains(&self, addr: u64) -> bool {
        addr >= self.base.raw() && addr - self.base.raw() < self.len
    }

    /// The header page's first 64 bytes, as written at attach (generation 0).
    pub fn header(&self) -> [u8; 64] {
        let mut h = [0u8; 64];
        let mut put = |off: usize, bytes: &[u8]| h[off..off + bytes.len()].copy_from_slice(bytes);
        put(0x00, &ARENA_MAGIC.to_le_bytes());
        put(0x04, &ARENA_VERSION.to_le_bytes());
        put(0x08, &self.ring_count.to_le_bytes());
        put(0x0c, &self.ring_capacity.to_le_bytes());
        put(
            0x10,
            &u32::try_from(disasm::RECORD_SIZE)
                .unwrap_or(u32::MAX)
                .to_le_bytes(),
        );
        put(0x18, &self.rings_offset.to_le_bytes());
        put(0x20, &self.ring_stride.to_le_bytes());
        put(0x28, &self.slots_offset.to_le_bytes());
        put(0x30, &SLOT_SIZE.to_le_bytes());
        put(0x34, &self.slot_count.to_le_bytes());
        h
    }
}

/// A slot's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotState {
    Free,
    Used,
    /// Given up, but a vCPU may still be running in it: free after the next quiescence.
    Dirty,
}

/// The slot allocator: slots given up become dirty and are freed only once no vCPU can be
/// inside them ([`SlotPool::reclaim`]).
#[derive(Debug, Clone)]
pub struct SlotPool {
    states: Vec<SlotState>,
}

impl SlotPool {
    /// `count` free slots.
    pub fn new(count: u32) -> SlotPool {
        SlotPool {
            states: vec![SlotState::Free; usize::try_from(count).unwrap_or(0)],
        }
    }

    /// Takes a free slot.
    pub fn alloc(&mut self) -> Option<u32> {
        let i = self.states.iter().position(|s| *s == SlotState::Free)?;
        self.states[i] = SlotState::Used;
        u32::try_from(i).ok()
    }

    /// Gives back a slot nothing ever jumped to: free at once.
    pub fn free_unused(&mut self, slot: u32) {
        if let Some(s) = self
            .states
            .get_mut(usize::try_from(slot).unwrap_or(usize::MAX))
        {
            *s = SlotState::Free;
        }
    }

    /// Gives back a slot a jump led to: dirty until [`SlotPool::reclaim`].
    pub fn retire(&mut self, slot: u32) {
        if let Some(s) = self
            .states
            .get_mut(usize::try_from(slot).unwrap_or(usize::MAX))
        {
            *s = SlotState::Dirty;
        }
    }

    /// With every vCPU paused: frees the dirty slots `busy` says no vCPU is in. Returns the
    /// slots freed.
    pub fn reclaim(&mut self, busy: impl Fn(u32) -> bool) -> Vec<u32> {
        let mut freed = Vec::new();
        for (i, s) in self.states.iter_mut().enumerate() {
            let i = u32::try_from(i).unwrap_or(u32::MAX);
            if *s == SlotState::Dirty && !busy(i) {
                *s = SlotState::Free;
                freed.push(i);
            }
        }
        freed
    }

    /// (free, used, dirty) counts.
    pub fn counts(&self) -> (usize, usize, usize) {
        let c = |w| self.states.iter().filter(|s| **s == w).count();
        (c(SlotState::Free), c(SlotState::Used), c(SlotState::Dirty))
    }
}

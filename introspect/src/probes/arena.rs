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
//!
//! A **split** arena ([`ArenaLayout::plan_split`], the guest module's on Linux) has two
//! regions that are virtually contiguous but physically scattered (module space is
//! `vmalloc`ed): a data region the guest maps writable (header, doorbell, then one page of
//! `lost` counters, u64 per slot, at [`ArenaLayout::lost_offset`], then the rings) and a code
//! region the guest maps executable (only slots: the guest cannot write it, hvprobe writes
//! it through guest-physical memory). Every address goes through the page map taken at
//! attach ([`PageMap`]).

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

/// The guest-physical page of every page of a split arena's regions, taken at attach.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PageMap {
    /// Data region pages, in order.
    pub data: Vec<Gpa>,
    /// Code region (first byte guest-virtual) and its pages, in order.
    pub code: Option<(Gva, Vec<Gpa>)>,
}

/// Where everything in an arena is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArenaLayout {
    /// First byte (guest-virtual) of the arena, or of a split arena's data region.
    pub base: Gva,
    /// First byte (guest-physical; the arena is one physical range unless `pages` is set).
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
    /// A split arena's page map (`None`: one physically contiguous range at `gpa`).
    pub pages: Option<std::sync::Arc<PageMap>>,
}

/// Offset of a split arena's `lost` counters in its data region (after header and doorbell).
pub const SPLIT_LOST_OFFSET: u64 = 2 * PAGE;

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
            pages: None,
        })
    }

    /// Lays out a split arena: `data` (guest-virtual, its pages in `pages.data`) holds the
    /// header, the doorbell, the `lost` counters and `vcpus` rings (the largest power-of-two
    /// capacity that fits); the code region in `pages.code` holds at most 256 slots.
    pub fn plan_split(data: Gva, pages: PageMap, vcpus: usize) -> Result<ArenaLayout, ArenaError> {
        let len = pages.data.len() as u64 * PAGE;
        let too_small = ArenaError::TooSmall {
            base: data,
            len,
            vcpus,
        };
        let Some((code, code_pages)) = &pages.code else {
            return Err(too_small);
        };
        if data.raw() % PAGE != 0 || code.raw() % PAGE != 0 {
            return Err(ArenaError::Unaligned { base: data, len });
        }
        let slots = (code_pages.len() as u64 * PAGE / u64::from(SLOT_SIZE)).min(MAX_SLOTS);
        let rings = u64::try_from(vcpus.max(1)).map_err(|_| too_small.clone())?;
        let fixed = SPLIT_LOST_OFFSET + page_up(MAX_SLOTS * 8);
        let per_ring = len.saturating_sub(fixed) / rings;
        let mut capacity = MIN_CAPACITY;
        if slots == 0 || page_up(disasm::RING_RECORDS + capacity * disasm::RECORD_SIZE) > per_ring {
            return Err(too_small);
        }
        while page_up(disasm::RING_RECORDS + capacity * 2 * disasm::RECORD_SIZE) <= per_ring
            && capacity < (1 << 24)
        {
            capacity *= 2;
        }
        let ring_stride = page_up(disasm::RING_RECORDS + capacity * disasm::RECORD_SIZE);
        let first = pages
            .data
            .first()
            .copied()
            .ok_or_else(|| too_small.clone())?;
        Ok(ArenaLayout {
            base: data,
            gpa: first,
            len,
            ring_count: u32::try_from(rings).map_err(|_| too_small.clone())?,
            ring_capacity: u32::try_from(capacity).map_err(|_| too_small.clone())?,
            rings_offset: fixed,
            ring_stride,
            slots_offset: 0,
            slot_count: u32::try_from(slots).map_err(|_| too_small)?,
            pages: Some(std::sync::Arc::new(pages)),
        })
    }

    /// The guest-physical address of `va` inside the arena (a split arena's through its page
    /// map). Outside it: an address no guest RAM has, so any access fails.
    pub fn pa(&self, va: Gva) -> Gpa {
        const NOWHERE: Gpa = Gpa(!0xfff);
        let Some(map) = &self.pages else {
            return match va.raw().checked_sub(self.base.raw()) {
                Some(off) if off < self.len => Gpa(self.gpa.raw() + off),
                _ => NOWHERE,
            };
        };
        let page = |base: Gva, pages: &[Gpa]| {
            let off = va.raw().checked_sub(base.raw())?;
            let p = pages.get(usize::try_from(off / PAGE).ok()?)?;
            Some(Gpa(p.raw() + off % PAGE))
        };
        page(self.base, &map.data)
            .or_else(|| map.code.as_ref().and_then(|(b, p)| page(*b, p)))
            .unwrap_or(NOWHERE)
    }

    /// Reads `buf.len()` bytes at `va` (page by page: a split arena is physically scattered).
    pub fn read<M: crate::paging::PhysMem + ?Sized>(
        &self,
        mem: &M,
        va: Gva,
        buf: &mut [u8],
    ) -> Result<(), crate::paging::PhysMemError> {
        let mut done = 0;
        while done < buf.len() {
            let at = va.raw() + done as u64;
            let n = usize::try_from(PAGE - at % PAGE)
                .unwrap_or(usize::MAX)
                .min(buf.len() - done);
            mem.read_phys(self.pa(Gva(at)), &mut buf[done..done + n])?;
            done += n;
        }
        Ok(())
    }

    /// The slot region's first byte (guest-virtual).
    fn slots_base(&self) -> Gva {
        match self.pages.as_ref().and_then(|m| m.code.as_ref()) {
            Some((code, _)) => *code,
            None => Gva(self.base.raw() + self.slots_offset),
        }
    }

    /// The doorbell page (guest-virtual, guest-physical).
    pub fn doorbell(&self) -> (Gva, Gpa) {
        let va = Gva(self.base.raw() + PAGE);
        (va, self.pa(va))
    }

    /// Ring `i`'s header (guest-virtual, guest-physical).
    pub fn ring(&self, i: u32) -> (Gva, Gpa) {
        let va = Gva(self.base.raw() + self.rings_offset + u64::from(i) * self.ring_stride);
        (va, self.pa(va))
    }

    /// Slot `i`'s first byte (guest-virtual, guest-physical).
    pub fn slot(&self, i: u32) -> (Gva, Gpa) {
        let va = Gva(self.slots_base().raw() + u64::from(i) * u64::from(SLOT_SIZE));
        (va, self.pa(va))
    }

    /// Slot `i`'s `lost` counter (guest-virtual, guest-physical): the slot's last 8 bytes,
    /// or in a split arena's data region (its code region is not writable in the guest).
    pub fn slot_lost(&self, i: u32) -> (Gva, Gpa) {
        let va = if self.pages.is_some() {
            Gva(self.base.raw() + SPLIT_LOST_OFFSET + 8 * u64::from(i))
        } else {
            Gva(self.slot(i).0.raw() + SLOT_CODE as u64)
        };
        (va, self.pa(va))
    }

    /// The slot whose bytes contain `addr`, if any.
    pub fn slot_containing(&self, addr: u64) -> Option<u32> {
        let off = addr.checked_sub(self.slots_base().raw())?;
        let i = off / u64::from(SLOT_SIZE);
        (i < u64::from(self.slot_count))
            .then(|| u32::try_from(i).ok())
            .flatten()
    }

    /// Whether `addr` is inside the arena (either region of a split one).
    pub fn contains(&self, addr: u64) -> bool {
        let code = self.pages.as_ref().and_then(|m| m.code.as_ref());
        (addr >= self.base.raw() && addr - self.base.raw() < self.len)
            || code.is_some_and(|(b, p)| addr >= b.raw() && addr - b.raw() < p.len() as u64 * PAGE)
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

//! The host side of the in-guest handlers' per-vCPU rings (layout in `disasm::trampoline`):
//! [`RingReader::drain`] copies committed records out and advances each ring's `tail`.
//!
//! A record is committed when its sequence word equals its index + 1. Guest stores are seen in
//! order (x86), but a bulk copy may read a record's fields before its sequence word, so a
//! batch is read twice: once to find how many leading records are committed, then again,
//! after their sequence words were seen, for the fields.

use std::sync::atomic::{Ordering, fence};

use disasm::{MAX_FETCHES, RECORD_SIZE, RECORD_VALUES, RING_RECORDS, RING_TAIL};

use super::arena::ArenaLayout;
use crate::addr::{Gpa, Gva};
use crate::paging::{PhysMemError, PhysMemMut};

/// One record an in-guest handler wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingRecord {
    /// The ring's vCPU (the CPU number the trampoline read with `rdtscp`).
    pub vcpu: u32,
    /// The trampoline's tag (which optimization of which probe).
    pub tag: u32,
    /// The guest's TSC at the hit.
    pub tsc: u64,
    /// The fetched values, in the probe's order (unused ones are 0).
    pub values: [u64; MAX_FETCHES],
}

/// Reads the rings of one arena; remembers each ring's tail.
#[derive(Debug, Clone)]
pub struct RingReader {
    layout: ArenaLayout,
    tails: Vec<u64>,
    /// The copy of the records being read, reused from drain to drain.
    buf: Vec<u8>,
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(w)
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[off..off + 4]);
    u32::from_le_bytes(w)
}

/// [`RECORD_SIZE`] as a `usize`.
const REC: usize = 64;
const _: () = assert!(REC as u64 == RECORD_SIZE);
/// [`RECORD_VALUES`] as a `usize`.
const VALUES: usize = 16;
const _: () = assert!(VALUES as u64 == RECORD_VALUES && VALUES + 8 * MAX_FETCHES <= REC);
/// Records read (twice) at a time: 32 KiB.
const CHUNK: usize = 512;

impl RingReader {
    /// A reader for `layout`'s rings, all empty (tail 0, as the arena starts).
    pub fn new(layout: ArenaLayout) -> RingReader {
        RingReader {
            tails: vec![0; usize::try_from(layout.ring_count).unwrap_or(0)],
            layout,
            buf: Vec::new(),
        }
    }

    /// Copies out up to `max` committed records in all (oldest first in each ring), calls `f`
    /// with each, and publishes the new tails. Returns how many records it took.
    pub fn drain(
        &mut self,
        mem: &(impl PhysMemMut + ?Sized),
        max: usize,
        f: &mut dyn FnMut(&RingRecord),
    ) -> Result<usize, PhysMemError> {
        let mut total = 0;
        for ring in 0..self.layout.ring_count {
            total += self.drain_ring(mem, ring, max - total, f)?;
        }
        Ok(total)
    }

    fn drain_ring(
        &mut self,
        mem: &(impl PhysMemMut + ?Sized),
        ring: u32,
        max: usize,
        f: &mut dyn FnMut(&RingRecord),
    ) -> Result<usize, PhysMemError> {
        let (hdr_va, hdr) = self.layout.ring(ring);
        let slot = usize::try_from(ring).unwrap_or(usize::MAX);
        let tail = self.tails[slot];
        let mut w = [0u8; 8];
        mem.read_phys(hdr, &mut w)?;
        let head = u64::from_le_bytes(w);
        let cap = u64::from(self.layout.ring_capacity);
        let pending = head.saturating_sub(tail).min(cap);
        let n = usize::try_from(pending).unwrap_or(usize::MAX).min(max);
        if n == 0 {
            return Ok(0);
        }
        // In chunks through one reused buffer: no allocation per drain, and a chunk is still
        // in the cache when it is read the second time and parsed.
        let mut buf = std::mem::take(&mut self.buf);
        let mut taken = 0;
        let result = loop {
            let want = (n - taken).min(CHUNK);
            if want == 0 {
                break Ok(());
            }
            let from = tail + taken as u64;
            buf.resize(want * REC, 0);
            if let Err(e) = self.read_records(mem, hdr_va, from, &mut buf) {
                break Err(e);
            }
            let committed = (0..want)
                .take_while(|&k| {
                    let expect = from.wrapping_add(k as u64).wrapping_add(1);
                    u64::from(u32_at(&buf, k * REC)) == expect & 0xffff_ffff
                })
                .count();
            if committed == 0 {
                break Ok(());
            }
            // The sequence words of `committed` records were seen: their fields are
            // complete now.
            fence(Ordering::Acquire);
            buf.truncate(committed * REC);
            if let Err(e) = self.read_records(mem, hdr_va, from, &mut buf) {
                break Err(e);
            }
            for r in buf.chunks_exact(REC) {
                let mut values = [0u64; MAX_FETCHES];
                for (i, v) in values.iter_mut().enumerate() {
                    *v = u64_at(r, VALUES + 8 * i);
                }
                f(&RingRecord {
                    vcpu: ring,
                    tag: u32_at(r, 4),
                    tsc: u64_at(r, 8),
                    values,
                });
            }
            taken += committed;
            if committed < want {
                break Ok(());
            }
        };
        self.buf = buf;
        if taken > 0 {
            let new_tail = tail + taken as u64;
            self.tails[slot] = new_tail;
            mem.write_phys(Gpa(hdr.raw() + RING_TAIL), &new_tail.to_le_bytes())?;
        }
        result.map(|()| taken)
    }

    /// Reads `buf.len() / RECORD_SIZE` records from index `from` on, across the wrap.
    fn read_records(
        &self,
        mem: &(impl PhysMemMut + ?Sized),
        hdr: Gva,
        from: u64,
        buf: &mut [u8],
    ) -> Result<(), PhysMemError> {
        let cap = u64::from(self.layout.ring_capacity);
        let first = from % cap;
        let n = (buf.len() / REC) as u64;
        let before_wrap = n.min(cap - first);
        let split = usize::try_from(before_wrap).unwrap_or(0) * REC;
        let records = hdr.raw() + RING_RECORDS;
        // Through the layout: a split arena's rings are physically scattered.
        self.layout
            .read(mem, Gva(records + first * RECORD_SIZE), &mut buf[..split])?;
        if split < buf.len() {
            self.layout.read(mem, Gva(records), &mut buf[split..])?;
        }
        Ok(())
    }
}

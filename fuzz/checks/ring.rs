// What the `ring` fuzz target checks, shared with the test that replays its corpus
// (`include!`d by fuzz/fuzz_targets/ring.rs and introspect/tests/fuzz_corpora.rs).

use std::cell::RefCell;

use disasm::{RECORD_SIZE, RECORD_VALUES, RING_RECORDS, RING_TAIL};
use introspect::probes::arena::ArenaLayout;
use introspect::probes::ring::{RingReader, RingRecord};
use introspect::{Gpa, Gva, PhysMem, PhysMemError, PhysMemMut};

const BASE: Gva = Gva(0xffff_c900_0000_0000);
const GPA: Gpa = Gpa(0x10_0000);

/// The arena's guest-physical bytes, at `GPA`.
struct Arena(RefCell<Vec<u8>>);

impl Arena {
    fn range(&self, gpa: Gpa, len: usize) -> Result<std::ops::Range<usize>, PhysMemError> {
        let err = PhysMemError::OutOfRange { gpa, len };
        let start = gpa.raw().checked_sub(GPA.raw()).ok_or(err.clone())?;
        let start = usize::try_from(start).map_err(|_| err.clone())?;
        let end = start.checked_add(len).ok_or(err.clone())?;
        if end > self.0.borrow().len() {
            return Err(err);
        }
        Ok(start..end)
    }

    fn u64_at(&self, gpa: Gpa) -> u64 {
        let mut w = [0u8; 8];
        self.read_phys(gpa, &mut w).expect("inside the arena");
        u64::from_le_bytes(w)
    }
}

impl PhysMem for Arena {
    fn read_phys(&self, gpa: Gpa, buf: &mut [u8]) -> Result<(), PhysMemError> {
        let r = self.range(gpa, buf.len())?;
        buf.copy_from_slice(&self.0.borrow()[r]);
        Ok(())
    }
}

impl PhysMemMut for Arena {
    fn write_phys(&self, gpa: Gpa, buf: &[u8]) -> Result<(), PhysMemError> {
        let r = self.range(gpa, buf.len())?;
        self.0.borrow_mut()[r].copy_from_slice(buf);
        Ok(())
    }
}

/// Drains the rings the input fills, three times, and checks every record. Returns how many
/// records were taken. The input: byte 0 picks the vCPUs (bits 0-1: 1 to 4) and the arena
/// (bit 2: 64 KiB, else the smallest, whose rings hold 64 records), bytes 1-3 are the three
/// drains' limits, and the rest is cut in three parts, each written over the rings (ring 0's
/// header first) by the guest before one drain.
pub fn check(data: &[u8]) -> usize {
    if data.len() < 4 {
        return 0;
    }
    let (head, image) = data.split_at(4);
    let vcpus = usize::from(head[0] & 3) + 1;
    let len = if head[0] & 4 != 0 {
        64 << 10
    } else {
        (12 << 10) + 8192 * vcpus as u64
    };
    let layout = ArenaLayout::plan(BASE, GPA, len, vcpus).expect("the arena holds 4 rings");
    let cap = u64::from(layout.ring_capacity);
    let arena = Arena(RefCell::new(vec![
        0u8;
        usize::try_from(len).expect("64 KiB")
    ]));
    let mut reader = RingReader::new(layout.clone());
    let mut taken = vec![0u64; vcpus];
    let part = image.len().div_ceil(3);
    for (round, &max) in head[1..4].iter().enumerate() {
        let chunk = image.get(round * part..).unwrap_or_default();
        let chunk = &chunk[..chunk.len().min(part)];
        {
            let mut mem = arena.0.borrow_mut();
            let at = usize::try_from(layout.rings_offset).expect("inside the arena");
            let n = chunk.len().min(mem.len() - at);
            mem[at..at + n].copy_from_slice(&chunk[..n]);
        }
        let max = usize::from(max);
        let old = Arena(RefCell::new(arena.0.borrow().clone()));
        let mut records: Vec<RingRecord> = Vec::new();
        let n = reader
            .drain(&arena, max, &mut |r| records.push(*r))
            .expect("every ring is inside the arena");
        assert_eq!(n, records.len());
        assert!(n <= max);
        let mut per_ring = vec![0u64; vcpus];
        for r in &records {
            let ring = usize::try_from(r.vcpu).expect("a ring number");
            assert!(ring < vcpus);
            // The record is the one in slot (tail + k) % capacity, and was committed.
            let index = taken[ring] + per_ring[ring];
            let (_, hdr) = layout.ring(r.vcpu);
            let slot = hdr.raw() + RING_RECORDS + (index % cap) * RECORD_SIZE;
            let word = old.u64_at(Gpa(slot));
            assert_eq!(word & 0xffff_ffff, (index + 1) & 0xffff_ffff);
            assert_eq!(word >> 32, u64::from(r.tag));
            assert_eq!(old.u64_at(Gpa(slot + 8)), r.tsc);
            assert_eq!(old.u64_at(Gpa(slot + RECORD_VALUES)), r.values[0]);
            per_ring[ring] += 1;
        }
        for (ring, &k) in per_ring.iter().enumerate() {
            assert!(k <= cap);
            taken[ring] += k;
            if k > 0 {
                let (_, hdr) = layout.ring(u32::try_from(ring).expect("at most 4 rings"));
                assert_eq!(arena.u64_at(Gpa(hdr.raw() + RING_TAIL)), taken[ring]);
            }
        }
    }
    usize::try_from(taken.iter().sum::<u64>()).expect("at most 765 records")
}

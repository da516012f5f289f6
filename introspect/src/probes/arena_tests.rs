//! Arena layout, slot pool and ring reader, against a Vec-backed guest memory. (The same
//! code runs against real trampolines in vmm/tests/optprobes.rs.)

use std::cell::RefCell;

use super::arena::{
    ARENA_MAGIC, ArenaError, ArenaLayout, PageMap, SLOT_SIZE, SPLIT_LOST_OFFSET, SlotPool,
};
use super::ring::RingReader;
use crate::addr::{Gpa, Gva};
use crate::paging::{PhysMem, PhysMemError, PhysMemMut};

struct Ram(RefCell<Vec<u8>>);

impl PhysMem for Ram {
    fn read_phys(&self, gpa: Gpa, buf: &mut [u8]) -> Result<(), PhysMemError> {
        let at = usize::try_from(gpa.raw()).unwrap();
        buf.copy_from_slice(&self.0.borrow()[at..at + buf.len()]);
        Ok(())
    }
}

impl PhysMemMut for Ram {
    fn write_phys(&self, gpa: Gpa, buf: &[u8]) -> Result<(), PhysMemError> {
        let at = usize::try_from(gpa.raw()).unwrap();
        self.0.borrow_mut()[at..at + buf.len()].copy_from_slice(buf);
        Ok(())
    }
}

const MIB: u64 = 1 << 20;

#[test]
fn an_8_mib_arena_gives_one_vcpu_65536_records_and_256_slots() {
    let l = ArenaLayout::plan(Gva(0x11d000), Gpa(0x11d000), 8 * MIB, 1).unwrap();
    assert_eq!(
        (l.ring_count, l.ring_capacity, l.slot_count),
        (1, 65536, 256)
    );
    assert_eq!(l.doorbell(), (Gva(0x11e000), Gpa(0x11e000)));
    assert_eq!(l.ring(0).0, Gva(0x11f000));
    assert_eq!(l.ring_stride % 0x1000, 0);
    let end = l.slots_offset + u64::from(l.slot_count) * u64::from(SLOT_SIZE);
    assert!(end <= l.len, "slots end at {end:#x}");
    assert_eq!(l.slot_containing(l.slot(3).0.raw() + 17), Some(3));
    assert_eq!(l.slot_containing(l.ring(0).0.raw()), None);
    let h = l.header();
    assert_eq!(&h[0..4], &ARENA_MAGIC.to_le_bytes());
    assert_eq!(&h[0x0c..0x10], &65536u32.to_le_bytes());
    // Two vCPUs share the room: half the records each.
    let two = ArenaLayout::plan(Gva(0x11d000), Gpa(0x11d000), 8 * MIB, 2).unwrap();
    assert_eq!((two.ring_count, two.ring_capacity), (2, 32768));
    assert!(two.ring(1).0.raw() + two.ring_stride <= two.base.raw() + two.slots_offset);
}

#[test]
fn bad_arenas_are_refused() {
    assert!(matches!(
        ArenaLayout::plan(Gva(0x1001), Gpa(0x1001), MIB, 1),
        Err(ArenaError::Unaligned { .. })
    ));
    assert!(matches!(
        ArenaLayout::plan(Gva(0x1000), Gpa(0x1000), 0x4000, 1),
        Err(ArenaError::TooSmall { .. })
    ));
}

#[test]
fn dirty_slots_are_reused_only_after_a_quiescent_reclaim() {
    let mut p = SlotPool::new(2);
    assert_eq!((p.alloc(), p.alloc(), p.alloc()), (Some(0), Some(1), None));
    p.retire(0);
    assert_eq!(p.alloc(), None, "a dirty slot is not free");
    assert!(
        p.reclaim(|s| s == 0).is_empty(),
        "a vCPU is still in slot 0"
    );
    assert_eq!(p.reclaim(|_| false), [0]);
    assert_eq!(p.alloc(), Some(0));
    p.free_unused(1);
    assert_eq!(p.counts(), (1, 1, 0));
}

/// Writes record `index` the way a trampoline does: fields, then the sequence word.
fn produce(ram: &Ram, l: &ArenaLayout, index: u64, slot: u32, value: u64, commit: bool) {
    let hdr = l.ring(0).1.raw();
    let rec = hdr + 128 + (index % u64::from(l.ring_capacity)) * 64;
    ram.write_phys(Gpa(rec + 4), &slot.to_le_bytes()).unwrap();
    ram.write_phys(Gpa(rec + 8), &(1000 + index).to_le_bytes())
        .unwrap();
    ram.write_phys(Gpa(rec + 16), &value.to_le_bytes()).unwrap();
    if commit {
        let seq = u32::try_from((index + 1) & 0xffff_ffff).unwrap();
        ram.write_phys(Gpa(rec), &seq.to_le_bytes()).unwrap();
    }
    let mut head = [0u8; 8];
    ram.read_phys(Gpa(hdr), &mut head).unwrap();
    let head = u64::from_le_bytes(head).max(index + 1);
    ram.write_phys(Gpa(hdr), &head.to_le_bytes()).unwrap();
}

#[test]
fn the_reader_takes_committed_records_in_order_across_the_wrap_and_stops_at_a_gap() {
    let ram = Ram(RefCell::new(vec![0; usize::try_from(MIB).unwrap()]));
    let l = ArenaLayout::plan(Gva(0), Gpa(0), MIB, 1).unwrap();
    let cap = u64::from(l.ring_capacity);
    let mut reader = RingReader::new(l.clone());
    let mut seen = Vec::new();
    // Fill to the wrap point, drain, then write across the wrap with one record reserved
    // but not committed yet.
    for i in 0..cap - 2 {
        produce(&ram, &l, i, 7, i, true);
    }
    let n = reader
        .drain(&ram, usize::MAX, &mut |r| seen.push(r.values[0]))
        .unwrap();
    assert_eq!(n, usize::try_from(cap - 2).unwrap());
    let tail_at = Gpa(l.ring(0).1.raw() + 64);
    let mut w = [0u8; 8];
    ram.read_phys(tail_at, &mut w).unwrap();
    assert_eq!(u64::from_le_bytes(w), cap - 2, "the tail is published");
    seen.clear();
    for i in cap - 2..cap + 3 {
        produce(&ram, &l, i, 7, i, i != cap + 1);
    }
    reader
        .drain(&ram, usize::MAX, &mut |r| {
            assert_eq!((r.tag, r.tsc), (7, 1000 + r.values[0]));
            seen.push(r.values[0]);
        })
        .unwrap();
    assert_eq!(
        seen,
        [cap - 2, cap - 1, cap],
        "stops before the uncommitted record"
    );
    // Its producer commits: the rest follows.
    produce(&ram, &l, cap + 1, 7, cap + 1, true);
    seen.clear();
    reader
        .drain(&ram, usize::MAX, &mut |r| seen.push(r.values[0]))
        .unwrap();
    assert_eq!(seen, [cap + 1, cap + 2]);
}

/// A split arena like the guest module's: 16 data pages and 2 code pages, physically
/// scattered (data pages in reverse order, code pages apart).
fn split() -> ArenaLayout {
    let data: Vec<Gpa> = (0..16u64)
        .rev()
        .map(|i| Gpa(0x10_0000 + i * 0x1000))
        .collect();
    let code = vec![Gpa(0x3_0000), Gpa(0x5_0000)];
    ArenaLayout::plan_split(
        Gva(0xffff_ffff_c000_0000),
        PageMap {
            data,
            code: Some((Gva(0xffff_ffff_c010_0000), code)),
        },
        1,
    )
    .unwrap()
}

#[test]
fn a_split_arena_translates_every_address_through_its_page_map() {
    let l = split();
    let base = 0xffff_ffff_c000_0000u64;
    // Header: data page 0, which is the last physical page.
    assert_eq!(l.pa(Gva(base)), Gpa(0x10_f000));
    assert_eq!(l.doorbell(), (Gva(base + 0x1000), Gpa(0x10_e000)));
    // Lost counters in the data region (the code region is not writable in the guest).
    assert_eq!(
        l.slot_lost(3),
        (Gva(base + SPLIT_LOST_OFFSET + 24), Gpa(0x10_d018))
    );
    // Slots in the code region: 2 pages of 16 slots each.
    assert_eq!(l.slot_count, 32);
    assert_eq!(l.slot(0), (Gva(0xffff_ffff_c010_0000), Gpa(0x3_0000)));
    assert_eq!(l.slot(17).1, Gpa(0x5_0000 + 256));
    assert_eq!(l.slot_containing(0xffff_ffff_c010_1105), Some(17));
    assert_eq!(l.slot_containing(0xffff_ffff_c010_2000), None);
    assert!(l.contains(0xffff_ffff_c010_1fff) && l.contains(base + 0xffff));
    assert!(!l.contains(0xffff_ffff_c010_2000) && !l.contains(base + 0x10000));
    // Anything outside both regions translates nowhere.
    assert!(l.pa(Gva(base + 0x10000)).raw() > 0xffff_0000_0000_0000);
    // Rings start after the lost page and fit in the data region.
    assert_eq!(l.rings_offset, SPLIT_LOST_OFFSET + 0x1000);
    assert!(l.rings_offset + l.ring_stride <= l.len);
}

#[test]
fn the_reader_reads_records_across_scattered_pages_of_a_split_arena() {
    let ram = Ram(RefCell::new(vec![0; usize::try_from(2 * MIB).unwrap()]));
    let l = split();
    let cap = u64::from(l.ring_capacity);
    assert!(cap >= 64 * 2, "records span several pages: {cap}");
    let hdr = l.ring(0).0.raw();
    let w = |va: u64, b: &[u8]| ram.write_phys(l.pa(Gva(va)), b).unwrap();
    for i in 0..cap - 1 {
        let rec = hdr + 128 + i * 64;
        w(rec + 4, &9u32.to_le_bytes());
        w(rec + 16, &(i * 3).to_le_bytes());
        w(rec, &u32::try_from(i + 1).unwrap().to_le_bytes());
    }
    w(hdr, &(cap - 1).to_le_bytes());
    let mut reader = RingReader::new(l.clone());
    let mut seen = Vec::new();
    let n = reader
        .drain(&ram, usize::MAX, &mut |r| seen.push((r.tag, r.values[0])))
        .unwrap();
    assert_eq!(n as u64, cap - 1);
    assert!(
        seen.iter()
            .enumerate()
            .all(|(i, &(t, v))| t == 9 && v == i as u64 * 3)
    );
    let mut tail = [0u8; 8];
    ram.read_phys(l.pa(Gva(hdr + 64)), &mut tail).unwrap();
    assert_eq!(u64::from_le_bytes(tail), cap - 1);
}

#[test]
fn a_split_arena_without_room_for_a_ring_or_a_slot_is_refused() {
    let pages = |n: u64| (0..n).map(|i| Gpa(i * 0x1000)).collect::<Vec<_>>();
    let data = Gva(0x10_0000);
    let code = Some((Gva(0x20_0000), pages(1)));
    assert!(matches!(
        ArenaLayout::plan_split(
            data,
            PageMap {
                data: pages(3),
                code: code.clone()
            },
            1
        ),
        Err(ArenaError::TooSmall { .. })
    ));
    assert!(matches!(
        ArenaLayout::plan_split(
            data,
            PageMap {
                data: pages(16),
                code: None
            },
            1
        ),
        Err(ArenaError::TooSmall { .. })
    ));
    assert!(
        ArenaLayout::plan_split(
            data,
            PageMap {
                data: pages(16),
                code
            },
            1
        )
        .is_ok()
    );
}

//! The walker against synthetic page tables.

use super::mock::{MockMem, P, PS, RW, US, XD};
use super::*;
use crate::addr::{Gpa, Gva};

const MEM: usize = 16 << 20;
/// Data frames live from 8 MiB up, clear of the tables.
const FRAME_4K: u64 = 0x80_3000;
const FRAME_2M: u64 = 0xa0_0000;
const FRAME_1G: u64 = 0x4000_0000;

/// A kernel-half address canonical at both depths, and one only valid with LA57.
const KERNEL_GVA: u64 = 0xffff_ffff_8123_4567;
const LA57_ONLY_GVA: u64 = 0x00f1_2345_6789_abcd;

fn setup(la57: bool) -> (MockMem, PagingContext) {
    let mem = MockMem::new(MEM);
    let root = mem.alloc_table();
    (mem, PagingContext::long_mode(root, la57))
}

fn map(
    mem: &MockMem,
    ctx: &PagingContext,
    gva: u64,
    frame: u64,
    size: PageSize,
    table: u64,
    leaf: u64,
) -> [u64; 6] {
    mem.map((ctx.cr3, ctx.levels()), gva, frame, size, table, leaf)
}

fn frame_for(size: PageSize) -> u64 {
    match size {
        PageSize::Size4K => FRAME_4K,
        PageSize::Size2M => FRAME_2M,
        PageSize::Size1G => FRAME_1G,
    }
}

const SIZES: [PageSize; 3] = [PageSize::Size4K, PageSize::Size2M, PageSize::Size1G];

fn leaf_level(size: PageSize) -> u8 {
    match size {
        PageSize::Size4K => 1,
        PageSize::Size2M => 2,
        PageSize::Size1G => 3,
    }
}

#[test]
fn translates_every_page_size_at_both_depths() {
    for la57 in [false, true] {
        for size in SIZES {
            let (mem, ctx) = setup(la57);
            let mut gvas = vec![KERNEL_GVA, 0x0000_7f12_3456_789a];
            if la57 {
                gvas.push(LA57_ONLY_GVA);
            }
            for gva in gvas {
                let frame = frame_for(size);
                map(&mem, &ctx, gva, frame, size, P | RW, P | RW);
                let t = translate(&mem, &ctx, Gva(gva)).unwrap();
                let mask = size.bytes() - 1;
                assert_eq!(
                    t.gpa,
                    Gpa(frame | (gva & mask)),
                    "la57={la57} {size:?} {gva:#x}"
                );
                assert_eq!(t.page_size, size);
                assert!(t.writable && t.kernel_writable && t.executable && !t.user);
            }
        }
    }
}

#[test]
fn la57_uses_the_pml5_index() {
    let (mem, ctx) = setup(true);
    // Same bits 47:0, different bits 56:48: two different PML5 slots.
    let a = 0x0001_0000_0000_1000;
    let b = 0x0002_0000_0000_1000;
    map(&mem, &ctx, a, 0x80_1000, PageSize::Size4K, P, P);
    map(&mem, &ctx, b, 0x80_2000, PageSize::Size4K, P, P);
    assert_eq!(translate(&mem, &ctx, Gva(a)).unwrap().gpa, Gpa(0x80_1000));
    assert_eq!(translate(&mem, &ctx, Gva(b)).unwrap().gpa, Gpa(0x80_2000));
    // Without LA57 these addresses are not canonical.
    let four = PagingContext::long_mode(ctx.cr3, false);
    assert_eq!(
        translate(&mem, &four, Gva(a)),
        Err(WalkError::NonCanonical(Gva(a)))
    );
}

#[test]
fn not_present_at_each_level() {
    for la57 in [false, true] {
        let levels = if la57 { 5 } else { 4 };
        for level in 1..=levels {
            let (mem, ctx) = setup(la57);
            let e = map(
                &mem,
                &ctx,
                KERNEL_GVA,
                FRAME_4K,
                PageSize::Size4K,
                P | RW,
                P | RW,
            );
            let entry_gpa = e[usize::from(level)];
            let entry = mem.read_u64(entry_gpa) & !P;
            mem.write_u64(entry_gpa, entry);
            assert_eq!(
                translate(&mem, &ctx, Gva(KERNEL_GVA)),
                Err(WalkError::NotPresent {
                    level,
                    entry_gpa: Gpa(entry_gpa),
                    entry
                }),
                "la57={la57} level={level}"
            );
        }
    }
}

fn expect_reserved(mem: &MockMem, ctx: &PagingContext, level: u8, entry_gpa: u64, entry: u64) {
    mem.write_u64(entry_gpa, entry);
    assert_eq!(
        translate(mem, ctx, Gva(KERNEL_GVA)),
        Err(WalkError::ReservedBits {
            level,
            entry_gpa: Gpa(entry_gpa),
            entry
        }),
        "la57={} level={level} entry={entry:#x}",
        ctx.la57()
    );
}

#[test]
fn reserved_bits_above_maxphyaddr_at_each_level() {
    for la57 in [false, true] {
        for level in 1..=(if la57 { 5 } else { 4 }) {
            let (mem, mut ctx) = setup(la57);
            ctx.max_phys_bits = 46;
            let e = map(&mem, &ctx, KERNEL_GVA, FRAME_4K, PageSize::Size4K, P, P);
            let entry_gpa = e[usize::from(level)];
            // The walk is fine before the bad bit goes in.
            assert!(translate(&mem, &ctx, Gva(KERNEL_GVA)).is_ok());
            let entry = mem.read_u64(entry_gpa) | (1 << 46);
            expect_reserved(&mem, &ctx, level, entry_gpa, entry);
            // With a 52-bit physical address width the same bit is an address bit, not
            // reserved: the walk goes on (and fails reading memory that is not there).
            ctx.max_phys_bits = 52;
            assert!(!matches!(
                translate(&mem, &ctx, Gva(KERNEL_GVA)),
                Err(WalkError::ReservedBits { .. })
            ));
        }
    }
}

#[test]
fn xd_is_reserved_without_nxe_at_each_level() {
    for la57 in [false, true] {
        for level in 1..=(if la57 { 5 } else { 4 }) {
            let (mem, mut ctx) = setup(la57);
            ctx.efer &= !EFER_NXE;
            let e = map(&mem, &ctx, KERNEL_GVA, FRAME_4K, PageSize::Size4K, P, P);
            let entry_gpa = e[usize::from(level)];
            let entry = mem.read_u64(entry_gpa) | XD;
            expect_reserved(&mem, &ctx, level, entry_gpa, entry);
        }
    }
}

#[test]
fn ps_is_reserved_in_pml4e_and_pml5e() {
    for la57 in [false, true] {
        for level in 4..=(if la57 { 5 } else { 4 }) {
            let (mem, ctx) = setup(la57);
            let e = map(&mem, &ctx, KERNEL_GVA, FRAME_4K, PageSize::Size4K, P, P);
            let entry_gpa = e[usize::from(level)];
            let entry = mem.read_u64(entry_gpa) | PS;
            expect_reserved(&mem, &ctx, level, entry_gpa, entry);
        }
    }
}

#[test]
fn large_page_frames_must_be_aligned() {
    for (size, bit) in [(PageSize::Size2M, 1 << 13), (PageSize::Size1G, 1 << 20)] {
        let (mem, ctx) = setup(false);
        let e = map(&mem, &ctx, KERNEL_GVA, frame_for(size), size, P, P);
        let level = leaf_level(size);
        let entry_gpa = e[usize::from(level)];
        let entry = mem.read_u64(entry_gpa) | bit;
        expect_reserved(&mem, &ctx, level, entry_gpa, entry);
    }
    // Bit 12 of a large-page entry is PAT, not reserved.
    let (mem, ctx) = setup(false);
    let e = map(&mem, &ctx, KERNEL_GVA, FRAME_2M, PageSize::Size2M, P, P);
    mem.write_u64(e[2], mem.read_u64(e[2]) | (1 << 12));
    assert_eq!(
        translate(&mem, &ctx, Gva(KERNEL_GVA)).unwrap().gpa,
        Gpa(FRAME_2M | (KERNEL_GVA & 0x1f_ffff))
    );
}

#[test]
fn unreadable_table_at_each_level() {
    const NOWHERE: u64 = 0x1_0000_0000;
    for la57 in [false, true] {
        let levels: u8 = if la57 { 5 } else { 4 };
        for level in 1..=levels {
            let (mem, mut ctx) = setup(la57);
            let e = map(&mem, &ctx, KERNEL_GVA, FRAME_4K, PageSize::Size4K, P, P);
            // Point whatever leads to `level`'s table outside guest RAM.
            if level == levels {
                ctx.cr3 = NOWHERE;
            } else {
                mem.write_u64(e[usize::from(level) + 1], NOWHERE | P);
            }
            let index = (KERNEL_GVA >> (12 + 9 * (u32::from(level) - 1))) & 0x1ff;
            let entry_gpa = Gpa(NOWHERE + index * 8);
            assert_eq!(
                translate(&mem, &ctx, Gva(KERNEL_GVA)),
                Err(WalkError::Memory {
                    level,
                    entry_gpa,
                    source: PhysMemError::OutOfRange {
                        gpa: entry_gpa,
                        len: 8
                    }
                })
            );
        }
    }
}

#[test]
fn mode_errors() {
    let (mem, ctx) = setup(false);
    let off = PagingContext {
        cr0: ctx.cr0 & !CR0_PG,
        ..ctx
    };
    assert_eq!(
        translate(&mem, &off, Gva(0x1000)),
        Err(WalkError::PagingDisabled)
    );
    let legacy = PagingContext { efer: 0, ..ctx };
    assert_eq!(
        translate(&mem, &legacy, Gva(0x1000)),
        Err(WalkError::NotLongMode)
    );
    let no_pae = PagingContext {
        cr4: CR4_PSE,
        ..ctx
    };
    assert_eq!(
        translate(&mem, &no_pae, Gva(0x1000)),
        Err(WalkError::NotLongMode)
    );
    let bad = Gva(0x8000_0000_0000);
    assert_eq!(
        translate(&mem, &ctx, bad),
        Err(WalkError::NonCanonical(bad))
    );
}

#[test]
fn permissions_combine_across_levels() {
    for la57 in [false, true] {
        let levels: u8 = if la57 { 5 } else { 4 };
        for size in SIZES {
            let leaf = leaf_level(size);
            for level in leaf..=levels {
                for (bit, what) in [(RW, "rw"), (US, "us"), (XD, "xd")] {
                    let (mem, mut ctx) = setup(la57);
                    let all = P | RW | US;
                    let e = map(&mem, &ctx, KERNEL_GVA, frame_for(size), size, all, all);
                    let t = translate(&mem, &ctx, Gva(KERNEL_GVA)).unwrap();
                    assert!(t.writable && t.user && t.executable && t.kernel_writable);
                    let entry_gpa = e[usize::from(level)];
                    let entry = mem.read_u64(entry_gpa) ^ bit;
                    mem.write_u64(entry_gpa, entry);
                    let t = translate(&mem, &ctx, Gva(KERNEL_GVA)).unwrap();
                    let ctxt = format!("la57={la57} {size:?} level={level} {what}");
                    assert_eq!(t.writable, bit != RW, "{ctxt}");
                    assert_eq!(t.kernel_writable, bit != RW, "{ctxt}");
                    assert_eq!(t.user, bit != US, "{ctxt}");
                    assert_eq!(t.executable, bit != XD, "{ctxt}");
                    // With CR0.WP clear, the kernel writes read-only pages.
                    ctx.cr0 &= !CR0_WP;
                    let t = translate(&mem, &ctx, Gva(KERNEL_GVA)).unwrap();
                    assert!(t.kernel_writable, "{ctxt}");
                    assert_eq!(t.writable, bit != RW, "{ctxt}");
                }
            }
        }
    }
}

/// Two adjacent virtual pages on non-adjacent frames (the second frame below the first).
fn two_pages(la57: bool) -> (MockMem, PagingContext, u64) {
    let (mem, ctx) = setup(la57);
    let base = 0xffff_ffff_8200_0000;
    map(
        &mem,
        &ctx,
        base,
        0x90_5000,
        PageSize::Size4K,
        P | RW,
        P | RW,
    );
    map(
        &mem,
        &ctx,
        base + 0x1000,
        0x90_1000,
        PageSize::Size4K,
        P | RW,
        P | RW,
    );
    (mem, ctx, base)
}

#[test]
fn reads_and_writes_cross_pages() {
    for la57 in [false, true] {
        let (mem, ctx, base) = two_pages(la57);
        mem.write_phys(Gpa(0x90_5ffc), b"abcd").unwrap();
        mem.write_phys(Gpa(0x90_1000), b"efgh").unwrap();
        let mut w = PageWalker::new();
        let mut buf = [0; 8];
        w.read_virt(&mem, &ctx, Gva(base + 0xffc), &mut buf)
            .unwrap();
        assert_eq!(&buf, b"abcdefgh");

        w.write_virt(&mem, &ctx, Gva(base + 0xffe), b"WXYZ")
            .unwrap();
        let mut check = [0; 4];
        mem.read_phys(Gpa(0x90_5ffe), &mut check[..2]).unwrap();
        mem.read_phys(Gpa(0x90_1000), &mut check[2..]).unwrap();
        assert_eq!(&check, b"WXYZ");

        // A whole page plus a bit, and nothing at all.
        let mut big = vec![0; 0x1004];
        w.read_virt(&mem, &ctx, Gva(base + 0x10), &mut big).unwrap();
        w.read_virt(&mem, &ctx, Gva(base), &mut []).unwrap();
    }
}

#[test]
fn a_hole_in_the_range_is_reported_where_it_is() {
    let (mem, ctx, base) = two_pages(false);
    let mut w = PageWalker::new();
    let mut buf = [0; 16];
    // The page after the second one is not mapped.
    let err = w
        .read_virt(&mem, &ctx, Gva(base + 0x1ff8), &mut buf)
        .unwrap_err();
    assert!(matches!(
        err,
        VirtError::Translate { gva, source: WalkError::NotPresent { level: 1, .. } }
            if gva == Gva(base + 0x2000)
    ));
    // A write over the hole writes nothing at all.
    mem.write_phys(Gpa(0x90_1ff8), &[0x11; 8]).unwrap();
    assert!(
        w.write_virt(&mem, &ctx, Gva(base + 0x1ff8), &[0x22; 16])
            .is_err()
    );
    let mut after = [0; 8];
    mem.read_phys(Gpa(0x90_1ff8), &mut after).unwrap();
    assert_eq!(after, [0x11; 8]);
}

#[test]
fn mapped_page_outside_ram_is_a_phys_error() {
    let (mem, ctx) = setup(false);
    map(&mem, &ctx, KERNEL_GVA, 0x2000_0000, PageSize::Size4K, P, P);
    let mut buf = [0; 4];
    let err = PageWalker::new()
        .read_virt(&mem, &ctx, Gva(KERNEL_GVA), &mut buf)
        .unwrap_err();
    assert!(matches!(err, VirtError::Phys { gpa, .. } if gpa == Gpa(0x2000_0567)));
}

#[test]
fn ranges_that_wrap_are_refused() {
    let (mem, ctx) = setup(false);
    let mut w = PageWalker::new();
    let mut buf = [0; 2];
    assert_eq!(
        w.read_virt(&mem, &ctx, Gva(u64::MAX), &mut buf),
        Err(VirtError::Wraps {
            gva: Gva(u64::MAX),
            len: 2
        })
    );
}

#[test]
fn cache_serves_repeat_lookups_and_drops_on_cr3_change() {
    let (mem, ctx) = setup(false);
    map(&mem, &ctx, KERNEL_GVA, FRAME_4K, PageSize::Size4K, P, P);
    let mut w = PageWalker::new();
    let first = w.translate(&mem, &ctx, Gva(KERNEL_GVA)).unwrap();
    let same_page = w.translate(&mem, &ctx, Gva(KERNEL_GVA + 1)).unwrap();
    assert_eq!(same_page.gpa, Gpa(first.gpa.raw() + 1));
    assert_eq!(w.stats().hits, 1);
    assert_eq!(w.stats().misses, 1);

    // The guest changes its tables behind our back: the cache still answers (stale), which is
    // why callers invalidate after the guest ran.
    let e = mem.map((ctx.cr3, 4), KERNEL_GVA, 0x88_8000, PageSize::Size4K, P, P);
    assert!(e[1] != 0);
    assert_eq!(w.translate(&mem, &ctx, Gva(KERNEL_GVA)).unwrap(), first);
    w.invalidate_all();
    assert_eq!(
        w.translate(&mem, &ctx, Gva(KERNEL_GVA)).unwrap().gpa,
        Gpa(0x88_8567)
    );

    // A second address space: a CR3 switch drops everything.
    let root2 = mem.alloc_table();
    let ctx2 = PagingContext::long_mode(root2, false);
    mem.map((root2, 4), KERNEL_GVA, 0x99_9000, PageSize::Size4K, P, P);
    let flushes = w.stats().flushes;
    assert_eq!(
        w.translate(&mem, &ctx2, Gva(KERNEL_GVA)).unwrap().gpa,
        Gpa(0x99_9567)
    );
    assert_eq!(w.stats().flushes, flushes + 1);
    // And back.
    assert_eq!(
        w.translate(&mem, &ctx, Gva(KERNEL_GVA)).unwrap().gpa,
        Gpa(0x88_8567)
    );
    assert_eq!(w.stats().flushes, flushes + 2);
}

#[test]
fn our_writes_drop_the_cache() {
    let (mem, ctx) = setup(false);
    let e = map(
        &mem,
        &ctx,
        KERNEL_GVA,
        FRAME_4K,
        PageSize::Size4K,
        P | RW,
        P | RW,
    );
    let mut w = PageWalker::new();
    assert_eq!(
        w.translate(&mem, &ctx, Gva(KERNEL_GVA)).unwrap().gpa,
        Gpa(FRAME_4K | 0x567)
    );
    // Rewriting the PTE through the walker takes effect at once.
    w.write_phys(&mem, Gpa(e[1]), &((0x81_1000 | P).to_le_bytes()))
        .unwrap();
    assert_eq!(
        w.translate(&mem, &ctx, Gva(KERNEL_GVA)).unwrap().gpa,
        Gpa(0x81_1567)
    );

    // So does rewriting it through a virtual write (the PTE's page mapped at another address).
    let alias = 0xffff_ffff_9000_0000;
    let pt_page = e[1] & !0xfff;
    map(&mem, &ctx, alias, pt_page, PageSize::Size4K, P | RW, P | RW);
    let flushes = w.stats().flushes;
    w.write_virt(
        &mem,
        &ctx,
        Gva(alias + (e[1] & 0xfff)),
        &((0x82_2000 | P).to_le_bytes()),
    )
    .unwrap();
    assert_eq!(w.stats().flushes, flushes + 1);
    assert_eq!(
        w.translate(&mem, &ctx, Gva(KERNEL_GVA)).unwrap().gpa,
        Gpa(0x82_2567)
    );
}

#[test]
fn large_pages_cache_per_4k_page() {
    let (mem, ctx) = setup(true);
    map(&mem, &ctx, KERNEL_GVA, FRAME_2M, PageSize::Size2M, P, P);
    let mut w = PageWalker::new();
    let a = w.translate(&mem, &ctx, Gva(KERNEL_GVA)).unwrap();
    let b = w.translate(&mem, &ctx, Gva(KERNEL_GVA + 0x3000)).unwrap();
    let a2 = w.translate(&mem, &ctx, Gva(KERNEL_GVA)).unwrap();
    assert_eq!(a, a2);
    assert_eq!(b.gpa.raw() - a.gpa.raw(), 0x3000);
    assert_eq!(b.page_size, PageSize::Size2M);
    assert_eq!(w.stats().hits, 1);
}

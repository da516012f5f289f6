// What the `paging` fuzz target checks, shared with the test that replays its corpus
// (`include!`d by fuzz/fuzz_targets/paging.rs and introspect/tests/fuzz_corpora.rs).

use introspect::paging::{CR0_PG, CR0_WP, EFER_LMA, EFER_LME, EFER_NXE};
use introspect::{
    Gpa, Gva, PageWalker, PagingContext, PhysMem, PhysMemError, WalkError, paging::translate,
};

/// Guest RAM: the image repeated from 0 up to 64 GiB.
struct Mirror(Vec<u8>);

const TOP: u64 = 64 << 30;

impl PhysMem for Mirror {
    fn read_phys(&self, gpa: Gpa, buf: &mut [u8]) -> Result<(), PhysMemError> {
        let end = gpa.raw().checked_add(buf.len() as u64);
        if end.is_none_or(|e| e > TOP) {
            return Err(PhysMemError::OutOfRange {
                gpa,
                len: buf.len(),
            });
        }
        let n = self.0.len() as u64;
        for (i, b) in buf.iter_mut().enumerate() {
            let at = (gpa.raw() + i as u64) % n;
            *b = self.0[usize::try_from(at).expect("below the image's length")];
        }
        Ok(())
    }
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

/// Walks the input's page tables for its four addresses and checks every answer. Returns
/// whether the first address translated. The input: byte 0 flags (bit 0 LA57, bit 1 NXE,
/// bit 2 CR0.WP; bits 4-6 all set: paging off, 6 and 5 only: not long mode), byte 1
/// MAXPHYADDR, bytes 2-3 a page offset to try as well (in 16-byte units), bytes 4-7 CR3's page
/// number, bytes 8-39 four addresses (little-endian), then guest memory from GPA 0.
pub fn check(data: &[u8]) -> bool {
    if data.len() < 40 {
        return false;
    }
    let (head, image) = data.split_at(40);
    let flags = head[0];
    let cr3 = u64::from(u32::from_le_bytes([head[4], head[5], head[6], head[7]])) << 12;
    let mut ctx = PagingContext::long_mode(cr3, flags & 1 != 0);
    if flags & 2 == 0 {
        ctx.efer &= !EFER_NXE;
    }
    if flags & 4 == 0 {
        ctx.cr0 &= !CR0_WP;
    }
    if flags & 0x70 == 0x70 {
        // Rarely: not long mode, or paging off.
        ctx.cr0 &= !CR0_PG;
    } else if flags & 0x70 == 0x60 {
        ctx.efer &= !(EFER_LMA | EFER_LME);
    }
    ctx.max_phys_bits = head[1];
    let mut mem = image.to_vec();
    mem.resize(image.len().div_ceil(4096).max(1) * 4096, 0);
    let mem = Mirror(mem);
    let phys_bits = ctx.max_phys_bits.clamp(32, 52);
    let mut walker = PageWalker::new();
    let mut first = false;
    for k in 0..4 {
        let gva = Gva(u64_at(head, 8 + 8 * k));
        let walked = translate(&mem, &ctx, gva);
        assert_eq!(walker.translate(&mem, &ctx, gva), walked);
        assert_eq!(walker.translate(&mem, &ctx, gva), walked, "cached");
        first |= k == 0 && walked.is_ok();
        match &walked {
            Ok(t) => {
                let size = t.page_size.bytes();
                assert_eq!(t.gpa.raw() & (size - 1), gva.raw() & (size - 1));
                assert!(t.gpa.raw() < 1 << phys_bits, "{t:?}");
                assert!(t.executable || ctx.efer & EFER_NXE != 0);
                assert_eq!(t.kernel_writable, t.writable || ctx.cr0 & CR0_WP == 0);
                // Another address in the same page: same frame, through the cache or not.
                let delta = u64::from(u16::from_le_bytes([head[2], head[3]])) << 4;
                let other = Gva(gva.raw() ^ (delta & (size - 1)));
                let expect = Gpa(t.gpa.raw() ^ (delta & (size - 1)));
                assert_eq!(
                    walker.translate(&mem, &ctx, other).map(|t| t.gpa),
                    Ok(expect)
                );
                assert_eq!(translate(&mem, &ctx, other).map(|t| t.gpa), Ok(expect));
            }
            Err(WalkError::NotPresent { entry, .. }) => assert_eq!(entry & 1, 0),
            Err(e) => assert!(!e.to_string().contains('\n')),
        }
        // A read across a page boundary: exactly the bytes each address maps to.
        let start = Gva(gva.raw() | 0xff8);
        let mut buf = [0u8; 24];
        if walker.read_virt(&mem, &ctx, start, &mut buf).is_ok() {
            for (i, &b) in buf.iter().enumerate() {
                let at = Gva(start.raw().wrapping_add(i as u64));
                let t = translate(&mem, &ctx, at).expect("a byte that was read translates");
                let mut one = [0u8];
                mem.read_phys(t.gpa, &mut one).expect("and is backed");
                assert_eq!(one[0], b, "byte {i}");
            }
        }
    }
    first
}

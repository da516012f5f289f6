//! One uncached page-table walk, as the CPU does it (Intel SDM vol. 3A, 4.5).

use super::{CR0_PG, CR4_PAE, EFER_LMA, PageSize, PagingContext, PhysMem, Translation, WalkError};
use crate::addr::{Gpa, Gva};

const P: u64 = 1;
const RW: u64 = 1 << 1;
const US: u64 = 1 << 2;
const PS: u64 = 1 << 7;
const XD: u64 = 1 << 63;
/// Bits 51:12: the most a table or frame address can use.
const ADDR_BITS_51_12: u64 = 0x000f_ffff_ffff_f000;

/// Bits `hi..=lo` set.
const fn bits(hi: u32, lo: u32) -> u64 {
    (u64::MAX >> (63 - hi)) & (u64::MAX << lo)
}

/// Translates `gva` by walking the page tables `ctx` points at, without any cache.
///
/// Permissions are combined as the CPU does: writable and user only if every level allows it,
/// executable unless some level sets XD.
pub fn translate<M: PhysMem + ?Sized>(
    mem: &M,
    ctx: &PagingContext,
    gva: Gva,
) -> Result<Translation, WalkError> {
    if ctx.cr0 & CR0_PG == 0 {
        return Err(WalkError::PagingDisabled);
    }
    if ctx.efer & EFER_LMA == 0 || ctx.cr4 & CR4_PAE == 0 {
        return Err(WalkError::NotLongMode);
    }
    let la57 = ctx.la57();
    if !gva.is_canonical(la57) {
        return Err(WalkError::NonCanonical(gva));
    }
    let phys_bits = u32::from(ctx.max_phys_bits.clamp(32, 52));
    // Bits 51:MAXPHYADDR of every entry must be zero.
    let above_phys = if phys_bits < 52 {
        bits(51, phys_bits)
    } else {
        0
    };
    let addr_mask = ADDR_BITS_51_12 & !above_phys;
    let xd_reserved = if ctx.nxe() { 0 } else { XD };

    let mut table = ctx.cr3 & addr_mask;
    let mut writable = true;
    let mut user = true;
    let mut executable = true;

    let mut level = ctx.levels();
    loop {
        let shift = 12 + 9 * (u32::from(level) - 1);
        let index = (gva.raw() >> shift) & 0x1ff;
        let entry_gpa = Gpa(table + index * 8);
        let entry = read_entry(mem, level, entry_gpa)?;
        if entry & P == 0 {
            return Err(WalkError::NotPresent {
                level,
                entry_gpa,
                entry,
            });
        }
        let leaf = level == 1 || (entry & PS != 0 && level <= 3);
        let mut reserved = above_phys | xd_reserved;
        match level {
            // PS must be zero in PML5Es and PML4Es.
            4 | 5 => reserved |= PS,
            // 1 GiB and 2 MiB frames: the address bits below the page size (except PAT, bit 12).
            3 if leaf => reserved |= bits(29, 13),
            2 if leaf => reserved |= bits(20, 13),
            _ => {}
        }
        if entry & reserved != 0 {
            return Err(WalkError::ReservedBits {
                level,
                entry_gpa,
                entry,
            });
        }
        writable &= entry & RW != 0;
        user &= entry & US != 0;
        executable &= !ctx.nxe() || entry & XD == 0;
        if leaf {
            let page_size = match level {
                3 => PageSize::Size1G,
                2 => PageSize::Size2M,
                _ => PageSize::Size4K,
            };
            let size = page_size.bytes();
            let frame = entry & addr_mask & !(size - 1);
            return Ok(Translation {
                gpa: Gpa(frame | (gva.raw() & (size - 1))),
                page_size,
                writable,
                user,
                executable,
                kernel_writable: writable || !ctx.wp(),
            });
        }
        table = entry & addr_mask;
        // Level 1 entries are always leaves, so this never goes below 1.
        level -= 1;
    }
}

fn read_entry<M: PhysMem + ?Sized>(mem: &M, level: u8, entry_gpa: Gpa) -> Result<u64, WalkError> {
    let mut raw = [0u8; 8];
    mem.read_phys(entry_gpa, &mut raw)
        .map_err(|source| WalkError::Memory {
            level,
            entry_gpa,
            source,
        })?;
    Ok(u64::from_le_bytes(raw))
}

#[cfg(test)]
mod tests {
    use super::bits;

    #[test]
    fn bit_ranges() {
        assert_eq!(bits(29, 13), 0x3fff_e000);
        assert_eq!(bits(20, 13), 0x001f_e000);
        assert_eq!(bits(51, 46), 0x000f_c000_0000_0000);
        assert_eq!(bits(63, 0), u64::MAX);
    }
}

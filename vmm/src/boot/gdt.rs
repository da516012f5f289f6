//! The boot GDT: null, null, 64-bit code (0x10), data (0x18), TSS (0x20).

use kvm_bindings::kvm_segment;

use super::BootError;
use crate::layout::{GDT_START, IDT_START};
use crate::memory::{Gpa, GuestMem};

/// Code segment selector the guest starts with (Linux's `__BOOT_CS`).
pub const BOOT_CS: u16 = 0x10;
/// Data segment selector (Linux's `__BOOT_DS`).
pub const BOOT_DS: u16 = 0x18;
/// TSS selector.
pub const BOOT_TSS: u16 = 0x20;

/// Encodes a GDT descriptor from access/flags (`0xF0FF` layout: flags in bits 12-15), base and
/// limit, the way the manuals draw it.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << 32)
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
        | ((limit as u64 & 0x000f_0000) << 32)
        | ((flags as u64 & 0xf0ff) << 40)
}

/// The table written at [`GDT_START`].
pub const GDT: [u64; 5] = [
    0,
    0,
    gdt_entry(0xa09b, 0, 0xfffff), // code: present, DPL0, execute/read, L=1, G=1
    gdt_entry(0xc093, 0, 0xfffff), // data: present, DPL0, read/write, D/B=1, G=1
    gdt_entry(0x808b, 0, 0xfffff), // TSS: present, busy 64-bit TSS
];

/// Decodes a GDT entry into the segment KVM wants in `kvm_sregs`.
pub fn segment_from_entry(entry: u64, selector: u16) -> kvm_segment {
    let base = ((entry >> 16) & 0xff_ffff) | ((entry >> 32) & 0xff00_0000);
    let raw_limit = (entry & 0xffff) | ((entry >> 32) & 0xf_0000);
    let g = (entry >> 55) & 1;
    let limit = if g == 1 {
        (raw_limit << 12) | 0xfff
    } else {
        raw_limit
    };
    let bit = |n: u32| u8::from((entry >> n) & 1 == 1);
    kvm_segment {
        base,
        limit: u32::try_from(limit).unwrap_or(u32::MAX),
        selector,
        type_: u8::try_from((entry >> 40) & 0xf).unwrap_or(0),
        present: bit(47),
        dpl: u8::try_from((entry >> 45) & 0x3).unwrap_or(0),
        db: bit(54),
        s: bit(44),
        l: bit(53),
        g: bit(55),
        avl: bit(52),
        unusable: u8::from(bit(47) == 0),
        padding: 0,
    }
}

/// Writes the GDT and an empty IDT into guest memory.
pub fn write_gdt(mem: &GuestMem) -> Result<(), BootError> {
    for (i, e) in GDT.iter().enumerate() {
        mem.write_u64(Gpa(GDT_START + 8 * i as u64), *e)
            .map_err(BootError::mem("GDT"))?;
    }
    mem.write_u64(Gpa(IDT_START), 0)
        .map_err(BootError::mem("IDT"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_segment_is_64_bit_flat() {
        let cs = segment_from_entry(GDT[2], BOOT_CS);
        assert_eq!(
            (cs.l, cs.db, cs.g, cs.present, cs.s, cs.type_),
            (1, 0, 1, 1, 1, 0xb)
        );
        assert_eq!(cs.limit, 0xffff_ffff);
        let ds = segment_from_entry(GDT[3], BOOT_DS);
        assert_eq!((ds.l, ds.db, ds.type_), (0, 1, 3));
        let tss = segment_from_entry(GDT[4], BOOT_TSS);
        assert_eq!((tss.s, tss.type_), (0, 0xb));
    }

    #[test]
    fn entry_encoding_matches_the_manual() {
        assert_eq!(gdt_entry(0xa09b, 0, 0xfffff), 0x00af_9b00_0000_ffff);
        assert_eq!(gdt_entry(0xc093, 0, 0xfffff), 0x00cf_9300_0000_ffff);
    }
}

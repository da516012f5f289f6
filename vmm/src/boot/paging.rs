//! Boot page tables: identity map of guest-physical 0..4 GiB with 2 MiB pages, so the kernel,
//! boot_params, the command line and the MMIO hole (test device, APICs) are all reachable;
//! and, as Linux's own early tables do, the kernel text mapping: virtual
//! `0xffff_ffff_8000_0000` + 2 GiB onto physical 0 + 2 GiB. With it, introspection can
//! translate Linux's symbol addresses (and arm probes there) before the guest's first
//! instruction; Linux switches to its own tables in `startup_64` anyway.

use super::BootError;
use crate::layout::{KERNEL_PDPT_START, PD_START, PDPT_START, PML4_START};
use crate::memory::{Gpa, GuestMem};

const PRESENT_RW: u64 = 0x3;
const PAGE_SIZE_2M: u64 = 0x80;

/// Start of Linux's kernel text mapping (`__START_KERNEL_map`).
pub const KERNEL_MAP_START: u64 = 0xffff_ffff_8000_0000;

/// Writes PML4, the two PDPTs and four page directories; returns the value for CR3.
pub fn write_identity_map(mem: &GuestMem) -> Result<u64, BootError> {
    let err = BootError::mem;
    mem.write_u64(Gpa(PML4_START), PDPT_START | PRESENT_RW)
        .map_err(err("PML4"))?;
    // PML4[511] -> kernel PDPT; its entries 510 and 511 reuse the page directories of
    // physical GiB 0 and 1.
    mem.write_u64(Gpa(PML4_START + 511 * 8), KERNEL_PDPT_START | PRESENT_RW)
        .map_err(err("PML4"))?;
    for (slot, gib) in [(510u64, 0u64), (511, 1)] {
        mem.write_u64(
            Gpa(KERNEL_PDPT_START + slot * 8),
            (PD_START + gib * 0x1000) | PRESENT_RW,
        )
        .map_err(err("kernel PDPT"))?;
    }
    for gib in 0..4u64 {
        let pd = PD_START + gib * 0x1000;
        mem.write_u64(Gpa(PDPT_START + gib * 8), pd | PRESENT_RW)
            .map_err(err("PDPT"))?;
        for i in 0..512u64 {
            let phys = (gib << 30) | (i << 21);
            mem.write_u64(Gpa(pd + i * 8), phys | PRESENT_RW | PAGE_SIZE_2M)
                .map_err(err("page directory"))?;
        }
    }
    Ok(PML4_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Walks the tables the way the MMU does, for an address below 4 GiB.
    fn walk(mem: &GuestMem, cr3: u64, va: u64) -> u64 {
        let pml4e = mem.read_u64(Gpa(cr3 + ((va >> 39) & 511) * 8)).unwrap();
        let pdpte = mem
            .read_u64(Gpa((pml4e & !0xfff) + ((va >> 30) & 511) * 8))
            .unwrap();
        let pde = mem
            .read_u64(Gpa((pdpte & !0xfff) + ((va >> 21) & 511) * 8))
            .unwrap();
        assert_eq!(pde & 0x81, 0x81, "2 MiB page, present");
        (pde & !0x1f_ffff & 0x000f_ffff_ffff_ffff) | (va & 0x1f_ffff)
    }

    #[test]
    fn identity_maps_four_gib() {
        let mem = GuestMem::new(16 << 20).unwrap();
        let cr3 = write_identity_map(&mem).unwrap();
        for (va, pa) in [
            (0xffff_ffff_8100_0000u64, 0x100_0000u64),
            (0xffff_ffff_c000_1000, 0x4000_1000),
        ] {
            assert_eq!(walk(&mem, cr3, va), pa, "kernel text mapping of {va:#x}");
        }
        for va in [
            0u64,
            0x7000,
            0x10_0000,
            0x3fff_ffff,
            0xd000_0000,
            0xfee0_0000,
            0xffff_ffff,
        ] {
            assert_eq!(walk(&mem, cr3, va), va);
        }
    }
}

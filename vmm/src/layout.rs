//! The guest-physical memory map hvprobe builds for every VM (x86_64).
//!
//! ```text
//! 0x0000_0500  GDT (4 entries)              0x0000_9000  PML4
//! 0x0000_0520  IDT (empty, limit 0)         0x0000_a000  PDPT (4 entries: 4 GiB)
//! 0x0000_7000  boot_params ("zero page")    0x0000_b000  4 PDs, 2 MiB pages, identity map 0..4 GiB
//!                                           0x0000_f000  PDPT: kernel text map 0xffff_ffff_8000_0000 -> 0
//! 0x0000_8ff0  initial stack top            0x0002_0000  kernel command line
//! 0x0009_fc00  EBDA: MP floating pointer    0x000f_0000  MP configuration table (SMP)
//! 0x0010_0000  kernel (ELF PT_LOAD p_paddr) ...
//! 0xc000_0000  32-bit MMIO hole start: RAM above 3 GiB moves to 4 GiB
//! 0xd000_0000  test device MMIO page
//! 0xe000_0000  edu's BAR0 (1 MiB) where the test kernel programs it (`EDU_BAR_DEFAULT`)
//! 0xfec0_0000  IOAPIC, 0xfee0_0000 LAPIC (in-kernel irqchip)
//! ```
//!
//! Every guest is entered in 64-bit long mode with these page tables, interrupts off, and
//! `rsi` holding the address of boot_params (Linux's 64-bit boot protocol).

/// GDT location.
pub const GDT_START: u64 = 0x500;
/// IDT location (an empty IDT, limit 0: the guest installs its own).
pub const IDT_START: u64 = 0x520;
/// Linux boot_params ("zero page").
pub const BOOT_PARAMS_START: u64 = 0x7000;
/// Initial stack pointer handed to the guest in `rsp`.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Top-level page table (PML4).
pub const PML4_START: u64 = 0x9000;
/// The one PDPT, mapping 4 GiB through four PDs.
pub const PDPT_START: u64 = 0xa000;
/// PDPT of the kernel text mapping (virtual 0xffff_ffff_8000_0000 onto physical 0).
pub const KERNEL_PDPT_START: u64 = 0xf000;
/// First of the four page directories (2 MiB pages).
pub const PD_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Largest command line accepted (Linux's COMMAND_LINE_SIZE on x86 is 2048).
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Extended BIOS data area; the MP table lives here.
pub const EBDA_START: u64 = 0x9fc00;
/// MP configuration table, in the reserved BIOS area (its floating pointer is at the EBDA).
pub const MP_TABLE_START: u64 = 0xf_0000;
/// End of conventional low memory.
pub const LOW_MEM_END: u64 = 0xa0000;
/// Lowest address a kernel image may be loaded at.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO hole.
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
/// End of the 32-bit MMIO hole (4 GiB).
pub const MMIO_HOLE_END: u64 = 0x1_0000_0000;
/// Test device MMIO page (see `devices::test_device`).
pub const TEST_DEVICE_MMIO_BASE: u64 = 0xd000_0000;
/// Where the test kernel's `edu` driver programs the `edu` PCI device's BAR0 (1 MiB, see
/// `devices::edu`). Nothing else is mapped in `[EDU_BAR_DEFAULT, EDU_BAR_DEFAULT + 1 MiB)`;
/// the device comes out of reset with BAR0 = 0 (unmapped), as on real hardware without
/// firmware.
pub const EDU_BAR_DEFAULT: u64 = 0xe000_0000;
/// IOAPIC base.
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// Local APIC base.
pub const APIC_START: u64 = 0xfee0_0000;
/// Smallest guest memory hvprobe accepts.
pub const MIN_MEM_SIZE: u64 = 16 << 20;

//! The `edu` scenario: a driver for hvprobe's `edu` PCI device (QEMU's `edu` in spirit).
//!
//! 1. **Probe** (port I/O only): reads the vendor/device dword of 00:DD.0 for DD = 0..32
//!    through 0xcf8/0xcfc and prints every function found; the device is vendor 0x1234,
//!    device 0x11e8. Reads the command register (16-bit), clears memory space, sizes BAR0
//!    (writes all-ones, reads the mask: 1 MiB), programs BAR0 = [`BAR`] (0xe000_0000) and
//!    reads it back, reads the interrupt line (byte at 0xcfc) and pin (byte at 0xcfd), then
//!    sets memory space enable: hvprobe maps the BAR (MAP).
//! 2. **MMIO** on BAR0, exactly these accesses in this order (offsets from [`BAR`]; a tracer
//!    test compares its trace with this table, which `vmm::test_kernel::EDU_MMIO_SEQUENCE`
//!    repeats). Before each group, a MARK line (test device port 0x608, byte by byte):
//!
//! | # | MARK before | access | width | offset | value written / read |
//! |---|---|---|---|---|---|
//! | 1 | `edu: id` | R | 32 | 0x00 | 0x010000ed |
//! | 2 | `edu: liveness` | W | 32 | 0x04 | 0x12345678 |
//! | 3 | | R | 32 | 0x04 | 0xedcba987 |
//! | 4 | `edu: factorial` | W | 32 | 0x08 | 5 |
//! | 5 | | R | 32 | 0x20 | 0x1 (computing) |
//! | 6 | | R | 32 | 0x20 | 0x0 (done) |
//! | 7 | | R | 32 | 0x08 | 120 (0x78) |
//! | 8 | `edu: interrupt` | W | 32 | 0x60 | 0x1 |
//! | 9 | | R | 32 | 0x24 | 0x1 |
//! | 10 | | W | 32 | 0x64 | 0x1 |
//! | 11 | | R | 32 | 0x24 | 0x0 |
//! | 12 | `edu: dma` | W | 64 | 0x80 | 0x60000 ([`DMA_SRC_RAM`]) |
//! | 13 | | W | 64 | 0x88 | 0x40000 (device buffer) |
//! | 14 | | W | 64 | 0x90 | 16 |
//! | 15 | | W | 64 | 0x98 | 0x1 (start, RAM -> device) |
//! | 16 | | R | 64 | 0x98 | 0x0 (done) |
//! | 17 | | W | 64 | 0x80 | 0x40000 |
//! | 18 | | W | 64 | 0x88 | 0x61000 ([`DMA_DST_RAM`]) |
//! | 19 | | W | 64 | 0x90 | 16 |
//! | 20 | | W | 64 | 0x98 | 0x3 (start, device -> RAM) |
//! | 21 | | R | 64 | 0x98 | 0x2 (done, direction kept) |
//!
//!    The factorial poll (rows 5-6) stops at the first status without bit 0 (at most
//!    [`MAX_POLLS`] reads); hvprobe's device says "computing" exactly once.
//! 3. **Unmap** (MARK `edu: unmap`): clears memory space (UNMAP), then writes BAR0 = 0.
//!    MARK `edu: done`.
//!
//! Every value read is printed. The DMA copies the 16 bytes `hvprobe edu DMA!` from guest RAM
//! at [`DMA_SRC_RAM`] to the device and back to [`DMA_DST_RAM`] (zeroed first), then compares.
//! EXIT 0 when every check passed, else 1 (after printing which failed); if the device is
//! missing or its BAR cannot be programmed, EXIT 1 right away.

use crate::pci::{self, Function};
use crate::serial::kprintln;
use crate::testdev;

/// Where this driver puts BAR0 (vmm's `layout::EDU_BAR_DEFAULT`).
const BAR_BASE: u32 = 0xe000_0000;
/// [`BAR_BASE`] as an address.
pub const BAR: usize = BAR_BASE as usize;
/// The size BAR0 must report.
const BAR_SIZE: u32 = 1 << 20;
/// The device's PCI IDs.
const VENDOR: u16 = 0x1234;
const DEVICE: u16 = 0x11e8;
/// Guest-physical RAM the DMA reads from (free low memory; identity-mapped).
pub const DMA_SRC_RAM: usize = 0x6_0000;
/// Guest-physical RAM the DMA writes back to.
pub const DMA_DST_RAM: usize = 0x6_1000;
/// Device address of edu's DMA buffer.
const DMA_BUFFER: u64 = 0x4_0000;
/// What the DMA moves.
const DMA_DATA: &[u8; 16] = b"hvprobe edu DMA!";
/// Most status reads while waiting for the factorial.
pub const MAX_POLLS: u32 = 1000;

/// Register offsets in BAR0.
mod reg {
    pub const ID: usize = 0x00;
    pub const LIVENESS: usize = 0x04;
    pub const FACTORIAL: usize = 0x08;
    pub const STATUS: usize = 0x20;
    pub const IRQ_STATUS: usize = 0x24;
    pub const IRQ_RAISE: usize = 0x60;
    pub const IRQ_ACK: usize = 0x64;
    pub const DMA_SRC: usize = 0x80;
    pub const DMA_DST: usize = 0x88;
    pub const DMA_COUNT: usize = 0x90;
    pub const DMA_CMD: usize = 0x98;
}

/// One-instruction MMIO accesses to BAR0 at [`BAR`].
mod mmio {
    use core::arch::asm;

    use super::BAR;

    /// Reads 32 bits at `offset`.
    pub fn read32(offset: usize) -> u32 {
        let value: u32;
        // SAFETY: BAR0 is identity-mapped and backed by no RAM: hvprobe emulates the access,
        // and no Rust-visible memory is read.
        unsafe {
            asm!("mov {v:e}, dword ptr [{a}]", a = in(reg) BAR + offset, v = out(reg) value, options(nostack, preserves_flags))
        };
        value
    }

    /// Reads 64 bits at `offset`.
    pub fn read64(offset: usize) -> u64 {
        let value: u64;
        // SAFETY: as in `read32`.
        unsafe {
            asm!("mov {v:r}, qword ptr [{a}]", a = in(reg) BAR + offset, v = out(reg) value, options(nostack, preserves_flags))
        };
        value
    }

    /// Writes 32 bits at `offset`.
    pub fn write32(offset: usize, value: u32) {
        // SAFETY: an emulated access to BAR0: no Rust-visible memory changes.
        unsafe {
            asm!("mov dword ptr [{a}], {v:e}", a = in(reg) BAR + offset, v = in(reg) value, options(nostack, preserves_flags))
        };
    }

    /// Writes 64 bits at `offset`.
    pub fn write64(offset: usize, value: u64) {
        // SAFETY: as in `write32`.
        unsafe {
            asm!("mov qword ptr [{a}], {v:r}", a = in(reg) BAR + offset, v = in(reg) value, options(nostack, preserves_flags))
        };
    }
}

/// Prints a value read and whether it is the expected one.
fn check(what: &str, got: u64, want: u64) -> bool {
    if got == want {
        kprintln!("edu: {what} = {got:#x}, ok");
    } else {
        kprintln!("edu: {what} = {got:#x}, expected {want:#x}: FAILED");
    }
    got == want
}

/// Reads or writes the 16 RAM bytes at `addr` (identity-mapped low memory).
fn ram(addr: usize) -> *mut [u8; 16] {
    addr as *mut [u8; 16]
}

/// Finds the device on bus 0 (function 0 of each slot).
fn probe() -> Option<Function> {
    let mut found = None;
    for device in 0..32 {
        let f = Function {
            device,
            function: 0,
        };
        let id = f.read32(pci::reg::ID);
        if id == u32::MAX {
            continue;
        }
        let [v0, v1, d0, d1] = id.to_le_bytes();
        let (vendor, dev) = (u16::from_le_bytes([v0, v1]), u16::from_le_bytes([d0, d1]));
        kprintln!("edu: pci 00:{device:02x}.0 {vendor:04x}:{dev:04x}");
        if (vendor, dev) == (VENDOR, DEVICE) && found.is_none() {
            found = Some(f);
        }
    }
    found
}

/// The scenario: see the module documentation.
pub fn run() -> ! {
    if drive() {
        kprintln!("edu: done");
        testdev::exit(0)
    }
    kprintln!("edu: a check failed");
    testdev::exit(1)
}

/// Drives the device through its whole protocol (the `hello` scenario does this too, so
/// `hvprobe run --mmiotrace edu` with no other arguments traces a real driver); true if every
/// check passed.
pub fn drive() -> bool {
    testdev::mark(b"edu: probe\n");
    let Some(f) = probe() else {
        kprintln!("edu: no device {VENDOR:04x}:{DEVICE:04x} on bus 0: FAILED");
        return false;
    };
    kprintln!(
        "edu: found {VENDOR:04x}:{DEVICE:04x} at 00:{:02x}.0",
        f.device
    );
    let command = f.read16(pci::reg::COMMAND) & !pci::COMMAND_MEMORY;
    f.write16(pci::reg::COMMAND, command);
    f.write32(pci::reg::BAR0, u32::MAX);
    let mask = f.read32(pci::reg::BAR0) & !0xf;
    let size = (!mask).wrapping_add(1);
    let mut ok = check("BAR0 size", size.into(), BAR_SIZE.into());
    f.write32(pci::reg::BAR0, BAR_BASE);
    ok &= check("BAR0", f.read32(pci::reg::BAR0).into(), BAR_BASE.into());
    if !ok {
        return false;
    }
    let line = f.read8(pci::reg::INTERRUPT_LINE);
    let pin = f.read8(pci::reg::INTERRUPT_LINE + 1);
    kprintln!("edu: interrupt line {line}, pin {pin}");
    f.write16(pci::reg::COMMAND, command | pci::COMMAND_MEMORY);

    testdev::mark(b"edu: id\n");
    ok &= check("ID", mmio::read32(reg::ID).into(), 0x0100_00ed);

    testdev::mark(b"edu: liveness\n");
    mmio::write32(reg::LIVENESS, 0x1234_5678);
    ok &= check(
        "liveness of 0x12345678",
        mmio::read32(reg::LIVENESS).into(),
        0xedcb_a987,
    );

    testdev::mark(b"edu: factorial\n");
    mmio::write32(reg::FACTORIAL, 5);
    let mut polls = 0;
    loop {
        let status = mmio::read32(reg::STATUS);
        polls += 1;
        kprintln!("edu: status = {status:#x}");
        if status & 1 == 0 || polls >= MAX_POLLS {
            break;
        }
    }
    ok &= check("factorial of 5", mmio::read32(reg::FACTORIAL).into(), 120);

    testdev::mark(b"edu: interrupt\n");
    mmio::write32(reg::IRQ_RAISE, 0x1);
    ok &= check(
        "interrupt status after raise",
        mmio::read32(reg::IRQ_STATUS).into(),
        0x1,
    );
    mmio::write32(reg::IRQ_ACK, 0x1);
    ok &= check(
        "interrupt status after ack",
        mmio::read32(reg::IRQ_STATUS).into(),
        0x0,
    );

    testdev::mark(b"edu: dma\n");
    // SAFETY: DMA_SRC_RAM and DMA_DST_RAM are free, identity-mapped low RAM that no Rust
    // object occupies (this kernel lives from 1 MiB; boot structures end below 0x21000).
    unsafe {
        ram(DMA_SRC_RAM).write_volatile(*DMA_DATA);
        ram(DMA_DST_RAM).write_volatile([0; 16]);
    }
    mmio::write64(reg::DMA_SRC, DMA_SRC_RAM as u64);
    mmio::write64(reg::DMA_DST, DMA_BUFFER);
    mmio::write64(reg::DMA_COUNT, DMA_DATA.len() as u64);
    mmio::write64(reg::DMA_CMD, 0x1);
    ok &= check(
        "DMA command after RAM -> device",
        mmio::read64(reg::DMA_CMD),
        0x0,
    );
    mmio::write64(reg::DMA_SRC, DMA_BUFFER);
    mmio::write64(reg::DMA_DST, DMA_DST_RAM as u64);
    mmio::write64(reg::DMA_COUNT, DMA_DATA.len() as u64);
    mmio::write64(reg::DMA_CMD, 0x3);
    ok &= check(
        "DMA command after device -> RAM",
        mmio::read64(reg::DMA_CMD),
        0x2,
    );
    // SAFETY: as above; the device wrote these bytes through guest memory.
    let back = unsafe { ram(DMA_DST_RAM).read_volatile() };
    if back == *DMA_DATA {
        kprintln!("edu: DMA round trip of 16 bytes, ok");
    } else {
        kprintln!("edu: DMA round trip gave {back:x?}: FAILED");
        ok = false;
    }

    testdev::mark(b"edu: unmap\n");
    f.write16(pci::reg::COMMAND, command);
    f.write32(pci::reg::BAR0, 0);
    testdev::mark(b"edu: done\n");
    ok
}

//! hvprobe's test device: the same registers at ports `0x600..0x620` and at the MMIO page
//! `0xd000_0000`.
//!
//! | offset | access         | meaning                                                      |
//! |--------|----------------|--------------------------------------------------------------|
//! | 0x00   | read, 32-bit   | ID, [`ID`] ("HVPT" in little-endian bytes)                   |
//! | 0x00   | write, 32-bit  | POINT n: "reached point n"                                   |
//! | 0x04   | write, 32-bit  | EXIT code: the VM ends, hvprobe exits with the code          |
//! | 0x08   | write, 8-bit   | MARK byte: appended to a text line, `\n` ends it             |
//! | 0x0c   | read/write     | SCRATCH: reads back the last value written                   |
//! | 0x10   | write, 32-bit  | ARENA_LO: low half of the trampoline arena's virtual base    |
//! | 0x14   | write, 32-bit  | ARENA_HI: high half of the arena's base                      |
//! | 0x18   | write, 32-bit  | ARENA_LEN: the arena's length in bytes; completes the report |
//!
//! Every register works from ring 3 too (see [`crate::user`]): port I/O with IOPL 3, MMIO
//! through the user-accessible identity map.

use crate::port::{outb, outl};

/// First port of the PIO window.
pub const PIO_BASE: u16 = 0x600;
/// Guest-physical (and, identity-mapped, virtual) address of the MMIO page.
pub const MMIO_BASE: usize = 0xd000_0000;
/// What the ID register reads.
pub const ID: u32 = 0x5450_5648;

/// Register offsets.
pub mod reg {
    /// ID (read) and POINT (write).
    pub const ID: u16 = 0x00;
    /// POINT (write), same offset as ID.
    pub const POINT: u16 = 0x00;
    /// EXIT (write).
    pub const EXIT: u16 = 0x04;
    /// MARK (8-bit write).
    pub const MARK: u16 = 0x08;
    /// SCRATCH (read/write).
    pub const SCRATCH: u16 = 0x0c;
    /// ARENA_LO (32-bit write): low half of the arena base.
    pub const ARENA_LO: u16 = 0x10;
    /// ARENA_HI (32-bit write): high half of the arena base.
    pub const ARENA_HI: u16 = 0x14;
    /// ARENA_LEN (32-bit write): arena length; completes the report.
    pub const ARENA_LEN: u16 = 0x18;
}

/// Reports "reached point `n`".
pub fn point(n: u32) {
    outl(PIO_BASE + reg::POINT, n);
}

/// Ends the VM with exit code `code`; halts forever if hvprobe lets the vCPU run on.
pub fn exit(code: u32) -> ! {
    outl(PIO_BASE + reg::EXIT, code);
    crate::halt_forever()
}

/// Sends `text` to the MARK register, byte by byte (`\n` ends a line).
pub fn mark(text: &[u8]) {
    for &byte in text {
        outb(PIO_BASE + reg::MARK, byte);
    }
}

/// Reports the trampoline arena `[base, base + len)` (guest-virtual) to hvprobe: ARENA_LO,
/// ARENA_HI, then ARENA_LEN, which completes the report.
pub fn report_arena(base: u64, len: u32) {
    outl(PIO_BASE + reg::ARENA_LO, (base & 0xffff_ffff) as u32);
    outl(PIO_BASE + reg::ARENA_HI, (base >> 32) as u32);
    outl(PIO_BASE + reg::ARENA_LEN, len);
}

/// Writes `value` to SCRATCH as one 32-bit port write.
pub fn scratch(value: u32) {
    outl(PIO_BASE + reg::SCRATCH, value);
}

/// A `fmt::Write` sink for MARK lines (each `\n` ends a line).
pub struct Mark;

impl core::fmt::Write for Mark {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        mark(s.as_bytes());
        Ok(())
    }
}

/// MMIO accesses to the test device page, one `mov` of the given width each.
///
/// Written in assembly so that every access is exactly one instruction of the stated width,
/// aligned or not (the 64-bit SCRATCH access at 0x0c is deliberately unaligned).
pub mod mmio {
    use core::arch::asm;

    use super::MMIO_BASE;

    fn addr(offset: u16) -> usize {
        MMIO_BASE + usize::from(offset)
    }

    /// Reads 8 bits at `offset`.
    pub fn read8(offset: u16) -> u8 {
        let value: u8;
        // SAFETY: the test device page is identity-mapped and backed by no RAM: hvprobe
        // emulates the access, and no Rust-visible memory is read.
        unsafe {
            asm!("mov {v}, byte ptr [{a}]", a = in(reg) addr(offset), v = out(reg_byte) value, options(nostack, preserves_flags))
        };
        value
    }

    /// Reads 16 bits at `offset`.
    pub fn read16(offset: u16) -> u16 {
        let value: u16;
        // SAFETY: as in `read8`: an emulated access to the test device page.
        unsafe {
            asm!("mov {v:x}, word ptr [{a}]", a = in(reg) addr(offset), v = out(reg) value, options(nostack, preserves_flags))
        };
        value
    }

    /// Reads 32 bits at `offset`.
    pub fn read32(offset: u16) -> u32 {
        let value: u32;
        // SAFETY: as in `read8`: an emulated access to the test device page.
        unsafe {
            asm!("mov {v:e}, dword ptr [{a}]", a = in(reg) addr(offset), v = out(reg) value, options(nostack, preserves_flags))
        };
        value
    }

    /// Reads 64 bits at `offset`.
    pub fn read64(offset: u16) -> u64 {
        let value: u64;
        // SAFETY: as in `read8`: an emulated access to the test device page.
        unsafe {
            asm!("mov {v:r}, qword ptr [{a}]", a = in(reg) addr(offset), v = out(reg) value, options(nostack, preserves_flags))
        };
        value
    }

    /// Writes 8 bits at `offset`.
    pub fn write8(offset: u16, value: u8) {
        // SAFETY: an emulated access to the test device page: no Rust-visible memory changes.
        unsafe {
            asm!("mov byte ptr [{a}], {v}", a = in(reg) addr(offset), v = in(reg_byte) value, options(nostack, preserves_flags))
        };
    }

    /// Writes 16 bits at `offset`.
    pub fn write16(offset: u16, value: u16) {
        // SAFETY: as in `write8`.
        unsafe {
            asm!("mov word ptr [{a}], {v:x}", a = in(reg) addr(offset), v = in(reg) value, options(nostack, preserves_flags))
        };
    }

    /// Writes 32 bits at `offset`.
    pub fn write32(offset: u16, value: u32) {
        // SAFETY: as in `write8`.
        unsafe {
            asm!("mov dword ptr [{a}], {v:e}", a = in(reg) addr(offset), v = in(reg) value, options(nostack, preserves_flags))
        };
    }

    /// Writes 64 bits at `offset`.
    pub fn write64(offset: u16, value: u64) {
        // SAFETY: as in `write8`.
        unsafe {
            asm!("mov qword ptr [{a}], {v:r}", a = in(reg) addr(offset), v = in(reg) value, options(nostack, preserves_flags))
        };
    }
}

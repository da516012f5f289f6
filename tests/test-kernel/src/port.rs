//! x86 port I/O, one instruction per access.
//!
//! These are safe functions because everything this kernel talks to through ports (COM1, the
//! i8042 and the test device) is emulated by hvprobe: no access can corrupt Rust-visible memory.

use core::arch::asm;

/// Reads a byte from `port` (`in al, dx`).
pub fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: port I/O has no effect on memory; see the module documentation.
    unsafe {
        asm!("in al, dx", out("al") value, in("dx") port, options(nomem, nostack, preserves_flags))
    };
    value
}

/// Reads a 16-bit word from `port` (`in ax, dx`).
pub fn inw(port: u16) -> u16 {
    let value: u16;
    // SAFETY: port I/O has no effect on memory; see the module documentation.
    unsafe {
        asm!("in ax, dx", out("ax") value, in("dx") port, options(nomem, nostack, preserves_flags))
    };
    value
}

/// Reads a 32-bit word from `port` (`in eax, dx`).
pub fn inl(port: u16) -> u32 {
    let value: u32;
    // SAFETY: port I/O has no effect on memory; see the module documentation.
    unsafe {
        asm!("in eax, dx", out("eax") value, in("dx") port, options(nomem, nostack, preserves_flags))
    };
    value
}

/// Writes a byte to `port` (`out dx, al`).
pub fn outb(port: u16, value: u8) {
    // SAFETY: port I/O has no effect on memory; see the module documentation.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    };
}

/// Writes a 16-bit word to `port` (`out dx, ax`).
pub fn outw(port: u16, value: u16) {
    // SAFETY: port I/O has no effect on memory; see the module documentation.
    unsafe {
        asm!("out dx, ax", in("dx") port, in("ax") value, options(nomem, nostack, preserves_flags))
    };
}

/// Writes a 32-bit word to `port` (`out dx, eax`).
pub fn outl(port: u16, value: u32) {
    // SAFETY: port I/O has no effect on memory; see the module documentation.
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack, preserves_flags))
    };
}

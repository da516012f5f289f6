//! PCI configuration mechanism #1: a 32-bit address at port 0xcf8 (bit 31 enable, bus 23:16,
//! device 15:11, function 10:8, register 7:2), data at 0xcfc..0xd00 (1-, 2- or 4-byte
//! accesses; the port's low two bits pick the byte of the register).

use crate::port::{inb, inl, inw, outb, outl, outw};

/// The address port.
pub const ADDRESS: u16 = 0xcf8;
/// The data port.
pub const DATA: u16 = 0xcfc;

/// Configuration registers used here.
pub mod reg {
    /// Vendor ID (low 16 bits) and device ID (high 16 bits).
    pub const ID: u8 = 0x00;
    /// Command (16-bit).
    pub const COMMAND: u8 = 0x04;
    /// BAR0.
    pub const BAR0: u8 = 0x10;
    /// Interrupt line (8-bit); the pin follows at 0x3d.
    pub const INTERRUPT_LINE: u8 = 0x3c;
}

/// Command register bit: memory space enable.
pub const COMMAND_MEMORY: u16 = 1 << 1;

/// A function on bus 0.
#[derive(Clone, Copy)]
pub struct Function {
    /// Device number (0..32).
    pub device: u8,
    /// Function number (0..8).
    pub function: u8,
}

impl Function {
    /// Selects register `reg` (its dword) in the address port: one `out` of 32 bits.
    pub fn select(self, reg: u8) {
        outl(
            ADDRESS,
            0x8000_0000
                | u32::from(self.device) << 11
                | u32::from(self.function) << 8
                | u32::from(reg & 0xfc),
        );
    }

    /// Reads the 32-bit register `reg`.
    pub fn read32(self, reg: u8) -> u32 {
        self.select(reg);
        inl(DATA)
    }

    /// Reads the 16-bit register at `reg` (`reg` even).
    pub fn read16(self, reg: u8) -> u16 {
        self.select(reg);
        inw(DATA + u16::from(reg & 2))
    }

    /// Reads the 8-bit register at `reg`.
    pub fn read8(self, reg: u8) -> u8 {
        self.select(reg);
        inb(DATA + u16::from(reg & 3))
    }

    /// Writes the 32-bit register `reg`.
    pub fn write32(self, reg: u8, value: u32) {
        self.select(reg);
        outl(DATA, value);
    }

    /// Writes the 16-bit register at `reg` (`reg` even).
    pub fn write16(self, reg: u8, value: u16) {
        self.select(reg);
        outw(DATA + u16::from(reg & 2), value);
    }

    /// Writes the 8-bit register at `reg`.
    #[allow(dead_code)]
    pub fn write8(self, reg: u8, value: u8) {
        self.select(reg);
        outb(DATA + u16::from(reg & 3), value);
    }
}

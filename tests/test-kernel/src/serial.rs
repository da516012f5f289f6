//! Polled output on the 8250 UART at COM1 (no interrupts, no initialisation: hvprobe's UART
//! needs none).

use core::fmt;

use crate::port::{inb, outb};

/// COM1's base port; the transmit holding register (THR) is at offset 0.
const COM1: u16 = 0x3f8;
/// Line status register.
const LSR: u16 = COM1 + 5;
/// LSR bit 5: the transmit holding register is empty.
const LSR_THRE: u8 = 1 << 5;
/// How many times to poll LSR before writing anyway: every poll is a VM exit, and a UART that
/// never reports THRE must not hang the kernel.
const MAX_POLLS: u32 = 256;

/// The COM1 UART, as a `fmt::Write` sink.
pub struct Serial;

impl Serial {
    /// Sends one byte once the transmitter is ready.
    pub fn write_byte(&mut self, byte: u8) {
        for _ in 0..MAX_POLLS {
            if inb(LSR) & LSR_THRE != 0 {
                break;
            }
            core::hint::spin_loop();
        }
        outb(COM1, byte);
    }

    /// Sends every byte of `bytes`, unchanged (lines end in a bare `\n`).
    pub fn write_bytes(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.write_byte(byte);
        }
    }
}

impl fmt::Write for Serial {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.write_bytes(s.as_bytes());
        Ok(())
    }
}

/// Displays a byte string (from the command line, say): printable ASCII as is, anything else
/// as `\xNN`.
pub struct Bytes<'a>(pub &'a [u8]);

impl fmt::Display for Bytes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for &byte in self.0 {
            if byte == b' ' || byte.is_ascii_graphic() {
                fmt::Write::write_char(f, char::from(byte))?;
            } else {
                write!(f, "\\x{byte:02x}")?;
            }
        }
        Ok(())
    }
}

/// Prints a formatted line on COM1.
macro_rules! kprintln {
    ($($arg:tt)*) => {{
        use core::fmt::Write as _;
        // Serial::write_str never fails.
        let _ = writeln!($crate::serial::Serial, $($arg)*);
    }};
}
pub(crate) use kprintln;

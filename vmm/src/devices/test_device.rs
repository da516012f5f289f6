//! The test device: how a guest says "reached point N", asks the VM to end with an exit
//! code, writes marker lines, and checks that reads come back (like Firecracker's boot timer
//! and QEMU's isa-debug-exit, in one page).
//!
//! Registers (at [`TEST_DEVICE_PORT`] in port space and at
//! [`crate::layout::TEST_DEVICE_MMIO_BASE`] in MMIO space, same offsets):
//!
//! | offset | access | meaning |
//! |---|---|---|
//! | 0x00 | read | ID, [`TEST_DEVICE_ID`] ("HVPT") |
//! | 0x00 | write | POINT n: the guest reached point n |
//! | 0x04 | write | EXIT code: end the VM, hvprobe exits with the code (0..=63) |
//! | 0x08 | write (byte) | MARK: append a byte to the marker line; `\n` ends it |
//! | 0x0c | read/write | SCRATCH: reads back the last value written |
//! | 0x10 | write (32-bit) | ARENA_LO: low half of the trampoline arena's guest-virtual base |
//! | 0x14 | write (32-bit) | ARENA_HI: high half of the arena's base |
//! | 0x18 | write (32-bit) | ARENA_LEN: the arena's length in bytes; completes the report: the device returns [`DeviceAction::Request`] with [`GuestRequest::Arena`] |
//!
//! The ARENA registers read as 0; a 64-bit write to ARENA_LO (MMIO) sets the whole base.

use std::time::Duration;

use super::{BusDevice, DeviceAction, GuestRequest, le_value, put_le};
use crate::phases::Phases;

/// Port base of the test device.
pub const TEST_DEVICE_PORT: u16 = 0x600;
/// Size of the port range (0x600..0x620).
pub const TEST_DEVICE_PORT_LEN: u64 = 0x20;
/// Size of the MMIO range.
pub const TEST_DEVICE_MMIO_LEN: u64 = 0x1000;
/// Value of the ID register.
pub const TEST_DEVICE_ID: u32 = 0x5450_5648;
/// ID / POINT register.
pub const REG_POINT: u64 = 0x0;
/// EXIT register.
pub const REG_EXIT: u64 = 0x4;
/// MARK register.
pub const REG_MARK: u64 = 0x8;
/// SCRATCH register.
pub const REG_SCRATCH: u64 = 0xc;
/// ARENA_LO register: low 32 bits of the trampoline arena's base.
pub const REG_ARENA_LO: u64 = 0x10;
/// ARENA_HI register: high 32 bits of the arena's base.
pub const REG_ARENA_HI: u64 = 0x14;
/// ARENA_LEN register: the arena's length; writing it completes the report.
pub const REG_ARENA_LEN: u64 = 0x18;

const MAX_MARK_LINE: usize = 4096;

/// A point the guest reported, with the time since VM creation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Point {
    /// The point number.
    pub n: u32,
    /// When it was reached.
    pub at: Duration,
}

/// Test device state.
pub struct TestDevice {
    phases: Phases,
    points: Vec<Point>,
    marks: Vec<String>,
    mark_line: Vec<u8>,
    scratch: u64,
    /// The arena base being reported (ARENA_LO / ARENA_HI so far).
    arena_base: u64,
    /// The last complete arena report: (base, len).
    arena: Option<(u64, u64)>,
    mark_listener: Option<MarkListener>,
}

/// Called with each complete MARK line (a tracer writes it into the trace).
pub type MarkListener = Box<dyn Fn(&str) + Send>;

impl TestDevice {
    /// A new device logging through `phases`.
    pub fn new(phases: Phases) -> Self {
        TestDevice {
            phases,
            points: Vec::new(),
            marks: Vec::new(),
            mark_line: Vec::new(),
            scratch: 0,
            arena_base: 0,
            arena: None,
            mark_listener: None,
        }
    }

    /// Calls `listener` with every complete MARK line from now on.
    pub fn set_mark_listener(&mut self, listener: MarkListener) {
        self.mark_listener = Some(listener);
    }

    /// Points reached so far, in order.
    pub fn points(&self) -> &[Point] {
        &self.points
    }

    /// Complete marker lines so far.
    pub fn marks(&self) -> &[String] {
        &self.marks
    }

    /// The trampoline arena the guest reported last, as (guest-virtual base, length).
    pub fn arena(&self) -> Option<(u64, u64)> {
        self.arena
    }
}

impl BusDevice for TestDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match offset {
            REG_POINT => put_le(data, u64::from(TEST_DEVICE_ID)),
            REG_SCRATCH => put_le(data, self.scratch),
            _ => put_le(data, 0),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> DeviceAction {
        let v = le_value(data);
        match offset {
            REG_POINT => {
                let n = u32::try_from(v & 0xffff_ffff).unwrap_or(u32::MAX);
                let at = self.phases.elapsed();
                self.points.push(Point { n, at });
                self.phases.log(format_args!("guest: reached point {n}"));
                DeviceAction::None
            }
            REG_EXIT => DeviceAction::Exit(u32::try_from(v & 0xffff_ffff).unwrap_or(u32::MAX)),
            REG_MARK => {
                for &b in data.iter().take(1) {
                    if b == b'\n' || self.mark_line.len() >= MAX_MARK_LINE {
                        let line = String::from_utf8_lossy(&self.mark_line).into_owned();
                        self.phases.log(format_args!("guest mark: {line}"));
                        if let Some(l) = &self.mark_listener {
                            l(&line);
                        }
                        self.marks.push(line);
                        self.mark_line.clear();
                    }
                    if b != b'\n' {
                        self.mark_line.push(b);
                    }
                }
                DeviceAction::None
            }
            REG_SCRATCH => {
                self.scratch = v;
                DeviceAction::None
            }
            REG_ARENA_LO => {
                self.arena_base = if data.len() >= 8 {
                    v
                } else {
                    (self.arena_base & !0xffff_ffff) | (v & 0xffff_ffff)
                };
                DeviceAction::None
            }
            REG_ARENA_HI => {
                self.arena_base = (self.arena_base & 0xffff_ffff) | ((v & 0xffff_ffff) << 32);
                DeviceAction::None
            }
            REG_ARENA_LEN => {
                let (base, len) = (self.arena_base, v & 0xffff_ffff);
                self.arena = Some((base, len));
                self.phases.log(format_args!(
                    "guest: trampoline arena at {base:#x}, {len:#x} bytes"
                ));
                DeviceAction::Request(GuestRequest::Arena { base, len })
            }
            _ => DeviceAction::None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_behave_as_documented() {
        let mut d = TestDevice::new(Phases::new(true));
        let mut b = [0u8; 4];
        d.read(REG_POINT, &mut b);
        assert_eq!(&b, b"HVPT");
        assert_eq!(d.write(REG_POINT, &7u32.to_le_bytes()), DeviceAction::None);
        assert_eq!(d.points()[0].n, 7);
        assert_eq!(
            d.write(REG_EXIT, &3u32.to_le_bytes()),
            DeviceAction::Exit(3)
        );
        d.write(REG_SCRATCH, &0x1122_3344_5566_7788u64.to_le_bytes());
        let mut q = [0u8; 8];
        d.read(REG_SCRATCH, &mut q);
        assert_eq!(u64::from_le_bytes(q), 0x1122_3344_5566_7788);
        for c in b"hi\n" {
            d.write(REG_MARK, &[*c]);
        }
        assert_eq!(d.marks(), ["hi"]);

        assert_eq!(d.arena(), None);
        assert_eq!(
            d.write(REG_ARENA_LO, &0x0011_d000u32.to_le_bytes()),
            DeviceAction::None
        );
        assert_eq!(
            d.write(REG_ARENA_HI, &0x1u32.to_le_bytes()),
            DeviceAction::None
        );
        assert_eq!(d.arena(), None, "not complete before ARENA_LEN");
        assert_eq!(
            d.write(REG_ARENA_LEN, &0x80_0000u32.to_le_bytes()),
            DeviceAction::Request(GuestRequest::Arena {
                base: 0x1_0011_d000,
                len: 0x80_0000
            })
        );
        assert_eq!(d.arena(), Some((0x1_0011_d000, 0x80_0000)));
        // A 64-bit MMIO write to ARENA_LO sets the whole base.
        d.write(REG_ARENA_LO, &0xffff_8000_0020_0000u64.to_le_bytes());
        d.write(REG_ARENA_LEN, &0x1000u32.to_le_bytes());
        assert_eq!(d.arena(), Some((0xffff_8000_0020_0000, 0x1000)));
        let mut r = [0xffu8; 4];
        d.read(REG_ARENA_LEN, &mut r);
        assert_eq!(r, [0; 4], "the ARENA registers read as 0");
    }

    #[test]
    fn every_register_is_inside_the_port_window() {
        for reg in [
            REG_POINT,
            REG_EXIT,
            REG_MARK,
            REG_SCRATCH,
            REG_ARENA_LO,
            REG_ARENA_HI,
            REG_ARENA_LEN,
        ] {
            assert!(reg + 4 <= TEST_DEVICE_PORT_LEN, "{reg:#x}");
            assert!(reg + 4 <= TEST_DEVICE_MMIO_LEN, "{reg:#x}");
        }
    }
}

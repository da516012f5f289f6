//! A traced guest RAM range: mapped on the MMIO bus over RAM whose memory slot was taken
//! away (or made read-only), it performs each access on the backing memory, exactly as the
//! CPU would have, and reports it. See [`crate::vm::Vm::trace_ram`].

use crate::memory::{Gpa, GuestMem};

use super::{BusDevice, DeviceAction, le_value};

/// One access to a traced RAM range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RamAccess {
    /// Guest-physical address.
    pub gpa: u64,
    /// 1, 2, 4 or 8 bytes.
    pub width: u8,
    /// The value read or written.
    pub value: u64,
    /// A write (else a read).
    pub write: bool,
}

/// Receives every access (called on the vCPU thread, inside the exit: keep it cheap).
pub type RamRecorder = Box<dyn Fn(RamAccess) + Send>;

/// The MMIO-bus device over a traced RAM range.
pub struct TracedRam {
    mem: GuestMem,
    base: u64,
    record: RamRecorder,
}

impl TracedRam {
    /// A device for the range starting at `base`, backed by `mem`, reporting to `record`.
    pub fn new(mem: GuestMem, base: u64, record: RamRecorder) -> Self {
        TracedRam { mem, base, record }
    }
}

impl BusDevice for TracedRam {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let gpa = self.base + offset;
        if self.mem.read(Gpa(gpa), data).is_err() {
            data.fill(0xff);
        }
        let width = u8::try_from(data.len()).unwrap_or(u8::MAX);
        (self.record)(RamAccess {
            gpa,
            width,
            value: le_value(data),
            write: false,
        });
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> DeviceAction {
        let gpa = self.base + offset;
        // The range is guest RAM by construction; a failed write has nowhere else to go.
        let _ = self.mem.write(Gpa(gpa), data);
        let width = u8::try_from(data.len()).unwrap_or(u8::MAX);
        (self.record)(RamAccess {
            gpa,
            width,
            value: le_value(data),
            write: true,
        });
        DeviceAction::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn accesses_hit_the_backing_memory_and_are_reported() {
        let mem = GuestMem::new(16 << 20).unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let l = log.clone();
        let mut dev = TracedRam::new(
            mem.clone(),
            0x20_0000,
            Box::new(move |a| l.lock().unwrap().push(a)),
        );
        dev.write(8, &0xdead_beefu32.to_le_bytes());
        let mut b = [0u8; 2];
        dev.read(8, &mut b);
        assert_eq!(u16::from_le_bytes(b), 0xbeef);
        assert_eq!(
            mem.read_u64(Gpa(0x20_0008)).unwrap() & 0xffff_ffff,
            0xdead_beef
        );
        let log = log.lock().unwrap();
        assert_eq!(
            log[0],
            RamAccess {
                gpa: 0x20_0008,
                width: 4,
                value: 0xdead_beef,
                write: true
            }
        );
        assert_eq!(
            log[1],
            RamAccess {
                gpa: 0x20_0008,
                width: 2,
                value: 0xbeef,
                write: false
            }
        );
    }
}

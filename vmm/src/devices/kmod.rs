//! `kmod`: hvprobe's own PCI device, the discovery point and mailbox of the guest module
//! (`guest-kmod/`, `hvprobe_guest.ko`). The module is a PCI driver for it, so on a VM without
//! hvprobe it binds nothing and does nothing.
//!
//! PCI function 00:02.0 ([`KMOD_BDF`]), vendor 0x1234 ([`KMOD_VENDOR_ID`], the ID QEMU's
//! test devices such as `edu` use), device 0x4856 ([`KMOD_DEVICE_ID`], "HV"), class 0xff
//! (unassigned), one 32-bit memory BAR0 of 4 KiB, interrupt pin A on line / GSI 10
//! ([`KMOD_IRQ`]). Registers (32-bit accesses; the four region registers also 64-bit):
//!
//! | offset | access | meaning |
//! |---|---|---|
//! | 0x00 | RO | magic [`KMOD_MAGIC`] ("HVPK") |
//! | 0x04 | RO | protocol version [`KMOD_VERSION`] |
//! | 0x08 | RO | capabilities: bit 0 arena, bit 1 barrier, bit 2 MARK, bit 3 handler calls |
//! | 0x0c | RO | status: bit 0 arena in use, bit 1 arena refused, bit 2 arena released |
//! | 0x10 / 0x18 | RW | arena code region: guest-virtual base / length |
//! | 0x20 / 0x28 | RW | arena data region: guest-virtual base / length |
//! | 0x30 | WO | command: 1 attach the arena (the four values above), 2 release it (rmmod) |
//! | 0x34 | RO | interrupt causes: bit 0 a barrier is wanted |
//! | 0x38 | WO | interrupt acknowledge (clears the bits written) |
//! | 0x3c | RO | barrier sequence number hvprobe wants |
//! | 0x40 | WO | barrier sequence number the module completed |
//! | 0x48 | WO | MARK text, 1 to 8 bytes a write: NUL bytes skipped, `\n` ends the line |
//! | 0x50 | RW | the module's handler for handler-call trampolines: guest-virtual address |
//!
//! MARK lines (the module's `/dev/hvprobe_mark`: what guest programs write there) go to the
//! listener set with [`KmodHandle::set_mark_listener`] (a MARK event in the VM's event hub).
//!
//! Commands and barrier completions become [`GuestRequest::Kmod`] for the introspection
//! layer, handled on the writing vCPU's thread before it runs on; that layer answers through
//! a [`KmodHandle`] (status, barrier requests). Guest values are only recorded here: the
//! layer checks them.

use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;

use super::pci::{Bdf, MemoryBar, PciBus, PciError, PciFunctionInfo};
use super::{BusDevice, DeviceAction, GuestRequest, le_value, put_le};

/// The PCI function the VM puts the device at.
pub const KMOD_BDF: Bdf = Bdf::new(2, 0);
/// PCI vendor ID.
pub const KMOD_VENDOR_ID: u16 = 0x1234;
/// PCI device ID ("HV").
pub const KMOD_DEVICE_ID: u16 = 0x4856;
/// BAR0 size.
pub const KMOD_BAR_SIZE: u64 = 0x1000;
/// Interrupt line (and GSI of the irqfd).
pub const KMOD_IRQ: u8 = 10;
/// "HVPK", little-endian.
pub const KMOD_MAGIC: u32 = 0x4b50_5648;
/// Protocol version.
pub const KMOD_VERSION: u32 = 1;
/// Capability: an arena is taken.
pub const CAP_ARENA: u32 = 1 << 0;
/// Capability: barriers are requested.
pub const CAP_BARRIER: u32 = 1 << 1;
/// Capability: MARK lines are taken.
pub const CAP_MARK: u32 = 1 << 2;
/// Capability: trampolines may call the module's handler (register 0x50).
pub const CAP_HANDLER: u32 = 1 << 3;
/// A MARK line longer than this is cut into lines of this length.
pub const MAX_MARK_LINE: usize = 4096;
/// Status: the arena is in use.
pub const STATUS_ARENA: u32 = 1 << 0;
/// Status: the arena was refused.
pub const STATUS_REFUSED: u32 = 1 << 1;
/// Status: the arena was released.
pub const STATUS_RELEASED: u32 = 1 << 2;
/// Interrupt cause: a barrier is wanted.
pub const IRQ_BARRIER: u32 = 1 << 0;

/// The configuration-space identity of the device.
pub const KMOD_PCI_INFO: PciFunctionInfo = PciFunctionInfo {
    vendor: KMOD_VENDOR_ID,
    device: KMOD_DEVICE_ID,
    class: 0xff_00_00,
    revision: 0x01,
    subsystem_vendor: KMOD_VENDOR_ID,
    subsystem: KMOD_DEVICE_ID,
    interrupt: Some((KMOD_IRQ, 1)),
    name: "hvprobe-kmod",
};

/// Register offsets in BAR0.
pub mod reg {
    /// Magic (RO).
    pub const MAGIC: u64 = 0x00;
    /// Version (RO).
    pub const VERSION: u64 = 0x04;
    /// Capabilities (RO).
    pub const CAPS: u64 = 0x08;
    /// Status (RO).
    pub const STATUS: u64 = 0x0c;
    /// Code region base.
    pub const CODE_BASE: u64 = 0x10;
    /// Code region length.
    pub const CODE_LEN: u64 = 0x18;
    /// Data region base.
    pub const DATA_BASE: u64 = 0x20;
    /// Data region length.
    pub const DATA_LEN: u64 = 0x28;
    /// Command (WO).
    pub const COMMAND: u64 = 0x30;
    /// Interrupt causes (RO).
    pub const IRQ_STATUS: u64 = 0x34;
    /// Interrupt acknowledge (WO).
    pub const IRQ_ACK: u64 = 0x38;
    /// Barrier sequence wanted (RO).
    pub const BARRIER_SEQ: u64 = 0x3c;
    /// Barrier sequence done (WO).
    pub const BARRIER_DONE: u64 = 0x40;
    /// MARK text (WO).
    pub const MARK: u64 = 0x48;
    /// The module's handler (RW, 64-bit).
    pub const HANDLER: u64 = 0x50;
}

/// Command: attach the arena.
pub const CMD_ATTACH: u32 = 1;
/// Command: release the arena.
pub const CMD_RELEASE: u32 = 2;

/// What the guest module asks of the introspection layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KmodRequest {
    /// Take the arena: `code` is executable in the guest, `data` writable (guest-virtual
    /// base and length each), as the guest claims them.
    Attach {
        /// Code region (base, length).
        code: (u64, u64),
        /// Data region (base, length).
        data: (u64, u64),
        /// The module's handler for handler-call trampolines (0: none).
        handler: u64,
    },
    /// The module is unloading: every jump into the arena must be undone now.
    Release,
    /// The barrier with this sequence number completed in the guest.
    BarrierDone(u32),
}

#[derive(Debug, Default)]
struct Regs {
    code: (u64, u64),
    data: (u64, u64),
    handler: u64,
    status: u32,
    irq_status: u32,
    barrier_seq: u32,
    barrier_done: u32,
    mark_line: Vec<u8>,
    marks: u64,
}

/// Called with each complete MARK line.
pub type MarkListener = Box<dyn Fn(&str) + Send>;

/// The device's registers (the MMIO side; its configuration space is in [`PciBus`]).
pub struct KmodDevice {
    regs: Arc<Mutex<Regs>>,
    marks: Arc<Mutex<Option<MarkListener>>>,
}

/// The introspection layer's side of the device: status and barrier requests.
#[derive(Clone)]
pub struct KmodHandle {
    regs: Arc<Mutex<Regs>>,
    irq: Option<Arc<EventFd>>,
    marks: Arc<Mutex<Option<MarkListener>>>,
}

fn locked(r: &Mutex<Regs>) -> std::sync::MutexGuard<'_, Regs> {
    r.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl KmodDevice {
    /// A device and its handle; `irq` is an eventfd registered as an irqfd on [`KMOD_IRQ`]
    /// (`None` in tests).
    pub fn new(irq: Option<EventFd>) -> (Self, KmodHandle) {
        let regs = Arc::new(Mutex::new(Regs::default()));
        let marks = Arc::new(Mutex::new(None));
        (
            KmodDevice {
                regs: regs.clone(),
                marks: marks.clone(),
            },
            KmodHandle {
                regs,
                irq: irq.map(Arc::new),
                marks,
            },
        )
    }

    /// Adds the device to `bus` at [`KMOD_BDF`].
    pub fn attach(dev: Arc<Mutex<KmodDevice>>, bus: &PciBus) -> Result<(), PciError> {
        bus.add_function(
            KMOD_BDF,
            &KMOD_PCI_INFO,
            vec![MemoryBar {
                index: 0,
                size: KMOD_BAR_SIZE,
                device: dev,
            }],
        )
    }
}

impl KmodHandle {
    /// Sets the status bits the module reads after a command.
    pub fn set_status(&self, status: u32) {
        locked(&self.regs).status = status;
    }

    /// Asks the module for a quiescence barrier (interrupt); returns its sequence number.
    pub fn request_barrier(&self) -> u32 {
        let seq = {
            let mut r = locked(&self.regs);
            r.barrier_seq = r.barrier_seq.wrapping_add(1);
            r.irq_status |= IRQ_BARRIER;
            r.barrier_seq
        };
        if let Some(irq) = &self.irq {
            // A full eventfd counter still has the interrupt pending: nothing is lost.
            let _ = irq.write(1);
        }
        seq
    }

    /// The last barrier sequence number requested.
    pub fn barrier_wanted(&self) -> u32 {
        locked(&self.regs).barrier_seq
    }

    /// Calls `listener` with every complete MARK line from now on (on the writing vCPU's
    /// thread, with the device's registers locked: it must not block).
    pub fn set_mark_listener(&self, listener: MarkListener) {
        *self
            .marks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(listener);
    }

    /// MARK lines the guest wrote so far.
    pub fn marks(&self) -> u64 {
        locked(&self.regs).marks
    }
}

impl KmodDevice {
    fn mark_bytes(&self, r: &mut Regs, data: &[u8]) {
        for &b in data {
            if b == 0 {
                continue;
            }
            if b != b'\n' {
                r.mark_line.push(b);
            }
            if b == b'\n' || r.mark_line.len() >= MAX_MARK_LINE {
                let line = String::from_utf8_lossy(&r.mark_line).into_owned();
                r.mark_line.clear();
                r.marks += 1;
                if let Some(l) = self
                    .marks
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .as_ref()
                {
                    l(&line);
                }
            }
        }
    }
}

impl BusDevice for KmodDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let r = locked(&self.regs);
        let v = match (offset, data.len()) {
            (reg::MAGIC, 4) => u64::from(KMOD_MAGIC),
            (reg::VERSION, 4) => u64::from(KMOD_VERSION),
            (reg::CAPS, 4) => u64::from(CAP_ARENA | CAP_BARRIER | CAP_MARK | CAP_HANDLER),
            (reg::HANDLER, 4 | 8) => r.handler,
            (reg::STATUS, 4) => u64::from(r.status),
            (reg::CODE_BASE, 4 | 8) => r.code.0,
            (reg::CODE_LEN, 4 | 8) => r.code.1,
            (reg::DATA_BASE, 4 | 8) => r.data.0,
            (reg::DATA_LEN, 4 | 8) => r.data.1,
            (reg::IRQ_STATUS, 4) => u64::from(r.irq_status),
            (reg::BARRIER_SEQ, 4) => u64::from(r.barrier_seq),
            _ => u64::MAX,
        };
        put_le(data, v);
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> DeviceAction {
        let v = le_value(data);
        let v32 = u32::try_from(v & 0xffff_ffff).unwrap_or(0);
        let mut r = locked(&self.regs);
        let set = |old: u64| match data.len() {
            8 => v,
            _ => (old & !0xffff_ffff) | (v & 0xffff_ffff),
        };
        match (offset, data.len()) {
            (reg::CODE_BASE, 4 | 8) => r.code.0 = set(r.code.0),
            (0x14, 4) => r.code.0 = (r.code.0 & 0xffff_ffff) | (v << 32),
            (reg::CODE_LEN, 4 | 8) => r.code.1 = set(r.code.1),
            (reg::DATA_BASE, 4 | 8) => r.data.0 = set(r.data.0),
            (0x24, 4) => r.data.0 = (r.data.0 & 0xffff_ffff) | (v << 32),
            (reg::DATA_LEN, 4 | 8) => r.data.1 = set(r.data.1),
            (reg::HANDLER, 4 | 8) => r.handler = set(r.handler),
            (0x54, 4) => r.handler = (r.handler & 0xffff_ffff) | (v << 32),
            (reg::COMMAND, 4) => {
                let req = match v32 {
                    CMD_ATTACH => KmodRequest::Attach {
                        code: r.code,
                        data: r.data,
                        handler: r.handler,
                    },
                    CMD_RELEASE => KmodRequest::Release,
                    _ => return DeviceAction::None,
                };
                // The layer sets the outcome before the guest runs on.
                r.status = 0;
                return DeviceAction::Request(GuestRequest::Kmod(req));
            }
            (reg::IRQ_ACK, 4) => r.irq_status &= !v32,
            (reg::MARK, 1 | 2 | 4 | 8) => self.mark_bytes(&mut r, data),
            (reg::BARRIER_DONE, 4) => {
                r.barrier_done = v32;
                return DeviceAction::Request(GuestRequest::Kmod(KmodRequest::BarrierDone(v32)));
            }
            _ => {}
        }
        DeviceAction::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r32(d: &mut KmodDevice, off: u64) -> u32 {
        let mut b = [0u8; 4];
        d.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn identity_and_an_arena_report_become_a_request() {
        let (mut d, h) = KmodDevice::new(None);
        assert_eq!(r32(&mut d, reg::MAGIC), KMOD_MAGIC);
        assert_eq!(r32(&mut d, reg::VERSION), KMOD_VERSION);
        assert_eq!(
            r32(&mut d, reg::CAPS),
            CAP_ARENA | CAP_BARRIER | CAP_MARK | CAP_HANDLER
        );
        let w64 = |d: &mut KmodDevice, off, v: u64| d.write(off, &v.to_le_bytes());
        w64(&mut d, reg::CODE_BASE, 0xffff_ffff_c000_1000);
        w64(&mut d, reg::CODE_LEN, 0x1_0000);
        // 32-bit halves work too.
        d.write(reg::DATA_BASE, &0xc010_0000u32.to_le_bytes());
        d.write(0x24, &0xffff_ffffu32.to_le_bytes());
        w64(&mut d, reg::DATA_LEN, 0x10_0000);
        w64(&mut d, reg::HANDLER, 0xffff_ffff_c000_0040);
        assert_eq!(
            d.write(reg::COMMAND, &CMD_ATTACH.to_le_bytes()),
            DeviceAction::Request(GuestRequest::Kmod(KmodRequest::Attach {
                code: (0xffff_ffff_c000_1000, 0x1_0000),
                data: (0xffff_ffff_c010_0000, 0x10_0000),
                handler: 0xffff_ffff_c000_0040,
            }))
        );
        assert_eq!(r32(&mut d, reg::STATUS), 0);
        h.set_status(STATUS_ARENA);
        assert_eq!(r32(&mut d, reg::STATUS), STATUS_ARENA);
        assert_eq!(
            d.write(reg::COMMAND, &CMD_RELEASE.to_le_bytes()),
            DeviceAction::Request(GuestRequest::Kmod(KmodRequest::Release))
        );
        assert_eq!(
            d.write(reg::COMMAND, &7u32.to_le_bytes()),
            DeviceAction::None
        );
        let mut b = [0u8; 4];
        d.read(0x800, &mut b);
        assert_eq!(b, [0xff; 4], "unknown offsets read all-ones");
    }

    #[test]
    fn mark_text_in_chunks_becomes_lines_for_the_listener() {
        let (mut d, h) = KmodDevice::new(None);
        let seen = Arc::new(Mutex::new(Vec::<String>::new()));
        let s = seen.clone();
        h.set_mark_listener(Box::new(move |l| s.lock().unwrap().push(l.to_string())));
        // "hello world\n" as the module writes it: 8 bytes, then the rest padded with NULs.
        d.write(reg::MARK, b"hello wo");
        d.write(reg::MARK, b"rld\n\0\0\0\0");
        d.write(reg::MARK, b"two\0\0\0\0\0");
        d.write(reg::MARK, &u32::from(b'\n').to_le_bytes());
        d.write(reg::MARK, b"x");
        assert_eq!(*seen.lock().unwrap(), ["hello world", "two"]);
        assert_eq!(h.marks(), 2);
        // An endless line is cut.
        for _ in 0..MAX_MARK_LINE / 8 {
            d.write(reg::MARK, b"aaaaaaaa");
        }
        assert_eq!(seen.lock().unwrap().len(), 3);
        assert_eq!(seen.lock().unwrap()[2].len(), MAX_MARK_LINE);
        // Other widths are ignored.
        d.write(reg::MARK, b"abc");
        assert_eq!(h.marks(), 3);
    }

    #[test]
    fn a_barrier_request_raises_the_cause_until_acknowledged_and_completion_is_a_request() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let (mut d, h) = KmodDevice::new(Some(irq.try_clone().unwrap()));
        assert_eq!(r32(&mut d, reg::IRQ_STATUS), 0);
        assert_eq!(h.request_barrier(), 1);
        assert_eq!(irq.read().unwrap(), 1, "the interrupt was signalled");
        assert_eq!(r32(&mut d, reg::IRQ_STATUS), IRQ_BARRIER);
        assert_eq!(r32(&mut d, reg::BARRIER_SEQ), 1);
        d.write(reg::IRQ_ACK, &IRQ_BARRIER.to_le_bytes());
        assert_eq!(r32(&mut d, reg::IRQ_STATUS), 0);
        assert_eq!(
            d.write(reg::BARRIER_DONE, &1u32.to_le_bytes()),
            DeviceAction::Request(GuestRequest::Kmod(KmodRequest::BarrierDone(1)))
        );
        assert_eq!(h.request_barrier(), 2);
        assert_eq!(h.barrier_wanted(), 2);
    }
}

//! `edu`: a small PCI device to drive and trace, in the spirit of QEMU's `edu`
//! (`docs/specs/edu.rst`): identification, a liveness check, a factorial computation, an
//! interrupt, and a DMA-like transfer between guest RAM and a device buffer.
//!
//! PCI function 00:01.0 ([`EDU_BDF`]), vendor 0x1234, device 0x11e8, one 32-bit memory BAR0
//! of 1 MiB ([`EDU_BAR_SIZE`]) whose first 4 KiB are the registers, interrupt pin A on
//! line / GSI 11 ([`EDU_IRQ`]). Registers (32-bit accesses; 64-bit too from 0x80):
//!
//! | offset | access | meaning |
//! |---|---|---|
//! | 0x00 | RO | ID, [`EDU_ID`] (0x010000ed: version 1.0, "ed"u) |
//! | 0x04 | RW | liveness check: reads back the bitwise inverse of what was written |
//! | 0x08 | RW | factorial: writing n computes n! (32-bit, wrapping); reads the result |
//! | 0x20 | RW | status: bit 0 (RO) computing, bit 7 (RW) raise interrupt 0x1 when a factorial finishes |
//! | 0x24 | RO | interrupt status |
//! | 0x60 | WO | interrupt raise: ORs the value into the interrupt status, asserts the line |
//! | 0x64 | WO | interrupt acknowledge: clears those bits; the line drops when the status is 0 |
//! | 0x80 | RW | DMA source address |
//! | 0x88 | RW | DMA destination address |
//! | 0x90 | RW | DMA count (at most 4096) |
//! | 0x98 | RW | DMA command: bit 0 start (reads 0 once done), bit 1 direction (0: RAM -> device buffer, 1: device buffer -> RAM), bit 2 raise interrupt 0x100 when done |
//!
//! The device buffer is 4 KiB at device address [`DMA_BUFFER_ADDR`] (0x40000): the
//! device-side address of a transfer (destination for RAM -> device, source for
//! device -> RAM) must fall in it; RAM addresses are guest-physical. Out-of-range transfers
//! do nothing. Unknown offsets read all-ones; writes there are ignored.
//!
//! The factorial is computed at the write, but the first status read after it still reports
//! "computing" (bit 0), so a driver has to poll at least once, as with the real device. DMA
//! is done at the command write: the first read of 0x98 shows it finished.
//!
//! The interrupt goes out through an irqfd on GSI 11 on every raise (an edge; the interrupt
//! status register holds the level, which is what the test kernel polls).

use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;

use super::pci::{Bdf, MemoryBar, PciBus, PciError, PciFunctionInfo};
use super::{BusDevice, DeviceAction, le_value, put_le};
use crate::memory::{Gpa, GuestMem};

/// The PCI function the VM puts `edu` at.
pub const EDU_BDF: Bdf = Bdf::new(1, 0);
/// PCI vendor ID (QEMU's).
pub const EDU_VENDOR_ID: u16 = 0x1234;
/// PCI device ID.
pub const EDU_DEVICE_ID: u16 = 0x11e8;
/// BAR0 size.
pub const EDU_BAR_SIZE: u64 = 1 << 20;
/// Size of the register page at the start of BAR0.
pub const EDU_REGS_SIZE: u64 = 0x1000;
/// Interrupt line (and GSI of the irqfd).
pub const EDU_IRQ: u8 = 11;
/// Value of the ID register.
pub const EDU_ID: u32 = 0x0100_00ed;
/// Device address of the DMA buffer.
pub const DMA_BUFFER_ADDR: u64 = 0x4_0000;
/// Size of the DMA buffer.
pub const DMA_BUFFER_SIZE: usize = 0x1000;

/// The configuration-space identity of `edu`.
pub const EDU_PCI_INFO: PciFunctionInfo = PciFunctionInfo {
    vendor: EDU_VENDOR_ID,
    device: EDU_DEVICE_ID,
    class: 0x00_ff_00,
    revision: 0x10,
    subsystem_vendor: 0x1af4,
    subsystem: 0x1100,
    interrupt: Some((EDU_IRQ, 1)),
    name: "edu",
};

/// Register offsets in BAR0.
pub mod reg {
    /// ID (RO).
    pub const ID: u64 = 0x00;
    /// Liveness check (RW, reads the inverse).
    pub const LIVENESS: u64 = 0x04;
    /// Factorial (RW).
    pub const FACTORIAL: u64 = 0x08;
    /// Status.
    pub const STATUS: u64 = 0x20;
    /// Interrupt status (RO).
    pub const IRQ_STATUS: u64 = 0x24;
    /// Interrupt raise (WO).
    pub const IRQ_RAISE: u64 = 0x60;
    /// Interrupt acknowledge (WO).
    pub const IRQ_ACK: u64 = 0x64;
    /// DMA source address.
    pub const DMA_SRC: u64 = 0x80;
    /// DMA destination address.
    pub const DMA_DST: u64 = 0x88;
    /// DMA count.
    pub const DMA_COUNT: u64 = 0x90;
    /// DMA command.
    pub const DMA_CMD: u64 = 0x98;
}

/// Status: a factorial is being computed.
pub const STATUS_COMPUTING: u32 = 0x01;
/// Status: raise [`IRQ_FACTORIAL`] when a factorial finishes.
pub const STATUS_IRQ_FACTORIAL: u32 = 0x80;
/// Interrupt status bit of a finished factorial.
pub const IRQ_FACTORIAL: u32 = 0x001;
/// Interrupt status bit of a finished DMA.
pub const IRQ_DMA: u32 = 0x100;
/// DMA command: start.
pub const DMA_START: u64 = 0x1;
/// DMA command: device buffer -> RAM (clear: RAM -> device buffer).
pub const DMA_TO_RAM: u64 = 0x2;
/// DMA command: raise [`IRQ_DMA`] when done.
pub const DMA_IRQ: u64 = 0x4;

/// The `edu` device's registers and DMA engine (the MMIO side; its configuration space is in
/// [`PciBus`]).
pub struct EduDevice {
    mem: GuestMem,
    irq: Option<EventFd>,
    liveness: u32,
    factorial: u32,
    /// Status reads left that still say "computing".
    computing_reads: u8,
    irq_on_factorial: bool,
    irq_status: u32,
    dma_src: u64,
    dma_dst: u64,
    dma_count: u64,
    dma_cmd: u64,
    buffer: Box<[u8; DMA_BUFFER_SIZE]>,
    interrupts: u64,
}

impl EduDevice {
    /// A device doing DMA in `mem` and signalling `irq` (an eventfd registered as an irqfd
    /// on [`EDU_IRQ`]; `None` in tests).
    pub fn new(mem: GuestMem, irq: Option<EventFd>) -> Self {
        EduDevice {
            mem,
            irq,
            liveness: 0,
            factorial: 0,
            computing_reads: 0,
            irq_on_factorial: false,
            irq_status: 0,
            dma_src: 0,
            dma_dst: 0,
            dma_count: 0,
            dma_cmd: 0,
            buffer: Box::new([0; DMA_BUFFER_SIZE]),
            interrupts: 0,
        }
    }

    /// Adds `edu` (already shared) to `bus` at [`EDU_BDF`], BAR0 of [`EDU_BAR_SIZE`].
    pub fn attach(dev: Arc<Mutex<EduDevice>>, bus: &PciBus) -> Result<(), PciError> {
        bus.add_function(
            EDU_BDF,
            &EDU_PCI_INFO,
            vec![MemoryBar {
                index: 0,
                size: EDU_BAR_SIZE,
                device: dev,
            }],
        )
    }

    /// The DMA buffer.
    pub fn buffer(&self) -> &[u8] {
        &self.buffer[..]
    }

    /// The interrupt status register.
    pub fn irq_status(&self) -> u32 {
        self.irq_status
    }

    /// How often the line was asserted.
    pub fn interrupts(&self) -> u64 {
        self.interrupts
    }

    fn raise(&mut self, bits: u32) {
        self.irq_status |= bits;
        if self.irq_status != 0 {
            self.interrupts += 1;
            if let Some(irq) = &self.irq {
                // A full eventfd counter still has the interrupt pending: nothing is lost.
                let _ = irq.write(1);
            }
        }
    }

    fn status(&mut self) -> u32 {
        let mut s = if self.irq_on_factorial {
            STATUS_IRQ_FACTORIAL
        } else {
            0
        };
        if self.computing_reads > 0 {
            self.computing_reads -= 1;
            s |= STATUS_COMPUTING;
        }
        s
    }

    /// The device-buffer index range of a transfer's device side, if valid.
    fn buffer_range(&self, device_addr: u64) -> Option<std::ops::Range<usize>> {
        let start = usize::try_from(device_addr.checked_sub(DMA_BUFFER_ADDR)?).ok()?;
        let count = usize::try_from(self.dma_count).ok()?;
        let end = start.checked_add(count)?;
        (end <= DMA_BUFFER_SIZE).then_some(start..end)
    }

    fn run_dma(&mut self) {
        let to_ram = self.dma_cmd & DMA_TO_RAM != 0;
        let done = if to_ram {
            self.buffer_range(self.dma_src).is_some_and(|r| {
                let (mem, buf) = (&self.mem, &self.buffer[r]);
                mem.write(Gpa(self.dma_dst), buf).is_ok()
            })
        } else {
            match self.buffer_range(self.dma_dst) {
                Some(r) => self
                    .mem
                    .read(Gpa(self.dma_src), &mut self.buffer[r])
                    .is_ok(),
                None => false,
            }
        };
        self.dma_cmd &= !DMA_START;
        if done && self.dma_cmd & DMA_IRQ != 0 {
            self.raise(IRQ_DMA);
        }
    }
}

impl BusDevice for EduDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let v = match (offset, data.len()) {
            (reg::ID, 4) => u64::from(EDU_ID),
            (reg::LIVENESS, 4) => u64::from(!self.liveness),
            (reg::FACTORIAL, 4) => u64::from(self.factorial),
            (reg::STATUS, 4) => u64::from(self.status()),
            (reg::IRQ_STATUS, 4) => u64::from(self.irq_status),
            (reg::DMA_SRC, 4 | 8) => self.dma_src,
            (reg::DMA_DST, 4 | 8) => self.dma_dst,
            (reg::DMA_COUNT, 4 | 8) => self.dma_count,
            (reg::DMA_CMD, 4 | 8) => self.dma_cmd,
            _ => u64::MAX,
        };
        put_le(data, v);
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> DeviceAction {
        let v = le_value(data);
        let v32 = u32::try_from(v & 0xffff_ffff).unwrap_or(0);
        match (offset, data.len()) {
            (reg::LIVENESS, 4) => self.liveness = v32,
            (reg::FACTORIAL, 4) => {
                // 2^32 divides n! from n = 34 on (34! has 32 factors of 2): a guest writing
                // 0xffffffff must not keep its vCPU multiplying for seconds.
                self.factorial = if v32 >= 34 {
                    0
                } else {
                    (1..=v32).fold(1u32, u32::wrapping_mul)
                };
                self.computing_reads = 1;
                if self.irq_on_factorial {
                    self.raise(IRQ_FACTORIAL);
                }
            }
            (reg::STATUS, 4) => self.irq_on_factorial = v32 & STATUS_IRQ_FACTORIAL != 0,
            (reg::IRQ_RAISE, 4) => self.raise(v32),
            (reg::IRQ_ACK, 4) => self.irq_status &= !v32,
            (reg::DMA_SRC, 4 | 8) => self.dma_src = v,
            (reg::DMA_DST, 4 | 8) => self.dma_dst = v,
            (reg::DMA_COUNT, 4 | 8) => self.dma_count = v,
            (reg::DMA_CMD, 4 | 8) => {
                self.dma_cmd = v & (DMA_START | DMA_TO_RAM | DMA_IRQ);
                if self.dma_cmd & DMA_START != 0 {
                    self.run_dma();
                }
            }
            _ => {}
        }
        DeviceAction::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edu() -> EduDevice {
        EduDevice::new(GuestMem::new(16 << 20).unwrap(), None)
    }

    fn r32(d: &mut EduDevice, off: u64) -> u32 {
        let mut b = [0u8; 4];
        d.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn w32(d: &mut EduDevice, off: u64, v: u32) {
        d.write(off, &v.to_le_bytes());
    }

    fn r64(d: &mut EduDevice, off: u64) -> u64 {
        let mut b = [0u8; 8];
        d.read(off, &mut b);
        u64::from_le_bytes(b)
    }

    fn w64(d: &mut EduDevice, off: u64, v: u64) {
        d.write(off, &v.to_le_bytes());
    }

    #[test]
    fn id_and_liveness() {
        let mut d = edu();
        assert_eq!(r32(&mut d, reg::ID), 0x0100_00ed);
        w32(&mut d, reg::ID, 5);
        assert_eq!(r32(&mut d, reg::ID), 0x0100_00ed, "read-only");
        w32(&mut d, reg::LIVENESS, 0x1234_5678);
        assert_eq!(r32(&mut d, reg::LIVENESS), 0xedcb_a987);
        // other widths and unknown offsets
        let mut b = [0u8; 2];
        d.read(reg::ID, &mut b);
        assert_eq!(b, [0xff; 2]);
        assert_eq!(r32(&mut d, 0x40), u32::MAX);
        assert_eq!(r32(&mut d, 0x8_0000), u32::MAX);
    }

    #[test]
    fn factorial_reports_computing_once() {
        let mut d = edu();
        assert_eq!(r32(&mut d, reg::STATUS), 0);
        w32(&mut d, reg::FACTORIAL, 5);
        assert_eq!(r32(&mut d, reg::STATUS), STATUS_COMPUTING);
        assert_eq!(r32(&mut d, reg::STATUS), 0);
        assert_eq!(r32(&mut d, reg::FACTORIAL), 120);
        w32(&mut d, reg::FACTORIAL, 0);
        assert_eq!(r32(&mut d, reg::FACTORIAL), 1);
        // Wrapping, as multiplying all the way would give, without the multiplying (the
        // devices fuzz target ran at 72 inputs/s on large values).
        let slow = |n: u32| (1..=n).fold(1u32, u32::wrapping_mul);
        for n in [12, 13, 33, 34, 35, 1000] {
            w32(&mut d, reg::FACTORIAL, n);
            assert_eq!(r32(&mut d, reg::FACTORIAL), slow(n), "{n}!");
        }
        assert_ne!(slow(33), 0);
        let t = std::time::Instant::now();
        w32(&mut d, reg::FACTORIAL, u32::MAX);
        assert_eq!(r32(&mut d, reg::FACTORIAL), 0);
        assert!(t.elapsed() < std::time::Duration::from_millis(100));
        w32(&mut d, reg::FACTORIAL, 13);
        assert_eq!(
            r32(&mut d, reg::FACTORIAL),
            1_932_053_504,
            "wraps: 13! mod 2^32"
        );
        assert_eq!(d.irq_status(), 0, "no interrupt unless asked");
        w32(&mut d, reg::STATUS, STATUS_IRQ_FACTORIAL | STATUS_COMPUTING);
        assert_eq!(
            r32(&mut d, reg::STATUS),
            STATUS_IRQ_FACTORIAL | STATUS_COMPUTING
        );
        assert_eq!(r32(&mut d, reg::STATUS), STATUS_IRQ_FACTORIAL);
        w32(&mut d, reg::FACTORIAL, 3);
        assert_eq!(d.irq_status(), IRQ_FACTORIAL);
        assert_eq!(d.interrupts(), 1);
    }

    #[test]
    fn interrupt_raise_and_acknowledge() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut d = EduDevice::new(
            GuestMem::new(16 << 20).unwrap(),
            Some(irq.try_clone().unwrap()),
        );
        w32(&mut d, reg::IRQ_RAISE, 0x1);
        assert_eq!(r32(&mut d, reg::IRQ_STATUS), 1);
        assert_eq!(irq.read().unwrap(), 1, "the irqfd fired");
        w32(&mut d, reg::IRQ_RAISE, 0x30);
        assert_eq!(r32(&mut d, reg::IRQ_STATUS), 0x31);
        w32(&mut d, reg::IRQ_ACK, 0x1);
        assert_eq!(r32(&mut d, reg::IRQ_STATUS), 0x30);
        w32(&mut d, reg::IRQ_ACK, 0x30);
        assert_eq!(r32(&mut d, reg::IRQ_STATUS), 0);
        w32(&mut d, reg::IRQ_STATUS, 7);
        assert_eq!(r32(&mut d, reg::IRQ_STATUS), 0, "read-only");
        assert_eq!(r32(&mut d, reg::IRQ_RAISE), u32::MAX, "write-only");
        assert_eq!(d.interrupts(), 2);
    }

    #[test]
    fn dma_round_trip_through_guest_memory() {
        let mut d = edu();
        let mem = d.mem.clone();
        let data = *b"hvprobe edu DMA!";
        mem.write(Gpa(0x6_0000), &data).unwrap();
        w64(&mut d, reg::DMA_SRC, 0x6_0000);
        w64(&mut d, reg::DMA_DST, DMA_BUFFER_ADDR + 8);
        w64(&mut d, reg::DMA_COUNT, 16);
        w64(&mut d, reg::DMA_CMD, DMA_START);
        assert_eq!(r64(&mut d, reg::DMA_CMD), 0);
        assert_eq!(&d.buffer()[8..24], &data);
        w64(&mut d, reg::DMA_SRC, DMA_BUFFER_ADDR + 8);
        w64(&mut d, reg::DMA_DST, 0x6_1000);
        w64(&mut d, reg::DMA_CMD, DMA_START | DMA_TO_RAM | DMA_IRQ);
        assert_eq!(r64(&mut d, reg::DMA_CMD), DMA_TO_RAM | DMA_IRQ);
        let mut back = [0u8; 16];
        mem.read(Gpa(0x6_1000), &mut back).unwrap();
        assert_eq!(back, data);
        assert_eq!(d.irq_status(), IRQ_DMA);
        assert_eq!(r64(&mut d, reg::DMA_SRC), DMA_BUFFER_ADDR + 8);
        assert_eq!(r32(&mut d, reg::DMA_COUNT), 16, "32-bit reads too");
    }

    #[test]
    fn dma_out_of_range_does_nothing() {
        let mut d = edu();
        w64(&mut d, reg::DMA_SRC, 0x6_0000);
        w64(&mut d, reg::DMA_DST, DMA_BUFFER_ADDR + 0xff8);
        w64(&mut d, reg::DMA_COUNT, 16);
        w64(&mut d, reg::DMA_CMD, DMA_START | DMA_IRQ);
        assert_eq!(r64(&mut d, reg::DMA_CMD), DMA_IRQ);
        assert_eq!(d.irq_status(), 0);
        // RAM side outside guest memory
        w64(&mut d, reg::DMA_SRC, DMA_BUFFER_ADDR);
        w64(&mut d, reg::DMA_DST, 0xe000_0000);
        w64(&mut d, reg::DMA_CMD, DMA_START | DMA_TO_RAM | DMA_IRQ);
        assert_eq!(d.irq_status(), 0);
    }
}

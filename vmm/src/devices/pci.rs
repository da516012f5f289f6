//! A PCI bus 0 behind configuration mechanism #1 (ports 0xcf8 / 0xcfc), with memory BARs that
//! map their device onto the MMIO bus when the guest programs them.
//!
//! - [`PciBus`] holds the configuration space of every function (a host bridge at 00:00.0
//!   always, endpoints such as `edu` added with [`PciBus::add_function`]). Functions that are
//!   not there read all-ones (vendor 0xffff), which is how a guest finds an empty slot.
//! - [`PciBus::config_io`] is the [`BusDevice`] for ports `0xcf8..0xd00`: a 32-bit address
//!   register at 0xcf8 (bit 31 enable, bus 23:16, device 15:11, function 10:8, register 7:2)
//!   and a data window at 0xcfc..0xd00 that takes 1-, 2- and 4-byte accesses at any offset
//!   within it.
//! - A BAR is mapped while the function's command register has memory space enabled (bit 1)
//!   and the BAR holds a non-zero base: writing the BAR or toggling the bit inserts or removes
//!   the BAR's device on the MMIO bus and reports a [`PciEvent`] to the listener
//!   ([`PciBus::set_listener`]); the tracer turns them into mmiotrace MAP / UNMAP lines.
//!
//! # Lock order
//!
//! A guest config write runs with the config-port device's mutex held (the PIO bus locks it),
//! then takes the [`PciBus`] state mutex, and under it the MMIO bus's map lock (write) to move
//! BARs. The MMIO map lock is a leaf: the bus never holds it while locking a device, and
//! nothing here ever locks a BAR's device (the `edu` mutex), so a vCPU inside `edu` and a
//! vCPU programming its BAR cannot wait on each other. Listeners are called after the state
//! mutex is released (with the config-port mutex still held, which keeps events in the order
//! the guest caused them); a listener must not touch the buses (it may call
//! [`PciBus::devices`]).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, RwLock, Weak};

use super::bus::{Bus, SharedDevice};
use super::{BusDevice, DeviceAction, le_value, put_le};

/// The configuration address port.
pub const PCI_CONFIG_ADDRESS_PORT: u16 = 0xcf8;
/// The configuration data port (first of four).
pub const PCI_CONFIG_DATA_PORT: u16 = 0xcfc;
/// Ports covered by [`PciBus::config_io`], from [`PCI_CONFIG_ADDRESS_PORT`].
pub const PCI_CONFIG_PORTS_LEN: u64 = 8;

/// Configuration space registers (offsets in the type 0 header).
pub mod reg {
    /// Vendor ID (16-bit).
    pub const VENDOR_ID: u8 = 0x00;
    /// Device ID (16-bit).
    pub const DEVICE_ID: u8 = 0x02;
    /// Command (16-bit).
    pub const COMMAND: u8 = 0x04;
    /// Status (16-bit).
    pub const STATUS: u8 = 0x06;
    /// Revision ID (8-bit); the class code follows in bytes 0x09..0x0c.
    pub const REVISION: u8 = 0x08;
    /// Cache line size (8-bit).
    pub const CACHE_LINE_SIZE: u8 = 0x0c;
    /// Latency timer (8-bit).
    pub const LATENCY_TIMER: u8 = 0x0d;
    /// Header type (8-bit): 0, bit 7 = multi-function.
    pub const HEADER_TYPE: u8 = 0x0e;
    /// BAR0 (32-bit); BAR1..BAR5 follow every 4 bytes.
    pub const BAR0: u8 = 0x10;
    /// Subsystem vendor ID (16-bit).
    pub const SUBSYSTEM_VENDOR_ID: u8 = 0x2c;
    /// Subsystem ID (16-bit).
    pub const SUBSYSTEM_ID: u8 = 0x2e;
    /// Interrupt line (8-bit).
    pub const INTERRUPT_LINE: u8 = 0x3c;
    /// Interrupt pin (8-bit): 1 = INTA#.
    pub const INTERRUPT_PIN: u8 = 0x3d;
}

/// Command register: I/O space enable.
pub const COMMAND_IO: u16 = 1 << 0;
/// Command register: memory space enable (BARs decode).
pub const COMMAND_MEMORY: u16 = 1 << 1;
/// Command register: bus master enable.
pub const COMMAND_MASTER: u16 = 1 << 2;
/// Command bits a guest can change (I/O, memory, master, parity, SERR, INTx disable).
const COMMAND_WRITABLE: u16 = 0x0547;
/// BARs in a type 0 header.
pub const NUM_BARS: usize = 6;
/// Host bridge vendor (Intel).
pub const HOST_BRIDGE_VENDOR: u16 = 0x8086;
/// Host bridge device (440FX, as QEMU's `i440FX`).
pub const HOST_BRIDGE_DEVICE: u16 = 0x1237;
/// Host bridge class code (bridge, host).
pub const HOST_BRIDGE_CLASS: u32 = 0x06_00_00;
const CONFIG_SIZE: usize = 256;

/// Bus / device / function of a PCI function.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bdf {
    /// Bus number (always 0 here).
    pub bus: u8,
    /// Device number, 0..32.
    pub device: u8,
    /// Function number, 0..8.
    pub function: u8,
}

impl Bdf {
    /// Function `function` of device `device` on bus 0.
    pub const fn new(device: u8, function: u8) -> Self {
        Bdf {
            bus: 0,
            device,
            function,
        }
    }

    /// The device/function byte (`device << 3 | function`), as Linux's `devfn`.
    pub const fn devfn(self) -> u8 {
        (self.device << 3) | (self.function & 7)
    }
}

impl fmt::Display for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02x}:{:02x}.{}", self.bus, self.device, self.function)
    }
}

/// A BAR moved on the MMIO bus (reported to the listener).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PciEvent {
    /// The BAR's device now answers at `[base, base + len)`.
    Map {
        /// The function.
        bdf: Bdf,
        /// BAR index, 0..6.
        bar: u8,
        /// Guest-physical base.
        base: u64,
        /// Length (the BAR's size).
        len: u64,
    },
    /// The BAR's device no longer answers at `base`.
    Unmap {
        /// The function.
        bdf: Bdf,
        /// BAR index, 0..6.
        bar: u8,
        /// Guest-physical base it had.
        base: u64,
    },
}

/// A function as mmiotrace's `PCIDEV` line describes it (see `kernel/trace/trace_mmiotrace.c`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PciDevSummary {
    /// Bus number.
    pub bus: u8,
    /// `device << 3 | function`.
    pub devfn: u8,
    /// Vendor ID.
    pub vendor: u16,
    /// Device ID.
    pub device: u16,
    /// Interrupt line (0 when the function has no interrupt pin).
    pub irq: u8,
    /// The six BARs and the expansion ROM: current base | the BAR's low flag bits (0 when
    /// not implemented).
    pub bars: [u64; 7],
    /// Their sizes (0 when not implemented).
    pub sizes: [u64; 7],
    /// A short name for the function (`host-bridge`, `edu`).
    pub name: &'static str,
}

/// What an endpoint looks like in configuration space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciFunctionInfo {
    /// Vendor ID.
    pub vendor: u16,
    /// Device ID.
    pub device: u16,
    /// Class code (base class << 16 | subclass << 8 | programming interface).
    pub class: u32,
    /// Revision ID.
    pub revision: u8,
    /// Subsystem vendor ID.
    pub subsystem_vendor: u16,
    /// Subsystem ID.
    pub subsystem: u16,
    /// Interrupt `(line, pin)`: pin 1 = INTA#; `None` for no interrupt.
    pub interrupt: Option<(u8, u8)>,
    /// A short name (for [`PciDevSummary::name`]).
    pub name: &'static str,
}

/// A 32-bit, non-prefetchable memory BAR and the device behind it.
#[derive(Clone)]
pub struct MemoryBar {
    /// BAR index, 0..6.
    pub index: u8,
    /// Size in bytes: a power of two, at least 16, at most 2 GiB.
    pub size: u64,
    /// The device inserted on the MMIO bus while the BAR is mapped (offsets from the base).
    pub device: SharedDevice,
}

/// Errors of adding functions.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PciError {
    /// The device or function number is out of range.
    #[error(
        "PCI function {device:#x}.{function} does not exist on a bus (device < 32, function < 8)"
    )]
    BadSlot {
        /// Device number.
        device: u8,
        /// Function number.
        function: u8,
    },
    /// Something is already there.
    #[error("PCI function {0} is already in use")]
    Busy(Bdf),
    /// A BAR's index or size is unusable.
    #[error(
        "BAR{index} of size {size:#x} is invalid (index < 6, size a power of two in 16..=2 GiB)"
    )]
    BadBar {
        /// BAR index.
        index: u8,
        /// BAR size.
        size: u64,
    },
}

/// Where BARs are mapped: the MMIO bus of a VM's devices.
pub trait MmioSpace: Send + Sync {
    /// The MMIO bus.
    fn mmio_bus(&self) -> &Bus;
}

impl MmioSpace for Bus {
    fn mmio_bus(&self) -> &Bus {
        self
    }
}

impl MmioSpace for super::IoDevices {
    fn mmio_bus(&self) -> &Bus {
        &self.mmio
    }
}

/// A listener for [`PciEvent`]s.
pub type PciListener = Box<dyn Fn(PciEvent) + Send + Sync>;

struct Bar {
    size: u64,
    device: SharedDevice,
    /// Where it is on the MMIO bus now.
    mapped: Option<u64>,
}

struct Function {
    config: [u8; CONFIG_SIZE],
    /// Bits of each config byte the guest can write (BARs are handled apart).
    writable: [u8; CONFIG_SIZE],
    bars: [Option<Bar>; NUM_BARS],
    name: &'static str,
}

impl Function {
    fn new(info: &PciFunctionInfo) -> Self {
        let mut f = Function {
            config: [0; CONFIG_SIZE],
            writable: [0; CONFIG_SIZE],
            bars: Default::default(),
            name: info.name,
        };
        f.set16(reg::VENDOR_ID, info.vendor);
        f.set16(reg::DEVICE_ID, info.device);
        f.config[usize::from(reg::REVISION)] = info.revision;
        f.config[0x09..0x0c].copy_from_slice(&info.class.to_le_bytes()[..3]);
        f.set16(reg::SUBSYSTEM_VENDOR_ID, info.subsystem_vendor);
        f.set16(reg::SUBSYSTEM_ID, info.subsystem);
        f.writable[usize::from(reg::COMMAND)..][..2]
            .copy_from_slice(&COMMAND_WRITABLE.to_le_bytes());
        f.writable[usize::from(reg::CACHE_LINE_SIZE)] = 0xff;
        f.writable[usize::from(reg::LATENCY_TIMER)] = 0xff;
        if let Some((line, pin)) = info.interrupt {
            f.config[usize::from(reg::INTERRUPT_LINE)] = line;
            f.config[usize::from(reg::INTERRUPT_PIN)] = pin;
            f.writable[usize::from(reg::INTERRUPT_LINE)] = 0xff;
        }
        f
    }

    fn get32(&self, off: u8) -> u32 {
        let o = usize::from(off);
        u32::from_le_bytes([
            self.config[o],
            self.config[o + 1],
            self.config[o + 2],
            self.config[o + 3],
        ])
    }

    fn get16(&self, off: u8) -> u16 {
        let o = usize::from(off);
        u16::from_le_bytes([self.config[o], self.config[o + 1]])
    }

    fn set16(&mut self, off: u8, v: u16) {
        self.config[usize::from(off)..][..2].copy_from_slice(&v.to_le_bytes());
    }

    /// The BAR whose register holds config byte `off`, if that BAR is implemented.
    fn bar_at(&self, off: usize) -> Option<(usize, &Bar)> {
        let first = usize::from(reg::BAR0);
        if !(first..first + 4 * NUM_BARS).contains(&off) {
            return None;
        }
        let i = (off - first) / 4;
        self.bars[i].as_ref().map(|b| (i, b))
    }

    /// The base a BAR's register holds now.
    fn bar_base(&self, i: usize) -> u64 {
        let off = reg::BAR0 + 4 * u8::try_from(i).unwrap_or(0);
        u64::from(self.get32(off) & !0xf)
    }

    fn write(&mut self, off: u8, data: &[u8]) {
        for (i, &b) in data.iter().enumerate() {
            let o = usize::from(off) + i;
            if o >= CONFIG_SIZE {
                break;
            }
            if let Some((_, bar)) = self.bar_at(o) {
                // 32-bit memory BAR: the base bits above the size are writable, the low
                // four flag bits (all 0: memory, 32-bit, not prefetchable) are not.
                let mask = !(bar.size - 1) & 0xffff_fff0;
                let byte_mask = mask.to_le_bytes()[o % 4];
                self.config[o] = b & byte_mask;
            } else {
                self.config[o] = (self.config[o] & !self.writable[o]) | (b & self.writable[o]);
            }
        }
    }

    fn summary(&self, bdf: Bdf) -> PciDevSummary {
        let mut bars = [0u64; 7];
        let mut sizes = [0u64; 7];
        for (i, bar) in self.bars.iter().enumerate() {
            if let Some(bar) = bar {
                bars[i] = self.bar_base(i);
                sizes[i] = bar.size;
            }
        }
        let pin = self.config[usize::from(reg::INTERRUPT_PIN)];
        PciDevSummary {
            bus: bdf.bus,
            devfn: bdf.devfn(),
            vendor: self.get16(reg::VENDOR_ID),
            device: self.get16(reg::DEVICE_ID),
            irq: if pin == 0 {
                0
            } else {
                self.config[usize::from(reg::INTERRUPT_LINE)]
            },
            bars,
            sizes,
            name: self.name,
        }
    }
}

#[derive(Default)]
struct State {
    /// By devfn.
    functions: BTreeMap<u8, Function>,
}

/// PCI bus 0: configuration space of every function and the BAR mappings on the MMIO bus.
pub struct PciBus {
    state: Mutex<State>,
    mmio: Weak<dyn MmioSpace>,
    listener: RwLock<Option<PciListener>>,
}

impl PciBus {
    /// A bus with the host bridge at 00:00.0, mapping BARs on `mmio`'s bus (held weakly: the
    /// bus normally sits in the same [`super::IoDevices`] as the config ports).
    pub fn new(mmio: Weak<dyn MmioSpace>) -> Self {
        let mut state = State::default();
        let bridge = PciFunctionInfo {
            vendor: HOST_BRIDGE_VENDOR,
            device: HOST_BRIDGE_DEVICE,
            class: HOST_BRIDGE_CLASS,
            revision: 2,
            subsystem_vendor: 0,
            subsystem: 0,
            interrupt: None,
            name: "host-bridge",
        };
        let mut host = Function::new(&bridge);
        host.set16(reg::COMMAND, COMMAND_IO | COMMAND_MEMORY);
        state.functions.insert(Bdf::new(0, 0).devfn(), host);
        PciBus {
            state: Mutex::new(state),
            mmio,
            listener: RwLock::new(None),
        }
    }

    /// Adds a function with 32-bit memory BARs (unmapped until the guest programs them).
    pub fn add_function(
        &self,
        bdf: Bdf,
        info: &PciFunctionInfo,
        bars: Vec<MemoryBar>,
    ) -> Result<(), PciError> {
        if bdf.bus != 0 || bdf.device >= 32 || bdf.function >= 8 {
            return Err(PciError::BadSlot {
                device: bdf.device,
                function: bdf.function,
            });
        }
        let mut f = Function::new(info);
        for bar in bars {
            let i = usize::from(bar.index);
            if i >= NUM_BARS
                || !bar.size.is_power_of_two()
                || !(16..=1 << 31).contains(&bar.size)
                || f.bars[i].is_some()
            {
                return Err(PciError::BadBar {
                    index: bar.index,
                    size: bar.size,
                });
            }
            f.bars[i] = Some(Bar {
                size: bar.size,
                device: bar.device,
                mapped: None,
            });
        }
        let mut state = self.lock();
        if state.functions.contains_key(&bdf.devfn()) {
            return Err(PciError::Busy(bdf));
        }
        state.functions.insert(bdf.devfn(), f);
        Ok(())
    }

    /// Reports every later BAR map / unmap to `listener` (replacing any earlier one). Call
    /// [`PciBus::devices`] for what is mapped already.
    pub fn set_listener(&self, listener: PciListener) {
        *self.listener.write().unwrap_or_else(|p| p.into_inner()) = Some(listener);
    }

    /// Stops reporting events.
    pub fn clear_listener(&self) {
        *self.listener.write().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Every function on the bus, in devfn order, with its BARs as they are now.
    pub fn devices(&self) -> Vec<PciDevSummary> {
        self.lock()
            .functions
            .iter()
            .map(|(&devfn, f)| f.summary(Bdf::new(devfn >> 3, devfn & 7)))
            .collect()
    }

    /// Where BAR `bar` of `bdf` is mapped on the MMIO bus now.
    pub fn bar_mapping(&self, bdf: Bdf, bar: u8) -> Option<u64> {
        let state = self.lock();
        let f = state.functions.get(&bdf.devfn())?;
        f.bars.get(usize::from(bar))?.as_ref()?.mapped
    }

    /// The config-port device for ports `0xcf8..0xd00` (insert it on the PIO bus at
    /// [`PCI_CONFIG_ADDRESS_PORT`], length [`PCI_CONFIG_PORTS_LEN`]).
    pub fn config_io(self: &Arc<Self>) -> SharedDevice {
        Arc::new(Mutex::new(PciConfigIo {
            bus: self.clone(),
            address: 0,
        }))
    }

    /// Reads `data.len()` bytes of `bdf`'s configuration space at `off` (all-ones when the
    /// function does not exist).
    pub fn config_read(&self, bdf: Bdf, off: u8, data: &mut [u8]) {
        let state = self.lock();
        let f = (bdf.bus == 0)
            .then(|| state.functions.get(&bdf.devfn()))
            .flatten();
        for (i, d) in data.iter_mut().enumerate() {
            let o = usize::from(off) + i;
            *d = match f {
                Some(f) if o < CONFIG_SIZE => f.config[o],
                _ => 0xff,
            };
        }
    }

    /// Writes `data` to `bdf`'s configuration space at `off`; moves BARs on the MMIO bus and
    /// reports the moves as the write requires.
    pub fn config_write(&self, bdf: Bdf, off: u8, data: &[u8]) {
        let events = {
            let mut state = self.lock();
            let Some(f) = (bdf.bus == 0)
                .then(|| state.functions.get_mut(&bdf.devfn()))
                .flatten()
            else {
                return;
            };
            f.write(off, data);
            self.update_mappings(bdf, f)
        };
        if events.is_empty() {
            return;
        }
        let listener = self.listener.read().unwrap_or_else(|p| p.into_inner());
        if let Some(l) = listener.as_ref() {
            for e in events {
                l(e);
            }
        }
    }

    /// Brings the MMIO bus in line with `f`'s command register and BARs (state lock held).
    fn update_mappings(&self, bdf: Bdf, f: &mut Function) -> Vec<PciEvent> {
        let mut events = Vec::new();
        let enabled = f.get16(reg::COMMAND) & COMMAND_MEMORY != 0;
        let mmio = self.mmio.upgrade();
        for i in 0..NUM_BARS {
            let base = f.bar_base(i);
            let Some(bar) = f.bars[i].as_mut() else {
                continue;
            };
            let want = (enabled && base != 0).then_some(base);
            if want == bar.mapped {
                continue;
            }
            let index = u8::try_from(i).unwrap_or(0);
            if let Some(old) = bar.mapped.take() {
                if let Some(m) = &mmio {
                    m.mmio_bus().remove(old);
                }
                events.push(PciEvent::Unmap {
                    bdf,
                    bar: index,
                    base: old,
                });
            }
            if let Some(new) = want {
                // A base that collides with another device (or the bus is gone) leaves the
                // BAR unmapped: its accesses go unclaimed, as on a machine with a bad BAR.
                let inserted = mmio.as_ref().is_some_and(|m| {
                    m.mmio_bus()
                        .insert(new, bar.size, bar.device.clone())
                        .is_ok()
                });
                if inserted {
                    bar.mapped = Some(new);
                    events.push(PciEvent::Map {
                        bdf,
                        bar: index,
                        base: new,
                        len: bar.size,
                    });
                }
            }
        }
        events
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Ports 0xcf8..0xd00: the address register and the data window of configuration
/// mechanism #1.
struct PciConfigIo {
    bus: Arc<PciBus>,
    address: u32,
}

impl PciConfigIo {
    /// The function and register the address register selects, if enabled.
    fn target(&self) -> Option<(Bdf, u8)> {
        if self.address & 0x8000_0000 == 0 {
            return None;
        }
        let [reg, devfn_byte, bus, _] = self.address.to_le_bytes();
        Some((
            Bdf {
                bus,
                device: devfn_byte >> 3,
                function: devfn_byte & 7,
            },
            reg & 0xfc,
        ))
    }
}

impl BusDevice for PciConfigIo {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match offset {
            0 if data.len() == 4 => put_le(data, u64::from(self.address)),
            4..=7 if offset + data.len() as u64 <= 8 => match self.target() {
                Some((bdf, reg)) => {
                    let off = reg + u8::try_from(offset - 4).unwrap_or(0);
                    self.bus.config_read(bdf, off, data);
                }
                None => data.fill(0xff),
            },
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> DeviceAction {
        match offset {
            0 if data.len() == 4 => {
                // Bits 30:24 are reserved and bits 1:0 select type 0/1 cycles: keep neither.
                self.address = u32::try_from(le_value(data) & 0x80ff_fffc).unwrap_or(0);
            }
            4..=7 if offset + data.len() as u64 <= 8 => {
                if let Some((bdf, reg)) = self.target() {
                    let off = reg + u8::try_from(offset - 4).unwrap_or(0);
                    self.bus.config_write(bdf, off, data);
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

    struct Page(u64);
    impl BusDevice for Page {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            put_le(data, self.0 + offset);
        }
        fn write(&mut self, _offset: u64, _data: &[u8]) -> DeviceAction {
            DeviceAction::None
        }
    }

    const ENDPOINT: PciFunctionInfo = PciFunctionInfo {
        vendor: 0x1234,
        device: 0x11e8,
        class: 0x00_ff_00,
        revision: 0x10,
        subsystem_vendor: 0x1af4,
        subsystem: 0x1100,
        interrupt: Some((11, 1)),
        name: "edu",
    };

    type Setup = (
        Arc<Bus>,
        Arc<PciBus>,
        SharedDevice,
        Arc<Mutex<Vec<PciEvent>>>,
    );

    fn setup() -> Setup {
        let mmio = Arc::new(Bus::new());
        let weak: Weak<dyn MmioSpace> = Arc::downgrade(&mmio) as Weak<dyn MmioSpace>;
        let pci = Arc::new(PciBus::new(weak));
        let bar: SharedDevice = Arc::new(Mutex::new(Page(0x100)));
        pci.add_function(
            Bdf::new(1, 0),
            &ENDPOINT,
            vec![MemoryBar {
                index: 0,
                size: 1 << 20,
                device: bar,
            }],
        )
        .unwrap();
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = events.clone();
        pci.set_listener(Box::new(move |e| sink.lock().unwrap().push(e)));
        let io = pci.config_io();
        (mmio, pci, io, events)
    }

    fn select(io: &SharedDevice, bdf: Bdf, reg: u8) {
        let a =
            0x8000_0000 | u32::from(bdf.bus) << 16 | u32::from(bdf.devfn()) << 8 | u32::from(reg);
        io.lock().unwrap().write(0, &a.to_le_bytes());
    }

    fn read(io: &SharedDevice, bdf: Bdf, reg: u8, port_off: u64, len: usize) -> u64 {
        select(io, bdf, reg);
        let mut d = vec![0u8; len];
        io.lock().unwrap().read(4 + port_off, &mut d);
        le_value(&d)
    }

    fn write(io: &SharedDevice, bdf: Bdf, reg: u8, port_off: u64, data: &[u8]) {
        select(io, bdf, reg);
        io.lock().unwrap().write(4 + port_off, data);
    }

    const EDU: Bdf = Bdf::new(1, 0);
    const HOST: Bdf = Bdf::new(0, 0);

    #[test]
    fn header_fields_through_the_ports() {
        let (_, _, io, _) = setup();
        assert_eq!(read(&io, HOST, 0, 0, 4), 0x1237_8086);
        assert_eq!(read(&io, HOST, 8, 0, 4) >> 8, 0x06_00_00);
        assert_eq!(read(&io, HOST, 0xc, 2, 1), 0, "header type 0");
        assert_eq!(read(&io, EDU, 0, 0, 4), 0x11e8_1234);
        assert_eq!(read(&io, EDU, 8, 0, 4), 0x00ff_0010);
        assert_eq!(read(&io, EDU, 0x2c, 0, 4), 0x1100_1af4);
        assert_eq!(read(&io, EDU, 0x3c, 0, 2), 0x010b, "line 11, pin A");
        // the address register reads back (Linux's type 1 probe)
        let mut d = [0u8; 4];
        io.lock().unwrap().write(0, &0x8000_0000u32.to_le_bytes());
        io.lock().unwrap().read(0, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x8000_0000);
    }

    #[test]
    fn byte_and_word_accesses_anywhere_in_the_data_window() {
        let (_, _, io, _) = setup();
        // 0xcfd: the vendor ID's high byte, the device ID's bytes at 0xcfe / 0xcff
        assert_eq!(read(&io, EDU, 0, 1, 1), 0x12);
        assert_eq!(read(&io, EDU, 0, 2, 2), 0x11e8);
        assert_eq!(read(&io, EDU, 0, 1, 2), 0xe812);
        assert_eq!(read(&io, EDU, 0, 3, 1), 0x11);
        // the register number's low two bits are ignored: offset comes from the port
        assert_eq!(read(&io, EDU, 2, 2, 2), 0x11e8);
        // interrupt line is writable by byte at 0xcfc, pin (0xcfd) is not
        write(&io, EDU, 0x3c, 0, &[5]);
        write(&io, EDU, 0x3c, 1, &[4]);
        assert_eq!(read(&io, EDU, 0x3c, 0, 2), 0x0105);
        // word write of the command register at 0xcfc, status (0xcfe) stays read-only
        write(&io, EDU, 4, 0, &0x0004u16.to_le_bytes());
        write(&io, EDU, 4, 2, &0xffffu16.to_le_bytes());
        assert_eq!(read(&io, EDU, 4, 0, 4), 0x0000_0004);
        // read-only ID
        write(&io, EDU, 0, 0, &0u32.to_le_bytes());
        assert_eq!(read(&io, EDU, 0, 0, 4), 0x11e8_1234);
    }

    #[test]
    fn absent_functions_and_disabled_address_read_all_ones() {
        let (_, _, io, _) = setup();
        for bdf in [
            Bdf::new(2, 0),
            Bdf::new(31, 7),
            Bdf::new(1, 1),
            Bdf {
                bus: 1,
                device: 0,
                function: 0,
            },
        ] {
            assert_eq!(read(&io, bdf, 0, 0, 4), 0xffff_ffff, "{bdf}");
            assert_eq!(read(&io, bdf, 0, 1, 1), 0xff, "{bdf}");
            assert_eq!(read(&io, bdf, 0x3c, 2, 2), 0xffff, "{bdf}");
            write(&io, bdf, 4, 0, &[0xff, 0xff, 0xff, 0xff]);
        }
        let mut d = [0u8; 4];
        io.lock().unwrap().write(0, &0u32.to_le_bytes());
        io.lock().unwrap().read(4, &mut d);
        assert_eq!(d, [0xff; 4], "enable bit clear");
        // byte accesses to 0xcf8..0xcfb are not the address register
        let mut b = [0u8; 1];
        io.lock().unwrap().read(0, &mut b);
        assert_eq!(b, [0xff]);
    }

    #[test]
    fn bar_sizing_reads_back_the_size_mask() {
        let (_, pci, io, events) = setup();
        assert_eq!(read(&io, EDU, 0x10, 0, 4), 0);
        write(&io, EDU, 0x10, 0, &u32::MAX.to_le_bytes());
        assert_eq!(read(&io, EDU, 0x10, 0, 4), 0xfff0_0000);
        // unimplemented BARs read 0 whatever is written
        write(&io, EDU, 0x14, 0, &u32::MAX.to_le_bytes());
        assert_eq!(read(&io, EDU, 0x14, 0, 4), 0);
        // host bridge has no BARs
        write(&io, HOST, 0x10, 0, &u32::MAX.to_le_bytes());
        assert_eq!(read(&io, HOST, 0x10, 0, 4), 0);
        write(&io, EDU, 0x10, 0, &0xe012_3456u32.to_le_bytes());
        assert_eq!(read(&io, EDU, 0x10, 0, 4), 0xe010_0000);
        assert!(events.lock().unwrap().is_empty(), "memory space is off");
        assert_eq!(pci.bar_mapping(EDU, 0), None);
    }

    #[test]
    fn bar_programming_maps_and_unmaps_with_events() {
        let (mmio, pci, io, events) = setup();
        let mut d = [0u8; 4];
        write(&io, EDU, 0x10, 0, &0xe000_0000u32.to_le_bytes());
        write(&io, EDU, 4, 0, &COMMAND_MEMORY.to_le_bytes());
        assert!(mmio.read(0xe000_0010, &mut d));
        assert_eq!(u32::from_le_bytes(d), 0x110);
        assert!(mmio.read(0xe00f_fffc, &mut d), "the whole BAR decodes");
        assert_eq!(pci.bar_mapping(EDU, 0), Some(0xe000_0000));
        // moving the BAR while enabled: unmap then map
        write(&io, EDU, 0x10, 0, &0xe010_0000u32.to_le_bytes());
        assert!(!mmio.read(0xe000_0010, &mut d));
        assert!(mmio.read(0xe010_0010, &mut d));
        // byte write of the BAR's top byte moves it too
        write(&io, EDU, 0x10, 3, &[0xc0]);
        assert!(mmio.read(0xc010_0000, &mut d));
        // memory space off: unmapped, BAR value kept
        write(&io, EDU, 4, 0, &0u16.to_le_bytes());
        assert!(!mmio.read(0xc010_0000, &mut d));
        assert_eq!(read(&io, EDU, 0x10, 0, 4), 0xc010_0000);
        // on again, then BAR 0: unmapped
        write(&io, EDU, 4, 0, &COMMAND_MEMORY.to_le_bytes());
        write(&io, EDU, 0x10, 0, &0u32.to_le_bytes());
        let b = EDU;
        let len = 1 << 20;
        assert_eq!(
            *events.lock().unwrap(),
            [
                PciEvent::Map {
                    bdf: b,
                    bar: 0,
                    base: 0xe000_0000,
                    len
                },
                PciEvent::Unmap {
                    bdf: b,
                    bar: 0,
                    base: 0xe000_0000
                },
                PciEvent::Map {
                    bdf: b,
                    bar: 0,
                    base: 0xe010_0000,
                    len
                },
                PciEvent::Unmap {
                    bdf: b,
                    bar: 0,
                    base: 0xe010_0000
                },
                PciEvent::Map {
                    bdf: b,
                    bar: 0,
                    base: 0xc010_0000,
                    len
                },
                PciEvent::Unmap {
                    bdf: b,
                    bar: 0,
                    base: 0xc010_0000
                },
                PciEvent::Map {
                    bdf: b,
                    bar: 0,
                    base: 0xc010_0000,
                    len
                },
                PciEvent::Unmap {
                    bdf: b,
                    bar: 0,
                    base: 0xc010_0000
                },
            ]
        );
        assert_eq!(pci.bar_mapping(EDU, 0), None);
    }

    #[test]
    fn a_colliding_bar_stays_unmapped() {
        let (mmio, pci, io, events) = setup();
        mmio.insert(0xd000_0000, 0x1000, Arc::new(Mutex::new(Page(0))))
            .unwrap();
        write(&io, EDU, 0x10, 0, &0xd000_0000u32.to_le_bytes());
        write(&io, EDU, 4, 0, &COMMAND_MEMORY.to_le_bytes());
        assert_eq!(pci.bar_mapping(EDU, 0), None);
        assert!(events.lock().unwrap().is_empty());
        let mut d = [0u8; 4];
        assert!(mmio.read(0xd000_0000, &mut d));
        assert_eq!(u32::from_le_bytes(d), 0, "the other device is untouched");
    }

    #[test]
    fn devices_summarises_for_pcidev_lines() {
        let (_, pci, io, _) = setup();
        write(&io, EDU, 0x10, 0, &0xe000_0000u32.to_le_bytes());
        let devs = pci.devices();
        assert_eq!(devs.len(), 2);
        assert_eq!(
            (devs[0].devfn, devs[0].vendor, devs[0].device),
            (0, 0x8086, 0x1237)
        );
        assert_eq!(devs[0].irq, 0);
        assert_eq!(devs[1].devfn, 8);
        assert_eq!(
            (devs[1].vendor, devs[1].device, devs[1].irq),
            (0x1234, 0x11e8, 11)
        );
        assert_eq!(devs[1].bars, [0xe000_0000, 0, 0, 0, 0, 0, 0]);
        assert_eq!(devs[1].sizes, [1 << 20, 0, 0, 0, 0, 0, 0]);
        assert_eq!(devs[1].name, "edu");
    }

    #[test]
    fn add_function_checks_its_arguments() {
        let (_, pci, _, _) = setup();
        let dev: SharedDevice = Arc::new(Mutex::new(Page(0)));
        assert_eq!(
            pci.add_function(EDU, &ENDPOINT, vec![]),
            Err(PciError::Busy(EDU))
        );
        assert_eq!(
            pci.add_function(Bdf::new(32, 0), &ENDPOINT, vec![]),
            Err(PciError::BadSlot {
                device: 32,
                function: 0
            })
        );
        assert_eq!(
            pci.add_function(
                Bdf::new(2, 0),
                &ENDPOINT,
                vec![MemoryBar {
                    index: 0,
                    size: 3000,
                    device: dev
                }]
            ),
            Err(PciError::BadBar {
                index: 0,
                size: 3000
            })
        );
        assert_eq!(Bdf::new(1, 0).to_string(), "00:01.0");
    }
}

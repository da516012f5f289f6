//! Emulated devices and the PIO / MMIO buses that route guest accesses to them.
//!
//! Lock order: a bus's map lock (read) is taken first, then the one device's mutex; a device
//! never calls back into a bus, and no code holds two device mutexes at once.

pub mod bus;
pub mod doorbell;
pub mod edu;
pub mod kmod;
pub mod legacy;
pub mod pci;
pub mod serial;
pub mod test_device;
pub mod traced_ram;

/// The devices of a VM, shared with every vCPU thread.
#[derive(Default)]
pub struct IoDevices {
    /// Port I/O bus.
    pub pio: bus::Bus,
    /// MMIO bus.
    pub mmio: bus::Bus,
    /// Accesses no device claimed.
    pub unclaimed: bus::Unclaimed,
    /// PCI bus 0 (config ports 0xcf8..0xd00, `edu` at 00:01.0): BAR map / unmap listener
    /// and PCIDEV summaries.
    pub pci: Option<std::sync::Arc<pci::PciBus>>,
    /// A tracer is attached: vCPUs record their RIP for every device access
    /// ([`crate::vcpu::context`]).
    pub tracing: std::sync::atomic::AtomicBool,
    /// The access observer (the session layer's tracer), set once before the vCPUs start.
    pub observer: std::sync::OnceLock<std::sync::Arc<dyn AccessObserver>>,
}

/// Sees every device access after the device has handled it (reads: with the value the
/// guest gets): the hook the session layer's tracer (`crate::tracer`) plugs into
/// ([`IoDevices::observer`]). The core calls it and knows nothing else of tracing.
pub trait AccessObserver: Send + Sync {
    /// One access, on the vCPU thread (see [`crate::vcpu::context`] for vCPU and RIP).
    fn observe(&self, space: introspect::events::Space, write: bool, addr: u64, data: &[u8]);
}

/// What a device asks of the VM after a guest write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceAction {
    /// Nothing: resume the guest.
    None,
    /// End the VM: the guest asked to exit with this code (test device).
    Exit(u32),
    /// End the VM: the guest reset the machine (i8042).
    Reset,
    /// A request for the introspection layer, handled on the vCPU's thread with no device
    /// lock held (see [`GuestRequest`]).
    Request(GuestRequest),
}

/// What a guest asks of hvprobe's introspection layer through a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestRequest {
    /// The guest reserved `[base, base+len)` (guest-virtual) as the trampoline arena of
    /// jump-optimized probes (test device ARENA registers).
    Arena {
        /// First byte, guest-virtual.
        base: u64,
        /// Length in bytes.
        len: u64,
    },
    /// The guest module asked something through hvprobe's `kmod` device ([`kmod`]).
    Kmod(kmod::KmodRequest),
    /// A trampoline rang the probe doorbell: a write of `value` at `offset` in the doorbell
    /// page ([`doorbell::Doorbell`]).
    Doorbell {
        /// Offset in the doorbell page.
        offset: u64,
        /// The value written (the trampoline slot).
        value: u64,
    },
}

/// A device on a bus. `offset` is relative to the base the device was inserted at.
pub trait BusDevice: Send {
    /// A guest read of `data.len()` bytes.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// A guest write.
    fn write(&mut self, offset: u64, data: &[u8]) -> DeviceAction;
}

/// Little-endian value of up to 8 bytes of access data.
pub(crate) fn le_value(data: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = data.len().min(8);
    b[..n].copy_from_slice(&data[..n]);
    u64::from_le_bytes(b)
}

/// Fills `data` with the little-endian bytes of `v`.
pub(crate) fn put_le(data: &mut [u8], v: u64) {
    let b = v.to_le_bytes();
    for (i, d) in data.iter_mut().enumerate() {
        *d = b.get(i).copied().unwrap_or(0);
    }
}

//! Emulated devices and the PIO / MMIO buses that route guest accesses to them.
//!
//! Lock order: a bus's map lock (read) is taken first, then the one device's mutex; a device
//! never calls back into a bus, and no code holds two device mutexes at once.

pub mod bus;
pub mod edu;
pub mod legacy;
pub mod pci;
pub mod serial;
pub mod test_device;
pub mod traced_ram;

/// What a device asks of the VM after a guest write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceAction {
    /// Nothing: resume the guest.
    None,
    /// End the VM: the guest asked to exit with this code (test device).
    Exit(u32),
    /// End the VM: the guest reset the machine (i8042).
    Reset,
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

//! A bus: address ranges mapped to devices. One for port I/O, one for MMIO.
//!
//! The map sits behind an `RwLock` so ranges can be added or removed while vCPUs run (tracing
//! adds regions at run time); the hot path takes it for reading only.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

use super::{BusDevice, DeviceAction};

/// A shared device.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Errors of bus changes.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The new range overlaps one already there.
    #[error("Bus range {base:#x}+{len:#x} overlaps the device at {other:#x}")]
    Overlap {
        /// New range start.
        base: u64,
        /// New range length.
        len: u64,
        /// Start of the range it collides with.
        other: u64,
    },
    /// Zero-length or wrapping range.
    #[error("Bus range {base:#x}+{len:#x} is empty or wraps around")]
    BadRange {
        /// Range start.
        base: u64,
        /// Range length.
        len: u64,
    },
}

#[derive(Clone)]
struct Entry {
    len: u64,
    dev: SharedDevice,
}

/// Address ranges to devices.
#[derive(Default)]
pub struct Bus {
    map: RwLock<BTreeMap<u64, Entry>>,
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Maps `[base, base+len)` to `dev`.
    pub fn insert(&self, base: u64, len: u64, dev: SharedDevice) -> Result<(), BusError> {
        if len == 0 || base.checked_add(len - 1).is_none() {
            return Err(BusError::BadRange { base, len });
        }
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        if let Some((&start, e)) = map.range(..base + len).next_back() {
            if start + e.len > base {
                return Err(BusError::Overlap {
                    base,
                    len,
                    other: start,
                });
            }
        }
        map.insert(base, Entry { len, dev });
        Ok(())
    }

    /// Unmaps the range starting at `base`; returns its device.
    pub fn remove(&self, base: u64) -> Option<SharedDevice> {
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        map.remove(&base).map(|e| e.dev)
    }

    fn find(&self, addr: u64, len: usize) -> Option<(u64, SharedDevice)> {
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        let (&start, e) = map.range(..=addr).next_back()?;
        let end = addr.checked_add(len as u64)?;
        (end <= start + e.len).then(|| (addr - start, e.dev.clone()))
    }

    /// Routes a read; returns false (and leaves `data` alone) when no device is there.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((off, dev)) => {
                dev.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .read(off, data);
                true
            }
            None => false,
        }
    }

    /// Routes a write; `None` when no device is there.
    pub fn write(&self, addr: u64, data: &[u8]) -> Option<DeviceAction> {
        let (off, dev) = self.find(addr, data.len())?;
        let action = dev
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .write(off, data);
        Some(action)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Reg(u64);
    impl BusDevice for Reg {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            crate::devices::put_le(data, self.0 + offset);
        }
        fn write(&mut self, _offset: u64, data: &[u8]) -> DeviceAction {
            self.0 = crate::devices::le_value(data);
            DeviceAction::None
        }
    }

    #[test]
    fn routes_by_range_and_refuses_overlap() {
        let bus = Bus::new();
        bus.insert(0x100, 0x10, Arc::new(Mutex::new(Reg(0))))
            .unwrap();
        bus.insert(0x110, 0x10, Arc::new(Mutex::new(Reg(0x1000))))
            .unwrap();
        assert_eq!(
            bus.insert(0x10f, 2, Arc::new(Mutex::new(Reg(0)))),
            Err(BusError::Overlap {
                base: 0x10f,
                len: 2,
                other: 0x110
            })
        );
        assert_eq!(
            bus.insert(5, 0, Arc::new(Mutex::new(Reg(0)))),
            Err(BusError::BadRange { base: 5, len: 0 })
        );
        let mut d = [0u8; 2];
        assert!(bus.read(0x104, &mut d));
        assert_eq!(d, [4, 0]);
        assert!(bus.read(0x112, &mut d));
        assert_eq!(u16::from_le_bytes(d), 0x1002);
        assert!(!bus.read(0x120, &mut d));
        assert!(
            !bus.read(0x11f, &mut d),
            "access crossing the end is not routed"
        );
        assert_eq!(bus.write(0x100, &[7]), Some(DeviceAction::None));
        assert_eq!(bus.write(0x200, &[7]), None);
        assert!(bus.remove(0x110).is_some());
        assert!(!bus.read(0x112, &mut d));
    }
}

/// Counters of accesses no device claimed (a guest probing for hardware that is not there).
#[derive(Debug, Default)]
pub struct Unclaimed {
    /// Port accesses.
    pub pio: std::sync::atomic::AtomicU64,
    /// MMIO accesses.
    pub mmio: std::sync::atomic::AtomicU64,
}

//! The probe doorbell: one page of guest-physical address space that jump-optimized probes
//! with an exit handler write to (`mov dword ptr [rip+doorbell], SLOT`). The page is RAM
//! carved out of the memory slots, so every write exits; this device turns it into a
//! [`GuestRequest::Doorbell`] for the introspection layer, which reads the probed context from
//! the registers KVM synced at the exit (the doorbell instruction changes no register).

use super::{BusDevice, DeviceAction, GuestRequest, le_value, put_le};

/// The doorbell page's device. Reads return 0.
#[derive(Debug, Default)]
pub struct Doorbell;

impl BusDevice for Doorbell {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        put_le(data, 0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> DeviceAction {
        DeviceAction::Request(GuestRequest::Doorbell {
            offset,
            value: le_value(data),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_becomes_a_doorbell_request() {
        let mut d = Doorbell;
        assert_eq!(
            d.write(0, &7u32.to_le_bytes()),
            DeviceAction::Request(GuestRequest::Doorbell {
                offset: 0,
                value: 7
            })
        );
        let mut b = [0xffu8; 4];
        d.read(0, &mut b);
        assert_eq!(b, [0; 4]);
    }
}

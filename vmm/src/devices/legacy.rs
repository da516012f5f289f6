//! Small legacy PC devices: the i8042 controller (only its reset line).

use super::{BusDevice, DeviceAction, put_le};

/// i8042 command port: writing [`I8042_RESET`] here resets the machine.
pub const I8042_COMMAND_PORT: u16 = 0x64;
/// i8042 data port.
pub const I8042_DATA_PORT: u16 = 0x60;
/// The "pulse reset line" command.
pub const I8042_RESET: u8 = 0xfe;

/// The i8042 keyboard controller, reduced to what a guest needs to reboot the machine.
/// Mapped at 0x60..0x65 (data at offset 0, command/status at offset 4).
#[derive(Default)]
pub struct I8042;

impl BusDevice for I8042 {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Status 0: output buffer empty, input buffer empty; data reads 0.
        put_le(data, 0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> DeviceAction {
        if offset == u64::from(I8042_COMMAND_PORT - I8042_DATA_PORT)
            && data.first() == Some(&I8042_RESET)
        {
            DeviceAction::Reset
        } else {
            DeviceAction::None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn i8042_resets_only_on_fe_at_the_command_port() {
        let mut k = I8042;
        assert_eq!(k.write(4, &[0xfe]), DeviceAction::Reset);
        assert_eq!(k.write(4, &[0xd1]), DeviceAction::None);
        assert_eq!(k.write(0, &[0xfe]), DeviceAction::None);
    }
}

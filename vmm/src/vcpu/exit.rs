//! VM exits as hvprobe sees them, and the dispatcher that routes them.
//!
//! [`Exit`] is our own copy of what KVM reported (kvm-ioctls' `VcpuExit` borrows the vCPU, so
//! it cannot outlive the ioctl). [`dispatch`] is a plain function over an `Exit` and the
//! buses: tests feed it synthetic exits without a VM.

use crate::devices::DeviceAction;
use crate::devices::bus::Bus;
use introspect::events::Space;

pub use crate::devices::AccessObserver;

/// The whole `kvm_debug_exit_arch` payload of a debug exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DebugExit {
    /// Exception vector: 1 (#DB: single-step, hardware breakpoint) or 3 (#BP: int3).
    pub exception: u32,
    /// Guest RIP at the exit.
    pub pc: u64,
    /// DR6 (which condition fired: B0-B3, BS).
    pub dr6: u64,
    /// DR7 in force.
    pub dr7: u64,
}

impl DebugExit {
    /// DR6.BS: the exit is a single-step.
    pub fn is_single_step(&self) -> bool {
        self.dr6 & (1 << 14) != 0
    }

    /// Which of DR0-DR3 fired, if any.
    pub fn breakpoint_slot(&self) -> Option<u8> {
        (0..4u8).find(|i| self.dr6 & (1 << i) != 0)
    }
}

/// KVM_EXIT_INTERNAL_ERROR data.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct InternalError {
    /// Suberror (1: emulation failure, 2: simultaneous exception, 3: delivery event, ...).
    pub suberror: u32,
    /// The `data` words KVM filled in.
    pub data: Vec<u64>,
}

impl InternalError {
    /// KVM_INTERNAL_ERROR_EMULATION.
    pub const EMULATION: u32 = 1;

    /// A short description of the suberror.
    pub fn describe(&self) -> String {
        let what = match self.suberror {
            1 => "emulation failure",
            2 => "simultaneous exceptions",
            3 => "exception during event delivery",
            4 => "unexpected exit reason",
            _ => "internal error",
        };
        format!("KVM internal error {} ({what})", self.suberror)
    }
}

/// One VM exit.
#[derive(Debug)]
pub enum Exit<'a> {
    /// Port read: fill `data`.
    IoIn {
        /// Port.
        port: u16,
        /// Bytes to fill (1, 2 or 4).
        data: &'a mut [u8],
    },
    /// Port write.
    IoOut {
        /// Port.
        port: u16,
        /// Bytes written.
        data: &'a [u8],
    },
    /// MMIO read: fill `data`.
    MmioRead {
        /// Guest-physical address.
        addr: u64,
        /// Bytes to fill (1 to 8).
        data: &'a mut [u8],
    },
    /// MMIO write.
    MmioWrite {
        /// Guest-physical address.
        addr: u64,
        /// Bytes written.
        data: &'a [u8],
    },
    /// Debug exit (single-step, hardware breakpoint, int3 on hardware KVM).
    Debug(DebugExit),
    /// KVM internal error (on our software KVM, also how a ring-0 int3 surfaces).
    InternalError(InternalError),
    /// Triple fault.
    Shutdown,
    /// `hlt` without an in-kernel irqchip.
    Hlt,
    /// VM entry failed.
    FailEntry {
        /// Hardware entry failure reason.
        reason: u64,
    },
    /// KVM_EXIT_SYSTEM_EVENT (PSCI-style shutdown / reset / crash).
    SystemEvent {
        /// KVM_SYSTEM_EVENT_* type.
        kind: u32,
    },
    /// KVM_RUN was interrupted (a kick from another thread) or asked to exit immediately.
    Interrupted,
    /// Anything else.
    Other(String),
}

/// What the vCPU loop does after an exit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitAction {
    /// Re-enter the guest.
    Continue,
    /// Handle pending messages (pause, stop, ...), then re-enter.
    Kicked,
    /// The VM is over.
    Stop(StopReason),
    /// A debug exit for the introspection layer.
    Debug(DebugExit),
    /// An internal error: the introspection layer may claim it (int3 on software KVM);
    /// otherwise the guest crashed.
    InternalError(InternalError),
    /// A device passed on a guest request for the introspection layer.
    Request(crate::devices::GuestRequest),
}

/// Why the VM stops (the vCPU loop adds vCPU and RIP to make an [`crate::outcome::Outcome`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The guest asked to exit with a code.
    GuestExit(u32),
    /// The guest reset the machine.
    Reset,
    /// Triple fault.
    TripleFault,
    /// KVM could not run the guest.
    Crash(String),
    /// An introspection handler asked to stop the guest.
    Handler,
}

pub use crate::devices::bus::Unclaimed;

/// The buses an exit can be routed to.
pub struct IoBuses<'a> {
    /// Port I/O.
    pub pio: &'a Bus,
    /// MMIO.
    pub mmio: &'a Bus,
    /// Unclaimed access counters.
    pub unclaimed: &'a Unclaimed,
    /// The tracer, if one is attached: it sees every access after the device handled it.
    pub observer: Option<&'a dyn AccessObserver>,
}

fn observe(io: &IoBuses<'_>, space: Space, write: bool, addr: u64, data: &[u8]) {
    if let Some(o) = io.observer {
        o.observe(space, write, addr, data);
    }
}

fn device_action(a: Option<DeviceAction>, unclaimed: &std::sync::atomic::AtomicU64) -> ExitAction {
    match a {
        Some(DeviceAction::None) => ExitAction::Continue,
        Some(DeviceAction::Exit(code)) => ExitAction::Stop(StopReason::GuestExit(code)),
        Some(DeviceAction::Reset) => ExitAction::Stop(StopReason::Reset),
        Some(DeviceAction::Request(r)) => ExitAction::Request(r),
        None => {
            unclaimed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            ExitAction::Continue
        }
    }
}

/// Routes one exit. Reads nobody claims return all-ones (an absent device on a PC bus);
/// writes nobody claims are dropped. Both are counted in [`Unclaimed`].
pub fn dispatch(exit: Exit<'_>, io: &IoBuses<'_>) -> ExitAction {
    use std::sync::atomic::Ordering::Relaxed;
    match exit {
        Exit::IoIn { port, data } => {
            if !io.pio.read(u64::from(port), data) {
                data.fill(0xff);
                io.unclaimed.pio.fetch_add(1, Relaxed);
            }
            observe(io, Space::Pio, false, u64::from(port), data);
            ExitAction::Continue
        }
        Exit::IoOut { port, data } => {
            let action = device_action(io.pio.write(u64::from(port), data), &io.unclaimed.pio);
            observe(io, Space::Pio, true, u64::from(port), data);
            action
        }
        Exit::MmioRead { addr, data } => {
            if !io.mmio.read(addr, data) {
                data.fill(0xff);
                io.unclaimed.mmio.fetch_add(1, Relaxed);
            }
            observe(io, Space::Mmio, false, addr, data);
            ExitAction::Continue
        }
        Exit::MmioWrite { addr, data } => {
            let action = device_action(io.mmio.write(addr, data), &io.unclaimed.mmio);
            observe(io, Space::Mmio, true, addr, data);
            action
        }
        Exit::Debug(d) => ExitAction::Debug(d),
        Exit::InternalError(e) => ExitAction::InternalError(e),
        Exit::Shutdown => ExitAction::Stop(StopReason::TripleFault),
        Exit::Hlt => ExitAction::Continue,
        Exit::FailEntry { reason } => ExitAction::Stop(StopReason::Crash(format!(
            "VM entry failed (hardware reason {reason:#x})"
        ))),
        Exit::SystemEvent { kind } => match kind {
            kvm_bindings::KVM_SYSTEM_EVENT_RESET => ExitAction::Stop(StopReason::Reset),
            kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => ExitAction::Stop(StopReason::GuestExit(0)),
            k => ExitAction::Stop(StopReason::Crash(format!("system event {k}"))),
        },
        Exit::Interrupted => ExitAction::Kicked,
        Exit::Other(what) => {
            ExitAction::Stop(StopReason::Crash(format!("unexpected VM exit: {what}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::legacy::I8042;
    use crate::devices::test_device::{TEST_DEVICE_PORT, TestDevice};
    use crate::phases::Phases;
    use std::sync::{Arc, Mutex};

    fn buses() -> (Bus, Bus, Unclaimed) {
        let pio = Bus::new();
        pio.insert(
            u64::from(TEST_DEVICE_PORT),
            0x10,
            Arc::new(Mutex::new(TestDevice::new(Phases::new(true)))),
        )
        .unwrap();
        pio.insert(0x60, 5, Arc::new(Mutex::new(I8042))).unwrap();
        (pio, Bus::new(), Unclaimed::default())
    }

    #[test]
    fn synthetic_exits_route_to_devices() {
        let (pio, mmio, un) = buses();
        let io = IoBuses {
            pio: &pio,
            mmio: &mmio,
            unclaimed: &un,
            observer: None,
        };
        let mut id = [0u8; 4];
        assert_eq!(
            dispatch(
                Exit::IoIn {
                    port: 0x600,
                    data: &mut id
                },
                &io
            ),
            ExitAction::Continue
        );
        assert_eq!(&id, b"HVPT");
        assert_eq!(
            dispatch(
                Exit::IoOut {
                    port: 0x604,
                    data: &5u32.to_le_bytes()
                },
                &io
            ),
            ExitAction::Stop(StopReason::GuestExit(5))
        );
        assert_eq!(
            dispatch(
                Exit::IoOut {
                    port: 0x64,
                    data: &[0xfe]
                },
                &io
            ),
            ExitAction::Stop(StopReason::Reset)
        );
        let mut none = [0u8; 2];
        assert_eq!(
            dispatch(
                Exit::IoIn {
                    port: 0x2f8,
                    data: &mut none
                },
                &io
            ),
            ExitAction::Continue
        );
        assert_eq!(none, [0xff, 0xff]);
        let mut m = [0u8; 8];
        dispatch(
            Exit::MmioRead {
                addr: 0x1234_0000,
                data: &mut m,
            },
            &io,
        );
        assert_eq!(m, [0xff; 8]);
        assert_eq!(un.pio.load(std::sync::atomic::Ordering::Relaxed), 1);
        assert_eq!(un.mmio.load(std::sync::atomic::Ordering::Relaxed), 1);
    }

    #[test]
    fn debug_and_internal_errors_keep_their_payload() {
        let (pio, mmio, un) = buses();
        let io = IoBuses {
            pio: &pio,
            mmio: &mmio,
            unclaimed: &un,
            observer: None,
        };
        let d = DebugExit {
            exception: 1,
            pc: 0x1000,
            dr6: 0xffff_0ff2,
            dr7: 0x400,
        };
        assert_eq!(dispatch(Exit::Debug(d), &io), ExitAction::Debug(d));
        assert!(!d.is_single_step());
        assert_eq!(d.breakpoint_slot(), Some(1));
        let e = InternalError {
            suberror: 1,
            data: vec![1, 2],
        };
        assert_eq!(
            dispatch(Exit::InternalError(e.clone()), &io),
            ExitAction::InternalError(e)
        );
        assert_eq!(
            dispatch(Exit::Shutdown, &io),
            ExitAction::Stop(StopReason::TripleFault)
        );
        assert_eq!(dispatch(Exit::Interrupted, &io), ExitAction::Kicked);
    }
}

//! How a VM run ended, and the process exit status hvprobe maps each ending to.

use std::fmt;

/// Exit status: the guest asked to exit with code `n` through the test device (0..=63).
pub const EXIT_GUEST_MAX: u8 = 63;
/// Exit status: bad arguments, config, or input files (kernel, initrd).
pub const EXIT_BAD_INPUT: u8 = 64;
/// Exit status: the guest reset the machine (i8042 reset, or Linux `reboot`/panic with `panic=-1`).
pub const EXIT_GUEST_RESET: u8 = 65;
/// Exit status: the guest crashed (triple fault, KVM internal error, failed VM entry).
pub const EXIT_GUEST_CRASH: u8 = 66;
/// Exit status: hvprobe itself failed (KVM unavailable, an ioctl failed, a thread died).
pub const EXIT_VMM_FAILURE: u8 = 70;
/// Exit status: a probe or breakpoint handler stopped the guest.
pub const EXIT_STOPPED: u8 = 67;
/// Exit status: the `--timeout` elapsed before the guest ended.
pub const EXIT_TIMEOUT: u8 = 124;

/// An error and its `source()` chain on one line, joined with `: ` (every error hvprobe
/// prints is one line).
pub fn error_line(err: &dyn std::error::Error) -> String {
    let mut line = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        line.push_str(": ");
        line.push_str(&cause.to_string());
        source = cause.source();
    }
    line.replace('\n', " ")
}

/// How a VM run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The guest wrote `code` to the test device's EXIT register.
    GuestExit {
        /// The code the guest asked for.
        code: u32,
    },
    /// The guest reset the machine through the i8042 controller.
    Reset,
    /// A vCPU triple-faulted (KVM_EXIT_SHUTDOWN).
    TripleFault {
        /// The vCPU that shut down.
        vcpu: u8,
        /// Its RIP at the time.
        rip: u64,
    },
    /// KVM could not run the guest: internal error (e.g. emulation failure) or failed entry.
    Crash {
        /// The vCPU.
        vcpu: u8,
        /// Its RIP at the time (0 if unknown).
        rip: u64,
        /// What KVM reported.
        reason: String,
    },
    /// The `--timeout` elapsed.
    Timeout,
    /// A probe or breakpoint handler asked to stop the guest (a debugger's stop).
    Stopped {
        /// The vCPU whose handler asked.
        vcpu: u8,
        /// Its RIP at the time.
        rip: u64,
    },
    /// A control API client asked the VM to stop (`vm.stop`).
    StoppedByClient,
}

impl Outcome {
    /// The process exit status for this outcome (see the `EXIT_*` constants).
    pub fn exit_code(&self) -> u8 {
        match self {
            Outcome::GuestExit { code } => {
                u8::try_from(*code).map_or(EXIT_GUEST_MAX, |c| c.min(EXIT_GUEST_MAX))
            }
            Outcome::Reset => EXIT_GUEST_RESET,
            Outcome::TripleFault { .. } | Outcome::Crash { .. } => EXIT_GUEST_CRASH,
            Outcome::Timeout => EXIT_TIMEOUT,
            Outcome::Stopped { .. } | Outcome::StoppedByClient => EXIT_STOPPED,
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::GuestExit { code } => write!(f, "guest exited with code {code}"),
            Outcome::Reset => write!(f, "guest reset the machine"),
            Outcome::TripleFault { vcpu, rip } => {
                write!(
                    f,
                    "guest crashed: triple fault on vCPU {vcpu} at rip {rip:#x}"
                )
            }
            Outcome::Crash { vcpu, rip, reason } => {
                write!(f, "guest crashed on vCPU {vcpu} at rip {rip:#x}: {reason}")
            }
            Outcome::Timeout => write!(f, "timeout: the guest was still running"),
            Outcome::Stopped { vcpu, rip } => {
                write!(f, "stopped by a handler on vCPU {vcpu} at rip {rip:#x}")
            }
            Outcome::StoppedByClient => write!(f, "stopped by a control API client"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_distinct_and_clamped() {
        assert_eq!(Outcome::GuestExit { code: 0 }.exit_code(), 0);
        assert_eq!(Outcome::GuestExit { code: 9 }.exit_code(), 9);
        assert_eq!(
            Outcome::GuestExit { code: 1000 }.exit_code(),
            EXIT_GUEST_MAX
        );
        let codes = [
            EXIT_BAD_INPUT,
            EXIT_GUEST_RESET,
            EXIT_GUEST_CRASH,
            EXIT_STOPPED,
            EXIT_VMM_FAILURE,
            EXIT_TIMEOUT,
        ];
        for (i, a) in codes.iter().enumerate() {
            assert!(*a > EXIT_GUEST_MAX);
            assert!(codes[i + 1..].iter().all(|b| b != a));
        }
    }
}

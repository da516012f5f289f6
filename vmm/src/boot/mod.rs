//! x86_64 boot setup: everything written into guest memory and vCPU state before the first
//! KVM_RUN, so a guest starts at its 64-bit entry as Linux's 64-bit boot protocol describes.
//!
//! - [`gdt`]: flat GDT with `__BOOT_CS` = 0x10 and `__BOOT_DS` = 0x18;
//! - [`paging`]: identity map of the first 4 GiB with 2 MiB pages;
//! - [`params`]: boot_params (zero page), e820 map, command line;
//! - [`mptable`]: the Intel MP table that tells Linux about CPUs and the IOAPIC;
//! - [`cpu`]: CPUID, MSRs, FPU, LAPIC LINT pins, registers.

pub mod cpu;
pub mod gdt;
pub mod mptable;
pub mod paging;
pub mod params;

use crate::memory::MemoryError;

/// Errors of boot setup.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// Writing a boot structure into guest memory failed.
    #[error("Cannot write the {what} into guest memory")]
    Memory {
        /// Which structure.
        what: &'static str,
        /// The memory error.
        #[source]
        source: MemoryError,
    },
    /// The command line does not fit.
    #[error("Kernel command line is {len} bytes; the limit is {max} (Linux's COMMAND_LINE_SIZE)")]
    CmdlineTooLong {
        /// Its length, terminating NUL included.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The command line has a NUL byte inside.
    #[error("Kernel command line contains a NUL byte")]
    CmdlineNul,
    /// Too many vCPUs for the MP table.
    #[error("{0} vCPUs do not fit the MP table (at most 254)")]
    TooManyCpus(u8),
    /// A KVM ioctl used for vCPU setup failed.
    #[error("Cannot set up vCPU {vcpu}: {what} failed")]
    Vcpu {
        /// The vCPU index.
        vcpu: u8,
        /// The ioctl.
        what: &'static str,
        /// The errno.
        #[source]
        source: kvm_ioctls::Error,
    },
}

impl BootError {
    pub(crate) fn mem(what: &'static str) -> impl FnOnce(MemoryError) -> BootError {
        move |source| BootError::Memory { what, source }
    }
}

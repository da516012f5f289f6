//! Facts about the KVM we run on that change what hvprobe must do.
//!
//! Our development and CI machines run `kvm_pvm`, a software hypervisor that emulates guest
//! ring-0 code and cannot run some instructions Linux uses (see `shared/PLATFORM.md`); users
//! run on hardware KVM.

pub mod accommodation;
/// Host-side execution of the instructions the software KVM cannot emulate.
pub mod emulate;
pub mod steering;
pub mod syscall_relay;

use std::path::Path;

use crate::boot::cpu::{CPUID_1_ECX_CX16, CpuidMask};

/// Whether `/dev/kvm` is the `kvm_pvm` software hypervisor.
pub fn is_software_kvm() -> bool {
    Path::new("/sys/module/kvm_pvm").exists()
}

/// CPUID features to hide from a Linux guest on this platform, with the reason (printed on
/// stderr at boot). Empty on hardware KVM.
pub fn linux_cpuid_mask() -> Option<(CpuidMask, &'static str)> {
    is_software_kvm().then_some((
        CpuidMask {
            leaf1_ecx: CPUID_1_ECX_CX16,
        },
        "software KVM (kvm_pvm) detected: hiding CPUID cmpxchg16b from Linux, which this \
         emulator cannot run (SLUB would fail)",
    ))
}

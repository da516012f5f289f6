//! Probing the KVM hvprobe runs on by running a throwaway VM: whether guest ring-0 code runs
//! at hardware speed (the check of `shared/PLATFORM.md`; tests that need hardware KVM ask
//! [`is_fast_kvm`] and print a loud skip line when it says no), and whether KVM offers
//! `rdtscp` to guests. Above the VM in the layering (it builds one); `crate::platform` below
//! it only reads what the host says.

/// The guest program of [`ring0_loop_time`]: `mov rcx, 100000; 1: dec rcx; jnz 1b;
/// mov dx, 0x604; xor eax, eax; out dx, eax` (test device EXIT 0).
const RING0_LOOP: [u8; 20] = [
    0x48, 0xc7, 0xc1, 0xa0, 0x86, 0x01, 0x00, // mov rcx, 100000
    0x48, 0xff, 0xc9, // dec rcx
    0x75, 0xfb, // jnz -5
    0x66, 0xba, 0x04, 0x06, // mov dx, 0x604
    0x31, 0xc0, // xor eax, eax
    0xef, // out dx, eax
    0xf4, // hlt (not reached)
];
/// Iterations of [`RING0_LOOP`].
pub const RING0_LOOP_ITERATIONS: u64 = 100_000;

/// Whether this KVM gives its guests `rdtscp` (CPUID.8000_0001h:EDX bit 27), which hvprobe's
/// in-guest probe trampolines use to find their vCPU's ring. False if KVM cannot be asked.
pub fn kvm_offers_rdtscp() -> bool {
    crate::vm::open_kvm()
        .ok()
        .and_then(|kvm| {
            kvm.get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
                .ok()
        })
        .is_some_and(|c| crate::boot::cpu::has_rdtscp(&c))
}

/// Runs 100,000 iterations of a tight ring-0 loop in a throwaway VM and returns the wall time
/// from start to the guest's exit. About 0.1 ms of loop on hardware KVM; about 150 ms on our
/// software KVM, which emulates ring-0 code.
pub fn ring0_loop_time() -> Result<std::time::Duration, crate::vm::VmError> {
    use crate::config::{KernelSource, SerialOutput, VmConfig};
    let config = VmConfig {
        kernel: KernelSource::Raw {
            image: RING0_LOOP.to_vec(),
            load_addr: 0x10_0000,
            entry: 0x10_0000,
        },
        mem_size: 16 << 20,
        serial: SerialOutput::Sink,
        quiet: true,
        ..VmConfig::default()
    };
    let mut vm = crate::vm::Vm::new(&config, None)?;
    let t = std::time::Instant::now();
    vm.start()?;
    let outcome = vm.wait(Some(std::time::Duration::from_secs(30)))?;
    let elapsed = t.elapsed();
    match outcome {
        crate::outcome::Outcome::GuestExit { code: 0 } => Ok(elapsed),
        other => Err(crate::vm::VmError::Config(format!(
            "platform check guest did not finish: {other}"
        ))),
    }
}

/// Whether guest ring-0 code runs at hardware speed (the check of `shared/PLATFORM.md`):
/// tests that need hardware KVM ask this and print a loud skip line when it says no.
pub fn is_fast_kvm() -> bool {
    ring0_loop_time().is_ok_and(|t| t < std::time::Duration::from_millis(30))
}

#[cfg(test)]
mod tests {
    #[test]
    fn ring0_loop_runs_and_is_classified() {
        let t = super::ring0_loop_time().expect("the loop guest exits cleanly");
        let fast = t < std::time::Duration::from_millis(30);
        eprintln!(
            "ring-0 loop of {} iterations: {t:?} ({})",
            super::RING0_LOOP_ITERATIONS,
            if fast { "hardware speed" } else { "emulated" }
        );
        if crate::platform::is_software_kvm() {
            assert!(
                !fast,
                "kvm_pvm emulates ring 0; a fast loop means the check is broken"
            );
        }
    }
}

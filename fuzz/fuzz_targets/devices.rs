//! Runs arbitrary guest port and MMIO accesses against the PCI configuration mechanism and
//! the `edu` device (`vmm::devices::pci`, `vmm::devices::edu`): a guest controls every value
//! it writes there, in any order and size. Nothing may panic or deadlock; the read-only
//! identification stays; a BAR is on the MMIO bus only while memory decoding is on, aligned,
//! below 4 GiB, answering with edu's ID; nothing else answers on the MMIO bus.
//!
//! Corpus seeds and past finds: `fuzz/regressions/devices/` (replayed by
//! vmm/tests/fuzz_corpora.rs). Run: `bash scripts/fuzz-all.sh devices 600`.
#![no_main]

include!("../checks/devices.rs");

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    check(data);
});

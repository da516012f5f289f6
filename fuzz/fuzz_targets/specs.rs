//! Feeds arbitrary text to the instrumentation specs of the command line and config file
//! (`vmm::config`): `--probe` (`ProbeSpec`), `--hbreak` (`Location`), `--watch`
//! (`WatchSpec`), `--mmiotrace` (`TraceTarget`), the format names and `--mem` sizes. The
//! first byte picks the parser. Nothing may panic; what parses prints (`Display`) to text that
//! parses to the same value and prints the same again; errors are one line.
//!
//! Corpus seeds and past finds: `fuzz/regressions/specs/` (replayed by vmm/tests/fuzz_corpora.rs).
//! Run: `bash scripts/fuzz-all.sh specs 600`.
#![no_main]

include!("../checks/specs.rs");

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    check(data);
});

//! Walks hostile page tables (`introspect::paging`): the guest owns its page tables, and
//! hvprobe walks them to read guest memory (probes, kallsyms, the exception table). The input
//! is a paging context (CR3, LA57, NXE, WP, MAXPHYADDR, long mode or not), four virtual
//! addresses, and a guest memory image (mirrored over the low 64 GiB, so table pointers land in
//! it). Nothing may panic; a translation keeps the page offset, stays below MAXPHYADDR and
//! combines permissions as documented; the cached walker agrees with the uncached walk (also
//! for another address in the same page); a virtual read returns exactly the bytes the
//! per-byte translations point at.
//!
//! Corpus seeds and past finds: `fuzz/regressions/paging/` (replayed by
//! introspect/tests/fuzz_corpora.rs). Run: `bash scripts/fuzz-all.sh paging 600`.
#![no_main]

include!("../checks/paging.rs");

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    check(data);
});

//! Drains hostile in-guest rings (`introspect::probes::ring`): the guest writes each ring's
//! head and records, and can write anything there. The input picks the vCPU count, the arena
//! size and three drain limits, and what the guest writes over the rings before each drain.
//! Nothing may panic or allocate without bound; a drain returns at most its limit and at most a
//! ring's capacity per ring;
//! each record is the one in the slot its index maps to, committed (sequence = index + 1);
//! the tail written back to the guest is the count taken so far.
//!
//! Corpus seeds and past finds: `fuzz/regressions/ring/` (replayed by
//! introspect/tests/fuzz_corpora.rs). Run: `bash scripts/fuzz-all.sh ring 600`.
#![no_main]

include!("../checks/ring.rs");

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    check(data);
});

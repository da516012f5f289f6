//! Feeds arbitrary bytes to the control API's request reader (`vmm::session::api`: anyone who
//! can reach the socket writes these): the bounded line reader, JSON-RPC 2.0 parsing of
//! requests, notifications and batches, and the typed parameter reads the methods make.
//! Nothing may panic or hold more than a line's limit; batches stay within their limit; every
//! response and error serializes to one line (the framing); error messages are one line.
//!
//! Corpus seeds and past finds: `fuzz/regressions/api_request/` (replayed by
//! vmm/tests/fuzz_corpora.rs). Run: `bash scripts/fuzz-all.sh api_request 600`.
#![no_main]

include!("../checks/api_request.rs");

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    check(data);
});

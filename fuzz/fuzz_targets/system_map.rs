//! Feeds arbitrary text to the System.map / `/proc/kallsyms` parser
//! (`SymbolTable::from_system_map`) and the symbol expression resolver
//! (`SymbolTable::resolve`: `name`, `name+0x10`, `0xADDR`). Nothing may panic; an accepted
//! map printed back in System.map form parses to the same symbols; errors are one line;
//! resolving the input's last line against the table returns.
//!
//! Corpus seeds and past finds: `fuzz/regressions/system_map/` (replayed by
//! introspect/tests/fuzz_corpora.rs). Run: `bash scripts/fuzz-all.sh system_map 600`.
#![no_main]

include!("../checks/system_map.rs");

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    check(data);
});

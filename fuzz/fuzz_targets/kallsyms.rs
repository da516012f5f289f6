//! Feeds arbitrary bytes to the kallsyms finder (`introspect::symbols::kallsyms`): as a
//! decompressed kernel image when they start with an ELF magic
//! (`SymbolTable::from_kallsyms_image`'s path), else as a buffer read from guest memory at a
//! kernel `.rodata` address (`from_kallsyms_bytes`'s path: the guest controls those bytes).
//! Nothing may panic or hang; tables found lie inside the input, the symbol count is bounded
//! by the input's size, and the table answers name and address lookups consistently.
//!
//! Corpus seeds and past finds: `fuzz/regressions/kallsyms/` (replayed by
//! introspect/tests/fuzz_corpora.rs). Run: `bash scripts/fuzz-all.sh kallsyms 600`.
#![no_main]

include!("../checks/kallsyms.rs");

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    check(data);
});

//! Feeds arbitrary bytes to the ELF reader (`introspect::elf`) and the ELF symbol table loader
//! (`SymbolTable::from_elf`): a kernel the user hands hvprobe. Nothing may panic or allocate
//! without bound; the symbol count is bounded by the file's size; segment and section bytes
//! and virtual-address reads stay inside the file; the table answers lookups consistently.
//!
//! Corpus seeds and past finds: `fuzz/regressions/elf_symtab/` (replayed by
//! introspect/tests/fuzz_corpora.rs). Run: `bash scripts/fuzz-all.sh elf_symtab 600`.
#![no_main]

include!("../checks/elf_symtab.rs");

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    check(data);
});

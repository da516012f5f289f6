// What the `elf_symtab` fuzz target checks, shared with the test that replays its corpus
// (`include!`d by fuzz/fuzz_targets/elf_symtab.rs and introspect/tests/fuzz_corpora.rs).

use introspect::SymbolTable;
use introspect::elf::ElfFile;

/// Parses `data` as an ELF file and loads its symbol table, checking both. Returns whether
/// the symbol table loaded with at least one symbol.
pub fn check(data: &[u8]) -> bool {
    if let Ok(elf) = ElfFile::parse(data) {
        for seg in elf.segments() {
            if let Ok(b) = elf.segment_bytes(seg) {
                assert_eq!(b.len() as u64, seg.filesz);
            }
            let _ = elf.vaddr_to_offset(seg.vaddr.wrapping_add(seg.filesz / 2));
            if let Some(b) = elf.read_vaddr(seg.vaddr, 8) {
                assert_eq!(b.len(), 8);
            }
        }
        for sec in elf.sections() {
            if let Ok(b) = elf.section_bytes(sec) {
                assert!(b.len() as u64 == sec.size || b.is_empty());
            }
        }
    }
    let t = match SymbolTable::from_elf(data) {
        Ok(t) => t,
        Err(e) => {
            assert!(!e.to_string().contains('\n'), "{e}");
            return false;
        }
    };
    // A symbol is a 24-byte entry of the file (entry 0 is never one).
    assert!(t.len() <= data.len() / 24, "{} symbols", t.len());
    let syms = t.symbols();
    assert!(syms.windows(2).all(|w| w[0].addr <= w[1].addr));
    for s in syms.iter().take(64) {
        assert!(!s.name.is_empty() && s.size != Some(0));
        assert!(t.get_all(&s.name).any(|o| o == s));
        let at = t.lookup(s.addr).expect("a symbol's own address resolves");
        assert_eq!((at.symbol.addr, at.offset), (s.addr, 0));
        let _ = at.to_string();
    }
    !t.is_empty()
}

// What the `kallsyms` fuzz target checks, shared with the test that replays its corpus
// (`include!`d by fuzz/fuzz_targets/kallsyms.rs and introspect/tests/fuzz_corpora.rs).

use introspect::SymbolTable;
use introspect::symbols::kallsyms::{find_kallsyms, find_kallsyms_in_elf};

/// Where the tables of a buffer that is not an ELF file are taken to start (a kernel's
/// `.rodata`; the seeds were made for it).
pub const BASE: u64 = 0xffff_ffff_8200_0000;

/// Sorted by address, and every symbol is found by its name and by its address.
pub fn check_table(t: &SymbolTable) {
    let syms = t.symbols();
    assert!(syms.windows(2).all(|w| w[0].addr <= w[1].addr));
    for s in syms.iter().take(64) {
        assert!(!s.name.is_empty());
        assert!(t.get_all(&s.name).any(|o| o == s));
        let at = t.lookup(s.addr).expect("a symbol's own address resolves");
        assert_eq!((at.symbol.addr, at.offset), (s.addr, 0));
        let _ = at.to_string();
    }
}

/// Looks for kallsyms tables in `data` (an ELF image, or guest memory at [`BASE`]) and checks
/// what is found. Returns whether tables were found.
pub fn check(data: &[u8]) -> bool {
    let elf = data.starts_with(b"\x7fELF");
    let found = if elf {
        find_kallsyms_in_elf(data)
    } else {
        find_kallsyms(data, BASE)
    };
    let k = match found {
        Ok(k) => k,
        Err(e) => {
            assert!(!e.to_string().contains('\n'), "{e}");
            return false;
        }
    };
    // Each symbol takes 4 bytes of offsets and at least 2 of names.
    assert!(
        k.symbols.len() <= data.len() / 6,
        "{} symbols",
        k.symbols.len()
    );
    let l = k.layout;
    let mut at = vec![
        l.offsets,
        l.relative_base,
        l.num_syms,
        l.names,
        l.markers,
        l.token_table,
        l.token_index,
    ];
    at.extend(l.seqs_of_names);
    if !elf {
        let end = BASE + data.len() as u64;
        assert!(at.iter().all(|&a| (BASE..end).contains(&a)), "{l:?}");
    }
    check_table(&k.symbols);
    true
}

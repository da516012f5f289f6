// What the `system_map` fuzz target checks, shared with the test that replays its corpus
// (`include!`d by fuzz/fuzz_targets/system_map.rs and introspect/tests/fuzz_corpora.rs).

use std::fmt::Write;

use introspect::SymbolTable;

/// Parses `data` (lossily as UTF-8) as System.map text and resolves its last line as an
/// expression, checking both. Returns whether the map parsed.
pub fn check(data: &[u8]) -> bool {
    let text = String::from_utf8_lossy(data);
    let expr = text.lines().last().unwrap_or_default();
    let t = match SymbolTable::from_system_map(&text) {
        Ok(t) => t,
        Err(e) => {
            assert!(!e.to_string().contains('\n'), "{e}");
            if let Err(e) = SymbolTable::default().resolve(expr) {
                assert!(!e.to_string().contains('\n'), "{e}");
            }
            return false;
        }
    };
    assert!(!t.is_empty() && t.len() <= text.lines().count());
    // Printed back as System.map, it parses to the same symbols.
    let mut printed = String::new();
    for s in t.symbols() {
        let _ = write!(printed, "{:016x} {} {}", s.addr, s.kind, s.name);
        if let Some(m) = &s.module {
            let _ = write!(printed, "\t[{m}]");
        }
        printed.push('\n');
    }
    let again = SymbolTable::from_system_map(&printed).expect("the printed map parses");
    assert_eq!(again.symbols(), t.symbols());
    for s in t.symbols().iter().take(32) {
        assert!(t.get_all(&s.name).any(|o| o == s));
        let at = t.lookup(s.addr).expect("a symbol's own address resolves");
        assert_eq!((at.symbol.addr, at.offset), (s.addr, 0));
        // A plain name resolves to its preferred symbol's address, and +0x10 past it.
        let plain = s
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.$".contains(&b));
        if plain && !s.name.starts_with("0x") && !s.name.starts_with("0X") {
            let preferred = t.get(&s.name).expect("named").addr;
            assert_eq!(t.resolve(&s.name), Ok(preferred), "{}", s.name);
            let past = t.resolve(&format!("{}+0x10", s.name));
            assert_eq!(past.ok(), preferred.checked_add(0x10), "{}", s.name);
        }
    }
    match t.resolve(expr) {
        Ok(addr) => {
            let _ = t.lookup(addr).map(|s| s.to_string());
        }
        Err(e) => assert!(!e.to_string().contains('\n'), "{e}"),
    }
    true
}

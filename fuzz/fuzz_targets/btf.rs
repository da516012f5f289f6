//! Feeds arbitrary bytes to the BTF parser (`introspect::btf`), and runs every query on
//! every type of what parses: resolve, size, members and member lookup (through anonymous
//! members), member paths, type names, function prototypes. Nothing may panic, hang or
//! allocate without bound; each answer is an `Ok` or a typed error.
//!
//! Corpus seeds and past finds: `fuzz/regressions/btf/` (replayed by introspect's unit
//! tests). Run: `cargo +nightly fuzz run btf fuzz/regressions/btf`.
#![no_main]

use introspect::btf::{Btf, Kind};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(btf) = Btf::parse(data) else {
        return;
    };
    assert!(btf.len() >= 1);
    for t in btf.types() {
        let id = t.id();
        if let Ok(r) = btf.resolve(id) {
            let k = btf.get(r).map(|t| t.kind());
            assert!(!matches!(
                k,
                Ok(Kind::Typedef | Kind::Const | Kind::Volatile | Kind::Restrict | Kind::TypeTag)
            ));
        }
        let _ = btf.size_of(id);
        let _ = btf.type_name(id);
        if let Ok(members) = btf.members(id) {
            for m in members.iter().take(4) {
                let _ = btf.member(id, m.name);
                let _ = btf.member_path(id, &format!("{}.{}", m.name, m.name));
            }
            let _ = btf.member(id, "x");
        }
        if t.kind() == Kind::Func {
            if let Ok(f) = btf.func_proto(t.name()) {
                let _ = f.signature(&btf);
            }
        }
        let _ = t.enumerators().count() + t.params().count() + t.secinfos().count();
        let _ = (t.int(), t.array(), t.linkage(), t.component_idx());
    }
    let _ = btf.find("task_struct", Kind::Struct);
    let _ = btf.find_all("").count();
});

//! Feeds arbitrary text to the kprobe_events parser (`introspect::probe_lang::ProbeDef`).
//! Nothing may panic; an accepted definition's canonical form (`Display`) must parse to the
//! same definition and print the same again; a refusal is one line with an in-range column.
//!
//! Corpus seeds and past finds: `fuzz/regressions/kprobe_def/` (replayed by introspect's
//! unit tests). Run: `cargo +nightly fuzz run kprobe_def fuzz/regressions/kprobe_def`.
#![no_main]

use introspect::probe_lang::{ProbeDef, caret};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match ProbeDef::parse(&text) {
        Ok(def) => {
            let canon = def.to_string();
            let again = ProbeDef::parse(&canon).expect("the canonical form parses");
            assert_eq!(again, def, "{canon}");
            assert_eq!(again.to_string(), canon);
            let _ = (def.needs_btf(), def.target.location());
            for a in &def.args {
                let _ = a.fetch.trampoline_fetch();
            }
        }
        Err(e) => {
            assert!(!e.to_string().contains('\n'));
            assert!(e.pos <= text.len());
            let _ = caret(&text, e.column);
        }
    }
});

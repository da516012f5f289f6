//! Feeds arbitrary text to the ftrace event filter parser (`introspect::probe_lang::Filter`).
//! Nothing may panic; an accepted filter's canonical form must parse to the same filter and
//! print the same again, and checking it against a schema and evaluating it over a record
//! must return; a refusal is one line with an in-range column.
//!
//! Corpus seeds and past finds: `fuzz/regressions/event_filter/` (replayed by introspect's
//! unit tests). Run: `cargo +nightly fuzz run event_filter fuzz/regressions/event_filter`.
#![no_main]

use introspect::probe_lang::filter::{FieldKind, FieldValue, Filter};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match Filter::parse(&text) {
        Ok(f) => {
            let canon = f.to_string();
            let again = Filter::parse(&canon).expect("the canonical form parses");
            assert_eq!(again, f, "{canon}");
            assert_eq!(again.to_string(), canon);
            let mask = [0b1011u64];
            let record = [
                ("a", FieldValue::U64(1)),
                ("sig", FieldValue::I64(-3)),
                ("comm", FieldValue::Str(b"bash")),
                ("mask", FieldValue::CpuMask(&mask)),
            ];
            let _ = f.eval(&record[..]);
            let _ = f.check(|n| match n {
                "a" => Some(FieldKind::Unsigned),
                "sig" => Some(FieldKind::Signed),
                "comm" => Some(FieldKind::String),
                "mask" => Some(FieldKind::CpuMask),
                _ => None,
            });
        }
        Err(e) => {
            assert!(!e.to_string().contains('\n'));
            assert!(e.pos <= text.len());
        }
    }
});

// What the `specs` fuzz target checks, shared with the test that replays its corpus
// (`include!`d by fuzz/fuzz_targets/specs.rs and vmm/tests/fuzz_corpora.rs).

use std::fmt::{Debug, Display};
use std::str::FromStr;

use vmm::config::{
    EventFormat, Location, ProbeMode, ProbeSpec, TraceFormatChoice, TraceTarget, WatchSpec,
    parse_mem_size,
};

/// Parses `text` as a `T`; what parses shows as text that parses to the same value and shows
/// the same again; a refusal is one line. Returns whether it parsed.
fn round_trip<T>(text: &str) -> bool
where
    T: FromStr + Display + Debug + PartialEq,
    T::Err: Display,
{
    match text.parse::<T>() {
        Ok(v) => {
            let shown = v.to_string();
            let again: T = shown
                .parse()
                .unwrap_or_else(|e| panic!("{text:?} shows as {shown:?}, which fails: {e}"));
            assert_eq!(again, v, "{text:?} shows as {shown:?}");
            assert_eq!(again.to_string(), shown);
            true
        }
        Err(e) => {
            assert!(!e.to_string().contains('\n'), "{e}");
            false
        }
    }
}

/// The first byte picks the parser (`--probe`, `--hbreak`, `--watch`, `--mmiotrace`, probe
/// mode, event format, trace format, `--mem`), the rest is its text. Returns whether it parsed.
pub fn check(data: &[u8]) -> bool {
    let Some((&which, rest)) = data.split_first() else {
        return false;
    };
    let text = String::from_utf8_lossy(rest);
    match which % 8 {
        0 => round_trip::<ProbeSpec>(&text),
        1 => round_trip::<Location>(&text),
        2 => round_trip::<WatchSpec>(&text),
        3 => round_trip::<TraceTarget>(&text),
        4 => round_trip::<ProbeMode>(&text),
        5 => round_trip::<EventFormat>(&text),
        6 => round_trip::<TraceFormatChoice>(&text),
        _ => match parse_mem_size(&text) {
            Ok(bytes) => {
                assert!(bytes > 0 && bytes % 4096 == 0, "{text:?}: {bytes}");
                true
            }
            Err(e) => {
                assert!(!e.to_string().contains('\n'), "{e}");
                false
            }
        },
    }
}

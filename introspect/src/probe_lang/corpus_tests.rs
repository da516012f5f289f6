//! Replays the committed fuzz regression corpora (`fuzz/regressions/kprobe_def`,
//! `fuzz/regressions/event_filter`) through the checks the fuzz targets make. Seeds say in
//! their names what they are: `seed-good-*` parse, `seed-bad-*` do not; fuzzer finds can go
//! either way.

use std::path::PathBuf;

use super::filter::{FieldValue, Filter};
use super::{ProbeDef, caret};

fn corpus(name: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/regressions")
        .join(name);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(
        files.len() >= 10,
        "corpus {} has {} files",
        dir.display(),
        files.len()
    );
    files
        .into_iter()
        .map(|f| {
            let name = f.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&f).unwrap())
        })
        .collect()
}

fn expect(name: &str, ok: bool) {
    if name.starts_with("seed-good-") {
        assert!(ok, "{name} does not parse");
    } else if name.starts_with("seed-bad-") {
        assert!(!ok, "{name} parses");
    }
}

/// What the `kprobe_def` fuzz target checks: parse; an accepted definition's canonical form
/// parses to the same definition; a refusal's message is one line.
pub(super) fn exercise_kprobe(text: &str) -> bool {
    match ProbeDef::parse(text) {
        Ok(d) => {
            let canon = d.to_string();
            let again = ProbeDef::parse(&canon).expect("canonical form parses");
            assert_eq!(again, d, "{canon}");
            assert_eq!(again.to_string(), canon);
            true
        }
        Err(e) => {
            assert!(!e.to_string().contains('\n'));
            assert!(e.pos <= text.len());
            let _ = caret(text, e.column);
            false
        }
    }
}

/// What the `event_filter` fuzz target checks: as [`exercise_kprobe`], plus an evaluation
/// over a small record and a check against a schema, which must return.
pub(super) fn exercise_filter(text: &str) -> bool {
    match Filter::parse(text) {
        Ok(f) => {
            let canon = f.to_string();
            let again = Filter::parse(&canon).expect("canonical form parses");
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
                "a" => Some(super::filter::FieldKind::Unsigned),
                "sig" => Some(super::filter::FieldKind::Signed),
                "comm" => Some(super::filter::FieldKind::String),
                "mask" => Some(super::filter::FieldKind::CpuMask),
                _ => None,
            });
            true
        }
        Err(e) => {
            assert!(!e.to_string().contains('\n'));
            assert!(e.pos <= text.len());
            false
        }
    }
}

#[test]
fn kprobe_corpus_replays() {
    for (name, bytes) in corpus("kprobe_def") {
        expect(&name, exercise_kprobe(&String::from_utf8_lossy(&bytes)));
    }
    for line in super::kprobe_tests::VALID {
        assert!(exercise_kprobe(line));
    }
}

#[test]
fn filter_corpus_replays() {
    for (name, bytes) in corpus("event_filter") {
        expect(&name, exercise_filter(&String::from_utf8_lossy(&bytes)));
    }
    for text in super::filter_tests::VALID {
        assert!(exercise_filter(text));
    }
}

/// A deterministic mutation run over the seeds (no nightly needed): random inserts of
/// syntax bytes, deletions, duplications and splices, each through the fuzz targets' checks.
fn mutate_and_exercise(corpus: &[Vec<u8>], rounds: usize, exercise: fn(&str) -> bool) {
    const ALPHABET: &[u8] = b" \t:/+-%@$\\\"'()[]{}=!&|<>~.,*?_0123456789xabcdefpruCPUSstack\
                              retvalcommargstringb@/";
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        usize::try_from(state % u64::try_from(n.max(1)).unwrap()).unwrap()
    };
    for _ in 0..rounds {
        let mut input = corpus[next(corpus.len())].clone();
        for _ in 0..=next(4) {
            let at = next(input.len() + 1);
            match next(4) {
                0 => input.insert(at, ALPHABET[next(ALPHABET.len())]),
                1 if at < input.len() => {
                    input.remove(at);
                }
                2 => {
                    let end = (at + next(8)).min(input.len());
                    let piece = input[at..end].to_vec();
                    input.splice(at..at, piece);
                }
                _ => {
                    let other = &corpus[next(corpus.len())];
                    let from = next(other.len() + 1);
                    let to = (from + next(16)).min(other.len());
                    input.splice(at..at, other[from..to].iter().copied());
                }
            }
        }
        exercise(&String::from_utf8_lossy(&input));
    }
}

#[test]
fn kprobe_mutations() {
    let mut seeds: Vec<Vec<u8>> = corpus("kprobe_def").into_iter().map(|(_, b)| b).collect();
    seeds.extend(
        super::kprobe_tests::VALID
            .iter()
            .map(|s| s.as_bytes().to_vec()),
    );
    mutate_and_exercise(&seeds, 50_000, exercise_kprobe);
}

#[test]
fn filter_mutations() {
    let mut seeds: Vec<Vec<u8>> = corpus("event_filter").into_iter().map(|(_, b)| b).collect();
    seeds.extend(
        super::filter_tests::VALID
            .iter()
            .map(|s| s.as_bytes().to_vec()),
    );
    mutate_and_exercise(&seeds, 50_000, exercise_filter);
}

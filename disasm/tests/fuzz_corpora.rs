//! Replays the committed regression corpus of the `guest_code` fuzz target
//! (`fuzz/regressions/guest_code`) through the very checks the target makes
//! (`fuzz/checks/guest_code.rs`, included here). Seeds say in their names what they are:
//! `seed-good-*` can be optimized into a jump, `seed-bad-*` cannot; fuzzer finds can go
//! either way and must merely pass the checks.

use std::path::PathBuf;

mod guest_code {
    include!("../../fuzz/checks/guest_code.rs");
}

#[test]
fn guest_code_corpus_replays() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions/guest_code");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(
        files.len() >= 4,
        "corpus {} has {} files",
        dir.display(),
        files.len()
    );
    for f in files {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        let good = guest_code::check(&std::fs::read(&f).unwrap());
        if name.starts_with("seed-good-") {
            assert!(good, "{name} cannot be optimized");
        } else if name.starts_with("seed-bad-") {
            assert!(!good, "{name} can be optimized");
        }
    }
}

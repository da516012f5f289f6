//! Replays the committed regression corpora of the fuzz targets over vmm's parsers of the
//! config file, the instrumentation specs and the control API's requests
//! (`fuzz/regressions/{config_file,specs,api_request}`) through the very checks the targets make
//! (`fuzz/checks/*.rs`, included here). Seeds say in their names what they are: `seed-good-*`
//! parse, `seed-bad-*` do not; fuzzer finds can go either way and must merely pass the checks.
//! (The kernel loader's corpus is replayed by `vmm::loader`'s unit tests.)

use std::path::PathBuf;

mod config_file {
    include!("../../fuzz/checks/config_file.rs");
}
mod specs {
    include!("../../fuzz/checks/specs.rs");
}
mod api_request {
    include!("../../fuzz/checks/api_request.rs");
}

/// Replays `target`'s corpus (at least `min` files) through its check, which says whether
/// the input parsed: seeds must be what their names say.
fn replay(target: &str, min: usize, check: impl Fn(&[u8]) -> bool) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/regressions")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(
        files.len() >= min,
        "corpus {} has {} files",
        dir.display(),
        files.len()
    );
    for f in files {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        let good = check(&std::fs::read(&f).unwrap());
        if name.starts_with("seed-good-") {
            assert!(good, "{target}/{name} does not parse");
        } else if name.starts_with("seed-bad-") {
            assert!(!good, "{target}/{name} parses");
        }
    }
}

#[test]
fn config_file_corpus_replays() {
    replay("config_file", 4, config_file::check);
}

#[test]
fn specs_corpus_replays() {
    replay("specs", 8, specs::check);
}

#[test]
fn api_request_corpus_replays() {
    replay("api_request", 4, api_request::check);
}

//! Feeds arbitrary text to the TOML config file parser (`vmm::config::ConfigFile::parse`,
//! what `hvprobe run --config FILE` reads), then merges what parses under no flags
//! (`vmm::cli::merge`: every value checked, specs parsed; paths point into a directory that
//! does not exist, so no file is opened or created). Nothing may panic; every setting's line
//! is a line of the text; every error is one line and names a line of the text.
//!
//! Corpus seeds and past finds: `fuzz/regressions/config_file/` (replayed by
//! vmm/tests/fuzz_corpora.rs). Run: `bash scripts/fuzz-all.sh config_file 600`.
#![no_main]

include!("../checks/config_file.rs");

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    check(data);
});

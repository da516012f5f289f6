// What the `config_file` fuzz target checks, shared with the test that replays its corpus
// (`include!`d by fuzz/fuzz_targets/config_file.rs and vmm/tests/fuzz_corpora.rs).

use std::path::Path;

use vmm::cli::{RunArgs, error_line, merge};
use vmm::config::{ConfigFile, ConfigFileError};

/// Where the text is said to come from: a directory that does not exist, so relative paths in
/// it name no file (absolute ones may: merge only looks at them).
pub const CONFIG_PATH: &str = "/nonexistent-hvprobe-fuzz/vm.toml";

/// Parses `data` as a config file and merges what parses under no flags, checking both.
/// Returns whether the text parsed.
pub fn check(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    let lines = text.split('\n').count();
    let file = match ConfigFile::parse(text, Path::new(CONFIG_PATH)) {
        Ok(file) => file,
        Err(e) => {
            assert!(!e.to_string().contains('\n'), "{e}");
            if let ConfigFileError::Parse { line: Some(l), .. } = e {
                assert!((1..=lines).contains(&l), "line {l} of {lines}");
            }
            return false;
        }
    };
    let mut at: Vec<usize> = Vec::new();
    at.extend(file.kernel.iter().map(|s| s.line));
    at.extend(file.cmdline.iter().map(|s| s.line));
    at.extend(file.mem.iter().map(|s| s.line));
    at.extend(file.cpus.iter().map(|s| s.line));
    at.extend(file.timeout.iter().map(|s| s.line));
    at.extend(file.probe.iter().map(|s| s.line));
    at.extend(file.watch.iter().map(|s| s.line));
    at.extend(file.mmiotrace.iter().map(|s| s.line));
    assert!(at.iter().all(|&l| (1..=lines).contains(&l)), "{at:?}");
    match merge(&RunArgs::default(), Some(&file), Some(16 << 30)) {
        Ok(config) => {
            let i = &config.instrument;
            assert_eq!(i.probes.len(), file.probe.len());
            assert_eq!(i.hbreaks.len(), file.hbreak.len());
            assert_eq!(i.watches.len(), file.watch.len());
            assert_eq!(config.trace.targets.len(), file.mmiotrace.len());
            for p in &i.probes {
                assert_eq!(p.to_string().parse().as_ref(), Ok(p));
            }
            assert!(config.cpus >= 1 && config.mem_size > 0);
        }
        Err(e) => {
            let _ = error_line(&e);
        }
    }
    true
}

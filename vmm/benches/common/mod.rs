//! Helpers shared by the benchmarks: medians, environment knobs, the VM config of a tiny guest.

#![allow(dead_code)]

use std::time::Duration;

use hvprobe_tests::Program;
use vmm::config::{KernelSource, SerialOutput, VmConfig};

/// The median of `v` (the upper one for an even count).
pub fn median(v: &[Duration]) -> Duration {
    let mut s = v.to_vec();
    s.sort();
    s[s.len() / 2]
}

/// A positive integer from the environment, or `default`.
pub fn env_u32(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&v| v > 0)
        .unwrap_or(default)
}

/// A one-vCPU VM running tiny guest `p`, quiet, console discarded.
pub fn raw_config(p: &Program, mem_size: u64) -> VmConfig {
    VmConfig {
        kernel: KernelSource::Raw {
            image: p.code.clone(),
            load_addr: p.base,
            entry: p.base,
        },
        cpus: 1,
        mem_size,
        serial: SerialOutput::Sink,
        quiet: true,
        timeout: Some(Duration::from_secs(120)),
        ..VmConfig::default()
    }
}

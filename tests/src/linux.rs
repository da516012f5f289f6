//! Linux guests for end-to-end tests: an initramfs from the guest userspace kit
//! (`scripts/mkinitramfs.sh`), and `hvprobe run` on Debian's kernel watched stage by stage.
//!
//! On our software KVM a Debian boot to `/init` takes minutes of wall time, so a test runs one
//! boot that checks several things, and prints when each stage was reached.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::workspace_root;

/// Builds an initramfs with the kit: `/init` runs `script` (one command per line) and ends
/// the VM with its status; `adds` are (host file, guest path) pairs. Returns the archive,
/// written under `dir`.
pub fn initramfs(dir: &Path, script: &str, adds: &[(&Path, &str)]) -> PathBuf {
    std::fs::create_dir_all(dir).expect("a scratch directory");
    let run = dir.join("run.sh");
    std::fs::write(&run, script).expect("the run script");
    let out = dir.join("initramfs.cpio");
    let mut cmd = Command::new("bash");
    cmd.arg(workspace_root().join("scripts/mkinitramfs.sh"))
        .arg("-o")
        .arg(&out)
        .arg("--script")
        .arg(&run);
    for (host, guest) in adds {
        cmd.arg("--add").arg(format!("{}:{guest}", host.display()));
    }
    let o = cmd.output().expect("bash runs scripts/mkinitramfs.sh");
    assert!(
        o.status.success(),
        "scripts/mkinitramfs.sh failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

/// A console line to wait for, and when it appeared.
#[derive(Debug, Clone)]
pub struct Stage {
    /// The text looked for.
    pub needle: String,
    /// Seconds from the start of `hvprobe run` to its first appearance.
    pub at: Option<f64>,
}

/// What one `hvprobe run` of a Linux guest gave.
#[derive(Debug)]
pub struct LinuxRun {
    /// hvprobe's exit status.
    pub status: Option<i32>,
    /// hvprobe's stderr (phases, notes, the summary table).
    pub stderr: String,
    /// The guest's serial console.
    pub console: String,
    /// The stages, in the order given.
    pub stages: Vec<Stage>,
    /// Wall time of the whole run.
    pub wall: Duration,
    /// When each `HVPROBE-CMD-END` line of the kit appeared (seconds), by command number.
    pub commands: Vec<(usize, f64)>,
}

impl LinuxRun {
    /// The time `needle` appeared, panicking with the console if it did not.
    pub fn stage(&self, needle: &str) -> f64 {
        self.stages
            .iter()
            .find(|s| s.needle == needle)
            .and_then(|s| s.at)
            .unwrap_or_else(|| {
                panic!(
                    "\"{needle}\" never appeared (exit {:?})\nstderr:\n{}\nconsole:\n{}",
                    self.status, self.stderr, self.console
                )
            })
    }

    /// One line for the test log: each stage's time, then each command's duration.
    pub fn report(&self, what: &str) -> String {
        let mut s = format!("{what}: {:.1} s in all;", self.wall.as_secs_f64());
        for st in &self.stages {
            match st.at {
                Some(t) => s.push_str(&format!(" \"{}\" {t:.1} s;", st.needle)),
                None => s.push_str(&format!(" \"{}\" never;", st.needle)),
            }
        }
        let mut prev = self
            .stages
            .iter()
            .find(|s| s.needle == "HVPROBE-INIT-START")
            .and_then(|s| s.at);
        for (n, t) in &self.commands {
            if let Some(p) = prev {
                s.push_str(&format!(" command {n} {:.1} s;", t - p));
            }
            prev = Some(*t);
        }
        s
    }
}

/// Runs `hvprobe run ARGS --serial-log <dir>/console.txt`, polling the console to time the
/// `stages` (console substrings), until hvprobe exits or `limit` passes (then it is killed).
pub fn run_linux(
    hvprobe: &Path,
    args: &[&str],
    dir: &Path,
    stages: &[&str],
    limit: Duration,
) -> LinuxRun {
    std::fs::create_dir_all(dir).expect("a scratch directory");
    let console_path = dir.join("console.txt");
    let stderr_path = dir.join("stderr.txt");
    let stderr_file = std::fs::File::create(&stderr_path).expect("stderr file");
    let t = Instant::now();
    let mut child = Command::new(hvprobe)
        .arg("run")
        .args(args)
        .arg("--serial-log")
        .arg(&console_path)
        .stdout(Stdio::null())
        .stderr(stderr_file)
        .spawn()
        .expect("hvprobe starts");
    let mut found: Vec<Stage> = stages
        .iter()
        .map(|n| Stage {
            needle: (*n).to_string(),
            at: None,
        })
        .collect();
    let mut commands = Vec::new();
    let status = loop {
        let done = child.try_wait().expect("wait for hvprobe");
        let text = std::fs::read_to_string(&console_path).unwrap_or_default();
        let now = t.elapsed().as_secs_f64();
        for st in found.iter_mut().filter(|s| s.at.is_none()) {
            if text.contains(&st.needle) {
                st.at = Some(now);
            }
        }
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("HVPROBE-CMD-END ") {
                let n = rest
                    .split_whitespace()
                    .next()
                    .and_then(|n| n.parse::<usize>().ok());
                if let Some(n) = n
                    && !commands.iter().any(|(c, _)| *c == n)
                {
                    commands.push((n, now));
                }
            }
        }
        if let Some(s) = done {
            break s.code();
        }
        if t.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    LinuxRun {
        status,
        stderr: std::fs::read_to_string(&stderr_path).unwrap_or_default(),
        console: std::fs::read_to_string(&console_path).unwrap_or_default(),
        stages: found,
        wall: t.elapsed(),
        commands,
    }
}

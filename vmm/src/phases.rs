//! Boot phases and timings on stderr (`--quiet` silences them).

use std::fmt::Display;
use std::time::{Duration, Instant};

/// A clock started when the VM is created, and a switch for printing.
#[derive(Clone, Debug)]
pub struct Phases {
    start: Instant,
    quiet: bool,
}

impl Phases {
    /// Starts the clock now.
    pub fn new(quiet: bool) -> Self {
        Phases {
            start: Instant::now(),
            quiet,
        }
    }

    /// Time since the clock started.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// Prints `[  1.234s] msg` on stderr unless quiet.
    pub fn log(&self, msg: impl Display) {
        if !self.quiet {
            use std::io::Write;
            // A closed stderr (`hvprobe run | head`) must not panic a vCPU thread and hang
            // the VM: the line is dropped.
            let _ = writeln!(
                std::io::stderr(),
                "[{:8.3}s] {msg}",
                self.elapsed().as_secs_f64()
            );
        }
    }

    /// Whether printing is off.
    pub fn quiet(&self) -> bool {
        self.quiet
    }
}

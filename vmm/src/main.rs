//! `hvprobe`: a thin shell over the `vmm` library. Parses the command line ([`vmm::cli`]),
//! runs the VM (or lists symbols), prints one line on stderr, and exits with the outcome's
//! status.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use vmm::cli::{self, Request};
use vmm::outcome::{EXIT_BAD_INPUT, EXIT_VMM_FAILURE};
use vmm::vm;

fn main() -> ExitCode {
    let config = match cli::parse() {
        Ok(Request::Run(config)) => config,
        Ok(Request::Print(text)) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Ok(Request::Symbols { kernel, pattern }) => {
            return symbols(kernel.as_deref(), pattern.as_deref());
        }
        Err(err) => {
            eprintln!("hvprobe: {}", cli::error_line(&err));
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    };
    match vm::run(&config) {
        Ok(report) => {
            if !config.quiet {
                eprintln!("hvprobe: {}", report.outcome);
            }
            ExitCode::from(report.outcome.exit_code())
        }
        Err(err) => {
            eprintln!("hvprobe: {}", cli::error_line(&err));
            ExitCode::from(if err.is_bad_input() {
                EXIT_BAD_INPUT
            } else {
                EXIT_VMM_FAILURE
            })
        }
    }
}

/// `hvprobe symbols`: System.map-format lines on stdout, a count on stderr.
fn symbols(kernel: Option<&Path>, pattern: Option<&str>) -> ExitCode {
    let image = match kernel {
        Some(p) => match std::fs::read(p) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("hvprobe: cannot read kernel {}: {e}", p.display());
                return ExitCode::from(EXIT_BAD_INPUT);
            }
        },
        None => vmm::test_kernel::TEST_KERNEL.to_vec(),
    };
    let name = kernel.map_or("the bundled test kernel".to_string(), |p| {
        p.display().to_string()
    });
    let (table, source) = match vmm::kernel_symbols::kernel_symbols(&image) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("hvprobe: {name}: {}", cli::error_line(&e));
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut n = 0usize;
    for s in table.matching(pattern.unwrap_or("")) {
        n += 1;
        let module = s
            .module
            .as_deref()
            .map(|m| format!("\t[{m}]"))
            .unwrap_or_default();
        if writeln!(out, "{:016x} {} {}{module}", s.addr, s.kind, s.name).is_err() {
            // stdout closed (e.g. piped into `head`): stop quietly
            return ExitCode::SUCCESS;
        }
    }
    let _ = out.flush();
    eprintln!(
        "hvprobe: {n} of {} symbols from {source} of {name}",
        table.len()
    );
    ExitCode::SUCCESS
}

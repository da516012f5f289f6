//! `hvprobe`: a thin shell over the `vmm` library. Parses the command line ([`vmm::cli`]),
//! runs the VM (or lists symbols), prints one line on stderr, and exits with the outcome's
//! status.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use vmm::cli::{self, Request};
use vmm::outcome::{EXIT_BAD_INPUT, EXIT_VMM_FAILURE};

/// `eprintln!` that drops the line when stderr is closed (`hvprobe run 2>&1 | head`) instead
/// of panicking.
macro_rules! say {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

fn main() -> ExitCode {
    let config = match cli::parse() {
        Ok(Request::Run(config)) => config,
        Ok(Request::Print(text)) => {
            let _ = write!(std::io::stdout(), "{text}");
            return ExitCode::SUCCESS;
        }
        Ok(Request::Symbols { kernel, pattern }) => {
            return symbols(kernel.as_deref(), pattern.as_deref());
        }
        Ok(Request::ProbeCheck { kernel, sites }) => {
            return probe_check(kernel.as_deref(), &sites);
        }
        Ok(Request::Call {
            socket,
            method,
            params,
            timeout,
        }) => {
            return client_status(vmm::verbs::call(&socket, &method, params, timeout));
        }
        Ok(Request::Attach(args)) => {
            return client_status(vmm::verbs::attach(&args));
        }
        Err(err) => {
            say!("hvprobe: {}", cli::error_line(&err));
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    };
    match vmm::session::run(&config) {
        Ok(report) => {
            if !config.quiet {
                say!("hvprobe: {}", report.outcome);
            }
            ExitCode::from(report.outcome.exit_code())
        }
        Err(err) => {
            say!("hvprobe: {}", cli::error_line(&err));
            ExitCode::from(if err.is_bad_input() {
                EXIT_BAD_INPUT
            } else {
                EXIT_VMM_FAILURE
            })
        }
    }
}

/// The exit status of a client verb: 0, or the error's line and its status (64 for a
/// request the server refused, 70 when the server could not be reached or answered).
fn client_status(result: Result<(), vmm::verbs::VerbError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            say!("hvprobe: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// The kernel image `--kernel` names (default: the bundled test kernel) and its name for
/// messages; `Err` after printing why it is unreadable.
fn read_kernel(kernel: Option<&Path>) -> Result<(Vec<u8>, String), ExitCode> {
    let image = match kernel {
        Some(p) => match std::fs::read(p) {
            Ok(b) => b,
            Err(e) => {
                say!("hvprobe: cannot read kernel {}: {e}", p.display());
                return Err(ExitCode::from(EXIT_BAD_INPUT));
            }
        },
        None => vmm::test_kernel::TEST_KERNEL.to_vec(),
    };
    let name = kernel.map_or("the bundled test kernel".to_string(), |p| {
        p.display().to_string()
    });
    Ok((image, name))
}

/// `hvprobe probe-check`: one line per site on stdout; one line per unresolved site on
/// stderr, and then exit status 64.
fn probe_check(kernel: Option<&Path>, sites: &[String]) -> ExitCode {
    let (image, name) = match read_kernel(kernel) {
        Ok(k) => k,
        Err(code) => return code,
    };
    let checker = match vmm::probe_check::ProbeChecker::new(&image) {
        Ok(c) => c,
        Err(e) => {
            say!("hvprobe: {name}: {}", cli::error_line(&e));
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    };
    let mut all_resolved = true;
    for site in sites {
        match checker.check(site) {
            Ok(report) => println!("{report}"),
            Err(e) => {
                all_resolved = false;
                say!("hvprobe: {}", cli::error_line(&e));
            }
        }
    }
    if all_resolved {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_BAD_INPUT)
    }
}

/// `hvprobe symbols`: System.map-format lines on stdout, a count on stderr.
fn symbols(kernel: Option<&Path>, pattern: Option<&str>) -> ExitCode {
    let (image, name) = match read_kernel(kernel) {
        Ok(k) => k,
        Err(code) => return code,
    };
    let (table, source) = match vmm::kernel_symbols::kernel_symbols(&image) {
        Ok(t) => t,
        Err(e) => {
            say!("hvprobe: {name}: {}", cli::error_line(&e));
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
    say!(
        "hvprobe: {n} of {} symbols from {source} of {name}",
        table.len()
    );
    ExitCode::SUCCESS
}

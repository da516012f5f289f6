//! `hvprobe`: a thin shell over the `vmm` library. Parses the command line ([`vmm::cli`]),
//! runs the VM, prints one line on stderr, and exits with the outcome's status.

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
            let bad_input = err.is_bad_input();
            ExitCode::from(if bad_input {
                EXIT_BAD_INPUT
            } else {
                EXIT_VMM_FAILURE
            })
        }
    }
}

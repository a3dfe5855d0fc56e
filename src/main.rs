//! `outbox-relay`: parse the command line, set up logging, run the command, map the outcome
//! to an exit code (0 ok, 1 runtime failure, 2 usage or configuration error, 141 stdout closed
//! by its reader, see `cli/output.rs`).

// `println!` panics when the reader of stdout is gone: the commands print with `outln!`.
#![deny(clippy::print_stdout)]

mod bench;
mod cli;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use outbox_relay::config::ConfigErrors;
use outbox_relay::telemetry::{error_text_of_role, logging};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let ansi = std::io::stderr().is_terminal();
    // Kept to the end of main: dropping it flushes the spans not exported yet (`otlp`).
    let _logging = match logging::init(cli.log_format(), cli.default_log_filter(), ansi) {
        Ok(guard) => guard,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    };
    match cli.run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!(
                "error: {}",
                message(&failure.error, failure.role.as_deref())
            );
            ExitCode::from(failure.code)
        }
    }
}

/// A configuration report as it is (one problem a line, a TOML error's caret diagram under
/// its line); any other error and its causes on one line, without the libraries' internals
/// (see `telemetry::error_text`).
fn message(error: &anyhow::Error, role: Option<&str>) -> String {
    match error.downcast_ref::<ConfigErrors>() {
        Some(errors) => errors.to_string(),
        None => error_text_of_role(error.as_ref(), role),
    }
}

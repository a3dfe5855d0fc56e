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
use outbox_relay::telemetry::logging;

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
            eprintln!("error: {}", one_line(&failure.error));
            ExitCode::from(failure.code)
        }
    }
}

/// The error and its causes on one line, skipping a cause its parent already printed (sqlx's
/// database errors repeat their message through `source()`).
fn one_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line.replace('\n', " ")
}

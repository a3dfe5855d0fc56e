//! Everything the commands print on stdout goes through here (`outln!` and `out!`, used like
//! `println!` and `print!`), so a reader that stops early (`outbox-relay stuck --json | head`)
//! ends the command quietly: exit code 141 (128 + SIGPIPE, what a shell reports for a process
//! killed by SIGPIPE), no panic, nothing on stderr. `println!` panics on a closed stdout
//! (exit 101), so the command line denies `clippy::print_stdout`; this file alone writes.

use std::io::Write;

/// The exit code when stdout's reader is gone: 128 + SIGPIPE.
pub const STDOUT_CLOSED: i32 = 141;

/// Like `println!`, on stdout; ends the process when stdout cannot be written (see
/// [`write_fmt`]).
macro_rules! outln {
    () => {
        $crate::cli::output::write_fmt(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::cli::output::write_fmt(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// Like `print!`, on stdout; ends the process when stdout cannot be written (see
/// [`write_fmt`]).
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cli::output::write_fmt(format_args!($($arg)*))
    };
}

/// Writes `args` to stdout. When that fails, the command cannot say anything more and ends
/// here: quietly with [`STDOUT_CLOSED`] when the reader is gone, else (a full disk behind a
/// redirect) with one line on stderr and exit code 1.
pub fn write_fmt(args: std::fmt::Arguments<'_>) {
    let written = std::io::stdout().lock().write_fmt(args);
    let Err(error) = written else {
        return;
    };
    if error.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(STDOUT_CLOSED);
    }
    eprintln!("error: writing to stdout: {error}");
    std::process::exit(1);
}

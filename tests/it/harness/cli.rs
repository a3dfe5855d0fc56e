//! Running the real `outbox-relay` binary with a clean environment.

use std::process::{Command, Output};

/// The binary, with every variable that would configure it removed, so a test says exactly
/// which layer (flag, env, file) it means.
pub fn outbox_relay() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_outbox-relay"));
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy().into_owned();
        if name.starts_with("OUTBOX_") || name == "DATABASE_URL" || name == "REDIS_URL" {
            command.env_remove(name);
        }
    }
    command.env("RUST_LOG", "warn");
    command
}

/// Output with stdout and stderr as text.
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

pub fn run(command: &mut Command) -> Run {
    let Output {
        status,
        stdout,
        stderr,
    } = command.output().expect("run outbox-relay");
    Run {
        code: status.code(),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

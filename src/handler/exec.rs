//! The built-in `exec` handler: runs a program per message, the decoded message as JSON on
//! its stdin (the same body the `http` handler POSTs: `id`, `topic`, `key`, `payload`,
//! `headers`, `schema_version`, `position`, `created_at`, `attempt`; no trailing newline).
//!
//! - exit 0: done. stdout is the `http` handler's reply (`reply.rs`): empty for no
//!   outputs, or `{"outputs": [{"stream": "...", "payload": {...}}]}`; anything else is
//!   permanent.
//! - exit 75 (`EX_TEMPFAIL`), a failure to start the program, or the route's timeout:
//!   retryable.
//! - any other exit status, or death by a signal: permanent.
//!
//! ```text
//!  spawn ──stdin: message JSON──▶ program ──stdout (≤ 16 MiB)──▶ outputs
//!    │                               └──stderr (last 2 KiB, 10 lines)──▶ the error text
//!    └─ own process group: killed when the call ends, however it ends
//! ```
//!
//! Invariants:
//! - No process outlives its call. The program leads a process group of its own, and that
//!   group is killed (SIGKILL) when the program exits (background processes it left behind)
//!   and when the call is abandoned (the route's timeout, the shutdown grace, a lost lease:
//!   the relay drops the call's future). A program that means to leave something running
//!   must detach it (`setsid`).
//! - No deadlock on pipes: stdin is written while stdout and stderr are read.
//! - Bounded memory per call: more than [`STDOUT_LIMIT`] on stdout is a permanent failure
//!   (and kills the program); of stderr only the last [`STDERR_TAIL_BYTES`] are kept.
//!
//! Secrets: the program's path is shown (in the route's name `exec <path>`, so in every
//! error, log line and `last_error`, and in `config check`); its arguments are not, since
//! they may carry credentials (`--token=…`). Neither `Debug` nor an error ever prints them,
//! and every argument of at least [`MIN_SECRET_BYTES`] bytes (and the value of a
//! `name=value` argument) is replaced by `REDACTED` in the stderr and stdout quoted in an
//! error. The program does not inherit the relay's own credentials: `DATABASE_URL`,
//! `REDIS_URL` and every `OUTBOX_*` variable are removed from its environment; the rest
//! (`PATH`, `HOME`, …) is passed on.

use std::ffi::OsStr;
use std::fmt;
use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use super::reply::{parse_outputs, quote};
use super::{DecodedMessage, Handler, HandlerError, Output};
use crate::redact::REDACTED;

/// The most a program may write to stdout per call (its outputs); more is a permanent failure.
pub const STDOUT_LIMIT: usize = 16 * 1024 * 1024;

/// How much of the end of stderr is kept for the error text…
pub const STDERR_TAIL_BYTES: usize = 2 * 1024;

/// …and how many of its last lines.
pub const STDERR_TAIL_LINES: usize = 10;

/// Arguments shorter than this are not taken for secrets (scrubbing `-v` or `1` out of stderr
/// would only garble it).
pub const MIN_SECRET_BYTES: usize = 4;

/// The exit status that asks for a retry (`EX_TEMPFAIL` in sysexits.h).
pub const EXIT_TEMPFAIL: i32 = 75;

/// A configured `exec` route handler. `Debug` shows the program and how many arguments it
/// has, not their values.
#[derive(Clone)]
pub struct ExecHandler {
    program: PathBuf,
    args: Vec<String>,
    /// Texts scrubbed from quoted stderr and stdout, longest first.
    secrets: Vec<String>,
}

impl fmt::Debug for ExecHandler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExecHandler")
            .field("program", &self.program)
            .field("args", &self.args.len())
            .finish()
    }
}

/// `exec` handler settings that are not valid. None shows an argument.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ExecHandlerError {
    /// The command is an empty list.
    #[error(
        "needs the program and its arguments, e.g. [\"/usr/local/bin/notify\", \"--channel\", \"orders\"]"
    )]
    Empty,
    /// The program (the command's first element) is an empty string.
    #[error("the program is empty")]
    EmptyProgram,
    /// The program is a relative path (it has a `/` but does not start with one), e.g.
    /// `./hook.sh`.
    #[error(
        "`{0}` is a relative path: give an absolute one (a relative path would depend on the relay's working directory), or a bare name to look up on PATH"
    )]
    Relative(String),
    /// The program is a bare name no absolute directory of `PATH` has as an executable file.
    #[error(
        "`{0}` is not an executable file in any absolute directory of PATH; give its absolute path"
    )]
    NotOnPath(String),
    /// The program's absolute path is not an executable file.
    #[error("cannot run `{path}`: {problem}")]
    NotExecutable {
        /// The program as given.
        path: String,
        /// Why it cannot run: the file system's error, `not a file`, or missing exec bits.
        problem: String,
    },
    /// The command element at this index (0: the program) holds a NUL byte.
    #[error("argument {0} holds a NUL byte")]
    Nul(usize),
}

impl ExecHandler {
    /// A handler running `command[0]` with the arguments `command[1..]`. The program is an
    /// absolute path, or a bare name looked up on `PATH` now (so the relay runs the program
    /// `config check` found, whatever its `PATH` later); either must be an executable file.
    pub fn new(command: &[String]) -> Result<ExecHandler, ExecHandlerError> {
        let (program, args) = command.split_first().ok_or(ExecHandlerError::Empty)?;
        if let Some(index) = command.iter().position(|part| part.contains('\0')) {
            return Err(ExecHandlerError::Nul(index));
        }
        let program = resolve_program(program)?;
        let mut secrets: Vec<String> = args
            .iter()
            .flat_map(|arg| [Some(arg.as_str()), arg.split_once('=').map(|(_, v)| v)])
            .flatten()
            .filter(|text| text.len() >= MIN_SECRET_BYTES)
            .map(str::to_owned)
            .collect();
        secrets.sort_by_key(|secret| std::cmp::Reverse(secret.len()));
        secrets.dedup();
        Ok(ExecHandler {
            program,
            args: args.to_vec(),
            secrets,
        })
    }

    /// The program that runs (absolute; a bare name resolved on `PATH`).
    pub fn program(&self) -> &Path {
        &self.program
    }

    /// The command as it may be shown: the program, then `REDACTED` for each argument.
    pub fn shown_command(&self) -> Vec<String> {
        std::iter::once(self.program.display().to_string())
            .chain(self.args.iter().map(|_| REDACTED.to_owned()))
            .collect()
    }

    /// `text` with every argument (see [`MIN_SECRET_BYTES`]) replaced by `REDACTED`.
    fn scrub(&self, text: &str) -> String {
        self.secrets.iter().fold(text.to_owned(), |text, secret| {
            text.replace(secret, REDACTED)
        })
    }

    async fn run(&self, input: Vec<u8>) -> Result<Vec<Output>, HandlerError> {
        let mut command = tokio::process::Command::new(&self.program);
        command
            .args(&self.args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        for (name, _) in std::env::vars_os() {
            if is_relay_credential(&name) {
                command.env_remove(name);
            }
        }
        let mut child = command
            .spawn()
            .map_err(|e| HandlerError::retryable(format!("could not start the program: {e}")))?;
        let group = ProcessGroup::led_by(child.id());
        let (Some(mut stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(HandlerError::retryable(
                "the program's pipes were not set up",
            ));
        };
        let feed = async move {
            let written = stdin.write_all(&input).await;
            drop(stdin);
            match written {
                // The program exited, or closed stdin, without reading it all: its choice.
                Err(e) if e.kind() == ErrorKind::BrokenPipe => Ok(()),
                other => other,
            }
        };
        let read_stdout = async {
            let mut out = Vec::new();
            let read = stdout
                .take(STDOUT_LIMIT as u64 + 1)
                .read_to_end(&mut out)
                .await;
            if out.len() > STDOUT_LIMIT {
                // Stop the program now rather than at the timeout.
                group.kill();
            }
            read.map(|_| out)
        };
        let exited = async {
            let status = child.wait().await;
            if status.is_ok() {
                // Whatever it left running in its group goes too (and so closes the pipes).
                group.kill_and_forget();
            }
            status
        };
        let (fed, stdout, stderr, status) =
            tokio::join!(feed, read_stdout, read_tail(stderr), exited);
        let status = status
            .map_err(|e| HandlerError::retryable(format!("waiting for the program failed: {e}")))?;
        let stdout = stdout.map_err(|e| {
            HandlerError::retryable(format!("reading the program's stdout failed: {e}"))
        })?;
        if stdout.len() > STDOUT_LIMIT {
            return Err(HandlerError::permanent(format!(
                "wrote more than {} MiB to stdout (stopped)",
                STDOUT_LIMIT / (1024 * 1024)
            )));
        }
        if status.success() {
            fed.map_err(|e| {
                HandlerError::retryable(format!("writing the message to stdin failed: {e}"))
            })?;
            return parse_outputs(&stdout).map_err(|e| {
                // Scrubbed whole before it is cut, so no secret shows cut in half.
                let quoted = quote(self.scrub(&String::from_utf8_lossy(&stdout)).as_bytes());
                let reason = format!("exited 0 but stdout {e}; stdout: {quoted}");
                HandlerError::permanent(self.scrub(&reason))
            });
        }
        let stderr = match stderr_text(&stderr, &self.secrets, |t| self.scrub(t)) {
            Some(text) => format!("; stderr: {text}"),
            None => " (stderr empty)".to_owned(),
        };
        let reason = format!("{}{stderr}", describe(status));
        Err(if status.code() == Some(EXIT_TEMPFAIL) {
            HandlerError::Retryable(reason)
        } else {
            HandlerError::Permanent(reason)
        })
    }
}

#[async_trait::async_trait]
impl Handler for ExecHandler {
    /// A program may print outputs: after Redis lost entries it is run again to re-derive
    /// them (its side effects repeat then, as after a crash: key them by the message id).
    fn has_outputs(&self) -> bool {
        true
    }

    async fn handle(&self, message: &DecodedMessage) -> Result<Vec<Output>, HandlerError> {
        let input = serde_json::to_vec(message).map_err(|e| {
            HandlerError::permanent(format!("the message could not be written as JSON: {e}"))
        })?;
        self.run(input).await
    }
}

/// A bare name (no `/`) is looked up in the absolute directories of `PATH`; an absolute path
/// is taken as it is; either must be an executable file.
fn resolve_program(program: &str) -> Result<PathBuf, ExecHandlerError> {
    if program.is_empty() {
        return Err(ExecHandlerError::EmptyProgram);
    }
    let path = Path::new(program);
    if path.is_absolute() {
        return match executable(path) {
            Ok(()) => Ok(path.to_owned()),
            Err(problem) => Err(ExecHandlerError::NotExecutable {
                path: program.to_owned(),
                problem,
            }),
        };
    }
    if program.contains('/') {
        return Err(ExecHandlerError::Relative(program.to_owned()));
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join(program))
        .find(|candidate| executable(candidate).is_ok())
        .ok_or_else(|| ExecHandlerError::NotOnPath(program.to_owned()))
}

/// Whether `path` is a file someone may execute (the exec bits; whether the relay's user
/// may is found out when it runs it).
fn executable(path: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a file".to_owned());
    }
    let mode = meta.permissions().mode();
    if mode & 0o111 == 0 {
        return Err(format!("not executable (mode {:o})", mode & 0o7777));
    }
    Ok(())
}

/// The relay's own credentials, which a program does not inherit.
fn is_relay_credential(name: &OsStr) -> bool {
    let name = name.to_string_lossy();
    name == "DATABASE_URL" || name == "REDIS_URL" || name.starts_with("OUTBOX_")
}

/// The end of a stream: at most the last [`STDERR_TAIL_BYTES`], and whether more came before.
async fn read_tail(mut stream: impl AsyncRead + Unpin) -> (Vec<u8>, bool) {
    let mut tail = Vec::new();
    let mut cut = false;
    let mut chunk = vec![0; 8 * 1024];
    // A read error ends it: stderr only explains a failure, it never makes one.
    while let Ok(n @ 1..) = stream.read(&mut chunk).await {
        tail.extend_from_slice(&chunk[..n]);
        if tail.len() > 2 * STDERR_TAIL_BYTES {
            tail.drain(..tail.len() - STDERR_TAIL_BYTES);
            cut = true;
        }
    }
    if tail.len() > STDERR_TAIL_BYTES {
        tail.drain(..tail.len() - STDERR_TAIL_BYTES);
        cut = true;
    }
    (tail, cut)
}

/// The last [`STDERR_TAIL_LINES`] non-blank lines of stderr's tail, ` | `-joined, scrubbed;
/// `None` when there are none. When the tail was cut, its first (partial) line is dropped,
/// so no secret shows cut in half.
fn stderr_text(
    (tail, cut): &(Vec<u8>, bool),
    secrets: &[String],
    scrub: impl Fn(&str) -> String,
) -> Option<String> {
    let text = String::from_utf8_lossy(tail);
    let mut text: &str = &text;
    if *cut {
        text = match text.split_once('\n') {
            Some((_, rest)) => rest,
            // One line longer than the tail: drop as much as the longest secret.
            None => {
                let mut skip = secrets.first().map_or(0, String::len).min(text.len());
                while !text.is_char_boundary(skip) {
                    skip += 1;
                }
                &text[skip..]
            }
        };
    }
    let text = scrub(text);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim_end)
        .filter(|line| !line.trim().is_empty())
        .collect();
    let last = &lines[lines.len().saturating_sub(STDERR_TAIL_LINES)..];
    (!last.is_empty()).then(|| {
        let joined = last.join(" | ");
        if *cut {
            format!("… {joined}")
        } else {
            joined
        }
    })
}

/// `exited with 1`, `exited with 75 (EX_TEMPFAIL)`, `killed by signal 9 (SIGKILL)`.
fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(EXIT_TEMPFAIL), _) => format!("exited with {EXIT_TEMPFAIL} (EX_TEMPFAIL)"),
        (Some(code), _) => format!("exited with {code}"),
        (None, Some(signal)) => {
            let name = match signal {
                1 => " (SIGHUP)",
                2 => " (SIGINT)",
                3 => " (SIGQUIT)",
                6 => " (SIGABRT)",
                9 => " (SIGKILL)",
                11 => " (SIGSEGV)",
                13 => " (SIGPIPE)",
                15 => " (SIGTERM)",
                _ => "",
            };
            format!("killed by signal {signal}{name}")
        }
        (None, None) => format!("ended with {status}"),
    }
}

/// The program's process group (it leads it: spawned with `process_group(0)`), killed when
/// the call is abandoned before the program was reaped.
struct ProcessGroup {
    id: Option<i32>,
    /// Set once the leader was reaped and the group killed: its id may be reused from then
    /// on, so it is not signalled again.
    forgotten: AtomicBool,
}

impl ProcessGroup {
    fn led_by(pid: Option<u32>) -> ProcessGroup {
        ProcessGroup {
            id: pid
                .and_then(|pid| i32::try_from(pid).ok())
                .filter(|&id| id > 1),
            forgotten: AtomicBool::new(false),
        }
    }

    fn kill(&self) {
        if let Some(id) = self.id
            && !self.forgotten.load(Ordering::Acquire)
        {
            // SAFETY: kill(2) takes two integers and touches no memory of this process. A
            // negative pid signals the process group; until the leader is reaped its pid
            // (and so the group id) cannot be reused.
            unsafe {
                libc::kill(-id, libc::SIGKILL);
            }
        }
    }

    /// Right after the leader was reaped: kills what is left of the group, then never
    /// signals that id again.
    fn kill_and_forget(&self) {
        self.kill();
        self.forgotten.store(true, Ordering::Release);
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A directory of scripts for one test, removed at the end.
    struct Scripts(PathBuf);

    impl Scripts {
        fn new(name: &str) -> Scripts {
            let dir = std::env::temp_dir()
                .join(format!("outbox-relay-exec-{}-{name}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            Scripts(dir)
        }

        /// `/bin/sh <script>` with `args` (run through sh, the script need not be executable
        /// and is never exec'd while another test's fork may hold it open for writing).
        fn handler(&self, name: &str, body: &str, args: &[&str]) -> ExecHandler {
            let path = self.0.join(name);
            std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
            let mut command = vec!["/bin/sh".to_owned(), path.display().to_string()];
            command.extend(args.iter().map(|a| (*a).to_owned()));
            ExecHandler::new(&command).unwrap()
        }

        fn path(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }
    }

    impl Drop for Scripts {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn message(payload: serde_json::Value) -> DecodedMessage {
        DecodedMessage {
            id: uuid::Uuid::nil(),
            topic: "orders.paid".into(),
            key: Some("k1".into()),
            payload,
            headers: Default::default(),
            schema_version: None,
            position: "1:1".parse().unwrap(),
            created_at: chrono::Utc::now(),
            attempt: 1,
        }
    }

    fn alive(pid: &str) -> bool {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid.trim()));
        // A zombie runs nothing: it only waits to be reaped by its parent.
        matches!(stat, Ok(stat) if !stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')))
    }

    async fn wait_for_file(path: &Path) -> String {
        for _ in 0..500 {
            if let Ok(text) = std::fs::read_to_string(path)
                && text.ends_with('\n')
            {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{} never written", path.display());
    }

    #[tokio::test]
    async fn the_exit_status_decides_done_retry_or_dead() {
        let scripts = Scripts::new("status");
        let m = message(serde_json::json!({"n": 1}));
        let ok = scripts.handler(
            "ok.sh",
            r#"cat >/dev/null; echo '{"outputs": [{"stream": "s", "payload": {"a": 1}}]}'"#,
            &[],
        );
        assert_eq!(
            ok.handle(&m).await.unwrap(),
            vec![Output::new("s", serde_json::json!({"a": 1}))]
        );
        let empty = scripts.handler("empty.sh", "exit 0", &[]);
        assert_eq!(empty.handle(&m).await.unwrap(), vec![]);
        let tempfail = scripts.handler("tempfail.sh", "echo 'db busy' >&2; exit 75", &[]);
        let error = tempfail.handle(&m).await.unwrap_err();
        assert_eq!(
            error,
            HandlerError::retryable("exited with 75 (EX_TEMPFAIL); stderr: db busy")
        );
        let failed = scripts.handler("failed.sh", "exit 3", &[]);
        assert_eq!(
            failed.handle(&m).await.unwrap_err(),
            HandlerError::permanent("exited with 3 (stderr empty)")
        );
        let killed = scripts.handler("killed.sh", "kill -9 $$", &[]);
        assert_eq!(
            killed.handle(&m).await.unwrap_err(),
            HandlerError::permanent("killed by signal 9 (SIGKILL) (stderr empty)")
        );
        let nameless = scripts.handler(
            "nameless.sh",
            r#"echo "{\"outputs\": [{\"stream\": \"\", \"payload\": \"$1\"}]}""#,
            &["Arg-s3cret"],
        );
        let error = nameless.handle(&m).await.unwrap_err();
        assert!(error.reason().contains("empty stream name"), "{error}");
        assert!(!error.reason().contains("s3cret"), "{error}");
        let garbled = scripts.handler("garbled.sh", "echo 'all good'", &[]);
        let error = garbled.handle(&m).await.unwrap_err();
        assert!(!error.is_retryable(), "{error}");
        assert!(
            error
                .reason()
                .starts_with("exited 0 but stdout is not {\"outputs\""),
            "{error}"
        );
        assert!(error.reason().ends_with("; stdout: all good"), "{error}");
    }

    #[tokio::test]
    async fn stdin_is_the_message_json_and_the_relay_credentials_stay_behind() {
        let scripts = Scripts::new("stdin");
        let copy = scripts.path("stdin.json");
        let env = scripts.path("env.txt");
        let handler = scripts.handler(
            "copy.sh",
            &format!("cat > {}; env > {}", copy.display(), env.display()),
            &[],
        );
        let m = message(serde_json::json!({"n": 7}));
        handler.handle(&m).await.unwrap();
        let sent = std::fs::read(&copy).unwrap();
        assert_eq!(
            sent,
            serde_json::to_vec(&m).unwrap(),
            "the http handler's body"
        );
        let env = std::fs::read_to_string(&env).unwrap();
        assert!(
            env.contains("PATH="),
            "the rest of the environment is passed on: {env}"
        );
        assert!(!env.contains("OUTBOX_"), "{env}");
        for (name, kept) in [
            ("DATABASE_URL", false),
            ("REDIS_URL", false),
            ("OUTBOX_DATABASE_URL", false),
            ("OUTBOX_REDIS__KEY_PREFIX", false),
            ("PATH", true),
            ("HOME", true),
            ("MY_DATABASE_URL", true),
        ] {
            assert_eq!(!is_relay_credential(OsStr::new(name)), kept, "{name}");
        }
    }

    #[tokio::test]
    async fn a_program_writing_much_before_reading_stdin_does_not_deadlock() {
        let scripts = Scripts::new("deadlock");
        let copy = scripts.path("stdin.json");
        // 1 MiB to stderr (far more than a pipe holds) before it reads a 1 MiB stdin.
        let handler = scripts.handler(
            "chatty.sh",
            &format!(
                "head -c 1048576 /dev/zero | tr '\\0' x >&2; cat > {}",
                copy.display()
            ),
            &[],
        );
        let big = message(serde_json::json!({"blob": "y".repeat(1024 * 1024)}));
        let done = tokio::time::timeout(Duration::from_secs(20), handler.handle(&big)).await;
        assert_eq!(done.expect("no deadlock").unwrap(), vec![]);
        assert_eq!(
            std::fs::metadata(&copy).unwrap().len() as usize,
            serde_json::to_vec(&big).unwrap().len()
        );
    }

    #[tokio::test]
    async fn stderr_in_errors_is_short_and_shows_no_argument() {
        let scripts = Scripts::new("stderr");
        let handler = scripts.handler(
            "noisy.sh",
            r#"i=0; while [ $i -lt 500 ]; do echo "line $i: called with $*" >&2; i=$((i+1)); done; echo "last: token $2" >&2; exit 1"#,
            &["-v", "--token=Tk-s3cret", "Arg-s3cret"],
        );
        let error = handler
            .handle(&message(serde_json::json!({})))
            .await
            .unwrap_err();
        let reason = error.reason();
        assert!(!error.is_retryable(), "{error}");
        assert!(reason.starts_with("exited with 1; stderr: … "), "{reason}");
        assert!(
            reason.ends_with("| last: token REDACTED"),
            "the last line, the argument redacted: {reason}"
        );
        assert_eq!(
            reason.matches(" | ").count(),
            STDERR_TAIL_LINES - 1,
            "{reason}"
        );
        assert!(reason.len() < STDERR_TAIL_BYTES + 100, "{reason}");
        assert!(!reason.contains("s3cret"), "{reason}");
        assert!(
            reason.contains("called with -v REDACTED REDACTED"),
            "{reason}"
        );
        let debug = format!("{handler:?}");
        assert!(
            !debug.contains("s3cret") && debug.contains("args: 4"),
            "{debug}"
        );
    }

    #[tokio::test]
    async fn more_stdout_than_the_limit_is_permanent_and_stops_the_program() {
        let scripts = Scripts::new("stdout");
        let handler = scripts.handler("flood.sh", "cat /dev/zero", &[]);
        let started = std::time::Instant::now();
        let error = tokio::time::timeout(
            Duration::from_secs(30),
            handler.handle(&message(serde_json::json!({}))),
        )
        .await
        .expect("stopped at the limit")
        .unwrap_err();
        assert_eq!(
            error,
            HandlerError::permanent("wrote more than 16 MiB to stdout (stopped)")
        );
        assert!(started.elapsed() < Duration::from_secs(30));
    }

    #[tokio::test]
    async fn an_abandoned_call_leaves_no_process_behind() {
        let scripts = Scripts::new("abandoned");
        let (shell, sleeper) = (scripts.path("sh.pid"), scripts.path("sleep.pid"));
        let handler = scripts.handler(
            "hang.sh",
            &format!(
                "sleep 30 & echo $! > {}; echo $$ > {}; wait",
                sleeper.display(),
                shell.display()
            ),
            &[],
        );
        let m = message(serde_json::json!({}));
        let call = tokio::time::timeout(Duration::from_millis(500), handler.handle(&m));
        assert!(call.await.is_err(), "the call hangs until dropped");
        let pids = [wait_for_file(&shell).await, wait_for_file(&sleeper).await];
        for _ in 0..200 {
            if pids.iter().all(|pid| !alive(pid)) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for pid in &pids {
            assert!(!alive(pid), "process {} outlived its call", pid.trim());
        }
    }

    #[tokio::test]
    async fn background_processes_end_with_the_program() {
        let scripts = Scripts::new("background");
        let sleeper = scripts.path("sleep.pid");
        // The sleep holds stdout open: without the group kill the call would wait 30 s.
        let handler = scripts.handler(
            "detach.sh",
            &format!("sleep 30 & echo $! > {}; exit 0", sleeper.display()),
            &[],
        );
        let done = tokio::time::timeout(
            Duration::from_secs(10),
            handler.handle(&message(serde_json::json!({}))),
        )
        .await;
        assert_eq!(done.expect("not held up by the sleep").unwrap(), vec![]);
        let pid = wait_for_file(&sleeper).await;
        for _ in 0..200 {
            if !alive(&pid) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the background sleep outlived the call");
    }

    #[test]
    fn programs_are_absolute_or_found_on_path() {
        let sh = ExecHandler::new(&["sh".to_owned(), "-c".to_owned()]).unwrap();
        assert!(sh.program().is_absolute(), "{sh:?}");
        assert!(sh.program().ends_with("sh"), "{sh:?}");
        let command =
            |parts: &[&str]| -> Vec<String> { parts.iter().map(|p| (*p).to_owned()).collect() };
        assert_eq!(ExecHandler::new(&[]).unwrap_err(), ExecHandlerError::Empty);
        assert_eq!(
            ExecHandler::new(&command(&["", "x"])).unwrap_err(),
            ExecHandlerError::EmptyProgram
        );
        assert_eq!(
            ExecHandler::new(&command(&["./hook.sh"])).unwrap_err(),
            ExecHandlerError::Relative("./hook.sh".into())
        );
        assert_eq!(
            ExecHandler::new(&command(&["no-such-program-anywhere"])).unwrap_err(),
            ExecHandlerError::NotOnPath("no-such-program-anywhere".into())
        );
        assert!(matches!(
            ExecHandler::new(&command(&["/nonexistent/hook"])).unwrap_err(),
            ExecHandlerError::NotExecutable { path, problem }
                if path == "/nonexistent/hook" && problem.contains("No such file")
        ));
        assert!(matches!(
            ExecHandler::new(&command(&["/tmp"])).unwrap_err(),
            ExecHandlerError::NotExecutable { problem, .. } if problem == "not a file"
        ));
        assert_eq!(
            ExecHandler::new(&command(&["/bin/sh", "a\0b"])).unwrap_err(),
            ExecHandlerError::Nul(1)
        );
        let scripts = Scripts::new("modes");
        let plain = scripts.path("plain.sh");
        std::fs::write(&plain, "#!/bin/sh\n").unwrap();
        let error = ExecHandler::new(&[plain.display().to_string()]).unwrap_err();
        assert!(
            error.to_string().contains("not executable (mode "),
            "{error}"
        );
    }
}

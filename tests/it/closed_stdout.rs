//! A reader that stops early (`outbox-relay stuck --json | head`): every command ends quietly
//! with exit code 141 (128 + SIGPIPE, what a shell reports for a process killed by SIGPIPE),
//! never with a panic (exit 101) or an error line about the broken pipe.

use std::io::Read;
use std::process::{Command, Stdio};

use crate::harness::TestDb;
use crate::harness::cli::outbox_relay;
use crate::harness::relay::publish_numbered;

/// Messages with a delivery row in each of two groups: the listings below run to hundreds of
/// KiB, far past a pipe's buffer (64 KiB), so the command is still writing when the reader
/// goes.
const STUCK_MESSAGES: usize = 1500;

/// How a command ended after its reader closed stdout.
struct Closed {
    code: Option<i32>,
    stderr: String,
}

/// Runs `command` with stdout into a pipe, reads `read` bytes (none: closes the pipe before
/// the command can write), closes the read end and waits.
fn run_and_close_stdout(command: &mut Command, read: usize) -> Closed {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start outbox-relay");
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let mut first = vec![0; read];
    stdout
        .read_exact(&mut first)
        .expect("the command writes before the pipe is closed");
    drop(stdout);
    let output = child.wait_with_output().expect("wait for outbox-relay");
    Closed {
        code: output.status.code(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Nothing on stderr: no panic message, no "Broken pipe" error line (logs are at WARN).
fn assert_quiet(what: &str, closed: &Closed) {
    assert!(
        closed.stderr.trim().is_empty(),
        "{what}: stderr after stdout closed:\n{}",
        closed.stderr
    );
}

#[tokio::test]
async fn listings_end_with_exit_141_and_nothing_on_stderr_when_the_reader_goes() {
    let db = TestDb::new().await;
    for group in ["g", "h"] {
        outbox_relay::store::consumer_groups_ensure(&db.pool, group, false)
            .await
            .unwrap();
    }
    publish_numbered(&db.pool, 0, STUCK_MESSAGES).await;
    sqlx::query(
        "INSERT INTO outbox.deliveries (group_name, message_id, status, attempts, last_error,
                next_attempt_at, message_tx_id, message_seq, message_key)
         SELECT g.name, m.id, g.status, 3, 'HTTP 503 from https://hooks.example',
                CASE WHEN g.status = 'retrying' THEN now() + interval '10 minutes' END,
                m.tx_id, m.seq, m.key
           FROM outbox.messages m,
                (VALUES ('g', 'retrying'), ('h', 'dead')) AS g (name, status)",
    )
    .execute(&db.pool)
    .await
    .unwrap();

    let limit = (2 * STUCK_MESSAGES).to_string();
    let commands: [&[&str]; 4] = [
        &["stuck", "--json", "--limit", &limit],
        &["stuck", "--limit", &limit],
        &["dead", "list", "--json", "--limit", &limit],
        &["dead", "list", "--limit", &limit],
    ];
    for args in commands {
        let what = args.join(" ");
        let closed = run_and_close_stdout(
            outbox_relay().args(["--database-url", &db.url]).args(args),
            16,
        );
        assert_quiet(&what, &closed);
        // Not 0: the output did not fit in the pipe, so the write really met the closed end.
        assert_eq!(closed.code, Some(141), "{what}: {}", closed.stderr);
    }
}

#[test]
fn help_ends_quietly_when_the_reader_goes() {
    // clap prints the help itself (ignoring a broken pipe); it fits in a pipe's buffer, so
    // the pipe is closed before the command starts writing and either outcome is quiet.
    for args in [&["--help"][..], &["stuck", "--help"]] {
        let closed = run_and_close_stdout(outbox_relay().args(args), 0);
        assert_quiet(&args.join(" "), &closed);
        assert!(
            matches!(closed.code, Some(0 | 141)),
            "{}: {:?}",
            args.join(" "),
            closed.code
        );
    }
}

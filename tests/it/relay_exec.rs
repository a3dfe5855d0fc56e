//! The built-in `exec` handler running real `#!/bin/sh` programs: stdin is the message JSON,
//! exit 0 is done (stdout's outputs become entries), 75 and timeouts are retried, any other
//! exit is dead with stderr's last lines in `last_error`; and no program outlives its call (a
//! timeout, a SIGTERM of the relay with a program hanging).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use uuid::Uuid;

use crate::harness::redis::TestRedis;
use crate::harness::relay::{
    InProcessRelay, RelayProcess, TempDir, keyed_message, publish_messages, relay_toml,
};
use crate::harness::{TestDb, eventually};

/// Writes an executable `#!/bin/sh` script `name` with `body` into `dir`.
fn script(dir: &TempDir, name: &str, body: &str) -> PathBuf {
    let path = dir.write(name, &format!("#!/bin/sh\n{body}\n"));
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// A route of group `g` running `program` for `topic`, with `extra` keys (retry, timeout;
/// `backoff_initial_ms = 50` unless they set it).
fn exec_route(topic: &str, program: &Path, extra: &str) -> String {
    let backoff = if extra.contains("backoff_initial_ms") {
        ""
    } else {
        "backoff_initial_ms = 50\n"
    };
    format!(
        "[[groups.routes]]\ntopics = [\"{topic}\"]\nhandler = \"exec\"\ncommand = [\"{}\"]\n\
         {backoff}{extra}\n",
        program.display()
    )
}

/// Group `g` (dead letters to `dead`) with `routes`.
fn exec_group(routes: &[String]) -> String {
    format!(
        "[[groups]]\nname = \"g\"\ndead_letter_stream = \"dead\"\n{}",
        routes.concat()
    )
}

/// Publishes one message per `(topic, payload)`, keyed by the payload's `key`, header
/// `trace = abc`, each in its own transaction.
async fn publish(db: &TestDb, messages: &[(&str, Value)]) -> Vec<Uuid> {
    let messages = messages
        .iter()
        .map(|(topic, payload)| keyed_message(topic, payload).header("trace", "abc"))
        .collect();
    publish_messages(&db.pool, messages, false).await
}

/// Message `id`'s delivery row in group `g`: status, attempts, last_error.
async fn delivery(db: &TestDb, id: Uuid) -> Option<(String, i32, Option<String>)> {
    sqlx::query_as(
        "SELECT d.status, d.attempts, d.last_error FROM outbox.deliveries d
          WHERE d.group_name = 'g' AND d.message_id = $1",
    )
    .bind(id)
    .fetch_optional(&db.pool)
    .await
    .unwrap()
}

/// Waits until message `id`'s delivery row is dead; returns its attempts and last_error.
async fn dead(db: &TestDb, id: Uuid) -> (i32, String) {
    eventually(Duration::from_secs(20), "a dead delivery row", || async {
        match delivery(db, id).await {
            Some((status, attempts, error)) if status == "dead" => {
                Some((attempts, error.unwrap_or_default()))
            }
            _ => None,
        }
    })
    .await
}

/// Whether group `g`'s cursor has passed message `id`.
async fn passed(db: &TestDb, id: Uuid) -> bool {
    sqlx::query_scalar(
        "SELECT (g.cursor_tx_id, g.cursor_seq) >= (m.tx_id, m.seq)
           FROM outbox.consumer_groups g JOIN outbox.messages m ON m.id = $1
          WHERE g.name = 'g'",
    )
    .bind(id)
    .fetch_optional(&db.pool)
    .await
    .unwrap()
    .unwrap_or(false)
}

/// Whether process `pid` still runs (a zombie runs nothing: it only waits to be reaped).
fn alive(pid: &str) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        // No /proc (not Linux): ask kill -0.
        Err(_) if !Path::new("/proc/self").exists() => std::process::Command::new("kill")
            .args(["-0", pid])
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap()
            .success(),
        Err(_) => false,
    }
}

/// The pids listed in `file`, one a line, once it holds `count`.
async fn pids(file: &Path, count: usize) -> Vec<String> {
    eventually(Duration::from_secs(20), "the programs' pids", || async {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        let pids: Vec<String> = text.lines().map(str::to_owned).collect();
        (pids.len() >= count).then_some(pids)
    })
    .await
}

/// Waits until none of `pids` runs.
async fn all_gone(pids: &[String]) {
    eventually(
        Duration::from_secs(5),
        "every program of the call gone",
        || async { pids.iter().all(|pid| !alive(pid)).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn exit_0_appends_stdout_outputs_and_stdin_is_the_message() {
    let (db, redis) = (TestDb::new().await, TestRedis::new());
    let dir = TempDir::new("exec-outputs");
    let stdin = dir.0.join("stdin.json");
    let outputs = script(
        &dir,
        "outputs.sh",
        &format!(
            "cat > {}\nprintf '%s' '{{\"outputs\": [{{\"stream\": \"out\", \"payload\": {{\"from\": \"exec\"}}}}, \
             {{\"stream\": \"audit\", \"payload\": {{\"seen\": 1}}}}]}}'",
            stdin.display()
        ),
    );
    let calls = dir.0.join("silent.calls");
    let silent = script(
        &dir,
        "silent.sh",
        &format!("cat > /dev/null\necho called >> {}", calls.display()),
    );
    let toml = relay_toml(
        &db,
        &redis,
        "idle_poll_ms = 5",
        &exec_group(&[
            exec_route("silent", &silent, ""),
            exec_route("outputs", &outputs, ""),
        ]),
    );
    let relay = InProcessRelay::start(&toml).await;
    let payload = json!({"n": 1, "key": "k1", "nested": {"a": [1, 2]}});
    let ids = publish(
        &db,
        &[("silent", json!({"n": 0})), ("outputs", payload.clone())],
    )
    .await;
    let out = eventually(Duration::from_secs(20), "the program's output", || async {
        let out = redis.payloads("out").await;
        (!out.is_empty()).then_some(out)
    })
    .await;
    assert_eq!(out, [json!({"from": "exec"})]);
    assert_eq!(redis.payloads("audit").await, [json!({"seen": 1})]);

    // stdin: the http handler's body, exactly.
    let sent: Value = serde_json::from_slice(&std::fs::read(&stdin).unwrap()).unwrap();
    assert_eq!(sent["id"], json!(ids[1].to_string()));
    assert_eq!(sent["topic"], "outputs");
    assert_eq!(sent["key"], "k1");
    assert_eq!(sent["payload"], payload);
    assert_eq!(sent["headers"], json!({"trace": "abc"}));
    assert_eq!(sent["attempt"], 1);
    for field in ["schema_version", "position", "created_at"] {
        assert!(sent.get(field).is_some(), "stdin lacks {field}: {sent}");
    }

    // Exit 0 with empty stdout: done, no entry, no delivery row.
    eventually(Duration::from_secs(10), "the cursor past both", || async {
        passed(&db, ids[1]).await.then_some(())
    })
    .await;
    assert_eq!(std::fs::read_to_string(&calls).unwrap(), "called\n");
    assert_eq!(delivery(&db, ids[0]).await, None);
    assert_eq!(delivery(&db, ids[1]).await, None);
    assert_eq!(redis.stream_len("dead").await, 0);
    relay.stop().await;
}

#[tokio::test]
async fn exit_75_is_retried_and_any_other_exit_is_dead_with_stderr_in_last_error() {
    let (db, redis) = (TestDb::new().await, TestRedis::new());
    let dir = TempDir::new("exec-status");
    let (calls, state) = (dir.0.join("flaky.stdin"), dir.0.join("flaky.state"));
    let flaky = script(
        &dir,
        "flaky.sh",
        &format!(
            "cat >> {calls}\necho >> {calls}\n\
             if [ ! -e {state} ]; then touch {state}; echo 'database busy' >&2; exit 75; fi\n\
             echo '{{\"outputs\": [{{\"stream\": \"out\", \"payload\": {{\"from\": \"flaky\"}}}}]}}'",
            calls = calls.display(),
            state = state.display()
        ),
    );
    let broken = script(
        &dir,
        "broken.sh",
        "cat > /dev/null\necho 'loading order 7' >&2\necho 'order 7 has no customer' >&2\nexit 1",
    );
    let killed = script(&dir, "killed.sh", "kill -9 $$");
    let toml = relay_toml(
        &db,
        &redis,
        "idle_poll_ms = 5",
        &exec_group(&[
            // Long enough a backoff to see the row retrying.
            exec_route("flaky", &flaky, "backoff_initial_ms = 400"),
            exec_route("broken", &broken, ""),
            exec_route("killed", &killed, ""),
        ]),
    );
    let relay = InProcessRelay::start(&toml).await;
    let ids = publish(
        &db,
        &[
            ("flaky", json!({"key": "k1"})),
            ("broken", json!({"n": 7})),
            ("killed", json!({})),
        ],
    )
    .await;

    let (attempts, error) = eventually(Duration::from_secs(20), "flaky retrying", || async {
        match delivery(&db, ids[0]).await {
            Some((status, attempts, error)) if status == "retrying" => Some((attempts, error)),
            _ => None,
        }
    })
    .await;
    assert_eq!(attempts, 1);
    assert_eq!(
        error.unwrap(),
        format!(
            "exec {}: exited with 75 (EX_TEMPFAIL); stderr: database busy",
            flaky.display()
        )
    );
    let out = eventually(Duration::from_secs(20), "flaky's output", || async {
        let out = redis.payloads("out").await;
        (!out.is_empty()).then_some(out)
    })
    .await;
    assert_eq!(out, [json!({"from": "flaky"})]);
    eventually(Duration::from_secs(10), "flaky's row gone", || async {
        delivery(&db, ids[0]).await.is_none().then_some(())
    })
    .await;
    let attempts: Vec<u64> = std::fs::read_to_string(&calls)
        .unwrap()
        .lines()
        .map(|line| {
            serde_json::from_str::<Value>(line).unwrap()["attempt"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(attempts, [1, 2], "called again after exit 75, once");

    assert_eq!(
        dead(&db, ids[1]).await,
        (
            1,
            format!(
                "exec {}: exited with 1; stderr: loading order 7 | order 7 has no customer",
                broken.display()
            )
        ),
        "permanent at once, stderr's last lines in last_error"
    );
    assert_eq!(
        dead(&db, ids[2]).await,
        (
            1,
            format!(
                "exec {}: killed by signal 9 (SIGKILL) (stderr empty)",
                killed.display()
            )
        )
    );
    eventually(Duration::from_secs(10), "both dead letters", || async {
        (redis.stream_len("dead").await == 2).then_some(())
    })
    .await;
    relay.stop().await;
}

#[tokio::test]
async fn a_timed_out_program_is_retried_and_leaves_no_process_behind() {
    let (db, redis) = (TestDb::new().await, TestRedis::new());
    let dir = TempDir::new("exec-timeout");
    let pid_file = dir.0.join("pids");
    // Not `exec sleep`: the sleep is a child of the shell, in the program's process group.
    let slow = script(
        &dir,
        "slow.sh",
        &format!(
            "echo $$ >> {pids}\nsleep 30 &\necho $! >> {pids}\nwait",
            pids = pid_file.display()
        ),
    );
    let toml = relay_toml(
        &db,
        &redis,
        "idle_poll_ms = 5",
        &exec_group(&[exec_route(
            "slow",
            &slow,
            "timeout_ms = 300\nmax_attempts = 2",
        )]),
    );
    let relay = InProcessRelay::start(&toml).await;
    let ids = publish(&db, &[("slow", json!({}))]).await;
    let (attempts, error) = dead(&db, ids[0]).await;
    assert_eq!(attempts, 2);
    assert_eq!(
        error,
        format!(
            "exec {}: timed out after 300 ms (gave up after 2 attempts)",
            slow.display()
        ),
        "the first timeout was retried"
    );
    let pids = pids(&pid_file, 4).await;
    all_gone(&pids).await;
    relay.stop().await;
}

#[tokio::test]
async fn sigterm_while_a_program_hangs_ends_it_within_the_shutdown_grace() {
    let (db, redis) = (TestDb::new().await, TestRedis::new());
    let dir = TempDir::new("exec-sigterm");
    let pid_file = dir.0.join("pids");
    let hang = script(
        &dir,
        "hang.sh",
        &format!(
            "echo $$ >> {pids}\nsleep 30 &\necho $! >> {pids}\nwait",
            pids = pid_file.display()
        ),
    );
    let config = dir.write(
        "relay.toml",
        &relay_toml(
            &db,
            &redis,
            "idle_poll_ms = 5\nshutdown_grace_ms = 300",
            &exec_group(&[exec_route("hang", &hang, "timeout_ms = 60000")]),
        ),
    );
    let relay = RelayProcess::start(&config, "relay");
    publish(&db, &[("hang", json!({}))]).await;
    let pids = pids(&pid_file, 2).await;
    let started = Instant::now();
    let code = relay.terminate(Duration::from_secs(10)).await;
    assert_eq!(code, Some(0));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "within the grace, not the 60 s timeout: {:?}",
        started.elapsed()
    );
    all_gone(&pids).await;
}

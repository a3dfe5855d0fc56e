//! Running the relay in a test: in-process (the library `Relay`) or as a real `outbox-relay run`
//! child process that can be killed with SIGKILL, stopped with SIGSTOP, or terminated.

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::Duration;

use outbox_relay::Message;
use outbox_relay::config::Config;
use outbox_relay::relay::Relay;
use serde_json::json;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::cli::outbox_relay;
use super::redis::TestRedis;
use super::{TestDb, eventually};

/// A relay configuration for `db` and `redis`'s prefix; `relay` is the body of `[relay]`,
/// `groups` the `[[groups]]` sections.
pub fn relay_toml(db: &TestDb, redis: &TestRedis, relay: &str, groups: &str) -> String {
    format!(
        "database_url = \"{}\"\nredis_url = \"{}\"\n[redis]\nkey_prefix = \"{}\"\n[relay]\n{relay}\n{groups}\n",
        db.url, redis.url, redis.prefix
    )
}

/// One group `name` forwarding every topic to the stream `stream`.
pub fn forward_all(name: &str, stream: &str) -> String {
    format!(
        "[[groups]]\nname = \"{name}\"\n[[groups.routes]]\ntopics = [\"*\"]\nhandler = \"forward\"\nstream = \"{stream}\"\n"
    )
}

pub struct InProcessRelay {
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), outbox_relay::relay::RelayError>>,
}

impl InProcessRelay {
    pub async fn start(toml: &str) -> InProcessRelay {
        InProcessRelay::start_with(toml, |relay| relay).await
    }

    /// Starts the relay after `customize` added to it (custom handlers, say).
    pub async fn start_with(toml: &str, customize: impl FnOnce(Relay) -> Relay) -> InProcessRelay {
        // The library's way to run the relay of a configuration inside a service.
        let config = Config::from_toml(toml).unwrap_or_else(|e| panic!("{e}"));
        let relay = config
            .relay()
            .await
            .unwrap_or_else(|e| panic!("the relay of the configuration: {e}"));
        let shutdown = CancellationToken::new();
        let relay = customize(relay);
        let task = tokio::spawn(relay.run(shutdown.clone()));
        InProcessRelay { shutdown, task }
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("relay stops within 10 s")
            .expect("relay task")
            .expect("relay result");
    }
}

/// A real `outbox-relay run` process.
pub struct RelayProcess {
    pub child: Child,
    log: PathBuf,
}

impl RelayProcess {
    /// Starts `outbox-relay --config <file> run`, logging to a file next to the config.
    pub fn start(config_file: &std::path::Path, name: &str) -> RelayProcess {
        RelayProcess::start_with(config_file, name, &[], &[])
    }

    /// Starts `outbox-relay --config <file> <global_args> run <run_args>`, logging to a file
    /// next to the config.
    pub fn start_with(
        config_file: &std::path::Path,
        name: &str,
        global_args: &[&str],
        run_args: &[&str],
    ) -> RelayProcess {
        let log = config_file.with_extension(format!("{name}.log"));
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("relay log");
        let child = outbox_relay()
            .env("RUST_LOG", "outbox_relay=debug,warn")
            .args(["--config", config_file.to_str().unwrap()])
            .args(global_args)
            .arg("run")
            .args(run_args)
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("spawn outbox-relay run");
        RelayProcess { child, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal} {}", self.pid());
    }

    /// SIGKILL, and reap it.
    pub fn kill9(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }

    /// SIGTERM; returns the exit code, waiting at most `deadline`.
    pub async fn terminate(mut self, deadline: Duration) -> Option<i32> {
        self.signal("TERM");
        let started = std::time::Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status.code();
            }
            assert!(
                started.elapsed() < deadline,
                "relay did not exit within {deadline:?} of SIGTERM:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A temporary directory for config files and logs, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let dir =
            std::env::temp_dir().join(format!("outbox-relay-test-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }

    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).expect("write temp file");
        path
    }

    /// `relay.toml`: group `g` forwarding every topic to stream `all`, `relay` as `[relay]`.
    pub fn forward_all_config(&self, db: &TestDb, redis: &TestRedis, relay: &str) -> PathBuf {
        self.write(
            "relay.toml",
            &relay_toml(db, redis, relay, &forward_all("g", "all")),
        )
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The lease owner of group `g` (the group every `forward_all("g", ..)` test runs), if any.
pub async fn lease_owner(db: &TestDb) -> Option<String> {
    sqlx::query_scalar("SELECT g.lease_owner FROM outbox.consumer_groups g WHERE g.name = 'g'")
        .fetch_optional(&db.pool)
        .await
        .unwrap()
        .flatten()
}

/// Waits (up to 10 s) until some relay holds group `g`'s lease; returns the owner.
pub async fn wait_for_lease_owner(db: &TestDb) -> String {
    eventually(Duration::from_secs(10), "a relay holding the lease", || {
        lease_owner(db)
    })
    .await
}

/// Group `g`'s cursor as `tx_id:seq`.
pub async fn cursor_of_g(db: &TestDb) -> String {
    sqlx::query_scalar(
        "SELECT g.cursor_tx_id::text || ':' || g.cursor_seq FROM outbox.consumer_groups g WHERE g.name = 'g'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

/// Waits until group `g` has nothing left to deliver (its last cursor update may land just
/// after its last append); every partition of it, for a partitioned group.
pub async fn wait_for_cursor_at_the_end(db: &TestDb) {
    eventually(Duration::from_secs(10), "the cursor at the end", || async {
        let lag: i64 = sqlx::query_scalar(
            "SELECT sum(s.lag_messages)::bigint FROM outbox.group_status s WHERE s.group_name = 'g'",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        (lag == 0).then_some(())
    })
    .await;
}

/// One transaction publishing `{"n": from}` .. `{"n": from + count - 1}` on topic `t`.
pub async fn publish_numbered(pool: &PgPool, from: usize, count: usize) {
    let messages = (from..from + count)
        .map(|n| Message::new("t", json!({"n": n})))
        .collect();
    publish_messages(pool, messages, true).await;
}

/// A message on `topic` carrying `payload`, keyed by the payload's `key` field if it has one.
pub fn keyed_message(topic: &str, payload: &serde_json::Value) -> Message {
    let message = Message::new(topic, payload);
    match payload["key"].as_str() {
        Some(key) => message.key(key),
        None => message,
    }
}

/// Publishes `messages` in order, each in a transaction of its own, or all in one when
/// `together`; returns their ids.
pub async fn publish_messages(
    pool: &PgPool,
    messages: Vec<Message>,
    together: bool,
) -> Vec<uuid::Uuid> {
    let mut ids = Vec::new();
    let mut tx = pool.begin().await.unwrap();
    for message in messages {
        ids.push(outbox_relay::publish_in_tx(&mut tx, message).await.unwrap());
        if !together {
            tx.commit().await.unwrap();
            tx = pool.begin().await.unwrap();
        }
    }
    tx.commit().await.unwrap();
    ids
}

/// Stream `all` holds the payloads numbered 0..published, each once, in order.
pub async fn assert_numbered_exactly_once(redis: &TestRedis, published: usize) {
    let numbers = redis.numbers("all").await;
    let unique: HashSet<u64> = numbers.iter().copied().collect();
    assert_eq!(unique.len(), numbers.len(), "duplicates");
    assert_eq!(numbers.len(), published, "lost messages");
    assert_eq!(
        numbers,
        (0..published as u64).collect::<Vec<_>>(),
        "lost or reordered messages"
    );
}

/// Writes the delivery row the relay would write for message `id` in `group`: `status` with
/// `attempts` failed attempts (the last error an HTTP 503 when there were any), a retrying one
/// due in 10 minutes.
pub async fn insert_delivery(
    pool: &PgPool,
    group: &str,
    id: uuid::Uuid,
    status: &str,
    attempts: i32,
) {
    sqlx::query(
        "INSERT INTO outbox.deliveries (group_name, message_id, status, attempts, last_error,
                next_attempt_at, message_tx_id, message_seq, message_key)
         SELECT $1, m.id, $3, $4, CASE WHEN $4 > 0 THEN 'HTTP 503 from https://hooks.example' END,
                CASE WHEN $3 = 'retrying' THEN now() + interval '10 minutes' END,
                m.tx_id, m.seq, m.key
           FROM outbox.messages m WHERE m.id = $2",
    )
    .bind(group)
    .bind(id)
    .bind(status)
    .bind(attempts)
    .execute(pool)
    .await
    .unwrap();
}

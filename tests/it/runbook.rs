//! The stuck message runbook (docs/operating.md), followed literally: every `outbox-relay` command and every SQL
//! statement in its code blocks runs as written against a database with a stuck group.

use serde_json::json;
use uuid::Uuid;

use crate::harness::TestDb;
use crate::harness::cli::{outbox_relay, run};
use crate::harness::relay::{insert_delivery, keyed_message, publish_messages};

/// The runbook section of docs/operating.md: from its heading to the next `## ` heading.
fn runbook() -> String {
    let readme = include_str!("../../docs/operating.md");
    let start = readme
        .find("### Stuck message runbook")
        .expect("docs/operating.md has the runbook");
    let rest = &readme[start..];
    let end = rest.find("\n## ").unwrap_or(rest.len());
    rest[..end].to_owned()
}

/// The contents of every fenced block of `language` in `text`.
fn blocks(text: &str, language: &str) -> Vec<String> {
    let fence = format!("```{language}\n");
    text.split(fence.as_str())
        .skip(1)
        .map(|block| block.split("```").next().unwrap_or_default().to_owned())
        .collect()
}

async fn status_of(db: &TestDb, id: Uuid) -> Option<(String, bool)> {
    sqlx::query_as(
        "SELECT d.status, coalesce(d.next_attempt_at <= now(), false)
           FROM outbox.deliveries d WHERE d.message_id = $1",
    )
    .bind(id)
    .fetch_optional(&db.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn the_readme_runbook_runs_as_written() {
    let db = TestDb::new().await;
    outbox_relay::store::consumer_groups_ensure(&db.pool, "notifications", false)
        .await
        .unwrap();
    let messages = vec![
        keyed_message("orders.paid", &json!({"n": 0, "key": "order-1"})),
        keyed_message("orders.paid", &json!({"n": 1, "key": "order-1"})),
        keyed_message("orders.paid", &json!({"n": 2})),
        keyed_message("orders.created", &json!({"n": 3})),
    ];
    let ids = publish_messages(&db.pool, messages, false).await;
    sqlx::query(
        "UPDATE outbox.consumer_groups g SET cursor_tx_id = m.tx_id, cursor_seq = m.seq
           FROM outbox.messages m WHERE g.name = 'notifications' AND m.id = $1",
    )
    .bind(ids[3])
    .execute(&db.pool)
    .await
    .unwrap();
    insert_delivery(&db.pool, "notifications", ids[0], "retrying", 2).await;
    insert_delivery(&db.pool, "notifications", ids[1], "blocked", 0).await;
    insert_delivery(&db.pool, "notifications", ids[2], "dead", 10).await;
    insert_delivery(&db.pool, "notifications", ids[3], "dead", 10).await;

    let runbook = runbook();
    let commands: Vec<String> = blocks(&runbook, "bash")
        .iter()
        .flat_map(|block| block.lines().map(str::to_owned).collect::<Vec<_>>())
        .filter(|line| line.starts_with("outbox-relay "))
        .collect();
    let statements: Vec<String> = blocks(&runbook, "sql")
        .iter()
        .flat_map(|block| {
            block
                .split(";\n")
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(commands.len() >= 4, "{commands:?}");
    assert!(statements.len() >= 5, "{statements:?}");

    for command in &commands {
        let args: Vec<&str> = command.split_whitespace().skip(1).collect();
        let out = run(outbox_relay().args(["--database-url", &db.url]).args(&args));
        assert_eq!(out.code, Some(0), "`{command}`: {}", out.stderr);
        assert!(!out.stdout.trim().is_empty(), "`{command}` printed nothing");
    }
    for statement in &statements {
        sqlx::raw_sql(sqlx::AssertSqlSafe(statement.clone()))
            .execute(&db.pool)
            .await
            .unwrap_or_else(|e| panic!("{statement}: {e}"));
    }

    // Step 3 made the retrying message due now; the blocked one still waits for it; step 4
    // retried the dead orders.paid letter (so the discard found it no longer dead) and left the
    // other topic's dead letter alone.
    assert_eq!(
        status_of(&db, ids[0]).await,
        Some(("retrying".into(), true))
    );
    assert_eq!(
        status_of(&db, ids[1]).await,
        Some(("blocked".into(), false))
    );
    assert_eq!(
        status_of(&db, ids[2]).await,
        Some(("retrying".into(), true))
    );
    assert_eq!(status_of(&db, ids[3]).await, Some(("dead".into(), false)));
}

/// The `bash` block under `heading` in `text` (up to the next `## ` heading).
fn section_bash(text: &str, heading: &str) -> String {
    let start = text.find(heading).expect("the section exists");
    let rest = &text[start..];
    let end = rest[heading.len()..]
        .find("\n## ")
        .map_or(rest.len(), |end| end + heading.len());
    blocks(&rest[..end], "bash")
        .into_iter()
        .next()
        .expect("a bash block")
}

/// Runs `script` with bash in the repository root, the test binary first on the PATH and no
/// `OUTBOX_*` variable but those of `env`.
fn bash(script: &str, env: &[(&str, &str)]) -> crate::harness::cli::Run {
    let bin_dir = std::path::Path::new(env!("CARGO_BIN_EXE_outbox-relay"))
        .parent()
        .unwrap()
        .to_owned();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap());
    let mut command = std::process::Command::new("bash");
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy().into_owned();
        if name.starts_with("OUTBOX_") || name == "DATABASE_URL" || name == "REDIS_URL" {
            command.env_remove(name);
        }
    }
    command
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("PATH", path)
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .args(["-c", script]);
    run(&mut command)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_quick_start_runs_as_written() {
    let lines: Vec<String> = section_bash(include_str!("../../README.md"), "## Quick start")
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(lines.len(), 5, "five commands: {lines:?}");
    assert!(lines[0].starts_with("docker compose up -d --wait postgres redis"));
    // Commands 1 and 2 bring the servers and the binary: here the test's own database, a
    // private Redis and the binary under test. Commands 3 to 5 run as written, but for their
    // URLs (and a wait for the relay, where a person takes a few seconds to type).
    let (install, export) = lines[1].split_once(" && ").expect("install && export");
    assert_eq!(install, "cargo install --path .");
    let db = TestDb::empty().await;
    let redis = crate::harness::servers::PrivateRedis::start();
    let ready = format!(
        "for i in $(seq 100); do psql '{url}' -Atc \"SELECT 1 FROM outbox.consumer_groups WHERE name = 'quickstart'\" 2>/dev/null | grep -q 1 && break; sleep 0.1; done",
        url = db.url
    );
    let appended = format!(
        "for i in $(seq 100); do [ \"$(redis-cli -p {port} XLEN events.orders.created)\" = 1 ] && break; sleep 0.1; done",
        port = redis.port
    );
    let script = format!(
        "set -e\n{export}\n{relay}\nrelay=$!\n{ready}\n{psql}\n{appended}\n{xrange}\n{stop}",
        relay = lines[2],
        psql = lines[3].replace("postgres://postgres@127.0.0.1:5432/app", &db.url),
        xrange = lines[4].replace("redis-cli ", &format!("redis-cli -p {} ", redis.port)),
        // Without job control (a script) `kill %1` would stop the background subshell and
        // leave the relay running: SIGTERM goes to the subshell's child, the relay.
        stop = "pkill -TERM -P $relay; wait",
    );
    let out = bash(
        &script,
        &[
            ("OUTBOX_DATABASE_URL", db.url.as_str()),
            ("OUTBOX_REDIS_URL", redis.url().as_str()),
        ],
    );
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("orders.created"), "{}", out.stdout);
    assert!(out.stdout.contains(r#"{"order_id": 7}"#), "{}", out.stdout);
    assert!(out.stdout.contains("order-7"), "{}", out.stdout);
}

#[test]
fn the_consumer_example_runs_as_written() {
    let commands = section_bash(
        include_str!("../../docs/operating.md"),
        "## Consuming the streams",
    );
    let redis = crate::harness::servers::PrivateRedis::start();
    let port = redis.port.to_string();
    let cli = |args: &[&str]| {
        let out = std::process::Command::new("redis-cli")
            .args(["-p", &port])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // What the relay appended in the quick start.
    let id = cli(&[
        "XADD",
        "events.orders.created",
        "*",
        "id",
        "m1",
        "topic",
        "orders.created",
    ]);
    let mut outputs = Vec::new();
    for line in commands.lines() {
        let command = line.split("  #").next().unwrap().trim();
        // The example's entry id stands for the one XREADGROUP returned.
        let command = command.replace("1733390000000-0", id.trim());
        let script = command.replacen("redis-cli ", &format!("redis-cli -p {port} "), 1);
        let out = bash(&script, &[]);
        assert_eq!(out.code, Some(0), "{script}: {}{}", out.stdout, out.stderr);
        assert!(!out.stdout.contains("ERR"), "{script}: {}", out.stdout);
        outputs.push(out.stdout);
    }
    assert_eq!(outputs.len(), 5, "{outputs:?}");
    assert!(
        outputs[1].contains("orders.created"),
        "XREADGROUP: {}",
        outputs[1]
    );
    assert!(outputs[2].starts_with('1'), "one pending: {}", outputs[2]);
    assert_eq!(outputs[3].trim(), "1", "XACK acknowledged it");
}

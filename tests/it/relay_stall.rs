//! Why a caught-up group does not move: an open transaction holding the xmin back (reported,
//! and delivery resumes when it ends), or a cursor ahead of the server (reported with the fix).

use std::time::Duration;

use outbox_relay::{Message, publish_in_tx};
use serde_json::{Value, json};

use crate::harness::cli::{outbox_relay, run};
use crate::harness::redis::TestRedis;
use crate::harness::relay::{RelayProcess, TempDir, wait_for_lease_owner};
use crate::harness::{TestDb, eventually};

fn status_json(config: &std::path::Path) -> Value {
    let out = run(outbox_relay().args(["--config", config.to_str().unwrap(), "status", "--json"]));
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    serde_json::from_str(&out.stdout).expect("status --json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_open_transaction_holds_delivery_back_is_reported_and_released() {
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    let dir = TempDir::new(&db.name);
    let config = dir.forward_all_config(
        &db,
        &redis,
        "idle_poll_ms = 2\nstall_report_interval_ms = 300",
    );
    let relay = RelayProcess::start(&config, "relay");
    wait_for_lease_owner(&db).await;

    // A transaction takes an id and stays open; a later one publishes and commits.
    let mut long = db.pool.begin().await.unwrap();
    sqlx::query("SET LOCAL application_name = 'long-running-report'")
        .execute(&mut *long)
        .await
        .unwrap();
    let long_pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *long)
        .await
        .unwrap();
    sqlx::query("SELECT pg_current_xact_id()")
        .execute(&mut *long)
        .await
        .unwrap();
    let mut tx = db.pool.begin().await.unwrap();
    publish_in_tx(
        &mut tx,
        Message::new("orders.created", json!({"held": true})),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();

    let status = eventually(
        Duration::from_secs(10),
        "status naming the open transaction",
        || async {
            let status = status_json(&config);
            (status["xmin_holder"]["pid"] == json!(long_pid)).then_some(status)
        },
    )
    .await;
    assert_eq!(status["groups"][0]["held_back"], json!(1));
    assert_eq!(
        status["xmin_holder"]["application_name"],
        json!("long-running-report")
    );
    let log = eventually(
        Duration::from_secs(10),
        "the relay log naming the open transaction",
        || async {
            let log = relay.log();
            (log.contains("held back by an open transaction")
                && log.contains(&format!("pid={long_pid}")))
            .then_some(log)
        },
    )
    .await;
    // No Rust debug text in the log line: the pid as a number, no `prepared_gid=None`.
    let line = log
        .lines()
        .find(|line| line.contains("held back by an open transaction"))
        .unwrap_or_default();
    assert!(
        !line.contains("Some(") && !line.contains("None") && !line.contains("prepared_gid"),
        "{line}"
    );
    assert_eq!(
        redis.stream_len("all").await,
        0,
        "a message past the xmin was forwarded"
    );

    long.commit().await.unwrap();
    eventually(Duration::from_secs(10), "delivery resuming", || async {
        (redis.stream_len("all").await == 1).then_some(())
    })
    .await;
    assert_eq!(relay.terminate(Duration::from_secs(5)).await, Some(0));
}

#[tokio::test]
async fn a_cursor_ahead_of_the_server_is_reported_with_the_fix() {
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    let dir = TempDir::new(&db.name);
    let config = dir.forward_all_config(&db, &redis, "stall_report_interval_ms = 300");
    // As after restoring a dump into a new cluster: the cursor names a far-future transaction.
    sqlx::query(
        "INSERT INTO outbox.consumer_groups (name, cursor_tx_id, cursor_seq)
         VALUES ('g', (pg_snapshot_xmax(pg_current_snapshot())::text::numeric + 1000000)::text::xid8, 1)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let mut tx = db.pool.begin().await.unwrap();
    publish_in_tx(&mut tx, Message::new("orders.created", json!({})))
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let relay = RelayProcess::start(&config, "relay");
    eventually(
        Duration::from_secs(10),
        "the relay reporting the cursor and the fix",
        || async {
            let log = relay.log();
            (log.contains("cursor is ahead of every transaction id")
                && log.contains("UPDATE outbox.consumer_groups"))
            .then_some(())
        },
    )
    .await;
    let status = status_json(&config);
    assert_eq!(status["groups"][0]["cursor_ahead"], json!(true));
    let table = run(outbox_relay().args(["--config", config.to_str().unwrap(), "status"]));
    assert!(table.stdout.contains("CURSOR AHEAD"), "{}", table.stdout);
    assert_eq!(relay.terminate(Duration::from_secs(5)).await, Some(0));
}

#[test]
fn bad_relay_config_exits_2_and_names_the_key() {
    let dir = TempDir::new("bad-relay-config");
    let base = "database_url = \"postgres://postgres@127.0.0.1/postgres\"\nredis_url = \"redis://127.0.0.1:6379\"\n";
    let group = "[[groups]]\nname = \"g\"\n[[groups.routes]]\ntopics = [\"*\"]\nhandler = \"forward\"\nstream = \"s\"\n";
    let cases = [
        (
            format!("{base}[relay]\nbatch_sise = 5\n{group}"),
            "batch_sise",
        ),
        (
            format!(
                "{base}[[groups]]\nname = \"g\"\n[[groups.routes]]\ntopics = [\"orders.[\"]\nhandler = \"forward\"\nstream = \"s\"\n"
            ),
            "groups[0].routes[0].topics[0]",
        ),
        (
            format!("{base}[[groups]]\nname = \"g\"\n"),
            "groups[0].routes",
        ),
        (
            format!("database_url = \"postgres://postgres@127.0.0.1/postgres\"\n{group}"),
            "redis_url",
        ),
        (base.to_owned(), "groups"),
        (
            format!("{base}[relay]\nwakeup = \"push\"\n{group}"),
            "relay.wakeup",
        ),
        (
            format!(
                "{base}[[groups]]\nname = \"g\"\n[[groups.routes]]\ntopics = [\"*\"]\nhandler = \"forward\"\nstream = \"s.{{tpic}}\"\n"
            ),
            "groups[0].routes[0].stream",
        ),
    ];
    for (i, (toml, key)) in cases.iter().enumerate() {
        let file = dir.write(&format!("bad{i}.toml"), toml);
        let out = run(outbox_relay().args(["--config", file.to_str().unwrap(), "run"]));
        assert_eq!(out.code, Some(2), "{key}: {}", out.stderr);
        assert!(
            out.stderr.contains(key),
            "expected `{key}` in: {}",
            out.stderr
        );
    }
}

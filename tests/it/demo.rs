//! `outbox-relay demo` against a test database and key prefix: it checks its own work (every
//! committed message once, nothing rolled back, in order), prints where things landed, and
//! cleans up unless told to keep.

use std::collections::HashMap;

use crate::harness::TestDb;
use crate::harness::cli::{Run, outbox_relay, run};
use crate::harness::redis::TestRedis;

fn demo(db: &TestDb, redis: &TestRedis, extra: &[&str]) -> Run {
    let out = run(outbox_relay()
        .env("OUTBOX_REDIS__KEY_PREFIX", &redis.prefix)
        .args(["--database-url", &db.url, "--redis-url", &redis.url, "demo"])
        .args([
            "--messages",
            "600",
            "--writers",
            "4",
            "--rollback-percent",
            "20",
        ])
        .args(extra));
    assert_eq!(
        out.code,
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        out.stdout,
        out.stderr
    );
    out
}

/// `  <key>   <n> entries` lines of the output.
fn landed(stdout: &str) -> HashMap<String, usize> {
    stdout
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let (key, count, unit) = (words.next()?, words.next()?, words.next()?);
            (unit == "entries").then(|| (key.to_owned(), count.parse().unwrap()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_forwards_checks_and_reports_what_landed_where() {
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    let out = demo(&db, &redis, &["--keep"]);
    assert!(
        out.stdout
            .contains("migrate: 0 of 12 migrations applied now"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("checked: all "), "{}", out.stdout);

    // What it printed is what Redis holds.
    let landed = landed(&out.stdout);
    assert_eq!(landed.len(), 2, "{}", out.stdout);
    let mut connection = redis.connection().await;
    for (key, count) in &landed {
        assert!(
            key.starts_with(&format!("{}outbox-demo:", redis.prefix)),
            "{key}"
        );
        let len: usize = redis::AsyncCommands::xlen(&mut connection, key)
            .await
            .unwrap();
        assert_eq!(len, *count, "{key}");
    }
    // Every routed message that committed is in Redis: the outbox says how many that is.
    let routed_committed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM outbox.messages m WHERE m.topic LIKE 'demo.orders.%' OR m.topic LIKE 'demo.users.%'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(landed.values().sum::<usize>() as i64, routed_committed);
    let groups: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox.consumer_groups")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(groups, 1, "--keep keeps the group");

    // A second run sees only its own messages, and cleans up after itself: its keys, its
    // group and exactly the rows it published — not the first run's, not the application's
    // (even on a demo topic).
    let keys_before = redis.keys().await;
    let demo_rows = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM outbox.messages m WHERE m.topic LIKE 'demo.%'",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap()
    };
    let rows_before = demo_rows().await;
    assert!(rows_before > 0, "--keep keeps the first run's messages");
    let mut tx = db.pool.begin().await.unwrap();
    let theirs = outbox_relay::publish_in_tx(
        &mut tx,
        outbox_relay::Message::new("demo.orders.placed", serde_json::json!({"app": true})),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let out = demo(&db, &redis, &[]);
    assert!(out.stdout.contains("checked: all "), "{}", out.stdout);
    assert!(out.stdout.contains("migrate: 0 of 12"), "{}", out.stdout);
    assert!(out.stdout.contains("cleaned up: "), "{}", out.stdout);
    assert_eq!(
        redis.keys().await,
        keys_before,
        "the second run's keys are gone"
    );
    let groups: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox.consumer_groups")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(groups, 1, "the second run's group is gone");
    assert_eq!(
        demo_rows().await,
        rows_before + 1,
        "the second run's messages are gone, the others stay"
    );
    let still_there: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM outbox.messages m WHERE m.id = $1)")
            .bind(theirs)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(
        still_there,
        "a message the demo did not publish is never deleted"
    );
    let published: u64 = out
        .stdout
        .lines()
        .find_map(|line| line.strip_prefix("published: "))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap();
    assert!(
        out.stdout
            .contains(&format!("and the {published} messages it published")),
        "{}",
        out.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demo_leaves_earlier_messages_alone_while_an_older_transaction_runs() {
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    // A transaction elsewhere on the server (another database) with an id older than an
    // application's message on a demo topic: "from now" (below the oldest transaction running
    // on the server) is then before that message when the demo starts.
    let elsewhere = TestDb::new().await;
    let mut older = elsewhere.pool.begin().await.unwrap();
    sqlx::query("SELECT pg_current_xact_id()")
        .execute(&mut *older)
        .await
        .unwrap();
    let mut tx = db.pool.begin().await.unwrap();
    outbox_relay::publish_in_tx(
        &mut tx,
        outbox_relay::Message::new("demo.orders.placed", serde_json::json!({"app": true})),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    // It ends once the demo has started (until then it holds the demo's own messages back).
    let ends = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        older.rollback().await.unwrap();
    });
    let out = demo(&db, &redis, &[]);
    assert!(out.stdout.contains("checked: all "), "{}", out.stdout);
    ends.await.unwrap();
}

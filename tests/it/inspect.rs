//! The operator views (`outbox.group_status`, `outbox.stuck`, `outbox.dead_letters`), the repair
//! functions behind the CLI, and `outbox-relay stuck` / `groups list`, against real Postgres.

use std::time::Duration;

use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use crate::harness::cli::{outbox_relay, run};
use crate::harness::relay::{insert_delivery, keyed_message, publish_messages, publish_numbered};
use crate::harness::{TestDb, eventually};

/// Creates group `name` with its cursor at (0, 0).
async fn create_group(pool: &PgPool, name: &str) {
    outbox_relay::store::consumer_groups_ensure(pool, name, false)
        .await
        .unwrap();
}

/// Moves `group`'s cursor to the position of message `id` (as if the relay had passed it).
async fn pass_through(pool: &PgPool, group: &str, id: Uuid) {
    sqlx::query(
        "UPDATE outbox.consumer_groups g SET cursor_tx_id = m.tx_id, cursor_seq = m.seq
           FROM outbox.messages m WHERE g.name = $1 AND m.id = $2",
    )
    .bind(group)
    .bind(id)
    .execute(pool)
    .await
    .unwrap();
}

/// Group `g` (cursor at the start) and three messages on topic `orders`, key `a`, each in a
/// transaction of its own; returns their ids.
async fn group_with_three_messages_of_one_key(db: &TestDb) -> Vec<Uuid> {
    create_group(&db.pool, "g").await;
    let messages = (0..3)
        .map(|n| keyed_message("orders", &json!({"n": n, "key": "a"})))
        .collect();
    publish_messages(&db.pool, messages, false).await
}

fn cli(db: &TestDb, args: &[&str]) -> crate::harness::cli::Run {
    run(outbox_relay().args(["--database-url", &db.url]).args(args))
}

/// Every relation the plan reads with a sequential scan.
fn seq_scans(plan: &Value, found: &mut Vec<String>) {
    if plan["Node Type"] == "Seq Scan" {
        found.push(plan["Relation Name"].as_str().unwrap_or("?").to_owned());
    }
    for child in plan["Plans"].as_array().into_iter().flatten() {
        seq_scans(child, found);
    }
}

#[tokio::test]
async fn operator_views_never_scan_the_outbox() {
    let db = TestDb::new().await;
    // 50,000 messages in 50 transactions, two groups: one caught up, one half way.
    for batch in 0..50 {
        sqlx::query(
            "INSERT INTO outbox.messages (id, topic, key, payload)
             SELECT gen_random_uuid(), 'orders', 'k' || (i % 100), jsonb_build_object('n', i)
               FROM generate_series($1::int, $1::int + 999) AS i",
        )
        .bind(batch * 1000)
        .execute(&db.pool)
        .await
        .unwrap();
    }
    sqlx::query("VACUUM ANALYZE outbox.messages")
        .execute(&db.pool)
        .await
        .unwrap();
    create_group(&db.pool, "caught-up").await;
    create_group(&db.pool, "half-way").await;
    let ids: Vec<Uuid> =
        sqlx::query_scalar("SELECT m.id FROM outbox.messages m ORDER BY m.tx_id, m.seq")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    pass_through(&db.pool, "caught-up", ids[49_999]).await;
    pass_through(&db.pool, "half-way", ids[24_999]).await;
    insert_delivery(&db.pool, "half-way", ids[100], "dead", 10).await;
    insert_delivery(&db.pool, "half-way", ids[200], "retrying", 2).await;
    insert_delivery(&db.pool, "half-way", ids[300], "blocked", 0).await;
    sqlx::query("ANALYZE").execute(&db.pool).await.unwrap();

    for query in [
        "SELECT * FROM outbox.group_status",
        "SELECT * FROM outbox.stuck WHERE group_name = 'half-way'",
        "SELECT * FROM outbox.dead_letters",
    ] {
        let plan: Value = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "EXPLAIN (FORMAT JSON) {query}"
        )))
        .fetch_one(&db.pool)
        .await
        .unwrap();
        let mut scanned = Vec::new();
        seq_scans(&plan[0]["Plan"], &mut scanned);
        assert!(
            !scanned.iter().any(|r| r == "messages"),
            "{query} scans outbox.messages: {plan:#}"
        );
    }

    // The lag: exact for the caught-up group, an estimate (from positions) past 10,000.
    let rows: Vec<(String, i64, bool, i64, i64, i64)> = sqlx::query_as(
        "SELECT s.group_name, s.lag_messages, s.lag_estimated, s.retrying, s.blocked, s.dead
           FROM outbox.group_status s ORDER BY s.group_name",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        rows,
        [
            ("caught-up".to_owned(), 0, false, 0, 0, 0),
            ("half-way".to_owned(), 25_000, true, 1, 1, 1),
        ]
    );
}

#[tokio::test]
async fn group_status_names_the_open_transaction_a_group_waits_on() {
    let db = TestDb::new().await;
    create_group(&db.pool, "g").await;
    // An open transaction publishes first (older tx id), a later one commits.
    let mut open = db.pool.begin().await.unwrap();
    outbox_relay::publish_in_tx(&mut open, outbox_relay::Message::new("t", json!({"n": 0})))
        .await
        .unwrap();
    let open_pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *open)
        .await
        .unwrap();
    publish_numbered(&db.pool, 1, 2).await;
    let (lag, held_back, waiting, pid, age): (i64, i64, bool, Option<i32>, Option<f64>) =
        sqlx::query_as(
            "SELECT s.lag_messages, s.held_back, s.waiting_on_transaction, s.waiting_on_pid,
                    extract(epoch FROM s.waiting_on_age)::float8
               FROM outbox.group_status s WHERE s.group_name = 'g'",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        (lag, held_back),
        (2, 2),
        "committed messages past the cursor"
    );
    assert!(waiting);
    // Another test's open transaction may be older still (xmin is cluster-wide); then that
    // one is named. Either way a pid and an age are shown.
    assert!(pid.is_some() && age.is_some(), "{pid:?} {age:?}");
    let status = cli(&db, &["status", "--json"]);
    assert_eq!(status.code, Some(0), "{}", status.stderr);
    let status: Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(status["groups"][0]["held_back"], 2);
    assert!(status["xmin_holder"]["pid"].is_i64(), "{status:#}");
    if pid == Some(open_pid) {
        assert_eq!(status["xmin_holder"]["pid"], open_pid);
    }
    open.rollback().await.unwrap();
}

#[tokio::test]
async fn repair_functions_do_what_the_cli_does() {
    let db = TestDb::new().await;
    let ids = group_with_three_messages_of_one_key(&db).await;
    insert_delivery(&db.pool, "g", ids[0], "dead", 10).await;
    insert_delivery(&db.pool, "g", ids[1], "dead", 10).await;
    insert_delivery(&db.pool, "g", ids[2], "blocked", 0).await;

    // No filter: refused, with a hint.
    let refused = sqlx::query("SELECT * FROM outbox.discard_dead()")
        .execute(&db.pool)
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("no filter given"), "{refused}");

    // retry_message: a dead one becomes due now; a blocked one is reported, not changed.
    let retried: Vec<(String, String, bool)> =
        sqlx::query_as("SELECT * FROM outbox.retry_message($1)")
            .bind(ids[0])
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(retried, [("g".to_owned(), "dead".to_owned(), true)]);
    let blocked: Vec<(String, String, bool)> =
        sqlx::query_as("SELECT * FROM outbox.retry_message($1, 'g')")
            .bind(ids[2])
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(blocked, [("g".to_owned(), "blocked".to_owned(), false)]);

    // retry_dead by group, then discard_dead by message: the views follow.
    let again: Vec<Uuid> =
        sqlx::query_scalar("SELECT r.message_id FROM outbox.retry_dead(group_name => 'g') r")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(again, [ids[1]]);
    sqlx::query("UPDATE outbox.deliveries SET status = 'dead' WHERE message_id = $1")
        .bind(ids[1])
        .execute(&db.pool)
        .await
        .unwrap();
    let dead: Vec<Uuid> = sqlx::query_scalar("SELECT d.message_id FROM outbox.dead_letters d")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(dead, [ids[1]]);
    let discarded: Vec<Uuid> =
        sqlx::query_scalar("SELECT r.message_id FROM outbox.discard_dead(message_id => $1) r")
            .bind(ids[1])
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(discarded, [ids[1]]);
    let stuck: Vec<(Uuid, String, Option<Uuid>)> = sqlx::query_as(
        "SELECT s.message_id, s.status, s.blocked_by FROM outbox.stuck s ORDER BY s.position",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        stuck,
        [
            (ids[0], "retrying".to_owned(), None),
            (ids[2], "blocked".to_owned(), Some(ids[0])),
        ]
    );
}

#[tokio::test]
async fn stuck_and_groups_list_show_the_rows_in_text_and_json() {
    let db = TestDb::new().await;
    let ids = group_with_three_messages_of_one_key(&db).await;
    pass_through(&db.pool, "g", ids[2]).await;
    insert_delivery(&db.pool, "g", ids[0], "retrying", 3).await;
    insert_delivery(&db.pool, "g", ids[1], "blocked", 0).await;

    let text = cli(&db, &["stuck", "--group", "g"]);
    assert_eq!(text.code, Some(0), "{}", text.stderr);
    assert!(text.stdout.contains("HTTP 503"), "{}", text.stdout);
    assert!(
        text.stdout.contains(&format!("waits for {}", ids[0])),
        "{}",
        text.stdout
    );
    assert!(
        text.stdout
            .contains("2 stuck: 1 retrying, 1 blocked, 0 dead"),
        "{}",
        text.stdout
    );
    let json = cli(
        &db,
        &["stuck", "--json", "--topic", "orders", "--limit", "1"],
    );
    let rows: Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 1);
    assert_eq!(rows[0]["message_id"], ids[0].to_string());
    assert_eq!(rows[0]["payload"]["n"], 0);
    assert_eq!(rows[0]["attempts"], 3);
    let none = cli(&db, &["stuck", "--topic", "other"]);
    assert_eq!(none.code, Some(0));
    assert!(none.stdout.contains("nothing stuck"), "{}", none.stdout);

    let list = cli(&db, &["groups", "list", "--json"]);
    assert_eq!(list.code, Some(0), "{}", list.stderr);
    let groups: Value = serde_json::from_str(&list.stdout).unwrap();
    assert_eq!(groups[0]["name"], "g");
    assert_eq!(groups[0]["retrying"], 1);
    assert_eq!(groups[0]["blocked"], 1);
    assert_eq!(groups[0]["lag_messages"], 0);
    let table = cli(&db, &["groups", "list"]);
    let header = table.stdout.lines().next().unwrap_or_default();
    assert!(
        header.split_whitespace().collect::<Vec<_>>()[..3] == ["GROUP", "STATE", "CURSOR"],
        "{}",
        table.stdout
    );
    assert!(table.stdout.contains("no relay"), "{}", table.stdout);
    // The cursor passed both messages, but they are not delivered: LAG counts them.
    let status = cli(&db, &["status"]);
    assert_eq!(status.code, Some(0), "{}", status.stderr);
    let row: Vec<&str> = status
        .stdout
        .lines()
        .find(|line| line.split_whitespace().next() == Some("g"))
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        row.get(2),
        Some(&"2"),
        "LAG of 1 retrying + 1 blocked:\n{}",
        status.stdout
    );
    // The view sees the retrying message as undelivered: lag in seconds grows from there.
    eventually(Duration::from_secs(5), "lag seconds above 0", || async {
        let lag: f64 = sqlx::query_scalar(
            "SELECT s.lag_seconds FROM outbox.group_status s WHERE s.group_name = 'g'",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        (lag > 0.0).then_some(())
    })
    .await;
}

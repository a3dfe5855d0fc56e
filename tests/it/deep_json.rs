//! Payloads nested deeper than serde_json's own limit (128): whatever Postgres accepted is
//! decoded, validated, forwarded and shown by every inspection command, and what the CLI still
//! refuses it refuses with the true reason.
//!
//! Postgres 15 at its default `max_stack_depth` (2 MB) takes jsonb nested about 13,090 objects
//! or 14,540 arrays deep; these tests use 200 (past serde_json) and 5,000 (past what a 2 MiB
//! thread survives when a value is dropped or printed recursively in a debug build).

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use outbox_relay::handler::{DecodedMessage, Handler, HandlerError, Output};
use outbox_relay::json;
use outbox_relay::registry::{Registry, SchemaFormat, Unregistered};
use outbox_relay::relay::Relay;
use outbox_relay::{Message, PublishError, publish_batch_in_tx, publish_in_tx};
use serde_json::value::RawValue;
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use crate::harness::cli::{Run, outbox_relay, run};
use crate::harness::redis::TestRedis;
use crate::harness::relay::{InProcessRelay, insert_delivery, relay_toml};
use crate::harness::{TestDb, eventually};

/// `{"a":{"a":…1…}}`, `depth` objects deep.
fn nested_objects(depth: usize) -> String {
    format!("{}1{}", r#"{"a":"#.repeat(depth), "}".repeat(depth))
}

/// The same JSON text in serde_json's compact form, whatever the spacing (Postgres prints
/// `{"a": 1}`).
fn compact(text: &str) -> String {
    let value: Value = json::from_str(text).expect("JSON");
    let compact = json::to_string(&value);
    json::drop_value(value);
    compact
}

/// Publishes `payload` on `topic` through `outbox.publish` (stamped with the topic's latest
/// schema version, not validated), as a publisher in another language would.
async fn publish_sql(pool: &PgPool, topic: &str, payload: &str) -> Uuid {
    sqlx::query_scalar("SELECT outbox.publish($1, $2::jsonb)")
        .bind(topic)
        .bind(payload)
        .fetch_one(pool)
        .await
        .unwrap_or_else(|e| panic!("outbox.publish of {} bytes: {e}", payload.len()))
}

async fn register(registry: &Registry, topic: &str, definition: Value) {
    registry
        .register(topic, definition, SchemaFormat::JsonSchema, None)
        .await
        .unwrap();
}

/// Answers with the depth of the payload it got, so the deep value is decoded and dropped by
/// the relay, never cloned.
struct Measure;

#[async_trait::async_trait]
impl Handler for Measure {
    async fn handle(&self, message: &DecodedMessage) -> Result<Vec<Output>, HandlerError> {
        let depth = json::depth(&message.payload);
        Ok(vec![Output::new("measured", json!({ "depth": depth }))])
    }
}

#[tokio::test]
async fn relay_forwards_deep_payloads_that_match_their_schema_once_and_unchanged() {
    let (db, redis) = (TestDb::new().await, TestRedis::new());
    let registry = Registry::new(db.pool.clone(), Unregistered::Allow);
    register(&registry, "deep", json!({"type": "object"})).await;
    // Recursive: the validator descends as deep as the payload.
    register(
        &registry,
        "tree",
        json!({"type": ["object", "integer"], "additionalProperties": {"$ref": "#"}}),
    )
    .await;
    let mut sent = Vec::new();
    for (topic, depth) in [
        ("deep", 200),
        ("deep", 5_000),
        ("tree", 200),
        ("tree", 5_000),
    ] {
        let payload = nested_objects(depth);
        let id = publish_sql(&db.pool, topic, &payload).await;
        sent.push((id, payload));
    }
    let groups = "[[groups]]\nname = \"fwd\"\n[[groups.routes]]\ntopics = [\"*\"]\n\
                  handler = \"forward\"\nstream = \"out\"\n\
                  [[groups]]\nname = \"measure\"\n[[groups.routes]]\ntopics = [\"unused\"]\n\
                  handler = \"drop\"\n";
    let toml = relay_toml(&db, &redis, "idle_poll_ms = 5", groups);
    let relay = InProcessRelay::start_with(&toml, |relay: Relay| {
        relay.handler("measure", &["*"], Measure).unwrap()
    })
    .await;

    eventually(
        Duration::from_secs(20),
        "both groups past the four messages",
        || async {
            let behind: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM outbox.group_status s WHERE s.lag_messages > 0",
            )
            .fetch_one(&db.pool)
            .await
            .unwrap();
            (behind == 0 && redis.entries("measured").await.len() == 4).then_some(())
        },
    )
    .await;
    relay.stop().await;

    let stuck: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT d.status, d.last_error FROM outbox.deliveries d")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(stuck, [], "nothing dead-lettered or retrying");
    let entries = redis.entries("out").await;
    assert_eq!(entries.len(), 4, "each message exactly once");
    for (entry, (id, payload)) in entries.iter().zip(&sent) {
        assert_eq!(entry.fields["id"], id.to_string());
        let stored: String =
            sqlx::query_scalar("SELECT m.payload::text FROM outbox.messages m WHERE m.id = $1")
                .bind(id)
                .fetch_one(&db.pool)
                .await
                .unwrap();
        assert_eq!(
            entry.fields["payload"], stored,
            "the stored text, untouched"
        );
        assert_eq!(compact(&entry.fields["payload"]), *payload);
    }
    let depths: Vec<Value> = redis.payloads("measured").await;
    assert_eq!(
        depths,
        [200, 5_000, 200, 5_000].map(|depth| json!({ "depth": depth }))
    );
}

fn cli(db: &TestDb, args: &[&str]) -> Run {
    let out = run(outbox_relay().args(["--database-url", &db.url]).args(args));
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    out
}

/// Runs `outbox-relay publish` with the payload on standard input (a deep payload is longer
/// than one command-line argument may be).
fn publish_stdin(db: &TestDb, topic: &str, payload: &str) -> Run {
    let mut child = outbox_relay()
        .args(["--database-url", &db.url, "publish", "--topic", topic, "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn outbox-relay publish");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(payload.as_bytes()).unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[tokio::test]
async fn stuck_and_dead_list_render_deep_payloads() {
    let db = TestDb::new().await;
    outbox_relay::store::consumer_groups_ensure(&db.pool, "g", false)
        .await
        .unwrap();
    let shallow = publish_sql(&db.pool, "orders", r#"{"n": 1}"#).await;
    let deep = publish_sql(&db.pool, "orders", &nested_objects(200)).await;
    let deeper = publish_sql(&db.pool, "orders", &nested_objects(5_000)).await;
    insert_delivery(&db.pool, "g", shallow, "retrying", 2).await;
    insert_delivery(&db.pool, "g", deep, "dead", 1).await;
    insert_delivery(&db.pool, "g", deeper, "dead", 1).await;

    let table = cli(&db, &["stuck"]);
    assert_eq!(table.code, Some(0), "{}", table.stderr);
    assert!(
        table
            .stdout
            .contains("3 stuck: 1 retrying, 0 blocked, 2 dead"),
        "{}",
        table.stdout
    );
    let out = cli(&db, &["stuck", "--json"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let rows: Value = json::from_str(&out.stdout).expect("stuck --json is JSON");
    let payloads: Vec<String> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|row| json::to_string(&row["payload"]))
        .collect();
    json::drop_value(rows);
    assert_eq!(
        payloads,
        [
            r#"{"n":1}"#.to_owned(),
            nested_objects(200),
            nested_objects(5_000)
        ]
    );

    for args in [&["dead", "list"][..], &["dead", "list", "--json"]] {
        let out = cli(&db, args);
        assert_eq!(out.code, Some(0), "{args:?}: {}", out.stderr);
        for id in [deep, deeper] {
            assert!(
                out.stdout.contains(&id.to_string()),
                "{args:?}: {}",
                out.stdout
            );
        }
    }
}

#[tokio::test]
async fn publish_accepts_what_postgres_accepts_and_refuses_the_rest_with_the_true_reason() {
    let db = TestDb::new().await;
    let registry = Registry::new(db.pool.clone(), Unregistered::Allow);
    register(&registry, "deep", json!({"type": "object"})).await;
    for depth in [200, 5_000] {
        let payload = nested_objects(depth);
        let out = publish_stdin(&db, "deep", &payload);
        assert_eq!(out.code, Some(0), "depth {depth}: {}", out.stderr);
        let id: Uuid = out.stdout.trim().parse().expect("the new message's id");
        let (stored, version): (String, Option<i32>) = sqlx::query_as(
            "SELECT m.payload::text, m.schema_version FROM outbox.messages m WHERE m.id = $1",
        )
        .bind(id)
        .fetch_one(&db.pool)
        .await
        .unwrap();
        assert_eq!(
            (compact(&stored), version),
            (payload, Some(1)),
            "depth {depth}"
        );
        // `schema check` takes what `publish` takes.
        let check = cli(
            &db,
            &["schema", "check", "--topic", "deep", &nested_objects(depth)],
        );
        assert_eq!(check.code, Some(0), "depth {depth}: {}", check.stderr);
    }

    // Deeper than Postgres takes jsonb (about 14,500 arrays at the default max_stack_depth).
    let too_deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let out = publish_stdin(&db, "anything", &too_deep);
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("a payload nests deeper than this Postgres server accepts in jsonb"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("not valid JSON"), "{}", out.stderr);
    // Not JSON at all, deep or not: the parser's own reason, not a recursion limit.
    let unclosed = format!("{}1{}", r#"{"a":"#.repeat(300), "}".repeat(299));
    let broken = nested_objects(300).replacen('1', "tru", 1);
    for (payload, reason) in [
        (unclosed, "EOF while parsing an object"),
        (broken, "expected ident"),
    ] {
        let out = publish_stdin(&db, "anything", &payload);
        assert_eq!(out.code, Some(1), "{}", out.stderr);
        assert!(
            out.stderr
                .starts_with(&format!("error: PAYLOAD_JSON is not valid JSON: {reason}")),
            "{}",
            out.stderr
        );
    }
    // The schema still decides: a deep array is not an object.
    let array = format!("{}{}", "[".repeat(300), "]".repeat(300));
    let out = publish_stdin(&db, "deep", &array);
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("does not match schema `deep` version 1"),
        "{}",
        out.stderr
    );
    assert_eq!(db.message_count().await, 2, "nothing else was written");
}

#[tokio::test]
async fn library_publishes_deep_text_and_types_what_postgres_finds_too_deep() {
    let db = TestDb::new().await;
    let registry = Registry::new(db.pool.clone(), Unregistered::Allow);
    register(&registry, "deep", json!({"type": "object"})).await;
    let raw = |text: String| RawValue::from_string(text).unwrap();

    let mut tx = db.pool.begin().await.unwrap();
    publish_in_tx(&mut tx, Message::new("deep", raw(nested_objects(5_000))))
        .await
        .expect("validated against its schema and stored");
    let published = outbox_relay::testing::published_in_tx(&mut tx)
        .await
        .expect("the testing helper reads deep payloads back");
    assert_eq!(published.len(), 1);
    assert_eq!(
        json::to_string(&published[0].payload),
        nested_objects(5_000)
    );
    assert_eq!(published[0].schema_version, Some(1));
    for message in published {
        json::drop_value(message.payload);
    }
    tx.commit().await.unwrap();

    let too_deep = || raw(format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)));
    let mut tx = db.pool.begin().await.unwrap();
    match publish_in_tx(&mut tx, Message::new("any", too_deep())).await {
        Err(PublishError::PayloadTooDeep { count: 1, .. }) => {}
        other => panic!("expected PayloadTooDeep, got {other:?}"),
    }
    drop(tx);
    let mut tx = db.pool.begin().await.unwrap();
    let batch = [
        Message::new("any", json!({})),
        Message::new("any", too_deep()),
    ];
    match publish_batch_in_tx(&mut tx, &batch).await {
        Err(error @ PublishError::PayloadTooDeep { count: 2, .. }) => {
            let text = error.to_string();
            assert!(
                text.contains("nests deeper than this Postgres server accepts"),
                "{text}"
            );
        }
        other => panic!("expected PayloadTooDeep, got {other:?}"),
    }
    drop(tx);
    assert_eq!(db.message_count().await, 1);
}

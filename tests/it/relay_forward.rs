//! The relay forwards committed messages to the streams their routes name, with the entry
//! fields of DESIGN §6, and advances the group's cursor.

use std::time::Duration;

use outbox_relay::{Message, publish_batch_in_tx, publish_in_tx};
use serde_json::json;

use crate::harness::redis::TestRedis;
use crate::harness::relay::{InProcessRelay, relay_toml};
use crate::harness::{TestDb, eventually};

const GROUPS: &str = r#"
[[groups]]
name = "notifications"
[[groups.routes]]
topics = ["orders.*", "users.signed_up"]
handler = "forward"
stream = "events.{topic}"
[[groups.routes]]
topics = ["noise.*"]
handler = "drop"
"#;

#[tokio::test]
async fn forwards_routed_messages_with_their_fields_and_advances_the_cursor() {
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    let relay = InProcessRelay::start(&relay_toml(&db, &redis, "idle_poll_ms = 2", GROUPS)).await;

    let mut tx = db.pool.begin().await.unwrap();
    let created = publish_in_tx(
        &mut tx,
        Message::new("orders.created", json!({"order_id": 1}))
            .key("order-1")
            .header(
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
    )
    .await
    .unwrap();
    let others = publish_batch_in_tx(
        &mut tx,
        &[
            Message::new("noise.tick", json!({})),
            Message::new("unrouted.topic", json!({})),
            Message::new("users.signed_up", json!({"user": 7})),
        ],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();

    eventually(
        Duration::from_secs(10),
        "both routed messages in Redis",
        || async {
            let created = redis.stream_len("events.orders.created").await;
            let signed_up = redis.stream_len("events.users.signed_up").await;
            (created == 1 && signed_up == 1).then_some(())
        },
    )
    .await;

    let entry = &redis.entries("events.orders.created").await[0].fields;
    let position: String = sqlx::query_scalar(
        "SELECT m.tx_id::text || ':' || m.seq FROM outbox.messages m WHERE m.id = $1",
    )
    .bind(created)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(entry["id"], created.to_string());
    assert_eq!(entry["topic"], "orders.created");
    assert_eq!(entry["key"], "order-1");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&entry["payload"]).unwrap(),
        json!({"order_id": 1})
    );
    assert_eq!(entry["position"], position);
    assert_eq!(entry["group"], "notifications");
    assert_eq!(
        entry["traceparent"],
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    );
    assert!(
        chrono::DateTime::parse_from_rfc3339(&entry["created_at"]).is_ok(),
        "{}",
        entry["created_at"]
    );
    let signed_up = &redis.entries("events.users.signed_up").await[0].fields;
    assert_eq!(signed_up["id"], others[2].to_string());
    assert!(!signed_up.contains_key("key"), "no key field without a key");

    // The cursor passes every message, routed or not.
    let last: String = sqlx::query_scalar(
        "SELECT m.tx_id::text || ':' || m.seq FROM outbox.messages m WHERE m.id = $1",
    )
    .bind(others[2])
    .fetch_one(&db.pool)
    .await
    .unwrap();
    eventually(Duration::from_secs(5), "cursor at the last message", || async {
        let cursor: String = sqlx::query_scalar(
            "SELECT g.cursor_tx_id::text || ':' || g.cursor_seq FROM outbox.consumer_groups g WHERE g.name = 'notifications'",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        (cursor == last).then_some(())
    })
    .await;
    relay.stop().await;

    // Graceful stop released the lease; only our streams and their watermarks exist.
    let owner: Option<String> = sqlx::query_scalar(
        "SELECT g.lease_owner FROM outbox.consumer_groups g WHERE g.name = 'notifications'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(owner, None);
    let keys = redis.keys().await;
    assert_eq!(keys.len(), 4, "{keys:?}");
    assert!(
        keys.iter()
            .any(|k| k.contains(":outbox-watermark:notifications")),
        "{keys:?}"
    );
}

#[tokio::test]
async fn a_replayed_batch_adds_nothing() {
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    let toml = relay_toml(
        &db,
        &redis,
        "idle_poll_ms = 2",
        &crate::harness::relay::forward_all("g", "all"),
    );
    let mut tx = db.pool.begin().await.unwrap();
    let messages: Vec<Message> = (0..20)
        .map(|i| Message::new("t", json!({"i": i})))
        .collect();
    publish_batch_in_tx(&mut tx, &messages).await.unwrap();
    tx.commit().await.unwrap();

    let relay = InProcessRelay::start(&toml).await;
    eventually(Duration::from_secs(10), "20 entries", || async {
        (redis.stream_len("all").await == 20).then_some(())
    })
    .await;
    relay.stop().await;

    // As after a crash between the append and the cursor update: the cursor goes back.
    sqlx::query(
        "UPDATE outbox.consumer_groups SET cursor_tx_id = '0', cursor_seq = 0 WHERE name = 'g'",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let relay = InProcessRelay::start(&toml).await;
    let mut tx = db.pool.begin().await.unwrap();
    publish_in_tx(&mut tx, Message::new("t", json!({"i": 20})))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    eventually(Duration::from_secs(10), "the new message", || async {
        (redis.stream_len("all").await == 21).then_some(())
    })
    .await;
    relay.stop().await;
    let entries = redis.entries("all").await;
    let order: Vec<i64> = entries
        .iter()
        .map(|e| {
            serde_json::from_str::<serde_json::Value>(&e.fields["payload"]).unwrap()["i"]
                .as_i64()
                .unwrap()
        })
        .collect();
    assert_eq!(order, (0..=20).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_group_with_trimmed_entry_fields_writes_only_those() {
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    let groups = r#"
[[groups]]
name = "lean"
entry_fields = ["position", "payload", "key"]
[[groups.routes]]
topics = ["*"]
handler = "forward"
stream = "out"
"#;
    let relay = InProcessRelay::start(&relay_toml(&db, &redis, "idle_poll_ms = 2", groups)).await;
    let mut tx = db.pool.begin().await.unwrap();
    publish_batch_in_tx(
        &mut tx,
        &[
            Message::new("orders.created", json!({"n": 1})).key("order-1"),
            Message::new("orders.created", json!({"n": 2})),
        ],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    eventually(Duration::from_secs(10), "both entries", || async {
        (redis.stream_len("out").await == 2).then_some(())
    })
    .await;
    let entries = redis.entries("out").await;
    let names = |i: usize| {
        let mut names: Vec<&str> = entries[i].fields.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    };
    assert_eq!(names(0), ["key", "payload", "position"]);
    assert_eq!(
        names(1),
        ["payload", "position"],
        "no key field without a key"
    );
    assert_eq!(redis.numbers("out").await, [1, 2]);
    relay.stop().await;
}

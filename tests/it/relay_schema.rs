//! The relay decodes every row through the schema version it names: rows that fail (an
//! invalid payload written by plain SQL, a version never registered) are dead-lettered at once
//! with the reason, and the group goes on.

use std::time::Duration;

use outbox_relay::registry::{Registry, SchemaFormat, Unregistered};
use outbox_relay::{Message, publish_in_tx};
use serde_json::json;

use crate::harness::redis::TestRedis;
use crate::harness::relay::{InProcessRelay, forward_all, relay_toml};
use crate::harness::{TestDb, eventually};

#[tokio::test]
async fn rows_that_fail_their_schema_are_dead_lettered_and_the_group_goes_on() {
    let (db, redis) = (TestDb::new().await, TestRedis::new());
    let registry = Registry::new(db.pool.clone(), Unregistered::Allow);
    registry
        .register(
            "orders.placed",
            json!({
                "type": "object",
                "properties": {"order_id": {"type": "integer"}},
                "required": ["order_id"]
            }),
            SchemaFormat::JsonSchema,
            None,
        )
        .await
        .unwrap();
    let relay = InProcessRelay::start(&relay_toml(
        &db,
        &redis,
        "idle_poll_ms = 5",
        &forward_all("g", "all"),
    ))
    .await;

    // From Rust: validated and stamped with version 1.
    let mut tx = db.pool.begin().await.unwrap();
    publish_in_tx(
        &mut tx,
        Message::new("orders.placed", json!({"order_id": 1})),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    // From SQL: outbox.publish stamps version 1 but cannot validate; a hand-written INSERT
    // names a version that does not exist.
    let bad_sql: uuid::Uuid =
        sqlx::query_scalar("SELECT outbox.publish('orders.placed', '{\"order_id\": \"two\"}')")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    let unknown: uuid::Uuid = sqlx::query_scalar(
        "INSERT INTO outbox.messages (id, topic, payload, schema_version) \
         VALUES (outbox.uuid_v7(), 'orders.placed', '{\"order_id\": 3}', 9) RETURNING id",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let mut tx = db.pool.begin().await.unwrap();
    publish_in_tx(
        &mut tx,
        Message::new("orders.placed", json!({"order_id": 4})),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();

    let entries = eventually(
        Duration::from_secs(10),
        "the two valid messages",
        || async {
            let entries = redis.entries("all").await;
            (entries.len() == 2).then_some(entries)
        },
    )
    .await;
    let ids: Vec<i64> = entries
        .iter()
        .map(|e| {
            serde_json::from_str::<serde_json::Value>(&e.fields["payload"]).unwrap()["order_id"]
                .as_i64()
                .unwrap()
        })
        .collect();
    assert_eq!(ids, [1, 4], "the group went on past the bad rows");
    assert_eq!(entries[0].fields["schema_version"], "1");

    let dead: Vec<(uuid::Uuid, String, i32, String)> =
        eventually(Duration::from_secs(10), "two dead letters", || async {
            let rows: Vec<(uuid::Uuid, String, i32, String)> = sqlx::query_as(
                "SELECT d.message_id, d.status, d.attempts, d.last_error FROM outbox.deliveries d \
                  ORDER BY d.message_tx_id, d.message_seq",
            )
            .fetch_all(&db.pool)
            .await
            .unwrap();
            (rows.len() == 2).then_some(rows)
        })
        .await;
    assert_eq!(
        (dead[0].0, dead[0].1.as_str(), dead[0].2),
        (bad_sql, "dead", 1)
    );
    assert!(
        dead[0]
            .3
            .contains("payload does not match schema `orders.placed` version 1")
            && dead[0].3.contains("/order_id"),
        "{}",
        dead[0].3
    );
    assert_eq!(dead[1].0, unknown);
    assert_eq!(
        dead[1].3,
        "schema version 9 of topic `orders.placed` is not registered"
    );
    relay.stop().await;
}

//! publish_in_tx, publish_batch_in_tx and the typed form against the real Postgres.

use std::borrow::Cow;

use outbox_relay::{
    InvalidMessage, Message, OutboxEvent, PublishError, PublishLimits, Publisher,
    publish_batch_in_tx, publish_event_in_tx, publish_in_tx,
};
use serde_json::{Value, json};
use sqlx::{Acquire, Row};
use uuid::Uuid;

use crate::harness::TestDb;

/// One row of outbox.messages, with the position as text.
#[derive(Debug, PartialEq)]
struct StoredMessage {
    tx_id: String,
    seq: i64,
    id: Uuid,
    topic: String,
    key: Option<String>,
    schema_version: Option<i32>,
    payload: Value,
    headers: Value,
}

async fn stored_messages(db: &TestDb) -> Vec<StoredMessage> {
    sqlx::query(
        "SELECT m.tx_id::text AS tx_id_text, m.seq, m.id, m.topic, m.key, m.schema_version, m.payload, m.headers
           FROM outbox.messages m ORDER BY m.tx_id, m.seq",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap()
    .into_iter()
    .map(|row| StoredMessage {
        tx_id: row.get("tx_id_text"),
        seq: row.get("seq"),
        id: row.get("id"),
        topic: row.get("topic"),
        key: row.get("key"),
        schema_version: row.get("schema_version"),
        payload: row.get("payload"),
        headers: row.get("headers"),
    })
    .collect()
}

#[tokio::test]
async fn rolled_back_transaction_leaves_no_message() {
    let db = TestDb::new().await;

    let mut tx = db.pool.begin().await.unwrap();
    publish_in_tx(&mut tx, Message::new("orders.created", json!({"id": 1})))
        .await
        .unwrap();
    publish_batch_in_tx(&mut tx, &[Message::new("orders.created", json!({"id": 2}))])
        .await
        .unwrap();
    sqlx::query("SELECT outbox.publish('orders.created', '{\"id\": 3}')")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.rollback().await.unwrap();

    // A transaction dropped without commit rolls back too.
    {
        let mut tx = db.pool.begin().await.unwrap();
        publish_in_tx(&mut tx, Message::new("orders.created", json!({"id": 4})))
            .await
            .unwrap();
    }

    assert_eq!(db.message_count().await, 0);
}

#[tokio::test]
async fn committed_transaction_leaves_exactly_the_rows_published() {
    let db = TestDb::new().await;

    let mut tx = db.pool.begin().await.unwrap();
    let first = publish_in_tx(
        &mut tx,
        Message::new("orders.created", json!({"order_id": 42, "lines": [1, 2]}))
            .key("order-42")
            .header("correlation_id", "c-7")
            .header(
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
    )
    .await
    .unwrap();
    let second = publish_in_tx(
        &mut tx,
        Message::new("orders.paid", json!([{"cents": 1999}])),
    )
    .await
    .unwrap();
    let tx_id: String = sqlx::query_scalar("SELECT pg_current_xact_id()::text")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let rows = stored_messages(&db).await;
    assert_eq!(rows.len(), 2);
    assert_eq!(
        rows[0],
        StoredMessage {
            tx_id: tx_id.clone(),
            seq: rows[0].seq,
            id: first,
            topic: "orders.created".into(),
            key: Some("order-42".into()),
            schema_version: None,
            payload: json!({"order_id": 42, "lines": [1, 2]}),
            headers: json!({
                "correlation_id": "c-7",
                "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
            }),
        }
    );
    assert_eq!(
        rows[1],
        StoredMessage {
            tx_id,
            seq: rows[0].seq + 1,
            id: second,
            topic: "orders.paid".into(),
            key: None,
            schema_version: None,
            payload: json!([{"cents": 1999}]),
            headers: json!({}),
        }
    );
    assert_eq!(first.get_version_num(), 7);
    assert!(first < second, "UUIDv7 ids grow within a process");
}

#[tokio::test]
async fn batch_writes_n_rows_in_one_statement_in_slice_order() {
    let db = TestDb::new().await;
    // A statement-level trigger counts INSERT statements on the outbox.
    sqlx::raw_sql(
        "CREATE TABLE insert_statements (n int);
         CREATE FUNCTION count_insert_statement() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN INSERT INTO insert_statements VALUES (1); RETURN NULL; END $$;
         CREATE TRIGGER count_inserts AFTER INSERT ON outbox.messages
           FOR EACH STATEMENT EXECUTE FUNCTION count_insert_statement();",
    )
    .execute(&db.pool)
    .await
    .unwrap();

    let messages: Vec<Message> = (0..250)
        .map(|i| {
            let message = Message::new(format!("topic.{}", i % 3), json!({"index": i}))
                .header("i", i.to_string());
            if i % 2 == 0 {
                message.key(format!("k{}", i % 5))
            } else {
                message
            }
        })
        .collect();
    let mut tx = db.pool.begin().await.unwrap();
    let ids = publish_batch_in_tx(&mut tx, &messages).await.unwrap();
    tx.commit().await.unwrap();

    let statements: i64 = sqlx::query_scalar("SELECT count(*) FROM insert_statements")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(statements, 1, "the batch is one INSERT statement");

    let rows = stored_messages(&db).await;
    assert_eq!(rows.len(), 250);
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row.id, ids[i]);
        assert_eq!(
            row.payload,
            json!({"index": i}),
            "position order is slice order"
        );
        assert_eq!(row.topic, format!("topic.{}", i % 3));
        assert_eq!(row.key, (i % 2 == 0).then(|| format!("k{}", i % 5)));
        assert_eq!(row.headers, json!({"i": i.to_string()}));
        assert_eq!(row.tx_id, rows[0].tx_id);
        assert_eq!(row.seq, rows[0].seq + i as i64);
    }

    // An empty batch is no statement at all.
    let mut tx = db.pool.begin().await.unwrap();
    assert!(publish_batch_in_tx(&mut tx, &[]).await.unwrap().is_empty());
    tx.commit().await.unwrap();
    let statements: i64 = sqlx::query_scalar("SELECT count(*) FROM insert_statements")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(statements, 1);
}

/// Recognises the refusal a bad message must get.
type ExpectedRefusal = fn(&InvalidMessage) -> bool;

/// Each bad message with the refusal it must get.
fn bad_messages() -> Vec<(Message, ExpectedRefusal)> {
    let ok = json!({"ok": true});
    vec![
        (Message::new("", &ok), |e| {
            matches!(e, InvalidMessage::EmptyTopic)
        }),
        (Message::new("orders created", &ok), |e| {
            matches!(e, InvalidMessage::TopicHasWhitespace { .. })
        }),
        (Message::new("orders.created\n", &ok), |e| {
            matches!(e, InvalidMessage::TopicHasWhitespace { .. })
        }),
        (Message::new("t".repeat(256), &ok), |e| {
            matches!(e, InvalidMessage::TopicTooLong { len: 256, .. })
        }),
        (Message::new("t", &ok).key(""), |e| {
            matches!(e, InvalidMessage::EmptyKey)
        }),
        (Message::new("t", json!(null)), |e| {
            matches!(e, InvalidMessage::PayloadNotDocument { found: "null" })
        }),
        (Message::new("t", json!(7)), |e| {
            matches!(e, InvalidMessage::PayloadNotDocument { found: "a number" })
        }),
        (Message::new("t", json!("text")), |e| {
            matches!(e, InvalidMessage::PayloadNotDocument { found: "a string" })
        }),
        (Message::new("t", json!({"nul": "a\u{0}b"})), |e| {
            matches!(e, InvalidMessage::PayloadHasNul)
        }),
        (
            Message::new("t", json!({"big": "x".repeat(1 << 20)})),
            |e| {
                matches!(
                    e,
                    InvalidMessage::PayloadTooLarge {
                        limit: 1_048_576,
                        ..
                    }
                )
            },
        ),
        (Message::new("t", &ok).headers_json(&json!({"n": 1})), |e| {
            matches!(
                e,
                InvalidMessage::HeaderNotString {
                    found: "a number",
                    ..
                }
            )
        }),
        (
            Message::new("t", &ok).headers_json(&json!({"n": {"nested": "x"}})),
            |e| {
                matches!(
                    e,
                    InvalidMessage::HeaderNotString {
                        found: "an object",
                        ..
                    }
                )
            },
        ),
        (Message::new("t", &ok).headers_json(&json!("a=b")), |e| {
            matches!(e, InvalidMessage::HeadersNotObject { found: "a string" })
        }),
    ]
}

#[tokio::test]
async fn every_bad_input_is_refused_with_a_typed_error_and_nothing_written() {
    let db = TestDb::new().await;
    let mut tx = db.pool.begin().await.unwrap();
    for (message, expected) in bad_messages() {
        let debug = format!("{message:?}");
        match publish_in_tx(&mut tx, message).await {
            Err(PublishError::Invalid(reason)) => {
                assert!(expected(&reason), "{debug}: wrong reason {reason:?}")
            }
            other => panic!("{debug}: expected a refusal, got {other:?}"),
        }
    }
    // Refusals happen before any I/O: the caller's transaction is still usable.
    publish_in_tx(&mut tx, Message::new("still.usable", json!({})))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let topics: Vec<String> = sqlx::query_scalar("SELECT topic FROM outbox.messages")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(topics, ["still.usable"]);
}

#[tokio::test]
async fn a_batch_with_one_bad_message_writes_none_of_it() {
    let db = TestDb::new().await;
    for (bad, expected) in bad_messages() {
        let mut batch: Vec<Message> = (0..5).map(|i| Message::new("t", json!({"i": i}))).collect();
        batch.insert(3, bad);
        let mut tx = db.pool.begin().await.unwrap();
        match publish_batch_in_tx(&mut tx, &batch).await {
            Err(PublishError::InvalidInBatch { index: 3, reason }) => {
                assert!(expected(&reason), "{reason:?}")
            }
            other => panic!("expected InvalidInBatch at 3, got {other:?}"),
        }
        tx.commit().await.unwrap();
    }
    assert_eq!(db.message_count().await, 0);
}

#[tokio::test]
async fn payload_limit_is_configurable() {
    let db = TestDb::new().await;
    let small = Publisher::new(PublishLimits {
        max_payload_bytes: 100,
    });
    let payload = json!({"note": "x".repeat(200)});
    let mut tx = db.pool.begin().await.unwrap();
    match small
        .publish_in_tx(&mut tx, Message::new("t", &payload))
        .await
    {
        Err(PublishError::Invalid(InvalidMessage::PayloadTooLarge {
            size: 211,
            limit: 100,
        })) => {}
        other => panic!("expected PayloadTooLarge, got {other:?}"),
    }
    // The default (1 MiB) takes it, and exactly 1 MiB of JSON too.
    publish_in_tx(&mut tx, Message::new("t", &payload))
        .await
        .unwrap();
    let exactly_one_mib = json!({"p": "x".repeat((1 << 20) - 8)});
    assert_eq!(exactly_one_mib.to_string().len(), 1 << 20);
    publish_in_tx(&mut tx, Message::new("t", &exactly_one_mib))
        .await
        .unwrap();
    let larger = Publisher::new(PublishLimits {
        max_payload_bytes: 4 << 20,
    });
    larger
        .publish_in_tx(
            &mut tx,
            Message::new("t", json!({"p": "x".repeat(2 << 20)})),
        )
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(db.message_count().await, 3);
}

#[tokio::test]
async fn refuses_a_connection_that_is_not_in_a_transaction() {
    let db = TestDb::new().await;
    let mut conn = db.pool.acquire().await.unwrap();
    match publish_in_tx(&mut conn, Message::new("t", json!({}))).await {
        Err(PublishError::NotInTransaction) => {}
        other => panic!("expected NotInTransaction, got {other:?}"),
    }
    match publish_batch_in_tx(&mut conn, &[Message::new("t", json!({}))]).await {
        Err(PublishError::NotInTransaction) => {}
        other => panic!("expected NotInTransaction, got {other:?}"),
    }
    assert_eq!(db.message_count().await, 0);
}

#[tokio::test]
async fn works_with_a_pg_connection_inside_a_transaction() {
    let db = TestDb::new().await;
    let mut conn = db.pool.acquire().await.unwrap();
    // `&mut PgConnection` taken from a transaction begun on a plain connection.
    let mut tx = conn.begin().await.unwrap();
    let connection: &mut sqlx::PgConnection = &mut tx;
    publish_in_tx(connection, Message::new("t", json!({"via": "connection"})))
        .await
        .unwrap();
    // A savepoint (nested transaction) works too, and rolls back on its own.
    let mut savepoint = tx.begin().await.unwrap();
    publish_in_tx(
        &mut savepoint,
        Message::new("t", json!({"via": "savepoint"})),
    )
    .await
    .unwrap();
    savepoint.rollback().await.unwrap();
    tx.commit().await.unwrap();
    let payloads: Vec<Value> = sqlx::query_scalar("SELECT payload FROM outbox.messages")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(payloads, [json!({"via": "connection"})]);
}

#[derive(serde::Serialize)]
struct OrderPlaced {
    order_id: u64,
    total_cents: u64,
}

impl OutboxEvent for OrderPlaced {
    fn topic(&self) -> Cow<'_, str> {
        "orders.placed".into()
    }
    fn key(&self) -> Option<Cow<'_, str>> {
        Some(format!("order-{}", self.order_id).into())
    }
}

#[tokio::test]
async fn typed_events_publish_with_their_topic_and_key() {
    let db = TestDb::new().await;
    let mut tx = db.pool.begin().await.unwrap();
    let id = publish_event_in_tx(
        &mut tx,
        &OrderPlaced {
            order_id: 9,
            total_cents: 1250,
        },
    )
    .await
    .unwrap();
    let ids = publish_batch_in_tx(
        &mut tx,
        &[Message::from_event(&OrderPlaced {
            order_id: 10,
            total_cents: 5,
        })],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let rows = stored_messages(&db).await;
    assert_eq!(rows.len(), 2);
    assert_eq!(
        (rows[0].id, rows[0].topic.as_str(), rows[0].key.as_deref()),
        (id, "orders.placed", Some("order-9"))
    );
    assert_eq!(rows[0].payload, json!({"order_id": 9, "total_cents": 1250}));
    assert_eq!(
        (rows[1].id, rows[1].key.as_deref()),
        (ids[0], Some("order-10"))
    );
}

#[tokio::test]
async fn postgres_refusing_the_insert_is_a_typed_error() {
    let db = TestDb::new().await;
    // A rule Postgres enforces and Rust cannot know: a trigger that refuses one topic.
    sqlx::raw_sql(
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN RAISE EXCEPTION 'refused by policy'; END $$;
         CREATE TRIGGER refuse BEFORE INSERT ON outbox.messages
           FOR EACH ROW WHEN (NEW.topic = 'forbidden') EXECUTE FUNCTION refuse();",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let mut tx = db.pool.begin().await.unwrap();
    match publish_in_tx(&mut tx, Message::new("forbidden", json!({}))).await {
        Err(PublishError::Insert { count: 1, source }) => {
            assert!(source.to_string().contains("refused by policy"))
        }
        other => panic!("expected Insert error, got {other:?}"),
    }
    tx.rollback().await.unwrap();
    let mut conn = db.pool.acquire().await.unwrap();
    let mut tx = conn.begin().await.unwrap();
    let batch = [
        Message::new("fine", json!({})),
        Message::new("forbidden", json!({})),
    ];
    assert!(matches!(
        publish_batch_in_tx(&mut tx, &batch).await,
        Err(PublishError::Insert { count: 2, .. })
    ));
    drop(tx);
    assert_eq!(db.message_count().await, 0);
}

#[tokio::test]
async fn testing_helpers_see_what_the_open_transaction_published() {
    let db = TestDb::new().await;
    // Another transaction's message is not this one's.
    let mut other = db.pool.begin().await.unwrap();
    publish_in_tx(&mut other, Message::new("elsewhere", json!({})))
        .await
        .unwrap();
    other.commit().await.unwrap();

    let mut tx = db.pool.begin().await.unwrap();
    assert!(
        outbox_relay::testing::published_in_tx(&mut tx)
            .await
            .unwrap()
            .is_empty(),
        "before any write"
    );
    let id = publish_in_tx(
        &mut tx,
        Message::new("orders.created", json!({"id": 1}))
            .key("k")
            .header("h", "v"),
    )
    .await
    .unwrap();
    let published = outbox_relay::testing::assert_published_in_tx(&mut tx, "orders.created").await;
    assert_eq!(published.len(), 1);
    assert_eq!(
        (published[0].id, published[0].key.as_deref()),
        (id, Some("k"))
    );
    assert_eq!(published[0].payload, json!({"id": 1}));
    assert_eq!(published[0].headers.get("h").map(String::as_str), Some("v"));
    let missing = tokio::spawn(async move {
        outbox_relay::testing::assert_published_in_tx(&mut tx, "orders.cancelled").await;
    })
    .await;
    assert!(
        missing.is_err(),
        "asserting a topic that was not published panics"
    );
}

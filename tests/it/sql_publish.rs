//! outbox.publish(): the SQL function publishers in any language call.

use outbox_relay::{Message, publish_in_tx};
use serde_json::{Value, json};
use sqlx::Row;

use crate::harness::TestDb;

/// The columns a publisher decides, plus the shape of the generated ones.
async fn row_shape(db: &TestDb, id: uuid::Uuid) -> Value {
    let row = sqlx::query(
        "SELECT m.topic, m.key, m.schema_version, m.payload, m.headers,
                pg_typeof(m.tx_id)::text AS tx_id_type,
                m.created_at > now() - interval '1 minute' AS fresh
           FROM outbox.messages m WHERE m.id = $1",
    )
    .bind(id)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    json!({
        "topic": row.get::<String, _>("topic"),
        "key": row.get::<Option<String>, _>("key"),
        "schema_version": row.get::<Option<i32>, _>("schema_version"),
        "payload": row.get::<Value, _>("payload"),
        "headers": row.get::<Value, _>("headers"),
        "tx_id_type": row.get::<String, _>("tx_id_type"),
        "fresh": row.get::<bool, _>("fresh"),
    })
}

#[tokio::test]
async fn sql_publish_produces_the_same_row_shape_as_the_rust_call() {
    let db = TestDb::new().await;
    let payload = json!({"order_id": 42, "nested": {"a": [1, 2.5, "x", null, true]}});
    let headers = json!({"correlation_id": "c-7", "traceparent": "00-abc-def-01"});

    let mut tx = db.pool.begin().await.unwrap();
    let rust_id = publish_in_tx(
        &mut tx,
        Message::new("orders.created", &payload)
            .key("order-42")
            .headers_json(&headers),
    )
    .await
    .unwrap();
    let sql_id: uuid::Uuid =
        sqlx::query_scalar("SELECT outbox.publish('orders.created', $1, 'order-42', $2)")
            .bind(&payload)
            .bind(&headers)
            .fetch_one(&mut *tx)
            .await
            .unwrap();
    let defaults_id: uuid::Uuid =
        sqlx::query_scalar("SELECT outbox.publish('orders.created', '{}')")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
    tx.commit().await.unwrap();

    assert_eq!(row_shape(&db, sql_id).await, row_shape(&db, rust_id).await);
    let defaults = row_shape(&db, defaults_id).await;
    assert_eq!(
        (defaults["key"].clone(), defaults["headers"].clone()),
        (Value::Null, json!({}))
    );

    for id in [sql_id, defaults_id] {
        assert_eq!(id.get_version_num(), 7, "{id} is a UUIDv7");
        let (secs, _) = id
            .get_timestamp()
            .expect("v7 carries a timestamp")
            .to_unix();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(now.abs_diff(secs) < 60, "timestamp of {id} is now");
    }
    // Same transaction, consecutive positions, in call order.
    let positions: Vec<(String, i64)> = sqlx::query_as(
        "SELECT m.tx_id::text AS tx, m.seq FROM outbox.messages m ORDER BY m.tx_id, m.seq",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(positions.len(), 3);
    assert!(positions.iter().all(|(tx, _)| *tx == positions[0].0));
    assert_eq!(positions[2].1 - positions[0].1, 2);
}

#[tokio::test]
async fn sql_publish_refuses_what_the_rust_call_refuses() {
    let db = TestDb::new().await;
    let cases = [
        ("SELECT outbox.publish('', '{}')", "topic must not be empty"),
        ("SELECT outbox.publish('a b', '{}')", "whitespace"),
        (
            "SELECT outbox.publish(repeat('t', 256), '{}')",
            "the limit is 255",
        ),
        (
            "SELECT outbox.publish('t', '{}', '')",
            "key must be NULL or non-empty",
        ),
        ("SELECT outbox.publish('t', '7')", "not number"),
        ("SELECT outbox.publish('t', 'null')", "not null"),
        ("SELECT outbox.publish('t', NULL)", "not SQL NULL"),
        (
            "SELECT outbox.publish('t', '{}', NULL, '[]')",
            "headers must be a JSON object",
        ),
        (
            "SELECT outbox.publish('t', '{}', NULL, '{\"n\": 1}')",
            "header 'n' must have a string value",
        ),
        (
            "SELECT outbox.publish('t', jsonb_build_object('p', repeat('x', 1048576)))",
            "the limit is 1048576",
        ),
    ];
    for (statement, expected) in cases {
        let error = sqlx::query(statement).execute(&db.pool).await.unwrap_err();
        let db_error = error
            .as_database_error()
            .unwrap_or_else(|| panic!("{statement}: {error}"));
        assert!(
            db_error.message().contains(expected),
            "{statement}: {}",
            db_error.message()
        );
        assert_eq!(db_error.code().as_deref(), Some("22023"), "{statement}");
    }

    // The limit is a setting: lower it for one transaction.
    let mut tx = db.pool.begin().await.unwrap();
    sqlx::query("SET LOCAL outbox.max_payload_bytes = '20'")
        .execute(&mut *tx)
        .await
        .unwrap();
    let error = sqlx::query("SELECT outbox.publish('t', '{\"p\": \"xxxxxxxxxxxxxxxxxxxxxxxx\"}')")
        .execute(&mut *tx)
        .await
        .unwrap_err();
    assert!(error.to_string().contains("the limit is 20"), "{error}");
    tx.rollback().await.unwrap();

    assert_eq!(db.message_count().await, 0);
}

#[tokio::test]
async fn table_constraints_guard_hand_written_inserts() {
    let db = TestDb::new().await;
    let cases = [
        (
            "INSERT INTO outbox.messages (id, topic, payload) VALUES (gen_random_uuid(), 'a b', '{}')",
            "messages_topic_valid",
        ),
        (
            "INSERT INTO outbox.messages (id, topic, payload) VALUES (gen_random_uuid(), 't', '1')",
            "messages_payload_is_document",
        ),
        (
            "INSERT INTO outbox.messages (id, topic, payload, headers) VALUES (gen_random_uuid(), 't', '{}', '{\"a\": 1}')",
            "messages_headers_are_strings",
        ),
        (
            "INSERT INTO outbox.messages (id, topic, key, payload) VALUES (gen_random_uuid(), 't', '', '{}')",
            "messages_key_valid",
        ),
    ];
    for (statement, constraint) in cases {
        let error = sqlx::query(statement).execute(&db.pool).await.unwrap_err();
        let db_error = error.as_database_error().expect("database error");
        assert_eq!(db_error.constraint(), Some(constraint), "{statement}");
    }
    assert_eq!(db.message_count().await, 0);
}

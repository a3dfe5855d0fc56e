//! The schema registry against the real Postgres: registration and its compatibility rules,
//! validation and stamping when publishing, the relay's check of stored rows, and the CLI.
//!
//! Every test uses topics of its own: publishers cache the latest schema per topic for the
//! whole process, and tests run in parallel in one process.

use outbox_relay::registry::{
    Compatibility, Registry, RegistryError, Rejection, SchemaFormat, Unregistered, fingerprint,
};
use outbox_relay::{Message, PublishError, Publisher, publish_batch_in_tx, publish_in_tx};
use serde_json::{Value, json};

use crate::harness::TestDb;
use crate::harness::cli::{outbox_relay, run};

fn order_v1() -> Value {
    json!({
        "type": "object",
        "required": ["order_id", "total"],
        "properties": {
            "order_id": {"type": "integer"},
            "total": {"type": "integer"},
            "status": {"type": "string", "enum": ["new", "paid", "void"]}
        }
    })
}

/// `order_v1` with `extra` merged in (objects merge, anything else replaces).
fn order_with(extra: Value) -> Value {
    let mut schema = order_v1();
    merge(&mut schema, extra);
    schema
}

fn merge(base: &mut Value, extra: Value) {
    match (base, extra) {
        (Value::Object(base), Value::Object(extra)) => {
            for (k, v) in extra {
                merge(base.entry(k).or_insert(Value::Null), v);
            }
        }
        (base, extra) => *base = extra,
    }
}

fn registry(db: &TestDb) -> Registry {
    Registry::new(db.pool.clone(), Unregistered::Allow)
}

async fn register(registry: &Registry, topic: &str, definition: Value) -> i32 {
    let registered = registry
        .register(topic, definition, SchemaFormat::JsonSchema, None)
        .await
        .unwrap();
    assert!(registered.created, "{registered:?}");
    registered.version
}

async fn versions(db: &TestDb, topic: &str) -> Vec<i32> {
    sqlx::query_scalar("SELECT version FROM outbox.schemas WHERE topic = $1 ORDER BY version")
        .bind(topic)
        .fetch_all(&db.pool)
        .await
        .unwrap()
}

async fn stamps(db: &TestDb, topic: &str) -> Vec<Option<i32>> {
    sqlx::query_scalar("SELECT schema_version FROM outbox.messages WHERE topic = $1 ORDER BY seq")
        .bind(topic)
        .fetch_all(&db.pool)
        .await
        .unwrap()
}

/// Publishes one message with `publisher` in its own committed transaction.
async fn publish(
    db: &TestDb,
    publisher: Publisher,
    topic: &str,
    payload: Value,
) -> Result<(), PublishError> {
    let mut tx = db.pool.begin().await.unwrap();
    publisher
        .publish_in_tx(&mut tx, Message::new(topic, payload))
        .await?;
    tx.commit().await.unwrap();
    Ok(())
}

#[tokio::test]
async fn adding_an_optional_property_is_compatible_and_becomes_version_2() {
    let db = TestDb::new().await;
    let registry = registry(&db);
    assert_eq!(register(&registry, "reg.add_optional", order_v1()).await, 1);
    let v2 = order_with(json!({"properties": {"note": {"type": "string"}}}));
    let registered = registry
        .register("reg.add_optional", v2, SchemaFormat::JsonSchema, None)
        .await
        .unwrap();
    assert_eq!(registered.version, 2);
    assert_eq!(registered.compatibility, Compatibility::Backward);
    assert_eq!(versions(&db, "reg.add_optional").await, [1, 2]);
}

#[tokio::test]
async fn backward_refuses_naming_every_violated_rule_and_stores_nothing() {
    let db = TestDb::new().await;
    let registry = registry(&db);
    register(&registry, "reg.backward", order_v1()).await;
    let breaking = order_with(json!({
        "required": ["order_id", "total", "coupon"],
        "properties": {
            "coupon": {"type": "string"},
            "total": {"type": "string"},
            "status": {"enum": ["new", "paid"]}
        }
    }));
    let error = registry
        .register("reg.backward", breaking, SchemaFormat::JsonSchema, None)
        .await
        .unwrap_err();
    let RegistryError::Incompatible {
        mode,
        latest,
        violations,
        ..
    } = &error
    else {
        panic!("{error}");
    };
    assert_eq!((*mode, *latest), (Compatibility::Backward, 1));
    let texts: Vec<String> = violations.iter().map(ToString::to_string).collect();
    assert_eq!(
        texts,
        [
            "backward: adds required property `/properties/coupon`",
            "backward: removes enum value \"void\" from `/properties/status`",
            "backward: `/properties/total` changes type from integer to string",
        ]
    );
    let message = error.to_string();
    for text in &texts {
        assert!(message.contains(text.as_str()), "{message}");
    }
    assert_eq!(versions(&db, "reg.backward").await, [1]);
}

#[tokio::test]
async fn forward_and_full_check_their_directions() {
    let db = TestDb::new().await;
    let registry = registry(&db);
    let topic = "reg.forward";
    registry
        .register(
            topic,
            order_v1(),
            SchemaFormat::JsonSchema,
            Some(Compatibility::Forward),
        )
        .await
        .unwrap();
    // Dropping a required property: old consumers would miss it.
    let mut dropped = order_v1();
    dropped["required"] = json!(["order_id"]);
    let error = registry
        .register(topic, dropped.clone(), SchemaFormat::JsonSchema, None)
        .await
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("forward: makes required property `/properties/total` optional"),
        "{error}"
    );
    // The same change is backward-compatible: `--compat backward` lets it through.
    let registered = registry
        .register(
            topic,
            dropped,
            SchemaFormat::JsonSchema,
            Some(Compatibility::Backward),
        )
        .await
        .unwrap();
    assert_eq!(
        (registered.version, registered.compatibility),
        (2, Compatibility::Backward)
    );

    let full_topic = "reg.full";
    registry
        .register(
            full_topic,
            order_v1(),
            SchemaFormat::JsonSchema,
            Some(Compatibility::Full),
        )
        .await
        .unwrap();
    let widened =
        order_with(json!({"properties": {"status": {"enum": ["new", "paid", "void", "held"]}}}));
    let error = registry
        .register(full_topic, widened, SchemaFormat::JsonSchema, None)
        .await
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("not full-compatible with version 1: forward: adds enum value \"held\""),
        "{error}"
    );
    assert_eq!(versions(&db, full_topic).await, [1]);
}

#[tokio::test]
async fn none_accepts_anything_and_later_versions_keep_the_latest_mode() {
    let db = TestDb::new().await;
    let registry = registry(&db);
    let topic = "reg.none";
    registry
        .register(
            topic,
            order_v1(),
            SchemaFormat::JsonSchema,
            Some(Compatibility::None),
        )
        .await
        .unwrap();
    let unrelated =
        json!({"type": "object", "required": ["x"], "properties": {"x": {"type": "string"}}});
    let registered = registry
        .register(topic, unrelated, SchemaFormat::JsonSchema, None)
        .await
        .unwrap();
    assert_eq!(
        (registered.version, registered.compatibility),
        (2, Compatibility::None)
    );
}

#[tokio::test]
async fn registering_the_latest_definition_again_is_a_noop_that_says_so() {
    let db = TestDb::new().await;
    let registry = registry(&db);
    register(&registry, "reg.identical", order_v1()).await;
    // Key order and spacing do not matter: same canonical JSON.
    let reordered: Value = serde_json::from_str(
        r#"{"properties": {"status": {"enum": ["new", "paid", "void"], "type": "string"},
            "total": {"type": "integer"}, "order_id": {"type": "integer"}},
            "required": ["order_id", "total"], "type": "object"}"#,
    )
    .unwrap();
    let again = registry
        .register("reg.identical", reordered, SchemaFormat::JsonSchema, None)
        .await
        .unwrap();
    assert!(!again.created);
    assert_eq!(again.version, 1);
    assert_eq!(versions(&db, "reg.identical").await, [1]);
}

#[tokio::test]
async fn an_invalid_json_schema_is_refused() {
    let db = TestDb::new().await;
    let registry = registry(&db);
    let error = registry
        .register(
            "reg.invalid",
            json!({"type": "object", "properties": {"a": {"type": "strng"}}}),
            SchemaFormat::JsonSchema,
            None,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(error, RegistryError::InvalidSchema { .. }),
        "{error}"
    );
    assert!(
        error.to_string().contains("not a valid JSON Schema"),
        "{error}"
    );
    assert_eq!(versions(&db, "reg.invalid").await, Vec::<i32>::new());
}

#[tokio::test]
async fn concurrent_registrations_take_consecutive_versions() {
    let db = TestDb::new().await;
    let registry = registry(&db);
    let topic = "reg.concurrent";
    let tasks: Vec<_> = (0..6)
        .map(|i| {
            let registry = registry.clone();
            let definition =
                order_with(json!({"properties": {format!("extra{i}"): {"type": "string"}}}));
            tokio::spawn(async move {
                registry
                    .register(
                        topic,
                        definition,
                        SchemaFormat::JsonSchema,
                        Some(Compatibility::None),
                    )
                    .await
                    .map(|r| r.version)
            })
        })
        .collect();
    let mut taken = Vec::new();
    for task in tasks {
        taken.push(task.await.unwrap().unwrap());
    }
    taken.sort();
    assert_eq!(taken, [1, 2, 3, 4, 5, 6]);
}

#[tokio::test]
async fn publish_refuses_an_invalid_payload_naming_its_paths_and_writes_nothing() {
    let db = TestDb::new().await;
    let topic = "reg.publish_invalid";
    register(&registry(&db), topic, order_v1()).await;
    let error = publish(
        &db,
        Publisher::default(),
        topic,
        json!({"total": "12", "status": "lost"}),
    )
    .await
    .unwrap_err();
    let PublishError::SchemaRejected {
        version, errors, ..
    } = &error
    else {
        panic!("{error}");
    };
    assert_eq!(*version, 1);
    let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    assert!(paths.contains(&""), "{errors:?}"); // order_id missing
    assert!(paths.contains(&"/total"), "{errors:?}");
    assert!(paths.contains(&"/status"), "{errors:?}");
    let text = error.to_string();
    assert!(
        text.contains("/total") && text.contains("/status") && text.contains("order_id"),
        "{text}"
    );
    assert_eq!(db.message_count().await, 0);
}

#[tokio::test]
async fn publish_stamps_the_version_it_validated_against() {
    let db = TestDb::new().await;
    let topic = "reg.publish_stamp";
    let registry = registry(&db);
    publish(&db, Publisher::default(), topic, json!({"anything": true}))
        .await
        .unwrap();
    register(&registry, topic, order_v1()).await;
    publish(
        &db,
        Publisher::default(),
        topic,
        json!({"order_id": 1, "total": 5}),
    )
    .await
    .unwrap();
    register(
        &registry,
        topic,
        order_with(json!({"properties": {"note": {"type": "string"}}})),
    )
    .await;
    publish(
        &db,
        Publisher::default(),
        topic,
        json!({"order_id": 2, "total": 5, "note": "x"}),
    )
    .await
    .unwrap();
    assert_eq!(stamps(&db, topic).await, [None, Some(1), Some(2)]);
}

#[tokio::test]
async fn a_batch_with_one_invalid_payload_writes_nothing() {
    let db = TestDb::new().await;
    let topic = "reg.batch";
    register(&registry(&db), topic, order_v1()).await;
    let good = |id: i64| Message::new(topic, json!({"order_id": id, "total": 1}));
    let mut tx = db.pool.begin().await.unwrap();
    let error = publish_batch_in_tx(
        &mut tx,
        &[
            good(1),
            Message::new("reg.batch_other", json!({"free": "form"})),
            Message::new(topic, json!({"order_id": 2})),
            good(3),
        ],
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            &error,
            PublishError::SchemaRejectedInBatch { index: 2, version: 1, errors, .. }
                if errors.iter().any(|e| e.message.contains("total"))
        ),
        "{error}"
    );
    tx.commit().await.unwrap();
    assert_eq!(db.message_count().await, 0);

    let mut tx = db.pool.begin().await.unwrap();
    publish_batch_in_tx(
        &mut tx,
        &[good(1), Message::new("reg.batch_other", json!({})), good(2)],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(stamps(&db, topic).await, [Some(1), Some(1)]);
    assert_eq!(stamps(&db, "reg.batch_other").await, [None]);
}

/// Stores `definition` as `version` of `topic` by plain SQL, as another process would.
async fn insert_version_by_sql(db: &TestDb, topic: &str, version: i32, definition: &Value) {
    sqlx::query(
        "INSERT INTO outbox.schemas (topic, version, definition, fingerprint) VALUES ($1, $2, $3, $4)",
    )
    .bind(topic)
    .bind(version)
    .bind(definition)
    .bind(fingerprint(definition))
    .execute(&db.pool)
    .await
    .unwrap();
}

#[tokio::test]
async fn a_version_registered_by_another_process_applies_to_the_next_publish() {
    let db = TestDb::new().await;
    let topic = "reg.elsewhere";
    register(&registry(&db), topic, order_v1()).await;
    let v1_payload = json!({"order_id": 1, "total": 5});
    publish(&db, Publisher::default(), topic, v1_payload.clone())
        .await
        .unwrap(); // this process now caches version 1

    let v2 = order_with(
        json!({"properties": {"note": {"type": "string"}}, "required": ["order_id", "total", "note"]}),
    );
    insert_version_by_sql(&db, topic, 2, &v2).await;
    // Valid under the cached v1 but not under v2: refused, nothing written.
    let error = publish(&db, Publisher::default(), topic, v1_payload)
        .await
        .unwrap_err();
    assert!(
        matches!(error, PublishError::SchemaRejected { version: 2, .. }),
        "{error}"
    );
    publish(
        &db,
        Publisher::default(),
        topic,
        json!({"order_id": 2, "total": 5, "note": "n"}),
    )
    .await
    .unwrap();
    // Both under a cache that still said v1 for a payload valid under both: stamped v2.
    let v3 = order_with(json!({"properties": {"note": {"type": "string"}}}));
    insert_version_by_sql(&db, topic, 3, &v3).await;
    publish(
        &db,
        Publisher::default(),
        topic,
        json!({"order_id": 3, "total": 5, "note": "n"}),
    )
    .await
    .unwrap();
    assert_eq!(stamps(&db, topic).await, [Some(1), Some(2), Some(3)]);
}

#[tokio::test]
async fn another_databases_schema_in_the_process_cache_never_decides_here() {
    let strict = TestDb::new().await;
    let open = TestDb::new().await;
    let topic = "reg.two_databases";
    register(&registry(&strict), topic, order_v1()).await;
    publish(
        &strict,
        Publisher::default(),
        topic,
        json!({"order_id": 1, "total": 1}),
    )
    .await
    .unwrap();
    // The process cache now holds `strict`'s v1; `open` has no schema for the topic.
    publish(&open, Publisher::default(), topic, json!({"whatever": 1}))
        .await
        .unwrap();
    assert_eq!(stamps(&open, topic).await, [None]);
    // And back: `strict` still refuses what its schema refuses.
    assert!(
        publish(&strict, Publisher::default(), topic, json!({"whatever": 1}))
            .await
            .is_err()
    );
    let mut tx = open.pool.begin().await.unwrap();
    publish_in_tx(&mut tx, Message::new(topic, json!([1])))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(stamps(&open, topic).await, [None, None]);
    assert_eq!(stamps(&strict, topic).await, [Some(1)]);
}

#[tokio::test]
async fn unregistered_topics_are_refused_under_reject_and_allowed_by_default() {
    let db = TestDb::new().await;
    let topic = "reg.unregistered";
    let reject = Publisher::default().with_unregistered(Unregistered::Reject);
    let error = publish(&db, reject, topic, json!({"a": 1}))
        .await
        .unwrap_err();
    assert!(
        matches!(&error, PublishError::Unregistered { topic: t } if t == topic),
        "{error}"
    );
    assert!(error.to_string().contains("schema register"), "{error}");
    publish(&db, Publisher::default(), topic, json!({"a": 1}))
        .await
        .unwrap();
    // Registered elsewhere after this process cached "no schema": reject sees it at once.
    insert_version_by_sql(&db, topic, 1, &json!({"type": "object"})).await;
    publish(&db, reject, topic, json!({"a": 2})).await.unwrap();
    assert_eq!(stamps(&db, topic).await, [None, Some(1)]);
}

#[tokio::test]
async fn sql_publish_stamps_the_latest_version_without_validating() {
    let db = TestDb::new().await;
    let topic = "reg.sql_publish";
    let publish_sql = |payload: Value| {
        sqlx::query_scalar::<_, uuid::Uuid>("SELECT outbox.publish($1, $2)")
            .bind(topic)
            .bind(payload)
            .fetch_one(&db.pool)
    };
    publish_sql(json!({"a": 1})).await.unwrap();
    let registry = registry(&db);
    register(&registry, topic, order_v1()).await;
    register(
        &registry,
        topic,
        order_with(json!({"properties": {"note": {"type": "string"}}})),
    )
    .await;
    // Invalid under v2, and stamped anyway: Postgres cannot validate; the relay will.
    publish_sql(json!({"a": 2})).await.unwrap();
    assert_eq!(stamps(&db, topic).await, [None, Some(2)]);
    let payload: String = sqlx::query_scalar(
        "SELECT payload::text FROM outbox.messages WHERE topic = $1 AND schema_version = 2",
    )
    .bind(topic)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(matches!(
        registry.check_row(topic, Some(2), &payload).await.unwrap(),
        Err(Rejection::Invalid { version: 2, .. })
    ));
}

#[tokio::test]
async fn check_row_decodes_through_the_version_the_row_names() {
    let db = TestDb::new().await;
    let topic = "reg.check_row";
    let registry = registry(&db);
    register(&registry, topic, order_v1()).await;
    // A new required property is not backward-compatible: registered under `none`.
    registry
        .register(
            topic,
            order_with(json!({"required": ["order_id", "total", "note"], "properties": {"note": {"type": "string"}}})),
            SchemaFormat::JsonSchema,
            Some(Compatibility::None),
        )
        .await
        .unwrap();
    let v1_only = r#"{"order_id": 1, "total": 2}"#;
    assert_eq!(
        registry.check_row(topic, Some(1), v1_only).await.unwrap(),
        Ok(())
    );
    let rejection = registry
        .check_row(topic, Some(2), v1_only)
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(&rejection, Rejection::Invalid { version: 2, errors, .. } if errors[0].message.contains("note")),
        "{rejection}"
    );
    assert!(rejection.to_string().contains("version 2"), "{rejection}");

    let unknown = registry
        .check_row(topic, Some(7), v1_only)
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(
        unknown,
        Rejection::UnknownVersion {
            topic: topic.to_owned(),
            version: 7
        }
    );
    assert_eq!(
        unknown.to_string(),
        "schema version 7 of topic `reg.check_row` is not registered"
    );

    // Unstamped rows (plain INSERT) are checked against the latest version.
    assert!(matches!(
        registry.check_row(topic, None, v1_only).await.unwrap(),
        Err(Rejection::Invalid { version: 2, .. })
    ));
    assert_eq!(
        registry
            .check_row(topic, None, r#"{"order_id": 1, "total": 2, "note": "n"}"#)
            .await
            .unwrap(),
        Ok(())
    );
}

#[tokio::test]
async fn check_row_of_a_topic_without_schemas_follows_the_policy() {
    let db = TestDb::new().await;
    let topic = "reg.check_row_unregistered";
    let allow = Registry::new(db.pool.clone(), Unregistered::Allow);
    let reject = Registry::new(db.pool.clone(), Unregistered::Reject);
    assert_eq!(
        allow.check_row(topic, None, "not even json").await.unwrap(),
        Ok(())
    );
    assert_eq!(
        reject.check_row(topic, None, "{}").await.unwrap(),
        Err(Rejection::Unregistered {
            topic: topic.to_owned()
        })
    );
    // A schema registered through this registry applies to its next unstamped row at once.
    register(&allow, topic, order_v1()).await;
    assert!(matches!(
        allow.check_row(topic, None, "{}").await.unwrap(),
        Err(Rejection::Invalid { version: 1, .. })
    ));
}

#[tokio::test]
async fn unstamped_rows_see_a_schema_registered_elsewhere_within_the_ttl() {
    let db = TestDb::new().await;
    let topic = "reg.check_row_ttl";
    let registry = registry(&db);
    assert_eq!(registry.check_row(topic, None, "{}").await.unwrap(), Ok(()));
    insert_version_by_sql(&db, topic, 1, &order_v1()).await;
    crate::harness::eventually(
        outbox_relay::registry::LATEST_TTL * 3,
        "the new schema to apply to unstamped rows",
        || async { registry.check_row(topic, None, "{}").await.unwrap().err() },
    )
    .await;
}

fn write_schema(dir: &std::path::Path, name: &str, definition: &Value) -> String {
    let path = dir.join(name);
    std::fs::write(&path, definition.to_string()).unwrap();
    path.to_string_lossy().into_owned()
}

#[tokio::test]
async fn cli_registers_lists_shows_and_checks() {
    let db = TestDb::new().await;
    let dir = std::env::temp_dir().join(format!("outbox-registry-cli-{}", db.name));
    std::fs::create_dir_all(&dir).unwrap();
    let topic = "reg.cli";
    let v1 = write_schema(&dir, "v1.json", &order_v1());
    let schema = |args: &[&str]| {
        let mut command = outbox_relay();
        command
            .args(["--database-url", &db.url, "schema"])
            .args(args);
        run(&mut command)
    };

    // With the default log filter (no RUST_LOG): success on stdout, nothing on stderr.
    let out = run(outbox_relay()
        .env_remove("RUST_LOG")
        .args(["--database-url", &db.url, "schema"])
        .args(["register", "--topic", topic, "--file", &v1]));
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(out.stdout.trim(), "registered reg.cli version 1 (backward)");
    assert_eq!(out.stderr, "", "no INFO line beside the result");
    let out = schema(&["register", "--topic", topic, "--file", &v1]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(
        out.stdout.trim(),
        "unchanged: identical to reg.cli version 1"
    );

    let breaking = write_schema(
        &dir,
        "breaking.json",
        &order_with(json!({"properties": {"total": {"type": "string"}}})),
    );
    let out = schema(&["register", "--topic", topic, "--file", &breaking]);
    assert_eq!(out.code, Some(1), "{}", out.stdout);
    assert!(
        out.stderr
            .contains("backward: `/properties/total` changes type from integer to string"),
        "{}",
        out.stderr
    );
    let v2 = write_schema(
        &dir,
        "v2.json",
        &order_with(json!({"properties": {"note": {"type": "string"}}})),
    );
    let out = schema(&[
        "register", "--topic", topic, "--file", &v2, "--compat", "full",
    ]);
    assert_eq!(
        out.stdout.trim(),
        "registered reg.cli version 2 (full)",
        "{}",
        out.stderr
    );

    let out = schema(&["list", "--topic", topic, "--json"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let listed: Value = serde_json::from_str(&out.stdout).unwrap();
    let rows: Vec<(i64, &str, &str)> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            (
                row["version"].as_i64().unwrap(),
                row["compatibility"].as_str().unwrap(),
                row["format"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [(1, "backward", "json-schema"), (2, "full", "json-schema")]
    );
    assert_eq!(listed[0]["fingerprint"], json!(fingerprint(&order_v1())));
    let table = schema(&["list"]);
    assert!(
        table.stdout.contains("TOPIC") && table.stdout.contains("reg.cli"),
        "{}",
        table.stdout
    );

    let out = schema(&["show", topic, "--version", "1"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(
        serde_json::from_str::<Value>(&out.stdout).unwrap(),
        order_v1()
    );
    let out = schema(&["show", topic, "--json"]);
    let shown: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(shown["version"], json!(2));
    let out = schema(&["show", topic, "--version", "9"]);
    assert_eq!(out.code, Some(1));
    assert!(out.stderr.contains("no schema version 9"), "{}", out.stderr);

    let out = schema(&["check", "--topic", topic, r#"{"order_id": 1, "total": 2}"#]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(out.stdout.trim(), "valid against reg.cli version 2");
    let out = schema(&[
        "check",
        "--topic",
        topic,
        r#"{"order_id": "1", "total": 2, "note": 3}"#,
    ]);
    assert_eq!(out.code, Some(1));
    assert!(out.stdout.contains("/order_id: "), "{}", out.stdout);
    assert!(out.stdout.contains("/note: "), "{}", out.stdout);
    let out = schema(&[
        "check",
        "--topic",
        topic,
        "--version",
        "1",
        "--json",
        r#"{"total": 2}"#,
    ]);
    assert_eq!(out.code, Some(1));
    let checked: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(checked["valid"], json!(false));
    assert_eq!(checked["version"], json!(1));
    assert_eq!(checked["errors"][0]["path"], json!(""));

    let out = schema(&[
        "register", "--topic", topic, "--file", &v1, "--compat", "sideways",
    ]);
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn cli_publish_follows_the_configured_unregistered_policy() {
    let db = TestDb::new().await;
    let out = run(outbox_relay()
        .args([
            "--database-url",
            &db.url,
            "publish",
            "--topic",
            "reg.cli_publish",
            "{}",
        ])
        .env("OUTBOX_REGISTRY__UNREGISTERED", "reject"));
    assert_eq!(out.code, Some(1), "{}", out.stdout);
    assert!(
        out.stderr.contains("no registered schema"),
        "{}",
        out.stderr
    );
    assert_eq!(db.message_count().await, 0);
    let out = run(outbox_relay()
        .args([
            "--database-url",
            &db.url,
            "publish",
            "--topic",
            "reg.cli_publish",
            "{}",
        ])
        .env("OUTBOX_REGISTRY__UNREGISTERED", "sometimes"));
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(
        out.stderr.contains("registry.unregistered"),
        "{}",
        out.stderr
    );
}

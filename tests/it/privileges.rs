//! Least privilege: `outbox-relay grant publisher|relay ROLE` gives a role what publishing or
//! relaying needs and nothing more. Roles are cluster-wide, so each test makes uniquely named
//! ones and drops them (DROP OWNED BY, DROP ROLE) when it ends, also when it fails.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use outbox_relay::config::ConnectionUrl;
use outbox_relay::registry::SchemaFormat;
use outbox_relay::{Message, Registry, Unregistered, publish_in_tx};
use serde_json::json;
use sqlx::{AssertSqlSafe, Connection, PgConnection, PgPool};

use crate::harness::cli::{outbox_relay, run};
use crate::harness::redis::TestRedis;
use crate::harness::relay::{RelayProcess, TempDir, forward_all, publish_numbered};
use crate::harness::{TestDb, admin_url, eventually};

/// A login role of the test's own in the test server; dropped with everything granted to it
/// in `db` when this value is dropped (declare it after the `TestDb`, so it goes first).
struct TestRole {
    name: String,
    db_url: String,
}

impl TestRole {
    async fn create(kind: &str, db: &TestDb) -> TestRole {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "outbox_{kind}_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let mut admin = PgConnection::connect(&admin_url()).await.unwrap();
        sqlx::query(AssertSqlSafe(format!(
            "CREATE ROLE {name} LOGIN PASSWORD 'not-checked-by-trust'"
        )))
        .execute(&mut admin)
        .await
        .unwrap();
        admin.close().await.ok();
        TestRole {
            name,
            db_url: db.url.clone(),
        }
    }

    /// The test database's URL, logging in as this role.
    fn url(&self) -> String {
        let mut url = url::Url::parse(&self.db_url).unwrap();
        url.set_username(&self.name).unwrap();
        url.to_string()
    }

    async fn pool(&self) -> PgPool {
        let url = ConnectionUrl::parse(&self.url(), &["postgres"]).unwrap();
        outbox_relay::store::connect(&url, 2).await.unwrap()
    }

    /// `outbox-relay grant <kind> <role>` as the test database's owner; asserts exit 0.
    fn grant(&self, kind: &str) {
        let out =
            run(outbox_relay().args(["grant", kind, &self.name, "--database-url", &self.db_url]));
        assert_eq!(out.code, Some(0), "{}", out.stderr);
        assert!(out.stdout.contains(&self.name), "{}", out.stdout);
    }
}

impl Drop for TestRole {
    fn drop(&mut self) {
        let (name, db_url) = (self.name.clone(), self.db_url.clone());
        // Drop runs inside the test's runtime, which cannot be blocked on: use a thread.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let mut db = PgConnection::connect(&db_url).await?;
                sqlx::query(AssertSqlSafe(format!("DROP OWNED BY {name}")))
                    .execute(&mut db)
                    .await?;
                db.close().await.ok();
                let mut admin = PgConnection::connect(&admin_url()).await?;
                sqlx::query(AssertSqlSafe(format!("DROP ROLE IF EXISTS {name}")))
                    .execute(&mut admin)
                    .await?;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
            })
        })
        .join();
        if let Ok(Err(e)) = dropped {
            eprintln!("could not drop role {}: {e}", self.name);
        }
    }
}

/// The SQLSTATE of a failed statement.
fn sqlstate<T: std::fmt::Debug>(result: Result<T, sqlx::Error>) -> String {
    match result {
        Err(sqlx::Error::Database(e)) => e.code().unwrap_or_default().into_owned(),
        other => panic!("expected a database error, got {other:?}"),
    }
}

const DENIED: &str = "42501";

#[tokio::test]
async fn publisher_role_publishes_but_cannot_move_cursors_or_read_deliveries() {
    let db = TestDb::new().await;
    let role = TestRole::create("pub", &db).await;
    role.grant("publisher");
    role.grant("publisher"); // idempotent
    Registry::new(db.pool.clone(), Unregistered::Allow)
        .register(
            "orders.placed",
            json!({"type": "object", "required": ["order_id"]}),
            SchemaFormat::JsonSchema,
            None,
        )
        .await
        .unwrap();
    sqlx::query("INSERT INTO outbox.consumer_groups (name) VALUES ('g')")
        .execute(&db.pool)
        .await
        .unwrap();

    let pool = role.pool().await;
    let mut tx = pool.begin().await.unwrap();
    let _: uuid::Uuid =
        sqlx::query_scalar("SELECT outbox.publish('orders.placed', '{\"order_id\": 1}')")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
    // Both library paths: a topic with a schema (validated, stamped) and one without.
    publish_in_tx(
        &mut tx,
        Message::new("orders.placed", json!({"order_id": 2})),
    )
    .await
    .unwrap();
    publish_in_tx(&mut tx, Message::new("users.signed_up", json!({"user": 3})))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let out = run(outbox_relay().args([
        "publish",
        "--topic",
        "users.signed_up",
        "--database-url",
        &role.url(),
        r#"{"user": 4}"#,
    ]));
    assert_eq!(out.code, Some(0), "outbox-relay publish: {}", out.stderr);
    let stamped: Vec<Option<i32>> = sqlx::query_scalar(
        "SELECT m.schema_version FROM outbox.messages m ORDER BY m.tx_id, m.seq",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(stamped, [Some(1), Some(1), None, None]);

    for (what, statement) in [
        (
            "move a cursor",
            "UPDATE outbox.consumer_groups SET cursor_seq = 100 WHERE name = 'g'",
        ),
        ("read deliveries", "SELECT count(*) FROM outbox.deliveries"),
        ("read messages", "SELECT count(*) FROM outbox.messages"),
        ("delete messages", "DELETE FROM outbox.messages"),
        (
            "forge a position",
            "INSERT INTO outbox.messages (tx_id, id, topic, payload) VALUES ('1', gen_random_uuid(), 't', '{}')",
        ),
        ("drop the outbox", "DROP TABLE outbox.messages"),
    ] {
        let code = sqlstate(sqlx::query(statement).execute(&pool).await);
        assert_eq!(code, DENIED, "the publisher could {what}");
    }
    pool.close().await;
}

#[tokio::test]
async fn relay_role_runs_the_relay_forwards_and_records_retries() {
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    let role = TestRole::create("relay", &db).await;
    role.grant("relay");
    role.grant("relay"); // idempotent

    let dir = TempDir::new("privileges-relay");
    let groups = format!(
        "{}[[groups]]\nname = \"hooks\"\n[[groups.routes]]\ntopics = [\"t\"]\nhandler = \"http\"\n\
         url = \"http://127.0.0.1:1/hook\"\nmax_attempts = 2\nbackoff_initial_ms = 10\n",
        forward_all("g", "all")
    );
    let config = dir.write(
        "relay.toml",
        &format!(
            "database_url = \"{}\"\nredis_url = \"{}\"\n[redis]\nkey_prefix = \"{}\"\n[relay]\nidle_poll_ms = 5\n{groups}",
            role.url(),
            redis.url,
            redis.prefix
        ),
    );
    let relay = RelayProcess::start(&config, "relay");
    publish_numbered(&db.pool, 0, 5).await;

    eventually(
        Duration::from_secs(20),
        "5 entries in stream all",
        || async { (redis.numbers("all").await == [0, 1, 2, 3, 4]).then_some(()) },
    )
    .await;
    // The http group's deliveries went through the retry path (retrying, then dead).
    eventually(Duration::from_secs(20), "5 dead letters of group hooks", || async {
        let dead: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM outbox.deliveries d WHERE d.group_name = 'hooks' AND d.status = 'dead' AND d.attempts = 2",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        (dead == 5).then_some(())
    })
    .await;
    let log = relay.log();
    assert_eq!(relay.terminate(Duration::from_secs(10)).await, Some(0));
    assert!(!log.contains("permission denied"), "{log}");

    // The read commands and the delivery repairs work as the relay role; prune does not.
    let url = role.url();
    for args in [
        &["status", "--json"][..],
        &["stuck", "--json"],
        &["dead", "list", "--json"],
        &["dead", "retry", "--group", "hooks"],
    ] {
        let out = run(outbox_relay().args(args).args(["--database-url", &url]));
        assert_eq!(out.code, Some(0), "{args:?}: {}", out.stderr);
    }
    let out = run(outbox_relay().args(["prune", "--older-than", "1s", "--database-url", &url]));
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(out.stderr.contains("permission denied"), "{}", out.stderr);
    // The server's source line is not shown; the role and the grants are.
    assert!(!out.stderr.contains(" at line "), "{}", out.stderr);
    assert!(
        out.stderr
            .contains(&format!("the role `{}` lacks that privilege", role.name))
            && out
                .stderr
                .contains(&format!("`outbox-relay grant relay {}`", role.name)),
        "{}",
        out.stderr
    );

    let pool = role.pool().await;
    for (what, statement) in [
        ("delete messages", "DELETE FROM outbox.messages"),
        ("publish", "SELECT outbox.publish('t', '{}')"),
        ("delete a group", "DELETE FROM outbox.consumer_groups"),
        ("drop the outbox", "DROP TABLE outbox.deliveries"),
        (
            "register a schema",
            "INSERT INTO outbox.schemas (topic, version, format, definition, fingerprint) VALUES ('t', 1, 'json-schema', '{}', 'x')",
        ),
    ] {
        let code = sqlstate(sqlx::query(statement).execute(&pool).await);
        assert_eq!(code, DENIED, "the relay role could {what}");
    }
    pool.close().await;
}

#[test]
fn granting_to_a_missing_role_says_to_create_it_and_print_shows_the_sql() {
    let url = crate::harness::database_url("postgres");
    let out = run(outbox_relay().args([
        "grant",
        "relay",
        "outbox_no_such_role",
        "--database-url",
        &url,
    ]));
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(out.stderr.contains("CREATE ROLE"), "{}", out.stderr);

    let out = run(outbox_relay().args(["grant", "publisher", "app_publisher", "--print"]));
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        out.stdout
            .contains("GRANT SELECT ON outbox.schemas TO \"app_publisher\";"),
        "{}",
        out.stdout
    );
}

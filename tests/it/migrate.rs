//! outbox_relay::migrate: creates the schema, is idempotent, and lives next to an
//! application's own sqlx migrations in the same database.

use std::path::Path;

use sqlx::PgPool;
use sqlx::migrate::Migrator;

use crate::harness::TestDb;

const OUR_MIGRATIONS: i64 = 12;

/// Our migration versions, from the file names in `migrations/` (`0008_….sql` → 8); numbers
/// may have gaps while branches that each add one are merged.
fn our_versions() -> Vec<i64> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    let mut versions: Vec<i64> = std::fs::read_dir(dir)
        .expect("read migrations/")
        .filter_map(|entry| {
            let name = entry.expect("migration entry").file_name();
            name.to_str()?.split('_').next()?.parse().ok()
        })
        .collect();
    versions.sort();
    assert_eq!(versions.len() as i64, OUR_MIGRATIONS, "{versions:?}");
    versions
}

async fn app_migrator() -> Migrator {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/app_migrations");
    Migrator::new(dir).await.expect("app migrations")
}

async fn versions(pool: &PgPool, table: &str) -> Vec<i64> {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT version FROM {table} WHERE success ORDER BY version"
    )))
    .fetch_all(pool)
    .await
    .unwrap_or_else(|e| panic!("{table}: {e}"))
}

async fn objects_exist(pool: &PgPool) -> Vec<(String, bool)> {
    let names = [
        "outbox.messages",
        "outbox.consumer_groups",
        "outbox.deliveries",
        "outbox.schemas",
        "outbox.publish(text,jsonb,text,jsonb)",
        "outbox.notify_new_messages()",
        "public.app_users",
        "public.app_orders",
    ];
    let mut found = Vec::new();
    for name in names {
        let exists: bool = if name.contains('(') {
            sqlx::query_scalar("SELECT to_regprocedure($1) IS NOT NULL")
        } else {
            sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        }
        .bind(name)
        .fetch_one(pool)
        .await
        .unwrap();
        found.push((name.to_owned(), exists));
    }
    found
}

#[tokio::test]
async fn migrate_creates_the_outbox_objects_and_is_a_noop_the_second_time() {
    let db = TestDb::empty().await;
    let first = outbox_relay::migrate(&db.pool).await.unwrap();
    assert_eq!(first.applied.len() as i64, OUR_MIGRATIONS);
    assert_eq!(first.applied[0].version, 1);
    assert_eq!(first.applied[0].description, "messages");

    let schema_before: String = sqlx::query_scalar(
        "SELECT string_agg(table_name || '.' || column_name || ':' || data_type, ',' ORDER BY table_name, ordinal_position)
           FROM information_schema.columns WHERE table_schema = 'outbox'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();

    let second = outbox_relay::migrate(&db.pool).await.unwrap();
    assert!(second.applied.is_empty(), "{second:?}");
    assert_eq!(second.known as i64, OUR_MIGRATIONS);
    let schema_after: String = sqlx::query_scalar(
        "SELECT string_agg(table_name || '.' || column_name || ':' || data_type, ',' ORDER BY table_name, ordinal_position)
           FROM information_schema.columns WHERE table_schema = 'outbox'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(schema_before, schema_after);
    assert_eq!(
        versions(&db.pool, "outbox._sqlx_migrations").await,
        our_versions()
    );
    let public_table: bool =
        sqlx::query_scalar("SELECT to_regclass('public._sqlx_migrations') IS NOT NULL")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(
        !public_table,
        "our bookkeeping must not land in the application's schema"
    );
}

#[tokio::test]
async fn concurrent_migrations_all_succeed() {
    let db = TestDb::empty().await;
    let migrate = || outbox_relay::migrate(&db.pool);
    let (a, b, c, d) = tokio::join!(migrate(), migrate(), migrate(), migrate());
    for report in [a, b, c, d] {
        report.expect("a concurrent migrate fails");
    }
    assert_eq!(
        versions(&db.pool, "outbox._sqlx_migrations").await,
        our_versions()
    );
}

#[tokio::test]
async fn coexists_with_an_application_migrator_in_both_orders_twice() {
    let app = app_migrator().await;
    for app_first in [true, false] {
        let db = TestDb::empty().await;
        for round in 0..2 {
            if app_first {
                app.run(&db.pool)
                    .await
                    .unwrap_or_else(|e| panic!("app first, round {round}: {e}"));
                outbox_relay::migrate(&db.pool)
                    .await
                    .unwrap_or_else(|e| panic!("ours second, round {round}: {e}"));
            } else {
                outbox_relay::migrate(&db.pool)
                    .await
                    .unwrap_or_else(|e| panic!("ours first, round {round}: {e}"));
                app.run(&db.pool)
                    .await
                    .unwrap_or_else(|e| panic!("app second, round {round}: {e}"));
            }
        }
        assert_eq!(
            versions(&db.pool, "public._sqlx_migrations").await,
            [1, 2],
            "app_first={app_first}"
        );
        assert_eq!(
            versions(&db.pool, "outbox._sqlx_migrations").await,
            our_versions(),
            "app_first={app_first}"
        );
        for (name, exists) in objects_exist(&db.pool).await {
            assert!(exists, "{name} missing (app_first={app_first})");
        }
    }
}

#[tokio::test]
async fn a_schema_newer_than_the_binary_is_refused_with_advice() {
    let db = TestDb::new().await;
    sqlx::query(
        "INSERT INTO outbox._sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES (999, 'from the future', true, '\\x00', 0)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let error = outbox_relay::migrate(&db.pool).await.unwrap_err();
    assert!(
        matches!(
            error,
            outbox_relay::MigrateError::SchemaNewerThanBinary(999)
        ),
        "{error:?}"
    );
    assert!(
        error.to_string().contains("upgrade outbox-relay"),
        "{error}"
    );
}

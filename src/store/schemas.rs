//! Statements on `outbox.schemas`, the schema registry's versions.

use sqlx::types::Json;
use sqlx::{PgConnection, PgExecutor, PgPool};

/// One registered version of a topic's schema, as stored.
#[derive(Debug, Clone, PartialEq, serde::Serialize, sqlx::FromRow)]
pub struct StoredSchema {
    /// The topic the schema is for.
    pub topic: String,
    /// 1 for the topic's first version, one more for each next.
    pub version: i32,
    /// `json-schema` (the only format outbox-relay validates today).
    pub format: String,
    /// The compatibility mode this version was registered under.
    pub compatibility: String,
    /// The JSON Schema document.
    #[sqlx(json)]
    pub definition: serde_json::Value,
    /// SHA-256 of the definition's canonical JSON text, in hex.
    pub fingerprint: String,
    /// When the version was registered (database clock).
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// A new version to store; see [`schemas_insert`].
#[derive(Debug, Clone, Copy)]
pub struct NewSchema<'a> {
    /// The topic the schema is for.
    pub topic: &'a str,
    /// The new version's number: the latest version's plus one (1 for the first).
    pub version: i32,
    /// `json-schema` (the only format outbox-relay validates today).
    pub format: &'a str,
    /// The compatibility mode it is registered under: `none`, `backward`, `forward` or `full`.
    pub compatibility: &'a str,
    /// The JSON Schema document.
    pub definition: &'a serde_json::Value,
    /// SHA-256 of the definition's canonical JSON text, in hex.
    pub fingerprint: &'a str,
}

/// The newest version of `topic`, or `None` when it has none.
pub async fn schemas_latest(
    executor: impl PgExecutor<'_>,
    topic: &str,
) -> Result<Option<StoredSchema>, sqlx::Error> {
    sqlx::query_as(include_str!("sql/schemas_latest.sql"))
        .bind(topic)
        .fetch_optional(executor)
        .await
}

/// Version `version` of `topic`, or `None` when it was never registered.
pub async fn schemas_get(
    executor: impl PgExecutor<'_>,
    topic: &str,
    version: i32,
) -> Result<Option<StoredSchema>, sqlx::Error> {
    sqlx::query_as(include_str!("sql/schemas_get.sql"))
        .bind(topic)
        .bind(version)
        .fetch_optional(executor)
        .await
}

/// Every version of every topic (or of `topic`), by topic then version.
pub async fn schemas_list(
    pool: &PgPool,
    topic: Option<&str>,
) -> Result<Vec<StoredSchema>, sqlx::Error> {
    sqlx::query_as(include_str!("sql/schemas_list.sql"))
        .bind(topic)
        .fetch_all(pool)
        .await
}

/// Waits until no other transaction registers a version of `topic`, and keeps others waiting
/// until this transaction ends.
pub async fn schemas_lock_topic(conn: &mut PgConnection, topic: &str) -> Result<(), sqlx::Error> {
    sqlx::query(include_str!("sql/schemas_lock_topic.sql"))
        .bind(topic)
        .execute(conn)
        .await?;
    Ok(())
}

/// Stores a new version; returns its `created_at`.
pub async fn schemas_insert(
    conn: &mut PgConnection,
    schema: NewSchema<'_>,
) -> Result<chrono::DateTime<chrono::Utc>, sqlx::Error> {
    sqlx::query_scalar(include_str!("sql/schemas_insert.sql"))
        .bind(schema.topic)
        .bind(schema.version)
        .bind(schema.format)
        .bind(schema.compatibility)
        .bind(Json(schema.definition))
        .bind(schema.fingerprint)
        .fetch_one(conn)
        .await
}

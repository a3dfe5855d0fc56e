//! The latest schema version of each topic as this process's publishers last saw it.
//!
//! One map for the whole process, whatever database a publisher writes to: an entry may be
//! stale (another process registered a version) or even come from another database. That is
//! safe because the insert itself checks, in the same statement, that the stamped version is
//! still the topic's latest in the database written to (`messages_insert.sql`); when it is not,
//! the publisher [`forget`]s the entry, [`reload`]s and validates again. So the hot path costs
//! one map lookup and no extra round trip, and only the first publish of a topic in a process
//! (or the first after a change) reads `outbox.schemas`.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, RwLock};

use sqlx::PgConnection;

use super::{RegistryError, SchemaVersion};

/// topic → its latest version (`None`: the topic had no schema).
type LatestByTopic = HashMap<String, Option<Arc<SchemaVersion>>>;

static LATEST: LazyLock<RwLock<LatestByTopic>> = LazyLock::new(Default::default);

/// The cached latest version of `topic`, read from Postgres (through `conn`, so in the caller's
/// transaction) when this process has none cached.
pub(crate) async fn latest(
    conn: &mut PgConnection,
    topic: &str,
) -> Result<Option<Arc<SchemaVersion>>, RegistryError> {
    if let Some(cached) = LATEST.read().expect("latest schema cache").get(topic) {
        return Ok(cached.clone());
    }
    reload(conn, topic).await
}

/// Reads the latest version of `topic` from Postgres and caches it.
pub(crate) async fn reload(
    conn: &mut PgConnection,
    topic: &str,
) -> Result<Option<Arc<SchemaVersion>>, RegistryError> {
    let latest = SchemaVersion::read_latest(&mut *conn, topic).await?;
    LATEST
        .write()
        .expect("latest schema cache")
        .insert(topic.to_owned(), latest.clone());
    Ok(latest)
}

/// Drops the cached entry of `topic`: its next publish reads Postgres again.
pub(crate) fn forget(topic: &str) {
    tracing::debug!(topic, "forgetting the cached latest schema");
    LATEST.write().expect("latest schema cache").remove(topic);
}

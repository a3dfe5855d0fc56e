//! [`VersionCache`]: the compiled schema versions of one database, as a [`Registry`] uses
//! them to decode stored rows.
//!
//! Versions never change once registered, so (topic, version) entries are kept for the life of
//! the registry. The latest version per topic, used for rows that name none, is trusted for
//! [`LATEST_TTL`] only: rows written by plain SQL can appear at any time, and a version
//! registered by another process must apply to them soon.
//!
//! [`Registry`]: super::Registry

use std::collections::HashMap;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Instant;

use sqlx::PgPool;

use super::{LATEST_TTL, RegistryError, SchemaVersion};
use crate::store;

/// topic → its cached versions. One map, so a lookup is one hash of the topic.
#[derive(Default)]
pub(super) struct VersionCache {
    topics: RwLock<HashMap<String, TopicCache>>,
}

#[derive(Default)]
struct TopicCache {
    versions: HashMap<i32, Arc<SchemaVersion>>,
    /// When it was read, and the latest version then (`None`: no schema).
    latest: Option<(Instant, Option<Arc<SchemaVersion>>)>,
}

impl VersionCache {
    /// Version `version` of `topic`, from the cache or Postgres; `None` if not registered.
    pub(super) async fn version(
        &self,
        pool: &PgPool,
        topic: &str,
        version: i32,
    ) -> Result<Option<Arc<SchemaVersion>>, RegistryError> {
        let cached = self
            .read()
            .get(topic)
            .and_then(|t| t.versions.get(&version).cloned());
        if cached.is_some() {
            return Ok(cached);
        }
        let stored = store::schemas_get(pool, topic, version)
            .await
            .map_err(|source| RegistryError::Read {
                what: format!("version {version} of the schema of `{topic}`"),
                source,
            })?;
        let Some(stored) = stored else {
            return Ok(None);
        };
        let loaded = Arc::new(SchemaVersion::from_stored(&stored)?);
        let mut topics = self.write();
        let cache = topics.entry(topic.to_owned()).or_default();
        cache.versions.insert(version, Arc::clone(&loaded));
        Ok(Some(loaded))
    }

    /// The latest version of `topic` as read at most [`LATEST_TTL`] ago.
    pub(super) async fn latest_recent(
        &self,
        pool: &PgPool,
        topic: &str,
    ) -> Result<Option<Arc<SchemaVersion>>, RegistryError> {
        if let Some(cache) = self.read().get(topic)
            && let Some((read_at, latest)) = &cache.latest
            && read_at.elapsed() < LATEST_TTL
        {
            return Ok(latest.clone());
        }
        let read_at = Instant::now();
        let latest = SchemaVersion::read_latest(pool, topic).await?;
        let mut topics = self.write();
        let cache = topics.entry(topic.to_owned()).or_default();
        if let Some(latest) = &latest {
            cache.versions.insert(latest.version, Arc::clone(latest));
        }
        cache.latest = Some((read_at, latest.clone()));
        Ok(latest)
    }

    pub(super) fn forget_latest(&self, topic: &str) {
        if let Some(cache) = self.write().get_mut(topic) {
            cache.latest = None;
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, HashMap<String, TopicCache>> {
        self.topics.read().expect("registry cache")
    }

    fn write(&self) -> RwLockWriteGuard<'_, HashMap<String, TopicCache>> {
        self.topics.write().expect("registry cache")
    }
}

//! The schema registry: JSON Schema versions per topic in `outbox.schemas`, the compatibility
//! rules a new version must pass, validation when publishing, and decoding when relaying.
//!
//! ```text
//!  register ──compile──▶ compare with the latest (compat) ──▶ version latest+1 (or unchanged)
//!  publish_in_tx ──validate against the latest──▶ INSERT stamped schema_version (checked in
//!                                                 the statement to still be the latest)
//!  relay ──check_row: the version the row names (NULL: the latest)──▶ ok | Rejection (dead letter)
//! ```
//!
//! Invariants: a version, once registered, never changes (its number and fingerprint name its
//! content); a message stamped by `publish_in_tx` was valid against the stamped version, which
//! was the topic's latest when the row was written. Rows written by plain SQL or by
//! `outbox.publish()` are not validated by Postgres; the relay validates them ([`Registry::check_row`]).

mod cache;
mod compat;
pub(crate) mod latest;
mod schema;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use sqlx::PgPool;

pub use compat::{Compatibility, Mismatch, Rule, TypeSet, Violation, check, reader_accepts_writer};
pub use schema::{CompiledSchema, MAX_REPORTED_ERRORS, SchemaError, fingerprint};

pub(crate) use schema::joined as joined_errors;

use crate::publish::{InvalidMessage, validate_topic};
use crate::store::{self, NewSchema, StoredSchema};
use cache::VersionCache;

/// What publishing does with a topic that has no registered schema (`[registry] unregistered`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Unregistered {
    /// Publish it unvalidated, `schema_version` NULL (default).
    #[default]
    Allow,
    /// Refuse it ([`crate::PublishError::Unregistered`]); the relay dead-letters such rows.
    Reject,
}

impl Unregistered {
    /// The configuration value: `allow` or `reject`.
    pub fn as_str(self) -> &'static str {
        match self {
            Unregistered::Allow => "allow",
            Unregistered::Reject => "reject",
        }
    }
}

impl FromStr for Unregistered {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "allow" => Ok(Unregistered::Allow),
            "reject" => Ok(Unregistered::Reject),
            other => Err(format!(
                "unknown value `{other}`; expected `allow` or `reject`"
            )),
        }
    }
}

/// The language a definition is written in. Only JSON Schema is validated today;
/// `outbox.schemas` also allows `avro`, reserved for later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SchemaFormat {
    /// JSON Schema; the draft is taken from `$schema` (2020-12 when absent).
    #[default]
    JsonSchema,
}

impl SchemaFormat {
    /// The name stored in `outbox.schemas.format`.
    pub fn as_str(self) -> &'static str {
        match self {
            SchemaFormat::JsonSchema => "json-schema",
        }
    }
}

impl fmt::Display for SchemaFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SchemaFormat {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "json-schema" => Ok(SchemaFormat::JsonSchema),
            "avro" => Err("format `avro` is not supported yet; use json-schema".to_owned()),
            other => Err(format!("unknown format `{other}`; expected json-schema")),
        }
    }
}

/// What [`Registry::register`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    /// The topic the schema is for.
    pub topic: String,
    /// The new version, or the latest one when `created` is false.
    pub version: i32,
    /// The mode that version was registered under.
    pub compatibility: Compatibility,
    /// False when the definition was identical to the latest version: nothing was stored.
    pub created: bool,
}

/// A payload checked against a stored version ([`Registry::validate`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validation {
    /// The topic the payload was checked for.
    pub topic: String,
    /// The version it was checked against.
    pub version: i32,
    /// Empty when the payload is valid.
    pub errors: Vec<SchemaError>,
}

/// Why a stored row cannot be delivered; permanent, so the relay dead-letters it. `Display` is
/// the reason stored as the delivery's `last_error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The row names a version that was never registered (written by plain SQL).
    #[error("schema version {version} of topic `{topic}` is not registered")]
    UnknownVersion {
        /// The row's topic.
        topic: String,
        /// The version the row names.
        version: i32,
    },
    /// The payload does not match the version the row names (or, unstamped, the latest).
    #[error(
        "payload does not match schema `{topic}` version {version}: {}",
        schema::joined(errors)
    )]
    Invalid {
        /// The row's topic.
        topic: String,
        /// The version the payload was checked against.
        version: i32,
        /// Where and how the payload fails the schema.
        errors: Vec<SchemaError>,
    },
    /// The topic has no schema and `registry.unregistered = "reject"`.
    #[error("topic `{topic}` has no registered schema and registry.unregistered = \"reject\"")]
    Unregistered {
        /// The row's topic.
        topic: String,
    },
}

/// Why a registry operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The topic is not one a message could be published to (empty, too long, whitespace).
    #[error("topic refused: {0}")]
    InvalidTopic(InvalidMessage),
    /// The definition does not compile as a JSON Schema; nothing was stored.
    #[error("the schema for `{topic}` is not a valid JSON Schema: {reason}")]
    InvalidSchema {
        /// The topic the schema was for.
        topic: String,
        /// What the JSON Schema compiler said.
        reason: String,
    },
    /// The definition breaks the compatibility rules of `mode` against version `latest`;
    /// nothing was stored. Each violation names its rule and schema path.
    #[error(
        "the schema for `{topic}` is not {mode}-compatible with version {latest}: {}",
        joined_violations(violations)
    )]
    Incompatible {
        /// The topic the schema was for.
        topic: String,
        /// The compatibility mode it was checked under.
        mode: Compatibility,
        /// The topic's latest version, which it was checked against.
        latest: i32,
        /// Each rule the definition breaks, with its schema path.
        violations: Vec<Violation>,
    },
    /// The topic has no schema, or not this version.
    #[error("{}", not_found(topic, *version))]
    NotFound {
        /// The topic asked for.
        topic: String,
        /// The version asked for; `None`: any (the topic has none).
        version: Option<i32>,
    },
    /// A stored version cannot be used for validation (written by hand, or a format this
    /// outbox-relay does not know). Not the payload's fault: fix or remove the schema row.
    #[error("stored schema `{topic}` version {version} cannot be used: {reason}")]
    UnusableSchema {
        /// The stored schema's topic.
        topic: String,
        /// The stored schema's version.
        version: i32,
        /// Why it cannot be used.
        reason: String,
    },
    /// Reading `outbox.schemas` failed.
    #[error("could not read {what} from outbox.schemas")]
    Read {
        /// What was being read (`the latest schema of `orders``, …).
        what: String,
        /// Postgres' error.
        #[source]
        source: sqlx::Error,
    },
    /// Storing a new version failed; nothing was stored.
    #[error("could not register a schema for `{topic}`")]
    Register {
        /// The topic the schema was for.
        topic: String,
        /// Postgres' error.
        #[source]
        source: sqlx::Error,
    },
}

fn joined_violations(violations: &[Violation]) -> String {
    let texts: Vec<String> = violations.iter().map(ToString::to_string).collect();
    texts.join("; ")
}

fn not_found(topic: &str, version: Option<i32>) -> String {
    match version {
        Some(version) => format!(
            "topic `{topic}` has no schema version {version} (see `outbox-relay schema list --topic {topic}`)"
        ),
        None => format!("topic `{topic}` has no registered schema"),
    }
}

/// How long [`Registry::check_row`] trusts its cached "latest version" of a topic for rows
/// that name no version. Rows written by plain SQL are unstamped, so a newly registered schema
/// applies to them within this long.
pub const LATEST_TTL: Duration = Duration::from_secs(1);

/// One version, compiled: what is cached.
#[derive(Debug)]
pub(crate) struct SchemaVersion {
    pub version: i32,
    /// As stored: what publishers' inserts compare with.
    pub fingerprint: String,
    pub schema: Arc<CompiledSchema>,
}

impl SchemaVersion {
    fn from_stored(stored: &StoredSchema) -> Result<SchemaVersion, RegistryError> {
        let unusable = |reason: String| RegistryError::UnusableSchema {
            topic: stored.topic.clone(),
            version: stored.version,
            reason,
        };
        stored.format.parse::<SchemaFormat>().map_err(unusable)?;
        let schema = CompiledSchema::compile(&stored.definition).map_err(unusable)?;
        Ok(SchemaVersion {
            version: stored.version,
            fingerprint: stored.fingerprint.clone(),
            schema,
        })
    }

    /// The latest version of `topic` as stored now, compiled (`None`: no schema).
    async fn read_latest(
        executor: impl sqlx::PgExecutor<'_>,
        topic: &str,
    ) -> Result<Option<Arc<SchemaVersion>>, RegistryError> {
        let stored = store::schemas_latest(executor, topic)
            .await
            .map_err(|source| RegistryError::Read {
                what: format!("the latest schema of `{topic}`"),
                source,
            })?;
        Ok(stored
            .as_ref()
            .map(SchemaVersion::from_stored)
            .transpose()?
            .map(Arc::new))
    }
}

/// The registry of one database: registration, lookups, and the decoding of stored rows.
/// Cheap to clone (an `Arc` inside); clones share one cache.
///
/// The cache holds compiled versions by (topic, version) — versions never change — and, per
/// topic, the latest version for [`LATEST_TTL`].
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    unregistered: Unregistered,
    cache: VersionCache,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("unregistered", &self.inner.unregistered)
            .finish_non_exhaustive()
    }
}

impl Registry {
    /// The registry of the database `pool` connects to; `unregistered` decides what
    /// [`check_row`](Self::check_row) does with rows of topics without a schema.
    pub fn new(pool: PgPool, unregistered: Unregistered) -> Registry {
        Registry {
            inner: Arc::new(Inner {
                pool,
                unregistered,
                cache: VersionCache::default(),
            }),
        }
    }

    /// Stores `definition` as the next version of `topic`, unless it is identical to the latest
    /// version (then nothing changes and `created` is false) or breaks the compatibility rules.
    ///
    /// The mode is `compatibility` when given, else the latest version's, else backward. Runs
    /// in its own transaction, serialised with other registrations of the topic; publishers of
    /// this process use the new version from their next publish on, other processes' at their
    /// next publish too (their insert notices the change).
    pub async fn register(
        &self,
        topic: &str,
        definition: Value,
        format: SchemaFormat,
        compatibility: Option<Compatibility>,
    ) -> Result<Registered, RegistryError> {
        validate_topic(topic).map_err(RegistryError::InvalidTopic)?;
        CompiledSchema::compile(&definition).map_err(|reason| RegistryError::InvalidSchema {
            topic: topic.to_owned(),
            reason,
        })?;
        let fingerprint = fingerprint(&definition);
        let fail = |source| RegistryError::Register {
            topic: topic.to_owned(),
            source,
        };
        let mut tx = self.inner.pool.begin().await.map_err(fail)?;
        store::schemas_lock_topic(&mut tx, topic)
            .await
            .map_err(fail)?;
        let latest = store::schemas_latest(&mut *tx, topic).await.map_err(fail)?;
        let (version, mode) = match plan(
            topic,
            latest.as_ref(),
            &definition,
            &fingerprint,
            compatibility,
        )? {
            Plan::Unchanged(registered) => return Ok(registered),
            Plan::Insert { version, mode } => (version, mode),
        };
        let new = NewSchema {
            topic,
            version,
            format: format.as_str(),
            compatibility: mode.as_str(),
            definition: &definition,
            fingerprint: &fingerprint,
        };
        store::schemas_insert(&mut tx, new).await.map_err(fail)?;
        tx.commit().await.map_err(fail)?;
        self.inner.cache.forget_latest(topic);
        latest::forget(topic);
        tracing::info!(topic, version, compatibility = %mode, "registered schema");
        Ok(Registered {
            topic: topic.to_owned(),
            version,
            compatibility: mode,
            created: true,
        })
    }

    /// Decodes a stored row: `Ok(Ok(()))` valid, `Ok(Err(rejection))` a permanent failure
    /// with its reason, `Err(_)` Postgres failed or a stored schema is unusable (retry later).
    ///
    /// A row naming a version is validated against that version (cached; read on a miss). A
    /// row naming none is validated against the topic's latest version (cached for
    /// [`LATEST_TTL`]); with no schema for the topic it passes under `allow` and is
    /// [`Rejection::Unregistered`] under `reject`. For a topic without schemas this is one map
    /// lookup, and the payload is not parsed.
    ///
    /// Unknown versions are not cached: they come only from hand-written SQL, each such row is
    /// dead-lettered once, and a version registered later must not be hidden by a stale miss.
    pub async fn check_row(
        &self,
        topic: &str,
        schema_version: Option<i32>,
        payload: &str,
    ) -> Result<Result<(), Rejection>, RegistryError> {
        let schema = match schema_version {
            Some(version) => match self
                .inner
                .cache
                .version(&self.inner.pool, topic, version)
                .await?
            {
                Some(schema) => schema,
                None => {
                    return Ok(Err(Rejection::UnknownVersion {
                        topic: topic.to_owned(),
                        version,
                    }));
                }
            },
            None => match self
                .inner
                .cache
                .latest_recent(&self.inner.pool, topic)
                .await?
            {
                Some(schema) => schema,
                None => return Ok(self.unregistered_row(topic)),
            },
        };
        let errors = schema.schema.errors_in_text(payload);
        if errors.is_empty() {
            Ok(Ok(()))
        } else {
            Ok(Err(Rejection::Invalid {
                topic: topic.to_owned(),
                version: schema.version,
                errors,
            }))
        }
    }

    /// Every stored version (of `topic` only, when given), by topic then version. Not cached.
    pub async fn list(&self, topic: Option<&str>) -> Result<Vec<StoredSchema>, RegistryError> {
        store::schemas_list(&self.inner.pool, topic)
            .await
            .map_err(|source| RegistryError::Read {
                what: "the schema list".to_owned(),
                source,
            })
    }

    /// Version `version` of `topic` (the latest when `None`), as stored. Not cached.
    pub async fn get(
        &self,
        topic: &str,
        version: Option<i32>,
    ) -> Result<StoredSchema, RegistryError> {
        let read = match version {
            Some(version) => store::schemas_get(&self.inner.pool, topic, version).await,
            None => store::schemas_latest(&self.inner.pool, topic).await,
        };
        read.map_err(|source| RegistryError::Read {
            what: format!("the schema of `{topic}`"),
            source,
        })?
        .ok_or_else(|| RegistryError::NotFound {
            topic: topic.to_owned(),
            version,
        })
    }

    /// Checks `payload` against version `version` of `topic` (the latest when `None`), read
    /// from Postgres now.
    pub async fn validate(
        &self,
        topic: &str,
        version: Option<i32>,
        payload: &Value,
    ) -> Result<Validation, RegistryError> {
        let stored = self.get(topic, version).await?;
        let schema = SchemaVersion::from_stored(&stored)?;
        Ok(Validation {
            topic: topic.to_owned(),
            version: schema.version,
            errors: schema.schema.errors(payload),
        })
    }

    fn unregistered_row(&self, topic: &str) -> Result<(), Rejection> {
        match self.inner.unregistered {
            Unregistered::Allow => Ok(()),
            Unregistered::Reject => Err(Rejection::Unregistered {
                topic: topic.to_owned(),
            }),
        }
    }
}

/// What a registration will do, decided under the topic's lock.
enum Plan {
    Unchanged(Registered),
    Insert { version: i32, mode: Compatibility },
}

fn plan(
    topic: &str,
    latest: Option<&StoredSchema>,
    definition: &Value,
    fingerprint: &str,
    requested: Option<Compatibility>,
) -> Result<Plan, RegistryError> {
    let Some(latest) = latest else {
        return Ok(Plan::Insert {
            version: 1,
            mode: requested.unwrap_or_default(),
        });
    };
    let latest_mode: Compatibility =
        latest
            .compatibility
            .parse()
            .map_err(|reason| RegistryError::UnusableSchema {
                topic: topic.to_owned(),
                version: latest.version,
                reason,
            })?;
    if latest.fingerprint == fingerprint {
        return Ok(Plan::Unchanged(Registered {
            topic: topic.to_owned(),
            version: latest.version,
            compatibility: latest_mode,
            created: false,
        }));
    }
    let mode = requested.unwrap_or(latest_mode);
    let violations = compat::check(mode, &latest.definition, definition);
    if !violations.is_empty() {
        return Err(RegistryError::Incompatible {
            topic: topic.to_owned(),
            mode,
            latest: latest.version,
            violations,
        });
    }
    Ok(Plan::Insert {
        version: latest.version + 1,
        mode,
    })
}

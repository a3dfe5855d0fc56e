//! Publishing: writing messages into `outbox.messages` inside the caller's transaction.
//!
//! The message exists if and only if that transaction commits: on rollback the row is gone
//! with the business change, so no relay ever forwards it. Every message is validated before
//! any I/O ([`InvalidMessage`]), then against its topic's latest registered schema (see
//! [`crate::registry`]); a refused message or batch writes nothing.
//!
//! ```text
//!  Message ──validate (pure)──▶ ValidMessage ──payload matches the topic's latest schema?
//!     │                                              │ yes: store::messages_insert[_batch],
//!     │                                              │      stamped schema_version = that version
//!     └─ refused: Invalid / InvalidInBatch           └─ no: SchemaRejected[InBatch], nothing written
//! ```
//!
//! When a span context is current (see [`crate::telemetry::trace`]) and a message has no
//! `traceparent` header, the publish records the context there.
//!
//! The insert checks, in the same statement, that the stamped version is still the latest; if
//! another process registered a newer one, nothing is written, the publisher reloads the
//! latest version, validates again and retries once.

mod message;

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::Serialize;
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

pub use message::{InvalidMessage, MAX_KEY_BYTES, MAX_TOPIC_BYTES, Message, Preview};
pub(crate) use message::{ValidMessage, validate_topic};

use crate::registry::{self, RegistryError, SchemaError, SchemaVersion, Unregistered};
use crate::store::{self, SchemaStamp, TopicStamp};
use crate::telemetry::trace::{self, TRACEPARENT};

/// Limits applied to every message before it is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishLimits {
    /// Largest payload accepted, in bytes of compact JSON text. Default 1 MiB.
    pub max_payload_bytes: usize,
}

impl PublishLimits {
    /// `max_payload_bytes` when not set: 1 MiB.
    pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 1024 * 1024;
}

impl Default for PublishLimits {
    fn default() -> Self {
        PublishLimits {
            max_payload_bytes: Self::DEFAULT_MAX_PAYLOAD_BYTES,
        }
    }
}

/// A typed event that knows its topic (and, optionally, its ordering key).
///
/// ```
/// use outbox_relay::OutboxEvent;
/// use std::borrow::Cow;
///
/// #[derive(serde::Serialize)]
/// struct OrderPlaced { order_id: u64, total_cents: u64 }
///
/// impl OutboxEvent for OrderPlaced {
///     fn topic(&self) -> Cow<'_, str> { "orders.placed".into() }
///     fn key(&self) -> Option<Cow<'_, str>> { Some(self.order_id.to_string().into()) }
/// }
/// ```
pub trait OutboxEvent: Serialize {
    /// The topic this event is published under.
    fn topic(&self) -> Cow<'_, str>;

    /// The ordering key, e.g. the aggregate id. `None` (the default) means unordered.
    fn key(&self) -> Option<Cow<'_, str>> {
        None
    }
}

impl Message {
    /// The message for a typed event: its topic, key and serialized body.
    pub fn from_event<E: OutboxEvent + ?Sized>(event: &E) -> Message {
        let message = Message::new(event.topic().into_owned(), event);
        match event.key() {
            Some(key) => message.key(key.into_owned()),
            None => message,
        }
    }
}

/// Why a publish call wrote nothing.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The message failed validation; nothing was sent to Postgres.
    #[error("message refused: {0}")]
    Invalid(InvalidMessage),
    /// One message of a batch failed validation; no message of the batch was written.
    #[error("message #{index} of the batch refused (nothing of the batch was written): {reason}")]
    InvalidInBatch {
        /// The message's index in the batch, from 0.
        index: usize,
        /// Why it was refused.
        reason: InvalidMessage,
    },
    /// The connection is not inside a transaction, so the message would not be tied to one.
    #[error(
        "publish needs a connection inside a transaction (e.g. `let mut tx = pool.begin().await?`), \
         so the message commits or rolls back with the business change"
    )]
    NotInTransaction,
    /// The payload does not match its topic's latest schema; nothing was written.
    #[error(
        "payload refused: it does not match schema `{topic}` version {version} (nothing was written): {}",
        registry::joined_errors(errors)
    )]
    SchemaRejected {
        /// The message's topic.
        topic: String,
        /// The schema version the payload was checked against (the topic's latest).
        version: i32,
        /// Where and how the payload fails the schema.
        errors: Vec<SchemaError>,
    },
    /// One payload of a batch does not match its topic's latest schema; no message of the
    /// batch was written.
    #[error(
        "message #{index} of the batch refused: it does not match schema `{topic}` version {version} \
         (nothing of the batch was written): {}",
        registry::joined_errors(errors)
    )]
    SchemaRejectedInBatch {
        /// The message's index in the batch, from 0.
        index: usize,
        /// The message's topic.
        topic: String,
        /// The schema version the payload was checked against (the topic's latest).
        version: i32,
        /// Where and how the payload fails the schema.
        errors: Vec<SchemaError>,
    },
    /// The topic has no registered schema and the publisher's policy is
    /// [`Unregistered::Reject`] (`registry.unregistered = "reject"`); nothing was written.
    #[error(
        "topic `{topic}` has no registered schema and registry.unregistered = \"reject\" \
         (register one: outbox-relay schema register --topic {topic} --file SCHEMA.json); \
         nothing was written"
    )]
    Unregistered {
        /// The topic without a schema.
        topic: String,
    },
    /// Reading the topic's latest schema failed; if Postgres failed, the caller's transaction
    /// is now aborted.
    #[error("could not look up the schema of topic `{topic}`")]
    SchemaLookup {
        /// The message's topic.
        topic: String,
        /// The registry's error.
        #[source]
        source: RegistryError,
    },
    /// The latest schema of these topics changed again between reloading it and the retried
    /// insert (a registration committed in between); nothing was written: publish again.
    #[error(
        "the schema of topic(s) {} changed while publishing; nothing was written, publish again",
        topics.join(", ")
    )]
    SchemaChanged {
        /// The topics whose latest schema changed.
        topics: Vec<String>,
    },
    /// Postgres refused a payload as nested deeper than jsonb can be (its `max_stack_depth`
    /// bounds the nesting); nothing was written, and the caller's transaction is now aborted.
    #[error(
        "could not insert {count} message(s) into outbox.messages: a payload nests deeper than \
         this Postgres server accepts in jsonb (max_stack_depth bounds the nesting: about 13,000 \
         levels at its 2MB default); nothing was written"
    )]
    PayloadTooDeep {
        /// How many messages the insert carried.
        count: usize,
        /// Postgres' error (SQLSTATE 54001).
        #[source]
        source: sqlx::Error,
    },
    /// Postgres refused or failed the insert; the caller's transaction is now aborted.
    #[error("could not insert {count} message(s) into outbox.messages")]
    Insert {
        /// How many messages the insert carried.
        count: usize,
        /// Postgres' error.
        #[source]
        source: sqlx::Error,
    },
}

/// SQLSTATE 54001 (`statement_too_complex`): "stack depth limit exceeded", which is what the
/// jsonb parser raises for a payload nested past `max_stack_depth`.
const STACK_DEPTH_LIMIT_EXCEEDED: &str = "54001";

impl PublishError {
    /// The insert of `count` messages failed with `source`.
    fn insert_failed(count: usize, source: sqlx::Error) -> PublishError {
        let code = source.as_database_error().and_then(|e| e.code());
        if code.as_deref() == Some(STACK_DEPTH_LIMIT_EXCEEDED) {
            PublishError::PayloadTooDeep { count, source }
        } else {
            PublishError::Insert { count, source }
        }
    }
}

/// Publishes with explicit [`PublishLimits`] and a policy for topics without a schema
/// ([`Unregistered`], default allow). The free functions ([`publish_in_tx`], …) use
/// `Publisher::default()`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Publisher {
    limits: PublishLimits,
    unregistered: Unregistered,
}

impl Publisher {
    /// A publisher with `limits` that allows topics without a schema (see
    /// [`Publisher::with_unregistered`]).
    pub fn new(limits: PublishLimits) -> Self {
        Publisher {
            limits,
            unregistered: Unregistered::default(),
        }
    }

    /// The same publisher with `policy` for topics that have no registered schema.
    pub fn with_unregistered(self, policy: Unregistered) -> Self {
        Publisher {
            unregistered: policy,
            ..self
        }
    }

    /// The limits every message is checked against.
    pub fn limits(&self) -> PublishLimits {
        self.limits
    }

    /// What this publisher does with a topic that has no registered schema.
    pub fn unregistered(&self) -> Unregistered {
        self.unregistered
    }

    /// Writes `message` inside the transaction `conn` is in and returns its id (UUIDv7).
    /// The payload must match its topic's latest schema, if it has one; the row is stamped
    /// with that version. On rollback of that transaction the message is gone.
    ///
    /// The first publish of a topic in this process reads its latest schema (one query in
    /// `conn`'s transaction); later ones use the process cache, which the insert verifies.
    pub async fn publish_in_tx(
        &self,
        conn: &mut PgConnection,
        message: Message,
    ) -> Result<Uuid, PublishError> {
        let message = with_current_trace(message);
        let valid = message
            .validate(self.limits.max_payload_bytes)
            .map_err(PublishError::Invalid)?;
        ensure_in_transaction(conn)?;
        let id = Uuid::now_v7();
        let topic = valid.topic;
        for fresh in [false, true] {
            let latest = self.latest_schema(conn, topic, fresh).await?;
            if let Some(schema) = &latest {
                let errors = schema.schema.errors_in_text(valid.payload.get());
                match (errors.is_empty(), fresh) {
                    (true, _) => {}
                    // The cached version may be stale (or another database's): refuse only
                    // after validating against the latest version in Postgres.
                    (false, false) => continue,
                    (false, true) => {
                        return Err(PublishError::SchemaRejected {
                            topic: topic.to_owned(),
                            version: schema.version,
                            errors,
                        });
                    }
                }
            }
            let inserted = store::messages_insert(conn, id, &valid, stamp_of(latest.as_deref()))
                .await
                .map_err(|source| PublishError::insert_failed(1, source))?;
            if inserted {
                return Ok(id);
            }
            registry::latest::forget(topic);
        }
        Err(PublishError::SchemaChanged {
            topics: vec![topic.to_owned()],
        })
    }

    /// Writes all `messages` with ONE statement inside the transaction `conn` is in, in slice
    /// order (their positions follow it), and returns their ids in the same order. Either every
    /// message passes validation (its own checks, then its topic's latest schema) and all are
    /// written, or none is.
    pub async fn publish_batch_in_tx(
        &self,
        conn: &mut PgConnection,
        messages: &[Message],
    ) -> Result<Vec<Uuid>, PublishError> {
        let traced = traced_headers(messages);
        let valid = messages
            .iter()
            .enumerate()
            .map(|(index, message)| {
                let mut valid = message
                    .validate(self.limits.max_payload_bytes)
                    .map_err(|reason| PublishError::InvalidInBatch { index, reason })?;
                if let Some(Some(headers)) = traced.get(index) {
                    valid.headers = headers;
                }
                Ok(valid)
            })
            .collect::<Result<Vec<_>, _>>()?;
        if valid.is_empty() {
            return Ok(Vec::new());
        }
        ensure_in_transaction(conn)?;
        let ids: Vec<Uuid> = valid.iter().map(|_| Uuid::now_v7()).collect();
        let topics = distinct_topics(&valid);
        for fresh in [false, true] {
            let mut latest = HashMap::with_capacity(topics.len());
            for &topic in &topics {
                latest.insert(topic, self.latest_schema(conn, topic, fresh).await?);
            }
            match check_batch(&valid, &latest) {
                // The cached versions may be stale: refuse only after reloading them.
                Err(_) if !fresh => continue,
                checked => checked?,
            }
            let versions: Vec<Option<i32>> = valid
                .iter()
                .map(|m| latest[m.topic].as_ref().map(|s| s.version))
                .collect();
            let stamps: Vec<TopicStamp<'_>> = topics
                .iter()
                .map(|&topic| TopicStamp {
                    topic,
                    stamp: stamp_of(latest[topic].as_deref()),
                })
                .collect();
            let inserted = store::messages_insert_batch(conn, &ids, &valid, &versions, &stamps)
                .await
                .map_err(|source| PublishError::insert_failed(ids.len(), source))?;
            if inserted {
                return Ok(ids);
            }
            topics
                .iter()
                .for_each(|topic| registry::latest::forget(topic));
        }
        Err(PublishError::SchemaChanged {
            topics: topics.iter().map(|t| (*t).to_owned()).collect(),
        })
    }

    /// The latest schema of `topic`: cached unless `fresh`. Under [`Unregistered::Reject`], a
    /// cached "no schema" is confirmed with Postgres before the message is refused.
    async fn latest_schema(
        &self,
        conn: &mut PgConnection,
        topic: &str,
        fresh: bool,
    ) -> Result<Option<Arc<SchemaVersion>>, PublishError> {
        let lookup = |source| PublishError::SchemaLookup {
            topic: topic.to_owned(),
            source,
        };
        let mut latest = if fresh {
            registry::latest::reload(conn, topic).await
        } else {
            registry::latest::latest(conn, topic).await
        }
        .map_err(lookup)?;
        if latest.is_none() && self.unregistered == Unregistered::Reject {
            if !fresh {
                latest = registry::latest::reload(conn, topic)
                    .await
                    .map_err(lookup)?;
            }
            if latest.is_none() {
                return Err(PublishError::Unregistered {
                    topic: topic.to_owned(),
                });
            }
        }
        Ok(latest)
    }

    /// Writes a typed event (see [`OutboxEvent`]) inside the transaction `conn` is in.
    pub async fn publish_event_in_tx<E: OutboxEvent + ?Sized>(
        &self,
        conn: &mut PgConnection,
        event: &E,
    ) -> Result<Uuid, PublishError> {
        self.publish_in_tx(conn, Message::from_event(event)).await
    }
}

/// Writes `message` inside the transaction `conn` is in and returns its id (UUIDv7), with the
/// default limits. On rollback of that transaction the message is gone.
///
/// Takes `&mut Transaction<'_, Postgres>` (it derefs to `PgConnection`) or a `&mut PgConnection`
/// inside a transaction begun through sqlx.
pub async fn publish_in_tx(
    conn: &mut PgConnection,
    message: Message,
) -> Result<Uuid, PublishError> {
    Publisher::default().publish_in_tx(conn, message).await
}

/// Writes all `messages` with one statement inside the transaction `conn` is in; see
/// [`Publisher::publish_batch_in_tx`].
pub async fn publish_batch_in_tx(
    conn: &mut PgConnection,
    messages: &[Message],
) -> Result<Vec<Uuid>, PublishError> {
    Publisher::default()
        .publish_batch_in_tx(conn, messages)
        .await
}

/// Writes a typed event inside the transaction `conn` is in; see [`OutboxEvent`].
pub async fn publish_event_in_tx<E: OutboxEvent + ?Sized>(
    conn: &mut PgConnection,
    event: &E,
) -> Result<Uuid, PublishError> {
    Publisher::default().publish_event_in_tx(conn, event).await
}

/// `message` with the current span context in its `traceparent` header, unless it has one
/// (see [`crate::telemetry::trace`]).
fn with_current_trace(message: Message) -> Message {
    if message.headers().contains_key(TRACEPARENT) {
        return message;
    }
    match trace::current_traceparent() {
        Some(traceparent) => message.header(TRACEPARENT, traceparent),
        None => message,
    }
}

/// For each message of a batch without a `traceparent` header, its headers plus the current
/// span context's; empty when there is no current context (nothing is copied then).
fn traced_headers(messages: &[Message]) -> Vec<Option<BTreeMap<String, String>>> {
    let Some(traceparent) = trace::current_traceparent() else {
        return Vec::new();
    };
    messages
        .iter()
        .map(|message| {
            (!message.headers().contains_key(TRACEPARENT)).then(|| {
                let mut headers = message.headers().clone();
                headers.insert(TRACEPARENT.to_owned(), traceparent.clone());
                headers
            })
        })
        .collect()
}

/// The stamp for a message validated against `schema` (`None`: the topic had no schema).
fn stamp_of(schema: Option<&SchemaVersion>) -> Option<SchemaStamp<'_>> {
    schema.map(|s| SchemaStamp {
        version: s.version,
        fingerprint: &s.fingerprint,
    })
}

/// The batch's topics, each once, in order of first appearance.
fn distinct_topics<'a>(messages: &[ValidMessage<'a>]) -> Vec<&'a str> {
    let mut topics: Vec<&str> = Vec::new();
    for message in messages {
        if !topics.contains(&message.topic) {
            topics.push(message.topic);
        }
    }
    topics
}

/// Every payload of the batch against its topic's latest schema; the first that fails is
/// reported with its index.
fn check_batch(
    messages: &[ValidMessage<'_>],
    latest: &HashMap<&str, Option<Arc<SchemaVersion>>>,
) -> Result<(), PublishError> {
    for (index, message) in messages.iter().enumerate() {
        if let Some(schema) = &latest[message.topic] {
            let errors = schema.schema.errors_in_text(message.payload.get());
            if !errors.is_empty() {
                return Err(PublishError::SchemaRejectedInBatch {
                    index,
                    topic: message.topic.to_owned(),
                    version: schema.version,
                    errors,
                });
            }
        }
    }
    Ok(())
}

/// sqlx tracks transactions it began (`pool.begin()`, `conn.begin()`); a `BEGIN` sent as plain
/// SQL is not seen and is refused here too, on purpose: use sqlx's transaction API.
fn ensure_in_transaction(conn: &PgConnection) -> Result<(), PublishError> {
    if conn.is_in_transaction() {
        Ok(())
    } else {
        Err(PublishError::NotInTransaction)
    }
}

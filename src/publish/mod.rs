//! Publishing: writing messages into `outbox.messages` inside the caller's transaction.
//!
//! The message exists if and only if that transaction commits: on rollback the row is gone
//! with the business change, so no relay ever forwards it. Every message is validated before
//! any I/O ([`InvalidMessage`]); a refused message or batch writes nothing.
//!
//! ```text
//!  Message ──validate (pure)──▶ ValidMessage ──store::messages_insert[_batch]──▶ row in the tx
//!     └─ refused: PublishError::Invalid / InvalidInBatch, nothing sent to Postgres
//! ```

mod message;

use std::borrow::Cow;

use serde::Serialize;
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

pub(crate) use message::ValidMessage;
pub use message::{InvalidMessage, MAX_KEY_BYTES, MAX_TOPIC_BYTES, Message, Preview};

use crate::store;

/// Limits applied to every message before it is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishLimits {
    /// Largest payload accepted, in bytes of compact JSON text. Default 1 MiB.
    pub max_payload_bytes: usize,
}

impl PublishLimits {
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
        index: usize,
        reason: InvalidMessage,
    },
    /// The connection is not inside a transaction, so the message would not be tied to one.
    #[error(
        "publish needs a connection inside a transaction (e.g. `let mut tx = pool.begin().await?`), \
         so the message commits or rolls back with the business change"
    )]
    NotInTransaction,
    /// Postgres refused or failed the insert; the caller's transaction is now aborted.
    #[error("could not insert {count} message(s) into outbox.messages")]
    Insert {
        count: usize,
        #[source]
        source: sqlx::Error,
    },
}

/// Publishes with explicit [`PublishLimits`]. The free functions ([`publish_in_tx`], …) use
/// `Publisher::default()`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Publisher {
    limits: PublishLimits,
}

impl Publisher {
    pub fn new(limits: PublishLimits) -> Self {
        Publisher { limits }
    }

    pub fn limits(&self) -> PublishLimits {
        self.limits
    }

    /// Writes `message` inside the transaction `conn` is in and returns its id (UUIDv7).
    /// On rollback of that transaction the message is gone.
    pub async fn publish_in_tx(
        &self,
        conn: &mut PgConnection,
        message: Message,
    ) -> Result<Uuid, PublishError> {
        let valid = message
            .validate(self.limits.max_payload_bytes)
            .map_err(PublishError::Invalid)?;
        ensure_in_transaction(conn)?;
        let id = Uuid::now_v7();
        store::messages_insert(conn, id, &valid)
            .await
            .map_err(|source| PublishError::Insert { count: 1, source })?;
        Ok(id)
    }

    /// Writes all `messages` with ONE statement inside the transaction `conn` is in, in slice
    /// order (their positions follow it), and returns their ids in the same order. Either every
    /// message passes validation and all are written, or none is.
    pub async fn publish_batch_in_tx(
        &self,
        conn: &mut PgConnection,
        messages: &[Message],
    ) -> Result<Vec<Uuid>, PublishError> {
        let valid = messages
            .iter()
            .enumerate()
            .map(|(index, message)| {
                message
                    .validate(self.limits.max_payload_bytes)
                    .map_err(|reason| PublishError::InvalidInBatch { index, reason })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if valid.is_empty() {
            return Ok(Vec::new());
        }
        ensure_in_transaction(conn)?;
        let ids: Vec<Uuid> = valid.iter().map(|_| Uuid::now_v7()).collect();
        store::messages_insert_batch(conn, &ids, &valid)
            .await
            .map_err(|source| PublishError::Insert {
                count: ids.len(),
                source,
            })?;
        Ok(ids)
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

/// sqlx tracks transactions it began (`pool.begin()`, `conn.begin()`); a `BEGIN` sent as plain
/// SQL is not seen and is refused here too, on purpose: use sqlx's transaction API.
fn ensure_in_transaction(conn: &PgConnection) -> Result<(), PublishError> {
    if conn.is_in_transaction() {
        Ok(())
    } else {
        Err(PublishError::NotInTransaction)
    }
}

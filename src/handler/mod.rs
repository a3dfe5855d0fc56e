//! Handlers: what a consumer group does with a message its route takes.
//!
//! Built in: `forward` (append the message to a stream), `drop` (consume it), `http` (POST it,
//! see [`http::HttpHandler`]), `exec` (run a program with it on stdin, see
//! [`exec::ExecHandler`]); the last two answer in the same form (`reply.rs`). In the library, any type implementing [`Handler`] can be
//! registered on the relay for a group and topic patterns.
//!
//! A handler returns zero or more [`Output`]s, each of which becomes one Redis Stream entry,
//! or an error that is either retryable (the attempt is counted and scheduled again with
//! backoff) or permanent (the message is dead at once). A call that takes longer than the
//! route's timeout, or panics, is a retryable failure of that message; the relay goes on.

pub mod exec;
pub mod http;
mod reply;

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;
use uuid::Uuid;

use crate::position::Position;
use crate::store::OutboxRow;

/// A message as a handler receives it: decoded and checked against its schema version.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DecodedMessage {
    /// The message's id (UUIDv7), as `publish_in_tx` returned it.
    pub id: Uuid,
    /// The topic it was published to.
    pub topic: String,
    /// Its ordering key, if it has one.
    pub key: Option<String>,
    /// Any nesting depth Postgres accepts; serializing the message (an HTTP body) grows the
    /// stack as it descends.
    #[serde(serialize_with = "crate::json::serialize")]
    pub payload: serde_json::Value,
    /// Its headers (with `traceparent` when the publisher was traced).
    pub headers: BTreeMap<String, String>,
    /// The schema version the payload was validated against; `None`: its topic has none.
    pub schema_version: Option<i32>,
    /// `"<tx_id>:<seq>"`.
    #[serde(serialize_with = "serialize_display")]
    pub position: Position,
    /// When the publishing transaction inserted it.
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// 1 for the first attempt, 2 for the first retry, …
    pub attempt: u32,
}

fn serialize_display<S: serde::Serializer>(
    value: &Position,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_str(value)
}

impl DecodedMessage {
    /// Parses a stored row's payload (at any depth, see [`crate::json`]) and headers (the relay
    /// calls this only for handlers that need the decoded form; `forward` passes the JSON text
    /// through untouched).
    pub fn from_row(row: &OutboxRow, attempt: u32) -> Result<DecodedMessage, serde_json::Error> {
        Ok(DecodedMessage {
            id: row.id,
            topic: row.topic.clone(),
            key: row.key.clone(),
            payload: crate::json::from_str(&row.payload)?,
            headers: serde_json::from_str(&row.headers)?,
            schema_version: row.schema_version,
            position: row.position,
            created_at: row.created_at,
            attempt,
        })
    }
}

/// One entry for Redis: the stream (named without the key prefix) and the payload that goes
/// in the entry's `payload` field. The entry's other fields (`id`, `topic`, `key`, `position`,
/// …) are the message's.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Output {
    /// The stream, named without the key prefix.
    pub stream: String,
    /// The entry's `payload` field, as JSON.
    #[serde(serialize_with = "crate::json::serialize")]
    pub payload: serde_json::Value,
}

impl Output {
    /// An entry for `stream` carrying `payload`.
    pub fn new(stream: impl Into<String>, payload: serde_json::Value) -> Output {
        Output {
            stream: stream.into(),
            payload,
        }
    }
}

/// Why a handler did not take a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandlerError {
    /// Might work later (a timeout, a 503): retried with backoff until `max_attempts`.
    Retryable(String),
    /// Will never work (a 400, a payload the handler cannot use): dead at once.
    Permanent(String),
}

impl HandlerError {
    /// A failure that may pass later, with `reason` for the logs and `last_error`.
    pub fn retryable(reason: impl Into<String>) -> HandlerError {
        HandlerError::Retryable(reason.into())
    }

    /// A failure that never will, with `reason` for the logs and `last_error`.
    pub fn permanent(reason: impl Into<String>) -> HandlerError {
        HandlerError::Permanent(reason.into())
    }

    /// True for [`HandlerError::Retryable`].
    pub fn is_retryable(&self) -> bool {
        matches!(self, HandlerError::Retryable(_))
    }

    /// Why the handler did not take the message.
    pub fn reason(&self) -> &str {
        match self {
            HandlerError::Retryable(reason) | HandlerError::Permanent(reason) => reason,
        }
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandlerError::Retryable(reason) => write!(f, "retryable: {reason}"),
            HandlerError::Permanent(reason) => write!(f, "permanent: {reason}"),
        }
    }
}

impl std::error::Error for HandlerError {}

/// A custom handler, registered on the relay with [`crate::relay::Relay::handler`].
///
/// ```
/// use outbox_relay::handler::{DecodedMessage, Handler, HandlerError, Output};
///
/// /// Sends every order to a stream per region, refusing orders without one.
/// struct ByRegion;
///
/// #[async_trait::async_trait]
/// impl Handler for ByRegion {
///     async fn handle(&self, message: &DecodedMessage) -> Result<Vec<Output>, HandlerError> {
///         let region = message.payload["region"]
///             .as_str()
///             .ok_or_else(|| HandlerError::permanent("the order has no region"))?;
///         Ok(vec![Output::new(format!("orders.{region}"), message.payload.clone())])
///     }
/// }
/// ```
#[async_trait::async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Handles one message. Called again for the same message after a retryable error, and
    /// possibly after a crash (outputs already appended are not appended twice, but the
    /// handler's own side effects may repeat: make them idempotent, e.g. keyed by `message.id`).
    async fn handle(&self, message: &DecodedMessage) -> Result<Vec<Output>, HandlerError>;

    /// Whether this handler may return outputs (default true). When Redis lost entries the
    /// relay had appended, it calls handlers again to re-derive them; one that never returns
    /// outputs (the built-in `http`) says false here and is not called again for that.
    fn has_outputs(&self) -> bool {
        true
    }
}

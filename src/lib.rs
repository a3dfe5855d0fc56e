//! # outbox-relay
//!
//! A transactional outbox for Postgres, relayed to Redis Streams.
//!
//! A row's life:
//!
//! ```text
//!  publish_in_tx ──INSERT (caller's transaction)──▶ outbox.messages
//!        │                                               │
//!        │ rollback: the row never existed               │ tail per consumer group, below the
//!        ▼                                               ▼ snapshot xmin (never skips a late commit)
//!   (nothing)                         decode → handle → append to Redis → advance the cursor
//! ```
//!
//! Modules, one concept each:
//! - [`publish`]: [`Message`], [`OutboxEvent`], [`publish_in_tx`], [`publish_batch_in_tx`] —
//!   validation happens before any I/O, and a rejected message writes nothing.
//! - [`registry`]: [`Registry`] — JSON Schema versions per topic, the compatibility rules a new
//!   version must pass, validation and `schema_version` stamping when publishing, and
//!   [`Registry::check_row`] for the relay's decode step.
//! - [`store`]: the only code that runs SQL — connecting, [`migrate`], the statements in
//!   `src/store/sql/`.
//! - [`config`]: the layered configuration (file < `DATABASE_URL`/`REDIS_URL` < `OUTBOX_*` < flags).
//! - [`position`]: a message's position `(tx_id, seq)`, printed as `"<tx_id>:<seq>"`.
//! - [`relay`]: [`relay::Relay`] — per consumer group, a lease-holding worker tails the outbox
//!   from the group's cursor, decodes and routes each message, runs its handler, appends to
//!   Redis, then advances the cursor; failures are kept in `outbox.deliveries` and retried.
//! - [`handler`]: the [`handler::Handler`] trait and the built-in `http` and `exec` handlers.
//! - [`json`]: JSON of any nesting depth Postgres accepts (parse, print, drop, validate).
//! - [`retry`]: the retry schedule (backoff with jitter, dead after `max_attempts`).
//! - [`sink`]: the effectively-once append to Redis Streams (one optimistic transaction per batch).
//! - [`telemetry`]: metric names and events, the relay's [`telemetry::Health`] for readiness,
//!   W3C `traceparent` propagation, and the logging setup.
//! - [`testing`]: helpers for applications' tests (what did this transaction publish?).

// Nothing in the library writes to stdout: it belongs to the application (a `println!` would
// also panic in `outbox-relay ... | head`).
#![deny(clippy::print_stdout)]
// Every public item says what it is and means for a caller (CI runs clippy with -D warnings).
#![warn(missing_docs)]

pub mod config;
pub mod handler;
pub mod json;
pub mod position;
pub mod publish;
mod redact;
pub mod registry;
pub mod relay;
pub mod retry;
pub mod sink;
pub mod store;
pub mod telemetry;
pub mod testing;

pub use position::Position;
pub use publish::{
    InvalidMessage, Message, OutboxEvent, PublishError, PublishLimits, Publisher,
    publish_batch_in_tx, publish_event_in_tx, publish_in_tx,
};
pub use registry::{Registry, RegistryError, Unregistered};
pub use store::{MigrateError, MigrationReport, migrate};

/// README.md's Rust examples, compiled as doc tests so the README cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// docs/library.md's Rust examples, compiled as doc tests for the same reason.
#[cfg(doctest)]
#[doc = include_str!("../docs/library.md")]
pub struct LibraryDocDoctests;

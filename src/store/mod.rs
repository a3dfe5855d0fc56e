//! The only code that runs SQL: connecting, migrating, and one function per statement (the
//! statements themselves live in `src/store/sql/`, one a file, each saying why it has its shape).
//!
//! Functions are named entity first, verb second (`messages_insert`, `messages_position`).

mod cursor_moves;
mod databases;
mod deliveries;
mod groups;
mod inspect;
mod members;
mod messages;
mod migrate;
mod notify;
mod prune;
mod repartition;
mod roles;
mod schemas;
mod stream_marks;

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};

pub use cursor_moves::{
    LockedGroup, TopicCount, consumer_groups_lock, consumer_groups_move_cursor,
    deliveries_delete_group, messages_count_between, messages_end_position, messages_first_since,
};
pub use databases::{database_create, database_drop};
pub use deliveries::{
    DeadLetter, DeadLetterFilter, DeliveryStatus, RetryNow, deliveries_dead_discard,
    deliveries_dead_list, deliveries_dead_retry, deliveries_retry_now,
};
// What the relay runs under its lease: the library's own business, not part of its API.
pub(crate) use deliveries::{
    DueDelivery, NewDelivery, ParkedKey, Settlement, deliveries_dead_letter_copied,
    deliveries_dead_letter_pending, deliveries_due, deliveries_known, deliveries_parked,
    deliveries_record, deliveries_recorded_through, deliveries_settle,
};
pub use groups::{
    GroupCursor, PauseChange, consumer_groups_cursor, consumer_groups_delete,
    consumer_groups_ensure, consumer_groups_ensure_partitions, consumer_groups_names,
    consumer_groups_partitions, consumer_groups_pause,
};
pub(crate) use groups::{
    LeaseAttempt, LeaseHolder, LeaseRefusal, consumer_groups_cursor_advance,
    consumer_groups_lease_acquire, consumer_groups_lease_release, consumer_groups_lease_renew,
};
pub(crate) use inspect::{Blockage, messages_held_back};
pub use inspect::{
    GroupStatus, StuckDelivery, StuckFilter, XminHolder, consumer_groups_status, deliveries_stuck,
    xmin_holder,
};
pub use members::{GroupMember, group_members_heartbeat, group_members_leave, group_members_list};
pub use messages::{
    OutboxRow, ReadFence, StoredMessage, VisibleRows, messages_between, messages_delete_published,
    messages_fetch_visible, messages_last_position, messages_of_current_transaction,
    messages_position,
};
pub(crate) use messages::{
    SchemaStamp, TopicStamp, messages_insert, messages_insert_batch, messages_oldest_after,
};
pub use migrate::{
    AppliedMigration, MigrateError, MigrationReport, SchemaVersion, migrate, schema_version,
};
pub use notify::{
    NOTIFY_CHANNEL, notify_trigger_drop, notify_trigger_install, notify_trigger_installed,
};
pub use prune::{Horizon, PruneBatch, consumer_groups_slowest, messages_prune_batch};
pub use repartition::{
    GroupDelivery, GroupRow, NewSplit, consumer_groups_lock_all, consumer_groups_repartition,
    deliveries_of_group, messages_not_reached,
};
pub use roles::{GrantError, RoleKind, quote_ident, roles_grant, roles_grant_sql};
pub use schemas::StoredSchema;
pub(crate) use schemas::{
    NewSchema, schemas_get, schemas_insert, schemas_latest, schemas_list, schemas_lock_topic,
};
pub(crate) use stream_marks::{StreamMark, stream_marks_of_group};

use crate::redact::ConnectionUrl;

/// A transaction id selected as `tx_id::text` (sqlx has no xid8 type).
fn decode_tx_id(tx_id: &str) -> Result<u64, sqlx::Error> {
    tx_id
        .parse::<u64>()
        .map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

/// The `application_name` our connections carry, so operators can tell them apart in
/// `pg_stat_activity` (and so the xmin-holder report can skip them).
pub const APPLICATION_NAME: &str = "outbox-relay";

/// How long connecting (and waiting for a pooled connection) may take before it is an error.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connecting to Postgres failed. The URL in the message has its password redacted; the
/// cause is in the message too (sqlx's own chain repeats itself), so there is no `source()`.
#[derive(Debug, thiserror::Error)]
#[error("could not connect to Postgres at {url}: {cause}")]
pub struct ConnectError {
    url: String,
    cause: String,
    transient: bool,
}

impl ConnectError {
    /// Whether connecting again later may work: the server is down, starting, restarting or
    /// full. False for what only a configuration change fixes (bad password, no such
    /// database or role, a TLS setting the server refuses, an invalid URL).
    pub fn is_transient(&self) -> bool {
        self.transient
    }
}

/// Whether a failed connection attempt is worth repeating (see [`ConnectError::is_transient`]).
fn connect_error_is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::Protocol(_) => true,
        // 08: connection exception; 53: insufficient resources (too many clients);
        // 57P01..57P03: the server shuts down, crashed or is starting up.
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("08") || code.starts_with("53") || code.starts_with("57P")
        }),
        _ => false,
    }
}

/// Opens a pool of at most `max_connections` to `url` and checks that one connection works.
pub async fn connect(url: &ConnectionUrl, max_connections: u32) -> Result<PgPool, ConnectError> {
    connect_inner(url, None, max_connections).await
}

/// Like [`connect`], but to another database on the same server (same user, host, TLS).
pub async fn connect_to_database(
    url: &ConnectionUrl,
    database: &str,
    max_connections: u32,
) -> Result<PgPool, ConnectError> {
    connect_inner(url, Some(database), max_connections).await
}

async fn connect_inner(
    url: &ConnectionUrl,
    database: Option<&str>,
    max_connections: u32,
) -> Result<PgPool, ConnectError> {
    let fail = |source: sqlx::Error| ConnectError {
        url: url.to_string(),
        cause: describe(&source),
        transient: connect_error_is_transient(&source),
    };
    // sqlx logs statements slower than 1 s at WARN with their whole text; operator commands
    // (prune, replay --from-time) are slow on purpose. INFO keeps it one RUST_LOG away.
    let mut options = PgConnectOptions::from_str(url.expose())
        .map_err(fail)?
        .application_name(APPLICATION_NAME)
        .log_slow_statements(log::LevelFilter::Info, Duration::from_secs(1));
    if let Some(database) = database {
        options = options.database(database);
    }
    // One direct connection first: a pool retries until its timeout and then reports only
    // "timed out", while the operator needs the real cause (refused, bad password, no database).
    let probe = tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&options))
        .await
        .map_err(|_| fail(sqlx::Error::PoolTimedOut))?
        .map_err(fail)?;
    probe.close().await.map_err(fail)?;
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(CONNECT_TIMEOUT)
        .connect_with(options)
        .await
        .map_err(fail)
}

/// One line for a sqlx error: the server's message and SQLSTATE for database errors (sqlx's
/// `Display` adds the server's C source line and repeats itself through `source()`).
pub fn describe(error: &sqlx::Error) -> String {
    match error {
        sqlx::Error::Database(db) => match db.code() {
            Some(code) => format!("{} (SQLSTATE {code})", db.message()),
            None => db.message().to_owned(),
        },
        sqlx::Error::PoolTimedOut => format!("timed out after {} s", CONNECT_TIMEOUT.as_secs()),
        other => {
            let text = other.to_string();
            if matches!(other, sqlx::Error::Tls(_)) || text.contains("certificate") {
                format!(
                    "TLS handshake failed: {text} (check that the URL's sslrootcert= names the CA that signed the server's certificate and that the URL's host is in it)"
                )
            } else {
                text
            }
        }
    }
}

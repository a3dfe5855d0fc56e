//! Statements on `outbox.messages`.

use std::collections::BTreeMap;

use serde_json::value::RawValue;
use sqlx::types::Json;
use sqlx::{Column, PgConnection, Row};
use uuid::Uuid;

use crate::position::Position;
use crate::publish::ValidMessage;

/// The schema version a message was validated against, with that version's fingerprint: the
/// insert checks that it is still the topic's latest version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SchemaStamp<'a> {
    pub version: i32,
    pub fingerprint: &'a str,
}

/// What one topic of a batch was validated against (`None`: the topic had no schema).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TopicStamp<'a> {
    pub topic: &'a str,
    pub stamp: Option<SchemaStamp<'a>>,
}

/// Inserts one message stamped with `stamp` (`None`: the topic had no schema). Returns false,
/// writing nothing, when the stamp is no longer the topic's latest version in this database.
pub(crate) async fn messages_insert(
    conn: &mut PgConnection,
    id: Uuid,
    message: &ValidMessage<'_>,
    stamp: Option<SchemaStamp<'_>>,
) -> Result<bool, sqlx::Error> {
    let query = match stamp {
        None => sqlx::query(include_str!("sql/messages_insert.sql"))
            .bind(id)
            .bind(message.topic)
            .bind(message.key)
            .bind(Json(message.payload))
            .bind(headers_param(message)),
        Some(stamp) => sqlx::query(include_str!("sql/messages_insert_stamped.sql"))
            .bind(id)
            .bind(message.topic)
            .bind(message.key)
            .bind(stamp.version)
            .bind(Json(message.payload))
            .bind(stamp.fingerprint)
            .bind(headers_param(message)),
    };
    let done = query.execute(conn).await?;
    Ok(done.rows_affected() == 1)
}

/// Inserts all `messages` in one statement; `versions[i]` is message i's schema version and
/// `stamps` holds one entry per distinct topic. Returns false, writing nothing, when any stamp
/// is no longer its topic's latest version in this database.
pub(crate) async fn messages_insert_batch(
    conn: &mut PgConnection,
    ids: &[Uuid],
    messages: &[ValidMessage<'_>],
    versions: &[Option<i32>],
    stamps: &[TopicStamp<'_>],
) -> Result<bool, sqlx::Error> {
    debug_assert_eq!(ids.len(), messages.len());
    debug_assert_eq!(versions.len(), messages.len());
    let topics: Vec<&str> = messages.iter().map(|m| m.topic).collect();
    let keys: Vec<Option<&str>> = messages.iter().map(|m| m.key).collect();
    let payloads: Vec<Json<&RawValue>> = messages.iter().map(|m| Json(m.payload)).collect();
    let headers: Vec<_> = messages.iter().map(headers_param).collect();
    let stamp_topics: Vec<&str> = stamps.iter().map(|s| s.topic).collect();
    let stamp_versions: Vec<Option<i32>> =
        stamps.iter().map(|s| s.stamp.map(|s| s.version)).collect();
    let stamp_fingerprints: Vec<Option<&str>> = stamps
        .iter()
        .map(|s| s.stamp.map(|s| s.fingerprint))
        .collect();
    let done = sqlx::query(include_str!("sql/messages_insert_batch.sql"))
        .bind(ids)
        .bind(topics)
        .bind(keys)
        .bind(versions)
        .bind(payloads)
        .bind(headers)
        .bind(stamp_topics)
        .bind(stamp_versions)
        .bind(stamp_fingerprints)
        .execute(conn)
        .await?;
    Ok(done.rows_affected() == ids.len() as u64)
}

/// Headers as a parameter: `None` for an empty map, which the statements store as `'{}'`.
fn headers_param<'a>(message: &ValidMessage<'a>) -> Option<Json<&'a BTreeMap<String, String>>> {
    (!message.headers.is_empty()).then_some(Json(message.headers))
}

/// The position of message `id`, or `None` if no such message is visible to `conn`.
pub async fn messages_position(
    conn: &mut PgConnection,
    id: Uuid,
) -> Result<Option<Position>, sqlx::Error> {
    let row: Option<(String, i64)> = sqlx::query_as(include_str!("sql/messages_position.sql"))
        .bind(id)
        .fetch_optional(conn)
        .await?;
    row.map(|(tx_id, seq)| {
        let tx_id = super::decode_tx_id(&tx_id)?;
        Ok(Position::new(tx_id, seq))
    })
    .transpose()
}

/// The highest position in the outbox (visible or not yet), `None` when it is empty.
pub async fn messages_last_position(pool: &sqlx::PgPool) -> Result<Option<Position>, sqlx::Error> {
    let row: Option<(String, i64)> = sqlx::query_as(include_str!("sql/messages_last_position.sql"))
        .fetch_optional(pool)
        .await?;
    row.map(|(tx_id, seq)| Ok(Position::new(super::decode_tx_id(&tx_id)?, seq)))
        .transpose()
}

/// Up to `limit` messages in `(after, through]`, in position order (for re-appending what
/// Redis lost: the range lies below what was appended, so every transaction in it ended).
pub async fn messages_between(
    pool: &sqlx::PgPool,
    after: Position,
    through: Position,
    limit: usize,
) -> Result<Vec<OutboxRow>, sqlx::Error> {
    let rows = sqlx::query(include_str!("sql/messages_between.sql"))
        .bind(after.tx_id.to_string())
        .bind(after.seq)
        .bind(through.tx_id.to_string())
        .bind(through.seq)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(pool)
        .await?;
    rows.iter().map(outbox_row).collect()
}

/// The position of the first message after `after`, `None` when there is none.
pub async fn messages_oldest_after(
    pool: &sqlx::PgPool,
    after: Position,
) -> Result<Option<Position>, sqlx::Error> {
    let row: Option<(String, i64)> = sqlx::query_as(include_str!("sql/messages_oldest_after.sql"))
        .bind(after.tx_id.to_string())
        .bind(after.seq)
        .fetch_optional(pool)
        .await?;
    row.map(|(tx_id, seq)| Ok(Position::new(super::decode_tx_id(&tx_id)?, seq)))
        .transpose()
}

/// A row of `outbox.messages` as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredMessage {
    /// The message's place in the outbox, `(tx_id, seq)`.
    pub position: Position,
    /// The message's id (a UUIDv7, made by the publisher).
    pub id: Uuid,
    /// The message's topic.
    pub topic: String,
    /// The ordering key; `None` when the message has none.
    pub key: Option<String>,
    /// The schema version it was validated against; `None` when the topic had no schema.
    pub schema_version: Option<i32>,
    /// Decoded at any nesting depth; one nested thousands deep is best dropped with
    /// [`crate::json::drop_value`].
    pub payload: serde_json::Value,
    /// The message's headers, string to string (empty when it has none).
    pub headers: BTreeMap<String, String>,
    /// When the row was inserted (database clock), not when its transaction committed.
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// Every message the transaction `conn` is in has published so far, in position order.
pub async fn messages_of_current_transaction(
    conn: &mut PgConnection,
) -> Result<Vec<StoredMessage>, sqlx::Error> {
    let rows = sqlx::query(include_str!("sql/messages_of_current_transaction.sql"))
        .fetch_all(conn)
        .await?;
    rows.iter()
        .map(|row| {
            let tx_id: String = row.try_get("tx_id_text")?;
            let tx_id = super::decode_tx_id(&tx_id)?;
            let Json(headers) = row.try_get("headers")?;
            Ok(StoredMessage {
                position: Position::new(tx_id, row.try_get("seq")?),
                id: row.try_get("id")?,
                topic: row.try_get("topic")?,
                key: row.try_get("key")?,
                schema_version: row.try_get("schema_version")?,
                payload: crate::json::from_str(row.try_get("payload_text")?)
                    .map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
                headers,
                created_at: row.try_get("created_at")?,
            })
        })
        .collect()
}

/// A committed message as the relay reads it: payload and headers stay JSON text, which is
/// what goes to Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    /// The message's place in the outbox, `(tx_id, seq)`: the order the relay reads in.
    pub position: Position,
    /// The message's id (a UUIDv7, made by the publisher).
    pub id: Uuid,
    /// The message's topic.
    pub topic: String,
    /// The ordering key; `None` when the message has none.
    pub key: Option<String>,
    /// The schema version it was validated against; `None` when the topic had no schema.
    pub schema_version: Option<i32>,
    /// The payload's JSON text as Postgres prints it (`payload::text`).
    pub payload: String,
    /// The headers' JSON text: an object of strings, `{}` when there are none.
    pub headers: String,
    /// When the row was inserted (database clock), not when its transaction committed.
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// A read of the outbox for the groups of one relay process standing at the same cursor.
#[derive(Debug, Clone, Default)]
pub struct VisibleRows {
    /// Of the groups asked for, those whose lease the owner still holds.
    pub leased: Vec<String>,
    /// The messages past the cursor, in position order, all from ended transactions (below the
    /// snapshot xmin).
    pub rows: Vec<OutboxRow>,
}

/// Whose leases a read is fenced by: one owner, and each group with the epoch it holds.
#[derive(Debug, Clone, Copy)]
pub struct ReadFence<'a> {
    /// The relay's identity (`lease_owner`) that must hold each group's lease.
    pub owner: &'a str,
    /// The groups read for, all standing at the cursor read from.
    pub groups: &'a [String],
    /// `epochs[i]` is the lease epoch held for `groups[i]`.
    pub epochs: &'a [i64],
}

/// Up to `limit` messages after `after`, in position order, from transactions that have all
/// ended (below the snapshot xmin), and which of `fence`'s groups still hold their lease.
pub async fn messages_fetch_visible(
    pool: &sqlx::PgPool,
    fence: ReadFence<'_>,
    after: Position,
    limit: usize,
) -> Result<VisibleRows, sqlx::Error> {
    let rows = sqlx::query(include_str!("sql/messages_fetch_visible.sql"))
        .bind(after.tx_id.to_string())
        .bind(after.seq)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .bind(fence.groups)
        .bind(fence.owner)
        .bind(fence.epochs)
        .fetch_all(pool)
        .await?;
    let mut visible = VisibleRows {
        leased: match rows.first() {
            Some(row) => row.try_get("leased")?,
            None => Vec::new(),
        },
        rows: Vec::with_capacity(rows.len()),
    };
    for row in &rows {
        // With nothing past the cursor the one row has NULL message columns.
        if row.try_get::<Option<&str>, _>("tx_id_text")?.is_some() {
            visible.rows.push(outbox_row(row)?);
        }
    }
    Ok(visible)
}

/// An [`OutboxRow`] from a statement that selects the message columns as
/// `messages_fetch_visible.sql` does (`tx_id_text`, `payload_text`, `headers_text`, …).
pub(super) fn outbox_row(row: &sqlx::postgres::PgRow) -> Result<OutboxRow, sqlx::Error> {
    // By position, in the order `OUTBOX_ROW_COLUMNS` names them (a lookup by name hashes the
    // column name for every column of every row); the first column is checked by name once
    // per row (debug builds check every name).
    let at = row.try_column(OUTBOX_ROW_COLUMNS[0])?.ordinal();
    debug_assert!(
        OUTBOX_ROW_COLUMNS
            .iter()
            .enumerate()
            .all(|(i, name)| row.columns().get(at + i).is_some_and(|c| c.name() == *name)),
        "the statement's message columns are not in OUTBOX_ROW_COLUMNS order"
    );
    let tx_id: &str = row.try_get(at)?;
    let tx_id = super::decode_tx_id(tx_id)?;
    Ok(OutboxRow {
        position: Position::new(tx_id, row.try_get(at + 1)?),
        id: row.try_get(at + 2)?,
        topic: row.try_get(at + 3)?,
        key: row.try_get(at + 4)?,
        schema_version: row.try_get(at + 5)?,
        payload: row.try_get(at + 6)?,
        headers: row.try_get(at + 7)?,
        created_at: row.try_get(at + 8)?,
    })
}

/// The message columns of a statement [`outbox_row`] reads, in this order, one after another.
const OUTBOX_ROW_COLUMNS: [&str; 9] = [
    "tx_id_text",
    "seq",
    "id",
    "topic",
    "key",
    "schema_version",
    "payload_text",
    "headers_text",
    "created_at",
];

/// Deletes the messages with these `ids` whose topic is one of `topics` and that no delivery
/// row references (`demo` removing what it published); returns how many went.
pub async fn messages_delete_published(
    pool: &sqlx::PgPool,
    ids: &[Uuid],
    topics: &[&str],
) -> Result<u64, sqlx::Error> {
    let mut deleted = 0;
    // One statement per 10,000 ids: each a short transaction, whatever the demo's size.
    for chunk in ids.chunks(10_000) {
        deleted += sqlx::query(include_str!("sql/messages_delete_published.sql"))
            .bind(chunk)
            .bind(topics)
            .execute(pool)
            .await?
            .rows_affected();
    }
    Ok(deleted)
}

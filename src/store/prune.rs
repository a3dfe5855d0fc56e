//! Pruning the outbox: deleting old messages every group has passed and no delivery row
//! references, in small batches (each its own short statement), oldest position first.
//!
//! A batch looks at the next messages in position order up to the horizon (the slowest group's
//! cursor) and stops at the first one younger than the cut-off, so prune removes the old prefix
//! of the outbox and reads only what it looks at; a message kept by a delivery row is stepped
//! over, not re-read by later batches.

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Row};

use crate::position::Position;

/// What one batch did (or, in a dry run, would do).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PruneBatch {
    /// Deleted now (0 in a dry run).
    pub deleted: i64,
    /// Old enough, passed by every group, and not referenced: deleted unless a dry run.
    pub deletable: i64,
    /// Old enough and passed, but a delivery row (retrying, blocked, dead) keeps them.
    pub referenced: i64,
    /// The last old message looked at: where the next batch starts. `None`: nothing old here.
    pub last: Option<Position>,
    /// The batch reached a message at or after the cut-off, or the horizon: prune is done.
    pub done: bool,
}

/// The slowest group and its cursor: nothing past it may be pruned.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Horizon {
    /// The group whose cursor is furthest behind.
    pub group: String,
    /// Its cursor: prune deletes nothing past it.
    pub cursor: Position,
}

/// The slowest group's cursor; `None` when there are no groups (then nothing is prunable:
/// no group has said what it has passed).
pub async fn consumer_groups_slowest(pool: &PgPool) -> Result<Option<Horizon>, sqlx::Error> {
    let row: Option<(String, String, i64)> =
        sqlx::query_as(include_str!("sql/consumer_groups_slowest.sql"))
            .fetch_optional(pool)
            .await?;
    row.map(|(group, tx_id, seq)| {
        Ok(Horizon {
            group,
            cursor: Position::new(super::decode_tx_id(&tx_id)?, seq),
        })
    })
    .transpose()
}

/// One prune batch of at most `size` messages after `after`, older than `cutoff`.
pub async fn messages_prune_batch(
    pool: &PgPool,
    after: Position,
    cutoff: DateTime<Utc>,
    size: i64,
    dry_run: bool,
) -> Result<PruneBatch, sqlx::Error> {
    let row = sqlx::query(include_str!("sql/messages_prune_batch.sql"))
        .bind(after.tx_id.to_string())
        .bind(after.seq)
        .bind(cutoff)
        .bind(size)
        .bind(dry_run)
        .fetch_one(pool)
        .await?;
    let last_tx_id: Option<String> = row.try_get("last_tx_id_text")?;
    let last_seq: Option<i64> = row.try_get("last_seq")?;
    let last = match (last_tx_id, last_seq) {
        (Some(tx_id), Some(seq)) => Some(Position::new(super::decode_tx_id(&tx_id)?, seq)),
        _ => None,
    };
    let looked_at: i64 = row.try_get("looked_at")?;
    let reached_cutoff: bool = row.try_get("reached_cutoff")?;
    Ok(PruneBatch {
        deleted: row.try_get("deleted")?,
        deletable: row.try_get("deletable")?,
        referenced: row.try_get("referenced")?,
        last,
        done: reached_cutoff || looked_at < size || last.is_none(),
    })
}

//! Deliberate cursor moves by an operator: `replay` (back) and `groups reset` (to the start or
//! the end). Each runs in one transaction that locks the group's row, counts what the move
//! passes over, and (unless a dry run) moves the cursor, bumps the replay generation and takes
//! the lease away:
//!
//! ```text
//!   lock group row ──▶ count (old cursor, new cursor] per topic ──▶ move + generation + 1
//!        │                                                          + lease taken ──▶ commit
//!        └─────────────── dry run: roll back ◀──────────────────────────┘
//! ```
//!
//! The generation is what lets a replay through the Redis duplicate filter (see `sink`).

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, Postgres, Row, Transaction};

use crate::position::Position;

/// A group's row (every partition's, for a partitioned group), locked for the rest of the
/// transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockedGroup {
    /// Every row's cursor before any move (one for an unpartitioned group), furthest first;
    /// never empty.
    pub cursors: Vec<Position>,
    /// The relay holding the lease (expired or not); `None` when nobody does.
    pub lease_owner: Option<String>,
}

/// Messages of one topic in a position range, and how many of them have a delivery row in
/// the group (those keep their state: a replay does not send them again).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TopicCount {
    /// The topic these counts are for.
    pub topic: String,
    /// Messages of the topic in the range.
    pub messages: i64,
    /// Of those, the ones with a delivery row in the group (retrying, blocked or dead).
    pub with_delivery_row: i64,
}

/// Locks `group`'s row until `tx` ends; `None` when there is no such group.
pub async fn consumer_groups_lock(
    tx: &mut Transaction<'_, Postgres>,
    group: &str,
) -> Result<Option<LockedGroup>, sqlx::Error> {
    // A partitioned group: every partition's row is locked; the furthest is returned.
    let rows: Vec<(String, i64, Option<String>)> =
        sqlx::query_as(include_str!("sql/consumer_groups_lock.sql"))
            .bind(group)
            .fetch_all(&mut **tx)
            .await?;
    let lease_owner = rows.iter().find_map(|(_, _, owner)| owner.clone());
    let cursors = rows
        .iter()
        .map(|(tx_id, seq, _)| Ok(Position::new(super::decode_tx_id(tx_id)?, *seq)))
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    Ok((!cursors.is_empty()).then_some(LockedGroup {
        cursors,
        lease_owner,
    }))
}

impl LockedGroup {
    /// The group's cursor: the last position it has passed (the furthest partition's).
    pub fn cursor(&self) -> Position {
        self.cursors[0]
    }

    /// Whether moving to `to` changes any row's cursor (with `back_only`, only rows past it
    /// move).
    pub fn moves_to(&self, to: Position, back_only: bool) -> bool {
        self.cursors
            .iter()
            .any(|&cursor| if back_only { cursor > to } else { cursor != to })
    }

    /// The cursor a move to `to` starts from, as reports show it: the row furthest from `to`
    /// (the least cursor when moving forward, the furthest when moving back).
    pub fn from_for(&self, to: Position) -> Position {
        if to >= self.cursor() {
            self.cursors[self.cursors.len() - 1]
        } else {
            self.cursor()
        }
    }
}

/// Sets `group`'s cursor to `to` (every partition's, for a partitioned group; with
/// `back_only`, a partition already before `to` stays), bumps its replay generation and takes
/// its lease away; returns the new generation (the highest, for a partitioned group).
pub async fn consumer_groups_move_cursor(
    tx: &mut Transaction<'_, Postgres>,
    group: &str,
    to: Position,
    back_only: bool,
) -> Result<i64, sqlx::Error> {
    let generations: Vec<i64> =
        sqlx::query_scalar(include_str!("sql/consumer_groups_move_cursor.sql"))
            .bind(group)
            .bind(to.tx_id.to_string())
            .bind(to.seq)
            .bind(back_only)
            .fetch_all(&mut **tx)
            .await?;
    generations
        .into_iter()
        .max()
        .ok_or(sqlx::Error::RowNotFound)
}

/// What moving `group` to `to` passes over, per topic (for each row that moves — with
/// `back_only`, those past `to` — the messages of its own partition between its cursor and
/// `to`), with how many have a delivery row in the group.
pub async fn messages_count_between(
    conn: &mut PgConnection,
    group: &str,
    to: Position,
    back_only: bool,
) -> Result<Vec<TopicCount>, sqlx::Error> {
    let rows = sqlx::query(include_str!("sql/messages_count_between.sql"))
        .bind(group)
        .bind(to.tx_id.to_string())
        .bind(to.seq)
        .bind(back_only)
        .fetch_all(conn)
        .await?;
    rows.iter()
        .map(|row| {
            Ok(TopicCount {
                topic: row.try_get("topic")?,
                messages: row.try_get("messages")?,
                with_delivery_row: row.try_get("with_delivery_row")?,
            })
        })
        .collect()
}

/// The first message (position order) written at or after `since`, not past `through`.
pub async fn messages_first_since(
    conn: &mut PgConnection,
    since: DateTime<Utc>,
    through: Position,
) -> Result<Option<Position>, sqlx::Error> {
    let row: Option<(String, i64)> = sqlx::query_as(include_str!("sql/messages_first_since.sql"))
        .bind(since)
        .bind(through.tx_id.to_string())
        .bind(through.seq)
        .fetch_optional(conn)
        .await?;
    row.map(|(tx_id, seq)| Ok(Position::new(super::decode_tx_id(&tx_id)?, seq)))
        .transpose()
}

/// Where `groups reset --to-end` puts a cursor: past every message of every ended
/// transaction, before those of transactions still running.
pub async fn messages_end_position(conn: &mut PgConnection) -> Result<Position, sqlx::Error> {
    let (tx_id, seq): (String, i64) = sqlx::query_as(include_str!("sql/messages_end_position.sql"))
        .fetch_one(conn)
        .await?;
    Ok(Position::new(super::decode_tx_id(&tx_id)?, seq))
}

/// Deletes every delivery row of `group`; returns (status, how many) pairs.
pub async fn deliveries_delete_group(
    tx: &mut Transaction<'_, Postgres>,
    group: &str,
) -> Result<Vec<(String, i64)>, sqlx::Error> {
    sqlx::query_as(include_str!("sql/deliveries_delete_group.sql"))
        .bind(group)
        .fetch_all(&mut **tx)
        .await
}

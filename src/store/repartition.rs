//! `groups repartition`: a group's rows, the messages its partitions have not reached, and the
//! writes that split it into another number of partitions — all in the caller's transaction.
//!
//! ```text
//!   lock every row ──▶ new rows at the furthest cursor ──▶ delivery rows moved to their new
//!   partition, and the messages not reached yet added as due (or blocked) ones ──▶ old rows retired
//! ```

use sqlx::{Postgres, Row, Transaction};
use uuid::Uuid;

use crate::position::Position;

/// One row of a group in `outbox.consumer_groups`, locked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRow {
    /// `<group>` or `<group>/<partition>`.
    pub name: String,
    /// Which partition, for a partitioned group's row.
    pub partition: Option<i32>,
    /// How many partitions the group had when this row was written.
    pub partitions: i32,
    /// Its cursor.
    pub cursor: Position,
    /// Whether a relay holds its lease (not expired).
    pub leased: bool,
    /// Who holds or last held its lease.
    pub lease_owner: Option<String>,
    /// Paused by `groups pause`.
    pub paused: bool,
    /// Left behind by an earlier repartition.
    pub retired: bool,
    /// Its replay generation (the sink's duplicate filter is per generation).
    pub replay_generation: i64,
}

/// Every row of `group`, retired ones included, locked until `tx` ends.
pub async fn consumer_groups_lock_all(
    tx: &mut Transaction<'_, Postgres>,
    group: &str,
) -> Result<Vec<GroupRow>, sqlx::Error> {
    let rows = sqlx::query(include_str!("sql/consumer_groups_lock_all.sql"))
        .bind(group)
        .fetch_all(&mut **tx)
        .await?;
    rows.iter()
        .map(|row| {
            let tx_id: &str = row.try_get("cursor_tx_id_text")?;
            Ok(GroupRow {
                name: row.try_get("name")?,
                partition: row.try_get("partition")?,
                partitions: row.try_get("partitions")?,
                cursor: Position::new(super::decode_tx_id(tx_id)?, row.try_get("cursor_seq")?),
                leased: row.try_get("leased")?,
                lease_owner: row.try_get("lease_owner")?,
                paused: row.try_get("paused")?,
                retired: row.try_get("retired")?,
                replay_generation: row.try_get("replay_generation")?,
            })
        })
        .collect()
}

/// The messages up to `through` that their partition has not reached (id, key, topic),
/// position order.
pub async fn messages_not_reached(
    tx: &mut Transaction<'_, Postgres>,
    group: &str,
    through: Position,
) -> Result<Vec<(Uuid, Option<String>, String)>, sqlx::Error> {
    sqlx::query_as(include_str!("sql/messages_not_reached.sql"))
        .bind(group)
        .bind(through.tx_id.to_string())
        .bind(through.seq)
        .fetch_all(&mut **tx)
        .await
}

/// One delivery row of a group, as `groups repartition` moves it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct GroupDelivery {
    /// The message.
    #[sqlx(rename = "message_id")]
    pub id: Uuid,
    /// Its key.
    #[sqlx(rename = "message_key")]
    pub key: Option<String>,
    /// `retrying`, `blocked` or `dead`.
    pub status: String,
    /// The group row it belongs to (`<group>` or `<group>/<partition>`).
    pub group_name: String,
    /// For a dead row: its dead-letter copy is still to be appended.
    pub dead_letter_pending: bool,
}

impl GroupDelivery {
    /// Whether the relay still has something to append for it: a retry, or a dead-letter copy.
    pub fn appends_pending(&self) -> bool {
        self.status != "dead" || self.dead_letter_pending
    }
}

/// Every delivery row of `group`, position order.
pub async fn deliveries_of_group(
    tx: &mut Transaction<'_, Postgres>,
    group: &str,
) -> Result<Vec<GroupDelivery>, sqlx::Error> {
    sqlx::query_as(include_str!("sql/deliveries_of_group.sql"))
        .bind(group)
        .fetch_all(&mut **tx)
        .await
}

/// The new split of a group, written by [`consumer_groups_repartition`].
#[derive(Debug, Clone, Default)]
pub struct NewSplit<'a> {
    /// How many partitions (1: unpartitioned).
    pub partitions: u32,
    /// Where every partition starts.
    pub cursor: Position,
    /// Whether the group stays paused.
    pub paused: bool,
    /// Delivery rows to move: message id → new row name.
    pub moves: Vec<(Uuid, &'a str)>,
    /// Messages not reached: message id → new row name and status (`retrying`, `blocked`).
    pub not_reached: Vec<(Uuid, &'a str, &'static str)>,
}

/// Writes `split` for `group`: its rows (created, updated or revived), the delivery rows
/// moved and added, the other rows retired.
pub async fn consumer_groups_repartition(
    tx: &mut Transaction<'_, Postgres>,
    group: &str,
    split: &NewSplit<'_>,
) -> Result<(), sqlx::Error> {
    let names: Vec<String> =
        sqlx::query_scalar(include_str!("sql/consumer_groups_repartition.sql"))
            .bind(group)
            .bind(split.partitions as i32)
            .bind(split.cursor.tx_id.to_string())
            .bind(split.cursor.seq)
            .bind(split.paused)
            .fetch_all(&mut **tx)
            .await?;
    let (ids, rows): (Vec<Uuid>, Vec<&str>) = split.moves.iter().copied().unzip();
    sqlx::query(include_str!("sql/deliveries_move.sql"))
        .bind(group)
        .bind(&ids)
        .bind(&rows)
        .execute(&mut **tx)
        .await?;
    let ids: Vec<Uuid> = split.not_reached.iter().map(|n| n.0).collect();
    let rows: Vec<&str> = split.not_reached.iter().map(|n| n.1).collect();
    let statuses: Vec<&str> = split.not_reached.iter().map(|n| n.2).collect();
    sqlx::query(include_str!("sql/deliveries_insert_not_reached.sql"))
        .bind(&ids)
        .bind(&rows)
        .bind(&statuses)
        .execute(&mut **tx)
        .await?;
    sqlx::query(include_str!("sql/consumer_groups_retire.sql"))
        .bind(group)
        .bind(&names)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

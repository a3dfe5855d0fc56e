//! Statements that look at the relay from outside: group status, who holds the xmin back, what
//! is stuck.

use serde_json::value::RawValue;
use sqlx::{PgPool, Row};

use crate::position::Position;

/// One group as `outbox-relay status` shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct GroupStatus {
    /// The row's name: the group's, or `<group>/<partition>` for a partition of a
    /// partitioned group (one status per partition).
    pub name: String,
    /// The consumer group.
    pub group: String,
    /// Which partition this is, for a partitioned group.
    pub partition: Option<i32>,
    /// How many partitions the group has (1: unpartitioned).
    pub partitions: i32,
    /// The last position the group has passed.
    pub cursor: Position,
    /// Set by `groups pause`: no relay takes the lease until `groups resume`.
    pub paused: bool,
    /// The relay holding the lease (expired or not); `None` when nobody does.
    pub lease_owner: Option<String>,
    /// Grows by one at every acquisition of the lease; 0 before the first.
    pub lease_epoch: i64,
    /// When the lease runs out unless renewed (database clock); `None` when nobody holds it.
    pub lease_expires_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Bumped by every replay or reset (see `outbox.consumer_groups.replay_generation`).
    pub replay_generation: i64,
    /// Messages past the cursor: exact up to 10,000, estimated from positions above that.
    pub lag_messages: i64,
    /// `lag_messages` is an estimate.
    pub lag_estimated: bool,
    /// Age of the oldest undelivered message (past the cursor, or retrying/blocked); 0 if none.
    pub lag_seconds: f64,
    /// Of the messages past the cursor, those committed but waiting for an older open
    /// transaction (counted up to 10,000).
    pub held_back: i64,
    /// `created_at` of the message `lag_seconds` measures; `None` when none is undelivered.
    pub oldest_undelivered_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Deliveries waiting for their next attempt (`retrying`).
    pub retrying: i64,
    /// Deliveries waiting behind an earlier message of their key (`blocked`).
    pub blocked: i64,
    /// Dead letters (`dead`).
    pub dead: i64,
    /// The cursor names a transaction id the server has not reached (dump/restore).
    pub cursor_ahead: bool,
}

/// The open transaction every relay waits for.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct XminHolder {
    /// The session's backend process id; `None` for a prepared transaction.
    pub pid: Option<i32>,
    /// `pg_stat_activity.state` (`idle in transaction`, `active`, …), `prepared`, or `unknown`.
    pub state: String,
    /// How long its transaction has been open (a prepared one: since it was prepared), in seconds.
    pub age_seconds: f64,
    /// The session's `application_name`; empty when unset and for a prepared transaction.
    pub application_name: String,
    /// Set when the holder is a prepared (two-phase) transaction.
    pub prepared_gid: Option<String>,
}

/// Status of every group (or of `only`).
pub async fn consumer_groups_status(
    pool: &PgPool,
    only: Option<&str>,
) -> Result<Vec<GroupStatus>, sqlx::Error> {
    let rows = sqlx::query(include_str!("sql/consumer_groups_status.sql"))
        .bind(only)
        .fetch_all(pool)
        .await?;
    rows.iter()
        .map(|row| {
            let tx_id: &str = row.try_get("cursor_tx_id_text")?;
            let tx_id = super::decode_tx_id(tx_id)?;
            Ok(GroupStatus {
                name: row.try_get("row_name")?,
                group: row.try_get("group_name")?,
                partition: row.try_get("partition")?,
                partitions: row.try_get("partitions")?,
                cursor: Position::new(tx_id, row.try_get("cursor_seq")?),
                paused: row.try_get("paused")?,
                lease_owner: row.try_get("lease_owner")?,
                lease_epoch: row.try_get("lease_epoch")?,
                lease_expires_at: row.try_get("lease_expires_at")?,
                replay_generation: row.try_get("replay_generation")?,
                lag_messages: row.try_get("lag_messages")?,
                lag_estimated: row.try_get("lag_estimated")?,
                lag_seconds: row.try_get("lag_seconds")?,
                held_back: row.try_get("held_back")?,
                oldest_undelivered_at: row.try_get("oldest_undelivered_at")?,
                retrying: row.try_get("retrying")?,
                blocked: row.try_get("blocked")?,
                dead: row.try_get("dead")?,
                cursor_ahead: row.try_get("cursor_ahead")?,
            })
        })
        .collect()
}

/// The session or prepared transaction holding the snapshot xmin, if any.
pub async fn xmin_holder(pool: &PgPool) -> Result<Option<XminHolder>, sqlx::Error> {
    let row = sqlx::query(include_str!("sql/xmin_holder.sql"))
        .fetch_optional(pool)
        .await?;
    row.map(|row| {
        Ok(XminHolder {
            pid: row.try_get("pid")?,
            state: row.try_get("state")?,
            age_seconds: row.try_get("age_seconds")?,
            application_name: row.try_get("application_name")?,
            prepared_gid: row.try_get("prepared_gid")?,
        })
    })
    .transpose()
}

/// What stands between a caught-up group and the messages past its cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blockage {
    /// Committed messages past the cursor wait for an older open transaction.
    pub held_back: bool,
    /// The cursor lies ahead of every transaction id the server has handed out.
    pub cursor_ahead: bool,
    /// The next transaction id the server will hand out.
    pub next_tx_id: String,
}

/// Checks a caught-up group's cursor for the two reasons it could wait: an open transaction
/// holding the xmin back, or a cursor from another cluster.
pub async fn messages_held_back(pool: &PgPool, cursor: Position) -> Result<Blockage, sqlx::Error> {
    let (held_back, cursor_ahead, next_tx_id) =
        sqlx::query_as(include_str!("sql/messages_held_back.sql"))
            .bind(cursor.tx_id.to_string())
            .bind(cursor.seq)
            .fetch_one(pool)
            .await?;
    Ok(Blockage {
        held_back,
        cursor_ahead,
        next_tx_id,
    })
}

/// One delivery that did not go through first time, as `outbox-relay stuck` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StuckDelivery {
    /// The consumer group (`group_name`).
    pub group: String,
    /// The message (`outbox.messages.id`).
    pub message_id: uuid::Uuid,
    /// `retrying`, `blocked` or `dead`.
    pub status: String,
    /// The message's position as `"<tx_id>:<seq>"`.
    pub position: String,
    /// The message's topic.
    pub topic: String,
    /// The message's ordering key; `None` when it has none.
    pub key: Option<String>,
    /// The payload's JSON text as Postgres prints it, kept as text (never decoded), so that a
    /// payload nested deeper than any parser's limit is shown like any other.
    pub payload: Box<RawValue>,
    /// Failed attempts so far (0 for a blocked delivery).
    pub attempts: i32,
    /// The last attempt's error; `None` while no attempt has failed (a blocked delivery).
    pub last_error: Option<String>,
    /// When a retrying delivery is due (database clock); `None` when blocked or dead.
    pub next_attempt_at: Option<chrono::DateTime<chrono::Utc>>,
    /// When the delivery row was written: the first failure, or the message being blocked.
    pub first_failed_at: chrono::DateTime<chrono::Utc>,
    /// For a blocked delivery: the earlier message of its key it waits for.
    pub blocked_by: Option<uuid::Uuid>,
}

/// Which stuck deliveries: each `None` = any.
#[derive(Debug, Clone, Default)]
pub struct StuckFilter {
    /// Only this consumer group's deliveries.
    pub group: Option<String>,
    /// Only those of messages of this topic.
    pub topic: Option<String>,
    /// At most this many (SQL `LIMIT`; the default 0 returns none).
    pub limit: i64,
}

/// Retrying, blocked and dead deliveries matching `filter`, in group and position order.
pub async fn deliveries_stuck(
    pool: &PgPool,
    filter: &StuckFilter,
) -> Result<Vec<StuckDelivery>, sqlx::Error> {
    let rows = sqlx::query(include_str!("sql/deliveries_stuck.sql"))
        .bind(filter.group.as_deref())
        .bind(filter.topic.as_deref())
        .bind(filter.limit)
        .fetch_all(pool)
        .await?;
    rows.iter()
        .map(|row| {
            let payload: String = row.try_get("payload_text")?;
            Ok(StuckDelivery {
                group: row.try_get("group_name")?,
                message_id: row.try_get("message_id")?,
                status: row.try_get("status")?,
                position: row.try_get("position")?,
                topic: row.try_get("topic")?,
                key: row.try_get("key")?,
                payload: RawValue::from_string(payload)
                    .map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
                attempts: row.try_get("attempts")?,
                last_error: row.try_get("last_error")?,
                next_attempt_at: row.try_get("next_attempt_at")?,
                first_failed_at: row.try_get("first_failed_at")?,
                blocked_by: row.try_get("blocked_by")?,
            })
        })
        .collect()
}

//! Statements on `outbox.deliveries`: the retry state of messages that did not go through first
//! time, per consumer group (DESIGN §4).
//!
//! ```text
//!   first attempt fails ──▶ retrying ──(attempts exhausted / permanent error)──▶ dead
//!                              │  └──(attempt succeeds)──▶ row deleted
//!   key parked ──▶ blocked ──(earlier message of the key done or dead)──▶ retrying, due now
//!   operator: retry (retrying|dead → due now), dead retry (dead → due now), dead discard (delete)
//! ```
//! The relay's writes are fenced by its lease ([`LeaseHolder`]): each runs in a transaction
//! that first checks, with a row lock, that the lease is still the caller's.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Row, Transaction};
use uuid::Uuid;

use super::groups::LeaseHolder;
use super::messages::{OutboxRow, outbox_row};
use crate::position::Position;

/// Longest `last_error` stored, in bytes; longer texts keep their head and say they were cut.
pub const MAX_ERROR_BYTES: usize = 2048;

/// The state of a delivery row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    /// Tried again once `next_attempt_at` (database clock) has come: it failed, or it was
    /// blocked and the message it waited for is done or dead.
    Retrying,
    /// Not tried yet (`attempts` 0): waits behind an earlier retrying message of its key
    /// (`ordering = "key"`) and becomes retrying, due at once, when that one is done or dead.
    Blocked,
    /// Failed for good (a permanent error, or `max_attempts` reached): a dead letter.
    Dead,
}

impl DeliveryStatus {
    /// The value stored in `outbox.deliveries.status`.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Retrying => "retrying",
            DeliveryStatus::Blocked => "blocked",
            DeliveryStatus::Dead => "dead",
        }
    }

    fn parse(text: &str) -> Result<DeliveryStatus, sqlx::Error> {
        match text {
            "retrying" => Ok(DeliveryStatus::Retrying),
            "blocked" => Ok(DeliveryStatus::Blocked),
            "dead" => Ok(DeliveryStatus::Dead),
            other => Err(sqlx::Error::Decode(
                format!("unknown delivery status `{other}`").into(),
            )),
        }
    }
}

impl std::fmt::Display for DeliveryStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A first-pass failure to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDelivery {
    /// The message (`outbox.messages.id`).
    pub message_id: Uuid,
    /// The message's position, stored as `message_tx_id`/`message_seq`.
    pub position: Position,
    /// The message's ordering key, stored as `message_key`; `None` when it has none.
    pub key: Option<String>,
    /// Where the first pass left the message: retrying, blocked or dead.
    pub status: DeliveryStatus,
    /// Failed attempts so far (0 for a blocked message).
    pub attempts: i32,
    /// The handler's error, stored cut to [`MAX_ERROR_BYTES`]; `None` for a blocked message.
    pub last_error: Option<String>,
    /// When `status` is retrying: how long from now (database clock) the next attempt is due.
    pub delay: Option<Duration>,
}

/// What became of a retried message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settlement {
    /// It went through: the row is deleted.
    Done,
    /// It failed again and will be retried after `delay`.
    Retry {
        /// Failed attempts so far, this one included.
        attempts: i32,
        /// This attempt's error, stored as `last_error` (cut to [`MAX_ERROR_BYTES`]).
        error: String,
        /// How long from now (database clock) the next attempt is due.
        delay: Duration,
    },
    /// It failed for good.
    Dead {
        /// Failed attempts in all, this one included.
        attempts: i32,
        /// This attempt's error, stored as `last_error` (cut to [`MAX_ERROR_BYTES`]).
        error: String,
    },
}

/// A retry whose time has come: the failed attempts so far and the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueDelivery {
    /// Failed attempts so far: the retry about to run is attempt `attempts + 1`.
    pub attempts: i32,
    /// The message, as the relay reads it.
    pub row: OutboxRow,
}

/// One parked key of a group (`None`: unkeyed messages) and how long until its soonest retry
/// is due (zero when overdue; `None` when it only has blocked messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParkedKey {
    /// The ordering key (`message_key`); `None` stands for the group's unkeyed messages.
    pub key: Option<String>,
    /// Until the key's soonest retry is due: zero when overdue, `None` when the key has only
    /// blocked messages.
    pub due_in: Option<Duration>,
}

/// A dead letter, as operators see it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeadLetter {
    /// The consumer group whose delivery died (`group_name`).
    pub group: String,
    /// The message (`outbox.messages.id`).
    pub message_id: Uuid,
    /// The message's topic.
    pub topic: String,
    /// The message's ordering key; `None` when it has none.
    pub key: Option<String>,
    /// The message's position as `"<tx_id>:<seq>"`.
    pub position: String,
    /// Failed attempts in all.
    pub attempts: i32,
    /// The last attempt's error (`last_error`, at most 2,048 bytes as the relay writes it).
    pub last_error: Option<String>,
    /// When the first attempt in this group failed (the row was written).
    pub first_failed_at: DateTime<Utc>,
    /// The row's last change: when it went dead (or, from `dead retry`, when it was made due).
    pub updated_at: DateTime<Utc>,
}

/// Which dead letters an operator command applies to; `None` = any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeadLetterFilter {
    /// Only this consumer group's dead letters.
    pub group: Option<String>,
    /// Only those of messages of this topic.
    pub topic: Option<String>,
    /// Only those whose first failure (`first_failed_at`) is at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Only those of this message.
    pub message_id: Option<Uuid>,
}

/// One group's delivery of a message that `retry` looked at.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RetryNow {
    /// The consumer group of the delivery.
    pub group: String,
    /// The delivery's status before the command.
    pub previous_status: DeliveryStatus,
    /// Whether it became due now: false for a blocked delivery, which waits for the earlier
    /// message of its key.
    pub changed: bool,
}

/// `error`, cut to [`MAX_ERROR_BYTES`] on a character boundary, saying so when cut.
pub fn truncate_error(error: &str) -> String {
    if error.len() <= MAX_ERROR_BYTES {
        return error.to_owned();
    }
    let mut end = MAX_ERROR_BYTES - 20;
    while !error.is_char_boundary(end) {
        end -= 1;
    }
    format!("{} … [truncated]", &error[..end])
}

fn millis(delay: Option<Duration>) -> Option<i64> {
    delay.map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Begins a transaction that writes delivery state for `holder`: it first checks the lease,
/// locking the group row against a takeover until the transaction ends. `None`: the lease is
/// gone, write nothing (the transaction is rolled back on drop).
async fn begin_fenced(
    pool: &PgPool,
    holder: &LeaseHolder<'_>,
) -> Result<Option<Transaction<'static, Postgres>>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let held: Option<bool> =
        sqlx::query_scalar(include_str!("sql/consumer_groups_lease_check.sql"))
            .bind(holder.group)
            .bind(holder.owner)
            .bind(holder.epoch)
            .fetch_optional(&mut *tx)
            .await?;
    Ok(held.unwrap_or(false).then_some(tx))
}

/// Records a batch's first-pass failures, fenced by the lease. False: the lease is gone and
/// nothing was written.
/// `dead_letter_stream`: the group has one, so each dead row is recorded with its copy pending
/// (see [`deliveries_dead_letter_copied`]).
pub async fn deliveries_record(
    pool: &PgPool,
    holder: LeaseHolder<'_>,
    records: &[NewDelivery],
    dead_letter_stream: bool,
) -> Result<bool, sqlx::Error> {
    let Some(mut tx) = begin_fenced(pool, &holder).await? else {
        return Ok(false);
    };
    let ids: Vec<Uuid> = records.iter().map(|r| r.message_id).collect();
    let statuses: Vec<&str> = records.iter().map(|r| r.status.as_str()).collect();
    let attempts: Vec<i32> = records.iter().map(|r| r.attempts).collect();
    let errors: Vec<Option<String>> = records
        .iter()
        .map(|r| r.last_error.as_deref().map(truncate_error))
        .collect();
    let delays: Vec<Option<i64>> = records.iter().map(|r| millis(r.delay)).collect();
    let tx_ids: Vec<String> = records
        .iter()
        .map(|r| r.position.tx_id.to_string())
        .collect();
    let seqs: Vec<i64> = records.iter().map(|r| r.position.seq).collect();
    let keys: Vec<Option<&str>> = records.iter().map(|r| r.key.as_deref()).collect();
    sqlx::query(include_str!("sql/deliveries_record.sql"))
        .bind(holder.group)
        .bind(ids)
        .bind(statuses)
        .bind(attempts)
        .bind(errors)
        .bind(delays)
        .bind(tx_ids)
        .bind(seqs)
        .bind(keys)
        .bind(dead_letter_stream)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(true)
}

/// Up to `limit` dead deliveries of `group` whose dead-letter copy is still to be appended,
/// with their messages and last errors (empty when the lease is gone).
pub async fn deliveries_dead_letter_pending(
    pool: &PgPool,
    holder: LeaseHolder<'_>,
    limit: usize,
) -> Result<Vec<(DueDelivery, String)>, sqlx::Error> {
    let sql = include_str!("sql/deliveries_dead_letter_pending.sql");
    fetch_fenced(pool, sql, holder, limit)
        .await?
        .iter()
        .map(|row| {
            let error: Option<String> = row.try_get("last_error")?;
            Ok((due_delivery(row)?, error.unwrap_or_default()))
        })
        .collect()
}

/// The dead-letter copies of `ids` (dead deliveries of `group`) are appended.
pub async fn deliveries_dead_letter_copied(
    pool: &PgPool,
    group: &str,
    ids: &[Uuid],
) -> Result<(), sqlx::Error> {
    sqlx::query(include_str!("sql/deliveries_dead_letter_copied.sql"))
        .bind(group)
        .bind(ids)
        .execute(pool)
        .await?;
    Ok(())
}

/// Which of `ids` already have a delivery row in `group`.
pub async fn deliveries_known(
    pool: &PgPool,
    group: &str,
    ids: &[Uuid],
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(include_str!("sql/deliveries_known.sql"))
        .bind(group)
        .bind(ids)
        .fetch_all(pool)
        .await
}

/// The highest position with a delivery row in `group`, if any.
pub async fn deliveries_recorded_through(
    pool: &PgPool,
    group: &str,
) -> Result<Option<Position>, sqlx::Error> {
    let row: Option<(String, i64)> =
        sqlx::query_as(include_str!("sql/deliveries_recorded_through.sql"))
            .bind(group)
            .fetch_optional(pool)
            .await?;
    row.map(|(tx_id, seq)| Ok(Position::new(super::decode_tx_id(&tx_id)?, seq)))
        .transpose()
}

/// The keys of `group` with a retrying or blocked message, and each one's soonest retry.
pub async fn deliveries_parked(pool: &PgPool, group: &str) -> Result<Vec<ParkedKey>, sqlx::Error> {
    let rows: Vec<(Option<String>, Option<f64>)> =
        sqlx::query_as(include_str!("sql/deliveries_parked.sql"))
            .bind(group)
            .fetch_all(pool)
            .await?;
    Ok(rows
        .into_iter()
        .map(|(key, due_in_ms)| ParkedKey {
            key,
            due_in: due_in_ms.map(|ms| Duration::from_secs_f64(ms.max(0.0) / 1000.0)),
        })
        .collect())
}

/// Up to `limit` due retries of `group`, in position order.
pub async fn deliveries_due(
    pool: &PgPool,
    holder: LeaseHolder<'_>,
    limit: usize,
) -> Result<Vec<DueDelivery>, sqlx::Error> {
    fetch_fenced(pool, include_str!("sql/deliveries_due.sql"), holder, limit)
        .await?
        .iter()
        .map(due_delivery)
        .collect()
}

/// Runs a read of `holder`'s group fenced by its lease (`$1` group, `$2` limit, `$3` owner,
/// `$4` epoch): nothing comes back once the lease is gone.
async fn fetch_fenced(
    pool: &PgPool,
    sql: &'static str,
    holder: LeaseHolder<'_>,
    limit: usize,
) -> Result<Vec<sqlx::postgres::PgRow>, sqlx::Error> {
    sqlx::query(sql)
        .bind(holder.group)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .bind(holder.owner)
        .bind(holder.epoch)
        .fetch_all(pool)
        .await
}

/// A delivery's failed attempts and its message, from a row that has both.
fn due_delivery(row: &sqlx::postgres::PgRow) -> Result<DueDelivery, sqlx::Error> {
    Ok(DueDelivery {
        attempts: row.try_get("attempts")?,
        row: outbox_row(row)?,
    })
}

/// Stores the results of retried messages and releases the next blocked message of each key
/// in `released_keys`, in one transaction fenced by the lease. `None`: the lease is gone and
/// nothing was written; otherwise the ids of the messages released.
pub async fn deliveries_settle(
    pool: &PgPool,
    holder: LeaseHolder<'_>,
    settlements: &[(Uuid, Settlement)],
    released_keys: &[&str],
    copies_pending: &[Uuid],
) -> Result<Option<Vec<Uuid>>, sqlx::Error> {
    let Some(mut tx) = begin_fenced(pool, &holder).await? else {
        return Ok(None);
    };
    let mut ids = Vec::with_capacity(settlements.len());
    let mut statuses: Vec<Option<&str>> = Vec::with_capacity(settlements.len());
    let mut attempts: Vec<Option<i32>> = Vec::with_capacity(settlements.len());
    let mut errors: Vec<Option<String>> = Vec::with_capacity(settlements.len());
    let mut delays: Vec<Option<i64>> = Vec::with_capacity(settlements.len());
    let pending: Vec<bool> = settlements
        .iter()
        .map(|(id, _)| copies_pending.contains(id))
        .collect();
    for (id, settlement) in settlements {
        ids.push(*id);
        let (status, tries, error, delay) = match settlement {
            Settlement::Done => (None, None, None, None),
            Settlement::Retry {
                attempts,
                error,
                delay,
            } => (
                Some("retrying"),
                Some(*attempts),
                Some(truncate_error(error)),
                millis(Some(*delay)),
            ),
            Settlement::Dead { attempts, error } => (
                Some("dead"),
                Some(*attempts),
                Some(truncate_error(error)),
                None,
            ),
        };
        statuses.push(status);
        attempts.push(tries);
        errors.push(error);
        delays.push(delay);
    }
    sqlx::query(include_str!("sql/deliveries_settle.sql"))
        .bind(holder.group)
        .bind(ids)
        .bind(statuses)
        .bind(attempts)
        .bind(errors)
        .bind(delays)
        .bind(pending)
        .execute(&mut *tx)
        .await?;
    let released = if released_keys.is_empty() {
        Vec::new()
    } else {
        sqlx::query_scalar(include_str!("sql/deliveries_release_next.sql"))
            .bind(holder.group)
            .bind(released_keys)
            .fetch_all(&mut *tx)
            .await?
    };
    tx.commit().await?;
    Ok(Some(released))
}

/// `retry <message-id>`: the message's retrying or dead deliveries (in `group`, or every
/// group) become due now; each group's delivery is reported, changed or not.
pub async fn deliveries_retry_now(
    pool: &PgPool,
    message_id: Uuid,
    group: Option<&str>,
) -> Result<Vec<RetryNow>, sqlx::Error> {
    let rows: Vec<(String, String, bool)> =
        sqlx::query_as(include_str!("sql/deliveries_retry_now.sql"))
            .bind(message_id)
            .bind(group)
            .fetch_all(pool)
            .await?;
    rows.into_iter()
        .map(|(group, previous_status, changed)| {
            Ok(RetryNow {
                group,
                previous_status: DeliveryStatus::parse(&previous_status)?,
                changed,
            })
        })
        .collect()
}

/// Dead letters matching `filter`, oldest failure first, at most `limit`.
pub async fn deliveries_dead_list(
    pool: &PgPool,
    filter: &DeadLetterFilter,
    limit: usize,
) -> Result<Vec<DeadLetter>, sqlx::Error> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let query = bind_filter(
        sqlx::query(include_str!("sql/deliveries_dead_list.sql")),
        filter,
    );
    dead_letters(pool, query.bind(limit)).await
}

/// Dead letters matching `filter` become due now (attempts kept); returns them.
pub async fn deliveries_dead_retry(
    pool: &PgPool,
    filter: &DeadLetterFilter,
) -> Result<Vec<DeadLetter>, sqlx::Error> {
    let query = bind_filter(
        sqlx::query(include_str!("sql/deliveries_dead_retry.sql")),
        filter,
    );
    dead_letters(pool, query).await
}

/// Deletes the dead letters matching `filter`; returns them. An empty filter is refused by
/// the database unless `all_matching` is set (then every dead letter goes).
pub async fn deliveries_dead_discard(
    pool: &PgPool,
    filter: &DeadLetterFilter,
    all_matching: bool,
) -> Result<Vec<DeadLetter>, sqlx::Error> {
    let query = bind_filter(
        sqlx::query(include_str!("sql/deliveries_dead_discard.sql")),
        filter,
    );
    dead_letters(pool, query.bind(all_matching)).await
}

/// Runs a dead-letter statement; the rows it returns are dead letters.
async fn dead_letters(pool: &PgPool, query: PgQuery<'_>) -> Result<Vec<DeadLetter>, sqlx::Error> {
    let rows = query.fetch_all(pool).await?;
    rows.iter().map(dead_letter).collect()
}

type PgQuery<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

fn bind_filter<'q>(query: PgQuery<'q>, filter: &DeadLetterFilter) -> PgQuery<'q> {
    query
        .bind(filter.group.clone())
        .bind(filter.topic.clone())
        .bind(filter.since)
        .bind(filter.message_id)
}

fn dead_letter(row: &sqlx::postgres::PgRow) -> Result<DeadLetter, sqlx::Error> {
    let tx_id: &str = row.try_get("tx_id_text")?;
    let position = Position::new(super::decode_tx_id(tx_id)?, row.try_get("message_seq")?);
    Ok(DeadLetter {
        group: row.try_get("group_name")?,
        message_id: row.try_get("message_id")?,
        topic: row.try_get("topic")?,
        key: row.try_get("key")?,
        position: position.to_string(),
        attempts: row.try_get("attempts")?,
        last_error: row.try_get("last_error")?,
        first_failed_at: row.try_get("first_failed_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_errors_are_cut_on_a_character_boundary() {
        assert_eq!(truncate_error("short"), "short");
        let long = "é".repeat(MAX_ERROR_BYTES);
        let cut = truncate_error(&long);
        assert!(cut.len() <= MAX_ERROR_BYTES);
        assert!(cut.ends_with("[truncated]"));
    }

    #[test]
    fn statuses_round_trip() {
        for status in [
            DeliveryStatus::Retrying,
            DeliveryStatus::Blocked,
            DeliveryStatus::Dead,
        ] {
            assert_eq!(DeliveryStatus::parse(status.as_str()).unwrap(), status);
        }
    }
}

//! The backlog a relay benchmark drains: N rows written straight into `outbox.messages` by
//! Postgres itself (fast, and not what is measured), and the wait until groups have passed
//! its last row.

use std::time::{Duration, Instant};

use sqlx::PgPool;

use super::publish::payload_of_size;
use super::relay_process::phase;
use super::{BenchError, Measurement, Progress};
use outbox_relay::position::Position;
use outbox_relay::store;

/// Rows per backlog-filling transaction.
pub(super) const FILL_CHUNK: u64 = 20_000;

/// What to write.
#[derive(Debug, Clone)]
pub(super) struct Backlog<'a> {
    pub topic: &'a str,
    pub messages: u64,
    pub payload_bytes: usize,
    /// Stamp every row with this schema version (registered by the caller).
    pub schema_version: Option<i32>,
    /// Distinct keys, `customer-0` … (messages take them in turn).
    pub keys: u64,
    /// Mark every n-th message's payload with `"fail_once": true`.
    pub fail_once_every: Option<u64>,
    /// Spread the messages over this many topics, `<topic>.0` … (1: all on `topic`).
    pub topics: u64,
}

impl Backlog<'_> {
    /// The topics the backlog's messages are on.
    pub fn topic_names(&self) -> Vec<String> {
        match self.topics {
            0 | 1 => vec![self.topic.to_owned()],
            n => (0..n).map(|i| format!("{}.{i}", self.topic)).collect(),
        }
    }
}

impl Backlog<'_> {
    /// Writes the rows in transactions of [`FILL_CHUNK`], then VACUUM ANALYZE, and returns
    /// the last row's position.
    pub async fn fill(
        &self,
        pool: &PgPool,
        progress: &dyn Progress,
    ) -> Result<(Measurement, Position), BenchError> {
        let payload = payload_of_size(self.payload_bytes);
        progress.phase("filling the backlog", Some(self.messages));
        let started = Instant::now();
        let mut written = 0;
        while written < self.messages {
            let chunk = (self.messages - written).min(FILL_CHUNK);
            sqlx::query(
                "INSERT INTO outbox.messages (id, topic, key, payload, schema_version) \
                 SELECT outbox.uuid_v7(), \
                        CASE WHEN $8 > 1 THEN $1 || '.' || (g % $8) ELSE $1 END, \
                        'customer-' || (g % $5), \
                        CASE WHEN $6 > 0 AND g % $6 = 0 \
                             THEN jsonb_set($2, '{fail_once}', 'true') ELSE $2 END, $4 \
                   FROM generate_series($7 + 1, $7 + $3) AS g",
            )
            .bind(self.topic)
            .bind(&payload)
            .bind(chunk as i64)
            .bind(self.schema_version)
            .bind(self.keys.max(1) as i64)
            .bind(self.fail_once_every.unwrap_or(0) as i64)
            .bind(written as i64)
            .bind(self.topics as i64)
            .execute(pool)
            .await
            .map_err(|e| phase("fill the backlog", e))?;
            written += chunk;
            progress.advance_to(written);
        }
        let elapsed = started.elapsed();
        progress.phase("vacuuming the backlog", None);
        sqlx::query("VACUUM ANALYZE outbox.messages")
            .execute(pool)
            .await
            .map_err(|e| phase("vacuum the backlog", e))?;
        let last = store::messages_last_position(pool)
            .await
            .map_err(|e| phase("find the end of the backlog", e))?
            .ok_or_else(|| phase("fill", "the backlog is empty"))?;
        let fill = Measurement {
            messages: self.messages,
            elapsed,
        };
        Ok((fill, last))
    }
}

/// Waits until every group in `groups` has its cursor at `last`, showing the slowest
/// group's progress (positions' `seq` count rows in a freshly filled backlog). One query per
/// look whatever the number of groups, so watching 16 groups costs what watching one does.
/// `check_alive` fails when the relay has stopped (`RelayProcess::check_alive`, say).
pub(super) async fn wait_until_passed(
    pool: &PgPool,
    groups: &[String],
    last: Position,
    mut check_alive: impl FnMut() -> Result<(), BenchError>,
    progress: &dyn Progress,
) -> Result<(), BenchError> {
    loop {
        let slowest = slowest_cursor(pool, groups).await?;
        if slowest >= last {
            return Ok(());
        }
        progress.advance_to(slowest.seq.max(0) as u64);
        check_alive()?;
        // Coarse enough to cost the machine under test next to nothing (a 5 ms poll took
        // ~10 % of a core from the relay it was timing), fine enough for runs of seconds.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The lowest cursor among `groups`; the start of the outbox while any has no row yet.
pub(super) async fn slowest_cursor(
    pool: &PgPool,
    groups: &[String],
) -> Result<Position, BenchError> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT g.cursor_tx_id::text, g.cursor_seq FROM outbox.consumer_groups g \
          WHERE g.name = ANY($1)",
    )
    .bind(groups)
    .fetch_all(pool)
    .await
    .map_err(|e| phase("read the groups' cursors", e))?;
    if rows.len() < groups.len() {
        return Ok(Position::default());
    }
    let mut slowest: Option<Position> = None;
    for (tx_id, seq) in rows {
        let tx_id: u64 = tx_id
            .parse()
            .map_err(|e| phase("read the groups' cursors", e))?;
        let cursor = Position { tx_id, seq };
        slowest = Some(slowest.map_or(cursor, |s| s.min(cursor)));
    }
    Ok(slowest.unwrap_or_default())
}

/// An error if any message of `groups` failed (and so was called more than once, or is dead):
/// the figures are for a backlog handled once.
pub(super) async fn check_none_failed(pool: &PgPool, groups: &[String]) -> Result<(), BenchError> {
    let (failed, error): (i64, Option<String>) = sqlx::query_as(
        "SELECT count(*), min(d.last_error) FROM outbox.deliveries d WHERE d.group_name = ANY($1)",
    )
    .bind(groups)
    .fetch_one(pool)
    .await
    .map_err(|e| phase("count delivery rows", e))?;
    if failed > 0 {
        let error = error.unwrap_or_default();
        return Err(phase(
            "check",
            format!("{failed} message(s) failed, e.g.: {error}"),
        ));
    }
    Ok(())
}

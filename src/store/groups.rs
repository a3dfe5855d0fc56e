//! Statements on `outbox.consumer_groups`: creating a group, its lease, its cursor.

use std::time::Duration;

use sqlx::PgPool;

use crate::position::Position;

/// A held lease: its epoch and the cursor to resume from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcquiredLease {
    /// This lease's epoch, one above the previous holder's; every fenced write names it.
    pub epoch: i64,
    /// The group's cursor: the last position it has passed, where reading resumes.
    pub cursor: Position,
    /// Bumped by every replay or reset; the sink's duplicate filter is per generation.
    pub replay_generation: i64,
}

/// Who asks: the group, the relay instance, and the epoch of its lease.
#[derive(Debug, Clone, Copy)]
pub struct LeaseHolder<'a> {
    /// The consumer group.
    pub group: &'a str,
    /// The relay's identity as written to `lease_owner` (see `Relay::owner`).
    pub owner: &'a str,
    /// The epoch the lease was acquired with ([`AcquiredLease::epoch`]).
    pub epoch: i64,
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// Creates the group's row if missing; true when this call created it.
pub async fn consumer_groups_ensure(
    pool: &PgPool,
    group: &str,
    from_now: bool,
) -> Result<bool, sqlx::Error> {
    let created: Option<String> =
        sqlx::query_scalar(include_str!("sql/consumer_groups_ensure.sql"))
            .bind(group)
            .bind(from_now)
            .fetch_optional(pool)
            .await?;
    Ok(created.is_some())
}

/// Creates the missing partition rows (`<group>/0` … `<group>/<partitions - 1>`) of a group
/// split into `partitions`, each starting like [`consumer_groups_ensure`]'s row; true when it
/// created any. Check [`consumer_groups_partitions`] first: this does not look at other rows.
pub async fn consumer_groups_ensure_partitions(
    pool: &PgPool,
    group: &str,
    partitions: u32,
    from_now: bool,
) -> Result<bool, sqlx::Error> {
    let created: Vec<String> =
        sqlx::query_scalar(include_str!("sql/consumer_groups_ensure_partitions.sql"))
            .bind(group)
            .bind(partitions as i32)
            .bind(from_now)
            .fetch_all(pool)
            .await?;
    Ok(!created.is_empty())
}

/// How `group` is stored: `(partitions, rows)` for each partition count its rows name (one
/// line normally, none for a group with no row yet; 1 = unpartitioned).
pub async fn consumer_groups_partitions(
    pool: &PgPool,
    group: &str,
) -> Result<Vec<(u32, u32)>, sqlx::Error> {
    let rows: Vec<(i32, i64)> = sqlx::query_as(include_str!("sql/consumer_groups_partitions.sql"))
        .bind(group)
        .fetch_all(pool)
        .await?;
    Ok(rows
        .into_iter()
        .map(|(partitions, count)| (partitions as u32, count as u32))
        .collect())
}

/// Where a group's cursor is and who holds its lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupCursor {
    /// The last position the group has passed.
    pub cursor: Position,
    /// The relay holding the lease (`lease_owner`, expired or not); `None` when nobody does.
    pub lease_owner: Option<String>,
}

/// The group's cursor and lease owner (`None`: no such group); cheap enough to poll.
pub async fn consumer_groups_cursor(
    pool: &PgPool,
    group: &str,
) -> Result<Option<GroupCursor>, sqlx::Error> {
    let row: Option<(String, i64, Option<String>)> =
        sqlx::query_as(include_str!("sql/consumer_groups_cursor.sql"))
            .bind(group)
            .fetch_optional(pool)
            .await?;
    row.map(|(tx_id, seq, lease_owner)| {
        Ok(GroupCursor {
            cursor: Position::new(super::decode_tx_id(&tx_id)?, seq),
            lease_owner,
        })
    })
    .transpose()
}

/// The names of every group, in order.
pub async fn consumer_groups_names(
    executor: impl sqlx::PgExecutor<'_>,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(include_str!("sql/consumer_groups_names.sql"))
        .fetch_all(executor)
        .await
}

/// Deletes the group's row; true when it existed.
pub async fn consumer_groups_delete(pool: &PgPool, group: &str) -> Result<bool, sqlx::Error> {
    let deleted = sqlx::query(include_str!("sql/consumer_groups_delete.sql"))
        .bind(group)
        .execute(pool)
        .await?;
    Ok(deleted.rows_affected() > 0)
}

/// What an attempt to take a group row's lease found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseAttempt {
    /// Taken: ours until it expires.
    Acquired(AcquiredLease),
    /// Not taken, and why.
    Refused(LeaseRefusal),
}

/// Why a lease was not taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseRefusal {
    /// Another relay holds it and it has not expired.
    HeldBy(String),
    /// The group is paused (`groups pause`).
    Paused,
    /// `groups repartition` split the group otherwise than the relay was started with: the
    /// row now says `stored` partitions, or was retired.
    Repartitioned { stored: u32, retired: bool },
    /// No such row (deleted while the relay ran).
    NoRow,
}

/// Takes the lease if free, expired or ours, the group is not paused, and the row is split
/// into `partitions` as the relay expects (and not retired); otherwise says why not.
pub async fn consumer_groups_lease_acquire(
    pool: &PgPool,
    group: &str,
    owner: &str,
    ttl: Duration,
    partitions: u32,
) -> Result<LeaseAttempt, sqlx::Error> {
    type Row = (
        Option<i64>,
        Option<String>,
        Option<i64>,
        Option<i64>,
        bool,
        bool,
        i32,
        Option<String>,
    );
    let row: Option<Row> = sqlx::query_as(include_str!("sql/consumer_groups_lease_acquire.sql"))
        .bind(group)
        .bind(owner)
        .bind(millis(ttl))
        .bind(partitions as i32)
        .fetch_optional(pool)
        .await?;
    let Some((epoch, tx_id, seq, replay_generation, paused, retired, stored, holder)) = row else {
        return Ok(LeaseAttempt::Refused(LeaseRefusal::NoRow));
    };
    if let (Some(epoch), Some(tx_id), Some(seq), Some(replay_generation)) =
        (epoch, tx_id, seq, replay_generation)
    {
        return Ok(LeaseAttempt::Acquired(AcquiredLease {
            epoch,
            cursor: Position::new(super::decode_tx_id(&tx_id)?, seq),
            replay_generation,
        }));
    }
    let stored = stored as u32;
    Ok(LeaseAttempt::Refused(if retired || stored != partitions {
        LeaseRefusal::Repartitioned { stored, retired }
    } else if paused {
        LeaseRefusal::Paused
    } else {
        LeaseRefusal::HeldBy(holder.unwrap_or_default())
    }))
}

/// Extends the lease; false when it is no longer ours (or the group was paused).
pub async fn consumer_groups_lease_renew(
    pool: &PgPool,
    holder: LeaseHolder<'_>,
    ttl: Duration,
) -> Result<bool, sqlx::Error> {
    let result = sqlx::query(include_str!("sql/consumer_groups_lease_renew.sql"))
        .bind(holder.group)
        .bind(holder.owner)
        .bind(holder.epoch)
        .bind(millis(ttl))
        .execute(pool)
        .await?;
    Ok(result.rows_affected() == 1)
}

/// Gives the lease up; false when it was not ours any more.
pub async fn consumer_groups_lease_release(
    pool: &PgPool,
    holder: LeaseHolder<'_>,
) -> Result<bool, sqlx::Error> {
    let result = sqlx::query(include_str!("sql/consumer_groups_lease_release.sql"))
        .bind(holder.group)
        .bind(holder.owner)
        .bind(holder.epoch)
        .execute(pool)
        .await?;
    Ok(result.rows_affected() == 1)
}

/// Moves the cursor to `to`, renews the lease and raises the group's stream marks to `marks`
/// (one statement); false when the lease is no longer ours (then nothing changed).
pub async fn consumer_groups_cursor_advance(
    pool: &PgPool,
    holder: LeaseHolder<'_>,
    to: Position,
    ttl: Duration,
    marks: &[super::StreamMark],
) -> Result<bool, sqlx::Error> {
    let streams: Vec<&str> = marks.iter().map(|m| m.stream.as_str()).collect();
    let lasts: Vec<&str> = marks.iter().map(|m| m.mark.as_str()).collect();
    let firsts: Vec<&str> = marks.iter().map(|m| m.first_mark.as_str()).collect();
    let moved: i64 = sqlx::query_scalar(include_str!("sql/consumer_groups_cursor_advance.sql"))
        .bind(holder.group)
        .bind(holder.owner)
        .bind(holder.epoch)
        .bind(to.tx_id.to_string())
        .bind(to.seq)
        .bind(millis(ttl))
        .bind(&streams)
        .bind(&lasts)
        .bind(&firsts)
        .fetch_one(pool)
        .await?;
    Ok(moved == 1)
}

/// What `groups pause|resume` found before it changed anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PauseChange {
    /// Whether the group was paused already: for a pause, every partition of a partitioned
    /// group; for a resume, any of them (so a resume of partly paused partitions says it
    /// resumed).
    pub was_paused: bool,
    /// The relays that held the lease (pausing takes it away): one at most, or for a
    /// partitioned group every relay that held one of its partitions; sorted.
    pub previous_owners: Vec<String>,
}

/// Pauses (`paused = true`, and the lease is taken away) or resumes a group; `None` when
/// there is no such group.
pub async fn consumer_groups_pause(
    pool: &PgPool,
    group: &str,
    paused: bool,
) -> Result<Option<PauseChange>, sqlx::Error> {
    // One row per partition of a partitioned group.
    let rows: Vec<(bool, Option<String>)> =
        sqlx::query_as(include_str!("sql/consumer_groups_pause.sql"))
            .bind(group)
            .bind(paused)
            .fetch_all(pool)
            .await?;
    if rows.is_empty() {
        return Ok(None);
    }
    let was_paused = if paused {
        rows.iter().all(|(was_paused, _)| *was_paused)
    } else {
        rows.iter().any(|(was_paused, _)| *was_paused)
    };
    let mut owners: Vec<String> = rows.into_iter().filter_map(|(_, owner)| owner).collect();
    owners.sort();
    owners.dedup();
    Ok(Some(PauseChange {
        was_paused,
        previous_owners: owners,
    }))
}

//! Overlapping Postgres with the rest while there is a backlog: reading the next batch while
//! the current one is handled, appended and committed ([`Prefetch`]), and committing a batch's
//! cursor while the next one is handled and appended ([`PendingAdvance`]).
//!
//! When a read fills a whole batch there is a backlog, so the worker starts reading the batch
//! after it at once — from the last row it read, on a pooled connection of its own — and the
//! Postgres read overlaps the Redis append and the cursor update. The rows are used only if
//! the cursor then stands exactly where the prefetch read from (every row of the batch was
//! passed); otherwise (a strict group stopped early, the lease was lost, a replay moved the
//! cursor) they are dropped and read again. Nothing is lost either way: a read is only rows
//! past a position, below the snapshot xmin, and fenced by the lease like any other read
//! (it goes through the shared tail like any other read, see `tail`).

use std::sync::Arc;

use sqlx::PgPool;
use tokio::task::JoinHandle;

use super::tail::{ReadResult, SharedTail};
use crate::position::Position;
use crate::store::{self, LeaseHolder};

/// A read of the batch after `after`, running.
pub(super) struct Prefetch {
    after: Position,
    task: JoinHandle<ReadResult>,
}

impl Prefetch {
    /// Starts reading up to `limit` rows after `after` for `group` (through the shared tail).
    pub fn start(tail: &Arc<SharedTail>, group: &str, after: Position, limit: usize) -> Self {
        let tail = Arc::clone(tail);
        let group = group.to_owned();
        let task = tokio::spawn(async move { tail.read(&group, after, limit).await });
        Prefetch { after, task }
    }

    /// The prefetched read, if it read from `cursor`; `None` (and the read is dropped)
    /// otherwise.
    pub async fn take(mut self, cursor: Position) -> Option<ReadResult> {
        if self.after != cursor {
            return None;
        }
        Some(match (&mut self.task).await {
            Ok(result) => result,
            Err(join) => Err(sqlx::Error::Protocol(format!(
                "the prefetch read failed: {join}"
            ))),
        })
    }
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A cursor update (fenced by the lease, renewing it) running in the background.
pub(super) struct PendingAdvance {
    task: JoinHandle<Result<bool, sqlx::Error>>,
}

impl PendingAdvance {
    /// Starts moving `holder`'s group cursor to `to`.
    pub fn start(
        pool: &PgPool,
        holder: LeaseHolder<'_>,
        to: Position,
        ttl: std::time::Duration,
    ) -> Self {
        let pool = pool.clone();
        let (group, owner, epoch) = (
            holder.group.to_owned(),
            holder.owner.to_owned(),
            holder.epoch,
        );
        let task = tokio::spawn(async move {
            let holder = LeaseHolder {
                group: &group,
                owner: &owner,
                epoch,
            };
            store::consumer_groups_cursor_advance(&pool, holder, to, ttl).await
        });
        PendingAdvance { task }
    }

    /// Whether the update matched (false: the lease was no longer held).
    pub async fn wait(mut self) -> Result<bool, sqlx::Error> {
        match (&mut self.task).await {
            Ok(result) => result,
            Err(join) => Err(sqlx::Error::Protocol(format!(
                "the cursor update failed: {join}"
            ))),
        }
    }
}

impl Drop for PendingAdvance {
    fn drop(&mut self) {
        self.task.abort();
    }
}

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
use crate::store::{self, LeaseHolder, OutboxRow};

/// A Postgres task running in the background, aborted when dropped before it was waited for.
struct Background<T> {
    task: JoinHandle<Result<T, sqlx::Error>>,
    /// What it does, for the error when the task itself failed (a panic).
    what: &'static str,
}

impl<T: Send + 'static> Background<T> {
    fn spawn(
        what: &'static str,
        work: impl std::future::Future<Output = Result<T, sqlx::Error>> + Send + 'static,
    ) -> Self {
        Background {
            task: tokio::spawn(work),
            what,
        }
    }

    async fn wait(mut self) -> Result<T, sqlx::Error> {
        match (&mut self.task).await {
            Ok(result) => result,
            Err(join) => Err(sqlx::Error::Protocol(format!(
                "{} failed: {join}",
                self.what
            ))),
        }
    }
}

impl<T> Drop for Background<T> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A read of the batch after `after`, running.
pub(super) struct Prefetch {
    after: Position,
    read: Background<Option<Vec<OutboxRow>>>,
}

impl Prefetch {
    /// Starts reading up to `limit` rows after `after` for `group` (through the shared tail).
    pub fn start(tail: &Arc<SharedTail>, group: &str, after: Position, limit: usize) -> Self {
        let tail = Arc::clone(tail);
        let group = group.to_owned();
        let read = Background::spawn("the prefetch read", async move {
            tail.read(&group, after, limit).await
        });
        Prefetch { after, read }
    }

    /// The prefetched read, if it read from `cursor`; `None` (and the read is dropped)
    /// otherwise.
    pub async fn take(self, cursor: Position) -> Option<ReadResult> {
        if self.after != cursor {
            return None;
        }
        Some(self.read.wait().await)
    }
}

/// A cursor update (fenced by the lease, renewing it) running in the background.
pub(super) struct PendingAdvance {
    update: Background<bool>,
}

impl PendingAdvance {
    /// Starts moving `holder`'s group cursor to `to`, and its stream marks to `marks`.
    pub fn start(
        pool: &PgPool,
        holder: LeaseHolder<'_>,
        to: Position,
        ttl: std::time::Duration,
        marks: Vec<store::StreamMark>,
    ) -> Self {
        let pool = pool.clone();
        let (group, owner, epoch) = (
            holder.group.to_owned(),
            holder.owner.to_owned(),
            holder.epoch,
        );
        let update = Background::spawn("the cursor update", async move {
            let holder = LeaseHolder {
                group: &group,
                owner: &owner,
                epoch,
            };
            store::consumer_groups_cursor_advance(&pool, holder, to, ttl, &marks).await
        });
        PendingAdvance { update }
    }

    /// Whether the update matched (false: the lease was no longer held).
    pub async fn wait(self) -> Result<bool, sqlx::Error> {
        self.update.wait().await
    }
}

//! Overlapping Postgres with the rest while there is a backlog: reading the next batch while
//! the current one is handled, appended and committed ([`Prefetch`]), and committing a batch's
//! cursor while the next one is handled and appended ([`PendingAdvance`]).
//!
//! When a read fills a whole batch there is a backlog, so the worker starts reading the
//! batches after it at once — from the last row it read, on a pooled connection of its own,
//! up to two batches ahead — and the Postgres reads overlap the handling, the Redis append and
//! the cursor update. The rows are used only if the worker then reads exactly where they
//! start (every row before them was taken); otherwise (a strict group stopped early, the lease was lost, a replay moved the
//! cursor) they are dropped and read again. Nothing is lost either way: a read is only rows
//! past a position, below the snapshot xmin, and fenced by the lease like any other read
//! (it goes through the shared tail like any other read, see `tail`).

use std::sync::Arc;

use sqlx::PgPool;
use tokio::task::JoinHandle;

use super::partition::Partition;
use super::tail::{ReadResult, SharedTail};
use crate::position::Position;
use crate::store::{self, LeaseHolder};

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

/// How many batches a backlog is read ahead of the worker: two, so Postgres reads the batch
/// after next while the worker takes the next one (with one, the read chain paused each time
/// until the worker took its batch).
const READ_AHEAD_BATCHES: usize = 2;

/// Reads of the batches after `after`, one after another, up to [`READ_AHEAD_BATCHES`] ahead
/// of the worker; it stops after a batch that is not full (the backlog is read), a fenced
/// read or an error (each handed over like rows). Aborted when dropped.
pub(super) struct Prefetch {
    /// Where the next batch handed over starts.
    next: Position,
    reads: tokio::sync::mpsc::Receiver<ReadResult>,
    task: JoinHandle<()>,
}

impl Prefetch {
    /// Starts reading up to `limit` rows at a time after `after` for `group` (through the
    /// shared tail).
    pub fn start(
        tail: &Arc<SharedTail>,
        group: &str,
        partition: Option<Partition>,
        after: Position,
        limit: usize,
    ) -> Self {
        let tail = Arc::clone(tail);
        let group = group.to_owned();
        let (sender, reads) = tokio::sync::mpsc::channel(READ_AHEAD_BATCHES);
        let task = tokio::spawn(async move {
            let mut after = after;
            loop {
                let read = tail.read(&group, partition, after, limit).await;
                let next = match &read {
                    Ok(Some(read)) if read.full => read.rows.last().map(|row| row.position),
                    _ => None,
                };
                if sender.send(read).await.is_err() {
                    return;
                }
                match next {
                    Some(position) => after = position,
                    None => return,
                }
            }
        });
        Prefetch {
            next: after,
            reads,
            task,
        }
    }

    /// The next batch read ahead, if it starts at `cursor`; `None` when it does not or the
    /// reads have ended (the caller then reads for itself, and drops this when it does not
    /// start at `cursor`).
    pub async fn take(&mut self, cursor: Position) -> Option<ReadResult> {
        if self.next != cursor {
            return None;
        }
        let read = self.reads.recv().await?;
        if let Ok(Some(read)) = &read
            && let Some(last) = read.rows.last()
        {
            self.next = last.position;
        }
        Some(read)
    }
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        self.task.abort();
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

//! Shared reads of the outbox: the groups of one relay process that stand at (or near) the same
//! cursor read each row from Postgres once, not once per group.
//!
//! The tail keeps the most recent reads as a run of contiguous segments, each holding every
//! visible row after its start up to its last row (a read returns all committed rows past a
//! position below the snapshot xmin, and no row can appear there later, so a segment never goes
//! stale). A group whose cursor lies inside the run takes its batch from there; a group at the
//! head reads the next segment for everyone (one read at a time, the others wait for it and
//! then find its rows); a group behind the run reads for itself.
//!
//! ```text
//!   behind the run ── own read           [seg 1][seg 2][seg 3] ◀── head: one shared read
//!                                          ▲ groups inside take rows from here
//! ```
//!
//! Every read is fenced by the leases of all the process's active groups, and a segment
//! remembers which of them were leased when it was read: a group that was not (a pause, a
//! replay, a takeover came first) does not take rows from it, and learns at its own read.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use sqlx::PgPool;

use crate::position::Position;
use crate::store::{self, OutboxRow, ReadFence};

/// What a group's read returns: its rows, or `None` when it no longer holds its lease.
pub(super) type ReadResult = Result<Option<Vec<OutboxRow>>, sqlx::Error>;

/// One relay process's view of the head of the outbox, shared by its group workers.
pub(super) struct SharedTail {
    pool: PgPool,
    owner: String,
    /// Whether to keep segments at all (one group has no one to share with).
    shared: bool,
    /// How many rows the run may hold before its oldest segments go.
    max_rows: usize,
    leases: Mutex<HashMap<String, i64>>,
    run: Mutex<Run>,
    /// One head read at a time.
    head_read: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct Run {
    segments: VecDeque<Segment>,
    rows: usize,
}

struct Segment {
    /// Every visible row after this position up to the last row is in `rows`.
    after: Position,
    rows: Arc<Vec<OutboxRow>>,
    leased: Arc<Vec<String>>,
}

impl Segment {
    fn last(&self) -> Position {
        self.rows.last().map_or(self.after, |row| row.position)
    }
}

impl SharedTail {
    pub fn new(pool: PgPool, owner: String, groups: usize, batch_size: usize) -> Arc<SharedTail> {
        Arc::new(SharedTail {
            pool,
            owner,
            shared: groups > 1,
            max_rows: batch_size.saturating_mul(32),
            leases: Mutex::new(HashMap::new()),
            run: Mutex::new(Run::default()),
            head_read: tokio::sync::Mutex::new(()),
        })
    }

    /// `group` holds its lease at `epoch` (from now on reads are fenced by it too).
    pub fn hold(&self, group: &str, epoch: i64) {
        lock(&self.leases).insert(group.to_owned(), epoch);
    }

    /// `group` no longer holds a lease.
    pub fn release(&self, group: &str) {
        lock(&self.leases).remove(group);
    }

    /// Up to `limit` rows after `cursor` for `group`.
    pub async fn read(&self, group: &str, cursor: Position, limit: usize) -> ReadResult {
        if !self.shared {
            return self
                .read_for(&[group.to_owned()], group, cursor, limit)
                .await;
        }
        if let Some(rows) = self.cached(group, cursor, limit) {
            return Ok(Some(rows));
        }
        if !self.at_or_past_head(cursor) {
            // Behind the run: a read of its own, kept out of the run.
            return self
                .read_for(&[group.to_owned()], group, cursor, limit)
                .await;
        }
        let _one_at_a_time = self.head_read.lock().await;
        if let Some(rows) = self.cached(group, cursor, limit) {
            return Ok(Some(rows));
        }
        // Fenced by every lease the process holds (the reader's among them, see `hold`).
        let leased: Vec<String> = lock(&self.leases).keys().cloned().collect();
        self.read_for(&leased, group, cursor, limit).await
    }

    /// Reads for `groups` (fenced by their leases), keeps the rows when they extend the run,
    /// and returns what `group` gets.
    async fn read_for(
        &self,
        groups: &[String],
        group: &str,
        cursor: Position,
        limit: usize,
    ) -> ReadResult {
        let epochs: Vec<i64> = {
            let leases = lock(&self.leases);
            groups
                .iter()
                .map(|g| leases.get(g).copied().unwrap_or(-1))
                .collect()
        };
        let fence = ReadFence {
            owner: &self.owner,
            groups,
            epochs: &epochs,
        };
        let visible = store::messages_fetch_visible(&self.pool, fence, cursor, limit).await?;
        if !visible.leased.iter().any(|g| g == group) {
            return Ok(None);
        }
        if self.shared && groups.len() > 1 && !visible.rows.is_empty() {
            self.extend(cursor, visible.rows.clone(), visible.leased);
        }
        Ok(Some(visible.rows))
    }

    /// Rows after `cursor` from the run, if it covers `cursor` and `group` was leased when
    /// they were read.
    fn cached(&self, group: &str, cursor: Position, limit: usize) -> Option<Vec<OutboxRow>> {
        let run = lock(&self.run);
        let start = run
            .segments
            .iter()
            .position(|s| s.after <= cursor && cursor < s.last())?;
        let mut rows = Vec::with_capacity(limit);
        for segment in run.segments.iter().skip(start) {
            if !segment.leased.iter().any(|g| g == group) {
                break;
            }
            for row in segment.rows.iter().filter(|r| r.position > cursor) {
                if rows.len() == limit {
                    return Some(rows);
                }
                rows.push(row.clone());
            }
        }
        (!rows.is_empty()).then_some(rows)
    }

    /// Whether `cursor` is at the run's head (or past it, or the run is empty).
    fn at_or_past_head(&self, cursor: Position) -> bool {
        let run = lock(&self.run);
        run.segments.back().is_none_or(|s| cursor >= s.last())
    }

    /// Adds a segment read after `after`: at the head when it continues the run, otherwise as
    /// a new run.
    fn extend(&self, after: Position, rows: Vec<OutboxRow>, leased: Vec<String>) {
        let mut run = lock(&self.run);
        let continues = run.segments.back().is_some_and(|s| s.last() == after);
        if !continues {
            run.segments.clear();
            run.rows = 0;
        }
        run.rows += rows.len();
        run.segments.push_back(Segment {
            after,
            rows: Arc::new(rows),
            leased: Arc::new(leased),
        });
        while run.rows > self.max_rows && run.segments.len() > 1 {
            if let Some(oldest) = run.segments.pop_front() {
                run.rows -= oldest.rows.len();
            }
        }
    }
}

/// A std mutex guard, recovering from a poisoned lock (the data is a cache: a panic while
/// holding it leaves it consistent enough to read).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::plan::tests::row;

    fn tail(max_batches: usize) -> Arc<SharedTail> {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .connect_lazy("postgres://nobody@127.0.0.1:1/never")
            .expect("a lazy pool never connects");
        // max_rows = batch_size × 32
        SharedTail::new(pool, "me".into(), 2, max_batches)
    }

    fn rows(seqs: std::ops::RangeInclusive<i64>) -> Vec<OutboxRow> {
        seqs.map(|seq| row(seq, "t", None, "ok")).collect()
    }

    fn seqs(rows: Option<Vec<OutboxRow>>) -> Option<Vec<i64>> {
        rows.map(|rows| rows.iter().map(|r| r.position.seq).collect())
    }

    fn names(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[tokio::test]
    async fn a_group_takes_rows_only_from_reads_made_while_it_held_its_lease() {
        let tail = tail(10);
        let at = |seq| Position::new(50, seq);
        tail.extend(at(0), rows(1..=3), names(&["a"]));
        assert_eq!(seqs(tail.cached("a", at(0), 10)), Some(vec![1, 2, 3]));
        assert_eq!(seqs(tail.cached("a", at(1), 2)), Some(vec![2, 3]));
        assert_eq!(seqs(tail.cached("b", at(0), 10)), None, "b was not leased");
        // The next read continues the run; b was leased for it, so b starts there.
        tail.extend(at(3), rows(4..=5), names(&["a", "b"]));
        assert_eq!(seqs(tail.cached("a", at(2), 10)), Some(vec![3, 4, 5]));
        assert_eq!(seqs(tail.cached("b", at(3), 10)), Some(vec![4, 5]));
        assert_eq!(seqs(tail.cached("b", at(2), 10)), None);
        // At the head, or outside the run: nothing cached.
        assert!(tail.at_or_past_head(at(5)));
        assert!(!tail.at_or_past_head(at(4)));
        assert_eq!(seqs(tail.cached("a", at(5), 10)), None);
        // A read that does not continue the run starts a new one.
        tail.extend(at(9), rows(10..=11), names(&["a"]));
        assert_eq!(seqs(tail.cached("a", at(2), 10)), None);
        assert_eq!(seqs(tail.cached("a", at(9), 10)), Some(vec![10, 11]));
    }

    #[tokio::test]
    async fn the_run_keeps_at_most_its_row_budget() {
        let tail = tail(1); // 32 rows
        let at = |seq| Position::new(50, seq);
        for start in (0..100).step_by(10) {
            tail.extend(at(start), rows(start + 1..=start + 10), names(&["a"]));
        }
        let run = lock(&tail.run);
        assert!(run.rows <= 32, "{} rows kept", run.rows);
        assert_eq!(run.segments.back().map(Segment::last), Some(at(100)));
    }
}

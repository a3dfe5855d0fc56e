//! Shared reads of the outbox: the groups of one relay process read each row from Postgres once,
//! not once per group.
//!
//! The tail keeps recent reads as segments, each holding every visible row after its start up
//! to its last row (a read returns all committed rows past a position below the snapshot xmin,
//! and no row can appear there later, so a segment never goes stale). Segments that follow each
//! other (one starts where another ends) form runs. A group whose cursor lies inside a segment
//! takes its batch from there, walking on through the segments that follow; any other group
//! reads the batch after its cursor for everyone and keeps it as a new segment. Reads are made
//! one at a time, so groups at the same place wait for one read and then find its rows: the
//! group ahead extends its run, and groups that fell behind it (one started later, one's
//! handler is slower) share a run of their own until they catch up.
//!
//! ```text
//!   laggards ──▶ [seg][seg]        leaders ──▶ [seg][seg][seg] ◀── next read
//! ```
//!
//! A segment goes once every group of the process has passed it, or when the segments hold
//! more than 128 batches of rows (oldest first).
//!
//! Every read is fenced by the leases of all the process's active groups, and a segment
//! remembers which of them were leased when it was read: a group that was not (a pause, a
//! replay, a takeover came first) does not take rows from it, and learns at its own read.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound::{Excluded, Unbounded};
use std::sync::{Arc, Mutex};

use sqlx::PgPool;

use super::partition::Partition;
use crate::position::Position;
use crate::store::{self, OutboxRow, ReadFence};

/// What a group's read returns: its rows, or `None` when it no longer holds its lease.
pub(super) type ReadResult = Result<Option<Read>, sqlx::Error>;

/// The rows of one read for one group (for a partition: those of the partition, and the last
/// row read whatever its partition, so the cursor moves over the others' rows too).
#[derive(Debug, Default)]
pub(super) struct Read {
    pub rows: Vec<OutboxRow>,
    /// Whether the read was a full batch (there may be more to read at once).
    pub full: bool,
}

impl Read {
    /// `scanned` (what was read, up to `limit` rows) as `partition` gets it.
    fn of(scanned: &[&OutboxRow], partition: Option<Partition>, limit: usize) -> Read {
        let full = scanned.len() >= limit;
        let rows = match partition {
            None => scanned.iter().map(|row| (*row).clone()).collect(),
            Some(partition) => {
                let last = scanned.len().saturating_sub(1);
                scanned
                    .iter()
                    .enumerate()
                    .filter(|(i, row)| *i == last || partition.owns(row))
                    .map(|(_, row)| (*row).clone())
                    .collect()
            }
        };
        Read { rows, full }
    }
}

/// One relay process's view of the head of the outbox, shared by its group workers.
pub(super) struct SharedTail {
    pool: PgPool,
    owner: String,
    /// Whether to keep segments at all (one group has no one to share with).
    shared: bool,
    /// How many rows the segments may hold before the oldest go, needed or not.
    max_rows: usize,
    leases: Mutex<HashMap<String, i64>>,
    /// Where each leased group last read from: a segment all of them have passed goes.
    cursors: Mutex<HashMap<String, Position>>,
    segments: Mutex<Segments>,
    /// One read at a time.
    reading: tokio::sync::Mutex<()>,
}

/// Segments by the position they start after.
#[derive(Default)]
struct Segments {
    by_start: BTreeMap<Position, Segment>,
    rows: usize,
}

/// Every visible row after the position it is keyed by, up to `last` (never empty).
struct Segment {
    last: Position,
    rows: Arc<Vec<OutboxRow>>,
    leased: Arc<Vec<String>>,
}

impl SharedTail {
    pub fn new(pool: PgPool, owner: String, groups: usize, batch_size: usize) -> Arc<SharedTail> {
        Arc::new(SharedTail {
            pool,
            owner,
            shared: groups > 1,
            max_rows: batch_size.saturating_mul(128),
            leases: Mutex::new(HashMap::new()),
            cursors: Mutex::new(HashMap::new()),
            segments: Mutex::new(Segments::default()),
            reading: tokio::sync::Mutex::new(()),
        })
    }

    /// `group` holds its lease at `epoch` (from now on reads are fenced by it too).
    pub fn hold(&self, group: &str, epoch: i64) {
        lock(&self.leases).insert(group.to_owned(), epoch);
    }

    /// `group` no longer holds a lease.
    pub fn release(&self, group: &str) {
        lock(&self.leases).remove(group);
        lock(&self.cursors).remove(group);
    }

    /// Up to `limit` rows after `cursor` for `group` (a partition's row: those of `partition`
    /// among them, see [`Read`]).
    pub async fn read(
        &self,
        group: &str,
        partition: Option<Partition>,
        cursor: Position,
        limit: usize,
    ) -> ReadResult {
        if !self.shared {
            return self
                .read_for(&[group.to_owned()], group, partition, cursor, limit)
                .await;
        }
        self.note_cursor(group, cursor);
        if let Some(read) = self.cached(group, partition, cursor, limit) {
            return Ok(Some(read));
        }
        let _one_at_a_time = self.reading.lock().await;
        if let Some(read) = self.cached(group, partition, cursor, limit) {
            return Ok(Some(read));
        }
        // Fenced by every lease the process holds (the reader's among them, see `hold`).
        let leased: Vec<String> = lock(&self.leases).keys().cloned().collect();
        self.read_for(&leased, group, partition, cursor, limit)
            .await
    }

    /// Reads for `groups` (fenced by their leases), keeps the rows as a segment when others
    /// may want them, and returns what `group` gets.
    async fn read_for(
        &self,
        groups: &[String],
        group: &str,
        partition: Option<Partition>,
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
        let keep = self.shared && groups.len() > 1 && !visible.rows.is_empty();
        if partition.is_none() && !keep {
            let full = visible.rows.len() >= limit;
            let rows = visible.rows;
            return Ok(Some(Read { rows, full }));
        }
        let read = Read::of(&visible.rows.iter().collect::<Vec<_>>(), partition, limit);
        if keep {
            self.keep(cursor, visible.rows, visible.leased);
        }
        Ok(Some(read))
    }

    fn note_cursor(&self, group: &str, cursor: Position) {
        let mut cursors = lock(&self.cursors);
        match cursors.get_mut(group) {
            Some(noted) => *noted = cursor,
            None => {
                cursors.insert(group.to_owned(), cursor);
            }
        }
    }

    /// The lowest cursor any group read from last (`None`: no group has read).
    fn slowest_cursor(&self) -> Option<Position> {
        lock(&self.cursors).values().min().copied()
    }

    /// Rows after `cursor` from the segments, if one covers `cursor` and `group` was leased
    /// when it was read; walking on through the segments that follow it.
    fn cached(
        &self,
        group: &str,
        partition: Option<Partition>,
        cursor: Position,
        limit: usize,
    ) -> Option<Read> {
        let segments = lock(&self.segments);
        let (_, mut segment) = segments.by_start.range(..=cursor).next_back()?;
        if cursor >= segment.last {
            return None;
        }
        let mut rows = Vec::with_capacity(limit);
        'walk: loop {
            if !segment.leased.iter().any(|g| g == group) {
                break;
            }
            for row in segment.rows.iter().filter(|r| r.position > cursor) {
                if rows.len() == limit {
                    break 'walk;
                }
                rows.push(row);
            }
            match segments.by_start.get(&segment.last) {
                Some(next) => segment = next,
                None => break,
            }
        }
        (!rows.is_empty()).then(|| Read::of(&rows, partition, limit))
    }

    /// Keeps a read after `after` as a segment (up to where the next segment starts, so the
    /// two follow each other), then drops what every group has passed and, past the row
    /// budget, the oldest.
    fn keep(&self, after: Position, mut rows: Vec<OutboxRow>, leased: Vec<String>) {
        let slowest = self.slowest_cursor();
        let mut segments = lock(&self.segments);
        let next_start = segments
            .by_start
            .range((Excluded(after), Unbounded))
            .next()
            .map(|(start, _)| *start);
        if let Some(next) = next_start {
            rows.retain(|r| r.position <= next);
        }
        let Some(last) = rows.last().map(|r| r.position) else {
            return;
        };
        if segments.by_start.contains_key(&after) {
            return;
        }
        segments.rows += rows.len();
        segments.by_start.insert(
            after,
            Segment {
                last,
                rows: Arc::new(rows),
                leased: Arc::new(leased),
            },
        );
        let segments = &mut *segments;
        while let Some(entry) = segments.by_start.first_entry() {
            let passed = slowest.is_some_and(|s| entry.get().last <= s);
            if !passed && segments.rows <= self.max_rows {
                break;
            }
            let oldest = entry.remove();
            segments.rows -= oldest.rows.len();
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
        // max_rows = batch_size × 128
        SharedTail::new(pool, "me".into(), 2, max_batches)
    }

    fn rows(seqs: std::ops::RangeInclusive<i64>) -> Vec<OutboxRow> {
        seqs.map(|seq| row(seq, "t", None, "ok")).collect()
    }

    fn seqs(read: Option<Read>) -> Option<Vec<i64>> {
        read.map(|read| read.rows.iter().map(|r| r.position.seq).collect())
    }

    fn names(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[tokio::test]
    async fn a_group_takes_rows_only_from_reads_made_while_it_held_its_lease() {
        let tail = tail(10);
        let at = |seq| Position::new(50, seq);
        tail.keep(at(0), rows(1..=3), names(&["a"]));
        assert_eq!(seqs(tail.cached("a", None, at(0), 10)), Some(vec![1, 2, 3]));
        assert_eq!(seqs(tail.cached("a", None, at(1), 2)), Some(vec![2, 3]));
        assert_eq!(
            seqs(tail.cached("b", None, at(0), 10)),
            None,
            "b was not leased"
        );
        // The next read follows on; b was leased for it, so b starts there.
        tail.keep(at(3), rows(4..=5), names(&["a", "b"]));
        assert_eq!(seqs(tail.cached("a", None, at(2), 10)), Some(vec![3, 4, 5]));
        assert_eq!(seqs(tail.cached("b", None, at(3), 10)), Some(vec![4, 5]));
        assert_eq!(seqs(tail.cached("b", None, at(2), 10)), None);
        // At the end of the segments, or outside them: nothing cached.
        assert_eq!(seqs(tail.cached("a", None, at(5), 10)), None);
        assert_eq!(seqs(tail.cached("a", None, at(7), 10)), None);
        // A read elsewhere is a segment of its own; the walk stops at a gap.
        tail.keep(at(9), rows(10..=11), names(&["a"]));
        assert_eq!(seqs(tail.cached("a", None, at(2), 10)), Some(vec![3, 4, 5]));
        assert_eq!(seqs(tail.cached("a", None, at(9), 10)), Some(vec![10, 11]));
    }

    #[tokio::test]
    async fn groups_behind_share_a_run_that_joins_the_one_ahead() {
        let tail = tail(10);
        let at = |seq| Position::new(50, seq);
        let both = || names(&["a", "b"]);
        tail.keep(at(20), rows(21..=30), both());
        // A laggard reads 1..=25: kept up to where the run ahead starts, so the two join.
        tail.keep(at(0), rows(1..=25), both());
        assert_eq!(lock(&tail.segments).rows, 30);
        assert_eq!(
            seqs(tail.cached("b", None, at(15), 10)),
            Some((16..=25).collect::<Vec<_>>())
        );
    }

    #[tokio::test]
    async fn the_segments_keep_at_most_their_row_budget() {
        let tail = tail(1); // 128 rows
        let at = |seq| Position::new(50, seq);
        for start in (0..300).step_by(10) {
            tail.keep(at(start), rows(start + 1..=start + 10), names(&["a"]));
        }
        let segments = lock(&tail.segments);
        assert!(segments.rows <= 128, "{} rows kept", segments.rows);
        let newest = segments.by_start.last_key_value().map(|(_, s)| s.last);
        assert_eq!(newest, Some(at(300)));
    }

    #[tokio::test]
    async fn a_segment_goes_once_every_group_has_passed_it() {
        let tail = tail(10);
        let at = |seq| Position::new(50, seq);
        tail.note_cursor("a", at(25));
        tail.note_cursor("b", at(15));
        for start in [0, 10, 20] {
            tail.keep(at(start), rows(start + 1..=start + 10), names(&["a", "b"]));
        }
        // 1..=10 is behind both groups; b still needs 16..=20.
        assert_eq!(lock(&tail.segments).rows, 20);
        assert_eq!(
            seqs(tail.cached("b", None, at(15), 3)),
            Some(vec![16, 17, 18])
        );
        assert_eq!(seqs(tail.cached("a", None, at(5), 3)), None);
        // Once b has moved on (or let its lease go), the next read drops what it passed.
        tail.release("b");
        tail.keep(at(30), rows(31..=40), names(&["a"]));
        assert_eq!(lock(&tail.segments).rows, 20, "21..=40 kept for a");
    }
}

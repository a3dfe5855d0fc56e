//! Healing what Redis lost: a group's stream marks (how far it appended to each stream, kept
//! in Postgres beside its cursor) against the watermarks in Redis.
//!
//! ```text
//!   lease taken ──▶ load the marks from outbox.stream_marks ──▶ compare with Redis
//!   every append: the watermark read under WATCH is compared too (SinkError::Lost)
//!   every MARK_CHECK_INTERVAL: the streams not appended to lately are compared
//!        │ Redis behind (restart without persistence, older snapshot, failover to a
//!        ▼ replica that lagged)
//!   re-append the gap from the outbox, oldest first, through the watermark ──▶ ERROR line
//! ```
//! The gap is re-derived from the messages still in the outbox: `forward` routes render their
//! stream again; handlers are called again unless they never return outputs (`http`).
//! Messages with a delivery row went the retry path (late entries, not covered: see README);
//! messages pruned from the outbox cannot come back, and the ERROR line says where they were.

use std::collections::HashMap;
use std::collections::HashSet;
use std::time::{Duration, Instant};

use super::RelayError;
use super::active::{Active, lost_lease};
use super::group::{Group, Step};
use super::ordering::Parked;
use crate::position::Position;
use crate::sink::{DedupeMark, LostAppends, StreamAppend, Writer};
use crate::store::{self, StreamMark};
use crate::telemetry;

/// How often an active worker compares every stream it appended to with Redis, besides the
/// comparison each append makes for its own streams.
pub const MARK_CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// What the group appended to each stream, as far as this worker knows: loaded from Postgres
/// when the lease is taken, raised by every append.
#[derive(Debug, Clone, Default)]
pub(super) struct StreamMarks {
    /// Per stream: the first and the last entry appended.
    marks: HashMap<String, (DedupeMark, DedupeMark)>,
}

impl StreamMarks {
    /// The marks stored in Postgres; a mark that does not parse (hand-edited) is ignored.
    pub fn load(rows: Vec<StreamMark>) -> StreamMarks {
        let marks = rows
            .into_iter()
            .filter_map(|row| {
                let first = DedupeMark::parse(&row.first_mark)?;
                let last = DedupeMark::parse(&row.mark)?;
                Some((row.stream, (first, last)))
            })
            .collect();
        StreamMarks { marks }
    }

    /// The last entry appended to `stream`.
    pub fn last(&self, stream: &str) -> Option<DedupeMark> {
        self.marks.get(stream).map(|(_, last)| *last)
    }

    /// Sets each append's [`StreamAppend::appended_through`] to what is known.
    pub fn expect(&self, appends: &mut [StreamAppend]) {
        for append in appends {
            append.appended_through = self.last(&append.stream);
        }
    }

    /// Raises the marks to the last entries of `appends` (just appended, `generation`) and
    /// returns them as the cursor update stores them.
    pub fn raise(&mut self, appends: &[StreamAppend], generation: i64) -> Vec<StreamMark> {
        let mut stored = Vec::with_capacity(appends.len());
        for append in appends {
            let (Some(first), Some(last)) = (append.entries.first(), append.entries.last()) else {
                continue;
            };
            let (first, last) = (
                DedupeMark::of(generation, first),
                DedupeMark::of(generation, last),
            );
            let marks = self
                .marks
                .entry(append.stream.clone())
                .or_insert((first, last));
            marks.1 = marks.1.max(last);
            stored.push(StreamMark {
                stream: append.stream.clone(),
                mark: marks.1.to_string(),
                first_mark: marks.0.to_string(),
            });
        }
        stored
    }

    fn streams(&self) -> Vec<&str> {
        self.marks.keys().map(String::as_str).collect()
    }

    fn first(&self, stream: &str) -> Option<DedupeMark> {
        self.marks.get(stream).map(|(first, _)| *first)
    }
}

/// What one stream's repair did, for the ERROR line.
#[derive(Debug, Default)]
struct Repaired {
    /// Entries appended again.
    appended: u64,
    /// Messages read again from the outbox.
    read: u64,
    /// The first and last position appended again.
    range: Option<(Position, Position)>,
    /// Messages whose handler failed when called again (their entries are still missing).
    failed: Vec<Position>,
    /// Where the outbox resumes when the messages before it were pruned.
    pruned_before: Option<Position>,
}

impl Active {
    /// Compares every stream this group appended to with its watermark in Redis, and repairs
    /// those behind (at most every [`MARK_CHECK_INTERVAL`] unless `now`).
    pub(super) async fn check_stream_marks(
        &mut self,
        group: &Group,
        now: bool,
    ) -> Result<Option<Step>, RelayError> {
        if !now && Instant::now() < self.marks_checked_at + MARK_CHECK_INTERVAL {
            return Ok(None);
        }
        self.marks_checked_at = Instant::now();
        // An append in flight would race the comparison (and a repair): it lands first.
        if let Some(step) = self.settle(group).await? {
            return Ok(Some(step));
        }
        let streams = self.marks.streams();
        if streams.is_empty() {
            return Ok(None);
        }
        let in_redis = group
            .sink
            .watermarks(&group.name, &streams)
            .await
            .map_err(group.sink_error())?;
        let lost: Vec<LostAppends> = streams
            .iter()
            .zip(in_redis)
            .filter_map(|(stream, redis_mark)| {
                let through = self.marks.last(stream)?;
                redis_mark.is_none_or(|m| m < through).then(|| LostAppends {
                    stream: (*stream).to_owned(),
                    redis_mark,
                    appended_through: through,
                })
            })
            .collect();
        self.repair(group, &lost).await
    }

    /// Re-appends what Redis lost of each stream in `lost`; `Some(Standby)` when the lease
    /// went meanwhile.
    pub(super) async fn repair(
        &mut self,
        group: &Group,
        lost: &[LostAppends],
    ) -> Result<Option<Step>, RelayError> {
        for stream in lost {
            let repaired = match self.repair_stream(group, stream).await {
                Ok(repaired) => repaired,
                Err(RepairError::Fenced) => {
                    return Ok(Some(lost_lease(
                        group,
                        &self.lease,
                        "fenced in Redis while repairing",
                    )));
                }
                Err(RepairError::Relay(error)) => return Err(error),
            };
            report_repair(group, stream, &repaired);
        }
        Ok(None)
    }

    async fn repair_stream(
        &mut self,
        group: &Group,
        lost: &LostAppends,
    ) -> Result<Repaired, RepairError> {
        let through = lost.appended_through.position;
        // From the message of the watermark Redis still has (its later outputs may be gone),
        // or from the first entry ever appended when the watermark is gone too.
        let start = match lost.redis_mark {
            Some(mark) => mark.position,
            None => self
                .marks
                .first(&lost.stream)
                .map_or(Position::new(0, 0), |m| m.position),
        };
        let mut after = Position::new(start.tx_id, start.seq - 1);
        let mut repaired = Repaired::default();
        let oldest = store::messages_oldest_after(&group.pool, after)
            .await
            .map_err(group.store_error("find where the outbox starts"))?;
        if oldest.is_none_or(|oldest| oldest > start) && start != Position::new(0, 0) {
            repaired.pruned_before = oldest;
        }
        let writer = Writer {
            group: &group.name,
            epoch: self.lease.epoch,
            replay_generation: self.lease.replay_generation,
        };
        loop {
            let rows =
                store::messages_between(&group.pool, after, through, group.settings.batch_size)
                    .await
                    .map_err(group.store_error("read the messages to re-append"))?;
            let Some(last) = rows.last() else {
                break;
            };
            after = last.position;
            repaired.read += rows.len() as u64;
            let ids: Vec<uuid::Uuid> = rows.iter().map(|r| r.id).collect();
            let recorded: HashSet<uuid::Uuid> =
                store::deliveries_known(&group.pool, &group.name, &ids)
                    .await
                    .map_err(group.store_error("look up recorded deliveries"))?
                    .into_iter()
                    .collect();
            let rows: Vec<_> = rows
                .into_iter()
                .filter(|row| group.dispatcher.rederives(row))
                .collect();
            let plan = group
                .dispatcher
                .first_pass(&rows, &recorded, &Parked::default())
                .await
                .map_err(group.registry_error())?;
            repaired
                .failed
                .extend(plan.failures.iter().map(|f| f.position));
            let Some(mut append) = plan.appends.into_iter().find(|a| a.stream == lost.stream)
            else {
                continue;
            };
            append.appended_through = None;
            let first = append.entries.first().map(|e| e.position);
            let last = append.entries.last().map(|e| e.position);
            match group.sink.append(writer, &[append], &[]).await {
                Ok(report) => repaired.appended += report.appended,
                Err(error) if error.is_fenced() => return Err(RepairError::Fenced),
                Err(error) => return Err(RepairError::Relay(group.sink_error()(error))),
            }
            if let (Some(first), Some(last)) = (first, last) {
                let from = repaired.range.map_or(first, |(from, _)| from);
                repaired.range = Some((from, last));
            }
        }
        Ok(repaired)
    }
}

/// One ERROR line per repaired stream: what was lost, what was appended again, and what
/// could not be.
fn report_repair(group: &Group, lost: &LostAppends, repaired: &Repaired) {
    let redis_mark = lost.redis_mark.map_or_else(
        || "none (the watermark is gone)".to_owned(),
        |m| m.position.to_string(),
    );
    let range = repaired
        .range
        .map(|(from, to)| format!("{from}..{to}"))
        .unwrap_or_default();
    let not_repaired = match (repaired.pruned_before, repaired.failed.is_empty()) {
        (None, true) => "none".to_owned(),
        (pruned, _) => {
            let mut parts = Vec::new();
            if let Some(oldest) = pruned {
                parts.push(format!(
                    "entries of messages pruned from the outbox before {oldest} (they are gone; `outbox-relay status` shows the group, restore outbox.messages from a backup to send them)"
                ));
            }
            if !repaired.failed.is_empty() {
                parts.push(format!(
                    "{} message(s) whose handler failed when called again, first at {}",
                    repaired.failed.len(),
                    repaired.failed[0]
                ));
            }
            parts.join("; ")
        }
    };
    tracing::error!(group = %group.name, stream = %lost.stream, redis_mark,
        appended_through = %lost.appended_through.position, reappended = repaired.appended,
        reappended_positions = range, messages_read = repaired.read, not_repaired,
        "Redis lost entries the group had appended (restart without persistence, an older snapshot, or a failover to a lagging replica); re-appended them from the outbox");
    telemetry::appends_repaired(&group.name, &lost.stream, repaired.appended);
}

enum RepairError {
    Fenced,
    Relay(RelayError),
}

impl From<RelayError> for RepairError {
    fn from(error: RelayError) -> RepairError {
        RepairError::Relay(error)
    }
}

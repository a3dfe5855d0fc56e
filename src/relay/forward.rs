//! The forward pass of an active worker: read new messages into its [`Window`], let their
//! calls run, then commit the window's finished prefix — failures recorded (one fenced
//! transaction, only when there are any), entries appended, the cursor moved (in the
//! background, while the next pass runs). The cursor moves only after the sink said OK; a crash
//! between the append and the cursor update re-reads the messages, and the watermark makes the
//! replay add nothing.
//!
//! [`Window`]: super::window::Window

use std::time::Instant;

use super::RelayError;
use super::active::{Active, AppendFailure, lost_lease};
use super::group::{Group, Step, latencies};
use super::plan::BatchPlan;
use super::prefetch::{PendingAdvance, Prefetch};
use super::tail::ReadResult;
use crate::position::Position;
use crate::sink::LateAppend;
use crate::store::{self, OutboxRow};
use crate::telemetry::{self, StageTimes};

/// How many batches the window may hold: enough distinct keys to keep `max_in_flight` calls
/// busy behind a slow one, with memory bounded.
const WINDOW_BATCHES: usize = 4;

/// Whether a pass may read more messages into the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Admit {
    Yes,
    /// Finish what is in the window first (a retry pass is due).
    No,
}

impl Active {
    /// On shutdown, the calls still running in the window get until `deadline` to finish
    /// and be committed; what is left then is abandoned, unmarked, to the next owner.
    pub(super) async fn finish_window(&mut self, group: &Group, deadline: Instant) {
        while !self.window.is_empty() {
            let pass = self.forward_pass(group, Admit::No);
            match tokio::time::timeout_at(deadline.into(), pass).await {
                Ok(Ok(Step::Standby)) | Ok(Err(_)) => break,
                Ok(Ok(_)) => {}
                Err(_) => {
                    tracing::warn!(group = %group.name, in_window = self.window.len(),
                        "shutdown grace over; abandoning the calls still running to the next owner");
                    break;
                }
            }
        }
        self.window.reset();
    }

    /// [`GroupWorker::forward_batch`]; after a failure the window starts again from the
    /// cursor (what it had taken out for the failed commit is read again, never skipped).
    /// Whether another batch fits in the window.
    fn window_has_room(&self, group: &Group) -> bool {
        let batch_size = group.settings.batch_size;
        self.window.len() + batch_size <= batch_size * WINDOW_BATCHES
    }

    pub(super) async fn forward_pass(
        &mut self,
        group: &Group,
        admit: Admit,
    ) -> Result<Step, RelayError> {
        let result = self.forward_batch(group, admit).await;
        if result.is_err() {
            self.window.reset();
        }
        result
    }

    /// Appends a first pass's entries. A stream whose key is not a stream fails its messages
    /// (recorded, then the rest is appended); a stream Redis lost entries of is repaired
    /// first. `Some(step)` when the lease went meanwhile.
    async fn append_batch(
        &mut self,
        group: &Group,
        rows: &[OutboxRow],
        plan: &mut BatchPlan,
    ) -> Result<Option<Step>, RelayError> {
        loop {
            self.marks.expect(&mut plan.appends);
            let wrong = match self.append(group, &plan.appends, &plan.late).await {
                Ok(()) => return Ok(None),
                Err(AppendFailure::Unwritable(wrong)) => wrong,
                Err(AppendFailure::Lost(lost)) => {
                    if let Some(step) = self.repair(group, &lost).await? {
                        return Ok(Some(step));
                    }
                    continue;
                }
                Err(AppendFailure::Step(step)) => return Ok(Some(step)),
                Err(AppendFailure::Error(error)) => return Err(error),
            };
            group.report_unwritable(&wrong);
            let failed = plan.fail_streams(&group.dispatcher, rows, &wrong);
            // Dead-letter copies refused stay pending in their dead rows, for a later pass.
            let refused = |late: &LateAppend| wrong.iter().any(|w| w.stream == late.stream);
            if plan.late.iter().any(refused) {
                self.dead_letters_pending = true;
                plan.late.retain(|late| !refused(late));
            }
            if failed.is_empty() {
                continue;
            }
            let recorded = store::deliveries_record(
                &group.pool,
                self.holder(group),
                &failed,
                group.dispatcher.dead_letter_stream.is_some(),
            )
            .await
            .map_err(group.store_error("record failed deliveries"))?;
            if !recorded {
                return Ok(Some(lost_lease(
                    group,
                    &self.lease,
                    "delivery insert fenced",
                )));
            }
            self.retries.recorded_through = self
                .retries
                .recorded_through
                .max(failed.iter().map(|f| f.position).max());
            for delay in failed.iter().filter_map(|f| f.delay) {
                self.retries.retry_in(delay);
            }
            plan.apply_parks(&mut self.retries.parked);
        }
    }

    /// Reads more messages into the window (when `admit` and there is room), lets the calls
    /// run until the window's first message is finished (not past the lease renewal), then
    /// commits the finished prefix: failures recorded, entries appended, the cursor moved.
    async fn forward_batch(&mut self, group: &Group, admit: Admit) -> Result<Step, RelayError> {
        let started = Instant::now();
        let batch_size = group.settings.batch_size;
        let mut read = None;
        if admit == Admit::Yes && self.window_has_room(group) && !self.window.is_halted() {
            let from = self.window.read_through().unwrap_or(self.lease.cursor);
            let rows = self
                .read_batch(group, from)
                .await
                .map_err(group.store_error("read the outbox"))?;
            let Some(rows) = rows else {
                return Ok(lost_lease(group, &self.lease, "outbox read fenced"));
            };
            if rows.len() >= batch_size
                && let Some(last) = rows.last()
            {
                self.prefetch = Some(Prefetch::start(
                    &group.tail,
                    &group.name,
                    last.position,
                    batch_size,
                ));
            }
            read = Some(rows.len());
            if !rows.is_empty() {
                let recorded = self.recorded_among(group, &rows).await?;
                self.stalls.forwarding();
                self.window
                    .admit(rows, &recorded, &self.retries.parked)
                    .await
                    .map_err(group.registry_error())?;
            }
        }
        let mut times = StageTimes {
            read: started.elapsed(),
            ..StageTimes::default()
        };
        if self.window.is_empty() {
            if let Some(step) = self.settle_advance(group).await? {
                return Ok(step);
            }
            // Caught up: the stall watch beside the pipeline looks at why, if it lasts.
            self.stalls.caught_up(self.lease.cursor);
            return Ok(Step::Idle);
        }
        let handling = Instant::now();
        self.window
            .collect_finished()
            .await
            .map_err(group.registry_error())?;
        if !self.window.head_finished() {
            // A full read: read on while the calls run, rather than wait for them.
            if read == Some(batch_size) && self.window_has_room(group) {
                return Ok(Step::Busy);
            }
            // Until a call finishes, the lease keeper finds the lease gone (the next step
            // stands by), or the periodic look at the delivery rows comes.
            let lost = self.lease_lost_token();
            let scan = self.next_scan();
            tokio::select! {
                finished = self.window.next_finished() => {
                    finished.map_err(group.registry_error())?;
                }
                () = lost.cancelled() => return Ok(Step::Busy),
                () = scan => return Ok(Step::Busy),
            }
            if !self.window.head_finished() {
                return Ok(Step::Busy);
            }
            self.window
                .collect_finished()
                .await
                .map_err(group.registry_error())?;
        }
        let (rows, steps) = self.window.take_finished(batch_size);
        let mut plan = group.dispatcher.plan_batch(&rows, steps);
        times.decode = self.window.take_decode_time();
        times.handle = handling.elapsed().saturating_sub(times.decode);
        let recording = Instant::now();
        if let Some(last_failure) = plan.failures.last() {
            let recorded = store::deliveries_record(
                &group.pool,
                self.holder(group),
                &plan.failures,
                group.dispatcher.dead_letter_stream.is_some(),
            )
            .await
            .map_err(group.store_error("record failed deliveries"))?;
            if !recorded {
                return Ok(lost_lease(group, &self.lease, "delivery insert fenced"));
            }
            // From here a re-read of this batch must find these rows (and leave them alone).
            self.retries.recorded_through = self
                .retries
                .recorded_through
                .max(Some(last_failure.position));
            for delay in plan.failures.iter().filter_map(|f| f.delay) {
                self.retries.retry_in(delay);
            }
            plan.apply_parks(&mut self.retries.parked);
        }
        times.cursor = recording.elapsed();
        let appending = Instant::now();
        if let Some(step) = self.append_batch(group, &rows, &mut plan).await? {
            return Ok(step);
        }
        times.append = appending.elapsed();
        // A failure recorded now holds back its chain's later messages still in the window;
        // `strict` stopped at one: what lies after it is read again once it is done.
        self.window.park(&plan.parks);
        if plan.handled < rows.len() {
            self.window.reset();
        }
        self.dead_letters_copied(group, &plan).await?;
        let marks = self
            .marks
            .raise(&plan.appends, self.lease.replay_generation);
        let appended_at = chrono::Utc::now();
        let Some(through) = plan.through else {
            return Ok(Step::Idle);
        };
        // The previous batch's cursor update must have landed before this one is sent.
        let advancing = Instant::now();
        if let Some(step) = self.settle_advance(group).await? {
            return Ok(step);
        }
        self.pending_advance = Some(PendingAdvance::start(
            &group.pool,
            self.holder(group),
            through,
            group.settings.lease_ttl,
            marks,
        ));
        // The update runs while the next batch is read, handled and appended (or, when the
        // next read finds nothing, until that read settles it): a crash before it lands
        // re-reads batches the watermark then skips.
        times.cursor += advancing.elapsed();
        telemetry::stage_times(&group.name, &times);
        group.log_pass("batch forwarded", &plan.tally, Some(through));
        telemetry::pass_committed(
            &group.name,
            "new",
            &plan.by_topic,
            started.elapsed(),
            latencies(appended_at, &plan.delivered_at),
        );
        self.lease.cursor = through;
        Ok(
            if rows.len() >= batch_size || plan.handled < rows.len() || !self.window.is_empty() {
                Step::Busy
            } else {
                Step::Trickle
            },
        )
    }

    /// Clears the pending flag of the dead rows whose dead-letter copy `plan` appended.
    async fn dead_letters_copied(&self, group: &Group, plan: &BatchPlan) -> Result<(), RelayError> {
        let copied: Vec<uuid::Uuid> = plan
            .late
            .iter()
            .flat_map(|late| late.entries.iter().map(|e| e.message_id))
            .collect();
        if copied.is_empty() {
            return Ok(());
        }
        store::deliveries_dead_letter_copied(&group.pool, &group.name, &copied)
            .await
            .map_err(group.store_error("clear the pending dead-letter copies"))
    }

    /// The batch after `from`: the prefetched one when it was read from there, else a read
    /// now.
    async fn read_batch(&mut self, group: &Group, from: Position) -> ReadResult {
        if let Some(prefetch) = self.prefetch.take()
            && let Some(read) = prefetch.take(from).await
        {
            return read;
        }
        group
            .tail
            .read(&group.name, from, group.settings.batch_size)
            .await
    }
}

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
use super::active::{Active, AppendFailure, Lease, lost_lease};
use super::group::{Group, Step, latencies};
use super::plan::BatchPlan;
use super::prefetch::{PendingAdvance, Prefetch};
use super::tail::{Read, ReadResult};
use crate::position::Position;
use crate::sink::{LateAppend, SinkError, StreamAppend, Writer};
use crate::store::{self, OutboxRow};
use crate::telemetry::{self, StageTimes};
use std::sync::Arc;

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
        // The last batch sent ahead lands (or is abandoned with the rest) within the grace.
        if tokio::time::timeout_at(deadline.into(), self.settle(group))
            .await
            .is_err()
        {
            self.pending_append = None;
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
            // As after a crash: the next read starts at the cursor, and what the append in
            // flight wrote is skipped by the watermark.
            self.window.reset();
            self.pending_append = None;
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
        let mut read_full = false;
        if admit == Admit::Yes && self.window_has_room(group) && !self.window.is_halted() {
            let from = self.window.read_through().unwrap_or(self.lease.cursor);
            let rows = self
                .read_batch(group, from)
                .await
                .map_err(group.store_error("read the outbox"))?;
            let Some(Read { rows, full }) = rows else {
                return Ok(lost_lease(group, &self.lease, "outbox read fenced"));
            };
            if full
                && self.prefetch.is_none()
                && let Some(last) = rows.last()
            {
                self.prefetch = Some(Prefetch::start(
                    &group.tail,
                    &group.name,
                    group.partition(),
                    last.position,
                    group.read_limit(),
                ));
            }
            read_full = full;
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
            if let Some(step) = self.settle(group).await? {
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
            if read_full && self.window_has_room(group) {
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
        // The previous batch's append, sent while this one was read and planned, lands first:
        // appends go out per stream in position order, and this one's marks follow from it.
        match self.settle_append(group).await? {
            Settled::Clean => {}
            Settled::Step(step) => return Ok(step),
            // The previous batch needed the careful path, which may have parked chains this
            // batch holds: it is read again from the cursor (its failures, recorded above, are
            // found and left alone).
            Settled::Redone => return Ok(Step::Busy),
        }
        let more = read_full || rows.len() >= batch_size || plan.handled < rows.len();
        if plan.is_clean(rows.len()) {
            self.marks.expect(&mut plan.appends);
            let appending = PendingAppend::send(group, &self.lease, rows, plan, times, started);
            self.pending_append = Some(appending);
        } else {
            let appending = Instant::now();
            if let Some(step) = self.append_batch(group, &rows, &mut plan).await? {
                return Ok(step);
            }
            times.append = appending.elapsed();
            // A failure recorded now holds back its chain's later messages still in the
            // window; `strict` stopped at one: what lies after it is read again once it is
            // done.
            self.window.park(&plan.parks);
            if plan.handled < rows.len() {
                self.window.reset();
            }
            if let Some(step) = self.commit_appended(group, &plan, times, started).await? {
                return Ok(step);
            }
        }
        Ok(if more || !self.window.is_empty() {
            Step::Busy
        } else {
            Step::Trickle
        })
    }

    /// Lands the append in flight and the cursor update in flight, in that order.
    /// `Some(Standby)` when the lease went.
    pub(super) async fn settle(&mut self, group: &Group) -> Result<Option<Step>, RelayError> {
        match self.settle_append(group).await? {
            Settled::Step(step) => Ok(Some(step)),
            Settled::Clean | Settled::Redone => self.settle_advance(group).await,
        }
    }

    /// Waits for the append in flight, if any, and commits its batch. A refusal of any kind
    /// (a stream key of the wrong type, lost entries, a fence, an error) sends the batch
    /// again on the careful path ([`Active::append_batch`]), which acts on it; what the
    /// first try wrote is skipped there by the watermark.
    async fn settle_append(&mut self, group: &Group) -> Result<Settled, RelayError> {
        let Some(pending) = self.pending_append.take() else {
            return Ok(Settled::Clean);
        };
        let waiting = Instant::now();
        let (rows, mut plan, mut times, started, appended) = pending.wait().await;
        times.append += waiting.elapsed();
        if appended {
            return Ok(
                match self.commit_appended(group, &plan, times, started).await? {
                    Some(step) => Settled::Step(step),
                    None => Settled::Clean,
                },
            );
        }
        if let Some(step) = self.append_batch(group, &rows, &mut plan).await? {
            return Ok(Settled::Step(step));
        }
        self.window.reset();
        if let Some(step) = self.commit_appended(group, &plan, times, started).await? {
            return Ok(Settled::Step(step));
        }
        Ok(Settled::Redone)
    }

    /// After a batch's append: the dead-letter copies cleared, the marks raised, the cursor
    /// update started (once the previous one landed).
    async fn commit_appended(
        &mut self,
        group: &Group,
        plan: &BatchPlan,
        mut times: StageTimes,
        started: Instant,
    ) -> Result<Option<Step>, RelayError> {
        self.dead_letters_copied(group, plan).await?;
        let marks = self
            .marks
            .raise(&plan.appends, self.lease.replay_generation);
        let appended_at = chrono::Utc::now();
        let Some(through) = plan.through else {
            return Ok(None);
        };
        // The previous batch's cursor update must have landed before this one is sent.
        let advancing = Instant::now();
        if let Some(step) = self.settle_advance(group).await? {
            return Ok(Some(step));
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
        Ok(None)
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
        if let Some(prefetch) = &mut self.prefetch {
            if let Some(read) = prefetch.take(from).await {
                return read;
            }
            // Read ahead from elsewhere, or its reads ended: read here.
            self.prefetch = None;
        }
        group
            .tail
            .read(&group.name, group.partition(), from, group.read_limit())
            .await
    }
}

/// How the append in flight ended, for the pass that waited for it.
enum Settled {
    /// Appended and committed (or there was none).
    Clean,
    /// Appended on the careful path, and the window started again from the cursor.
    Redone,
    /// The lease went.
    Step(Step),
}

/// A batch whose append was sent while the worker went on to the next one: its rows and plan
/// (for the careful path, should the append be refused), and the append task, aborted when
/// dropped (as after a crash: the cursor has not moved, and the watermark skips what it
/// wrote when the batch is read again).
pub(super) struct PendingAppend {
    rows: Vec<OutboxRow>,
    plan: BatchPlan,
    /// The plan's appends, shared with the task (never copied: they are most of the batch).
    appends: Arc<Vec<StreamAppend>>,
    times: StageTimes,
    started: Instant,
    task: tokio::task::JoinHandle<Result<(), SinkError>>,
}

impl PendingAppend {
    fn send(
        group: &Group,
        lease: &Lease,
        rows: Vec<OutboxRow>,
        mut plan: BatchPlan,
        times: StageTimes,
        started: Instant,
    ) -> PendingAppend {
        let sink = group.sink.clone();
        let name = group.name.clone();
        let (epoch, replay_generation) = (lease.epoch, lease.replay_generation);
        let appends = Arc::new(std::mem::take(&mut plan.appends));
        let sending = Arc::clone(&appends);
        let task = tokio::spawn(async move {
            let writer = Writer {
                group: &name,
                epoch,
                replay_generation,
            };
            sink.append(writer, &sending, &[]).await.map(|_| ())
        });
        PendingAppend {
            rows,
            plan,
            appends,
            times,
            started,
            task,
        }
    }

    /// The batch back, its appends in its plan again, and whether they went through.
    async fn wait(mut self) -> (Vec<OutboxRow>, BatchPlan, StageTimes, Instant, bool) {
        let appended = match (&mut self.task).await {
            Ok(Ok(())) => true,
            Ok(Err(error)) => {
                tracing::debug!(error = %error, "the append sent ahead was refused; sending it again on the careful path");
                false
            }
            Err(join) => {
                tracing::warn!(error = %join, "the append sent ahead failed; sending it again on the careful path");
                false
            }
        };
        let rows = std::mem::take(&mut self.rows);
        let mut plan = std::mem::take(&mut self.plan);
        let appends = std::mem::take(&mut self.appends);
        // The task has ended (its reference is dropped, even after a panic).
        plan.appends = Arc::try_unwrap(appends).unwrap_or_else(|shared| (*shared).clone());
        (rows, plan, self.times, self.started, appended)
    }
}

impl Drop for PendingAppend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

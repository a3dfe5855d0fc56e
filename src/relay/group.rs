//! One consumer group's worker: lease, the forward pass, retries, and giving the lease back.
//!
//! ```text
//!   standby ──lease acquired──▶ active ──shutdown──▶ released
//!      ▲                          │
//!      └── lease lost (renew, cursor or delivery update matched nothing, or Redis fenced the epoch)
//! ```
//! The forward pass (new messages after the cursor, through the worker's window) is in
//! `forward`. A retry pass runs when a retry is due (or every [`RETRY_SCAN_INTERVAL`], to see
//! operators' changes), before reading new messages and only on an empty window: handle again →
//! append late entries → settle the rows (one fenced transaction). Everything it needs is in
//! `outbox.deliveries`, so a restarted relay resumes every pending retry and blocked message
//! from there.

use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use std::collections::HashSet;
use std::sync::Arc;

use super::RelayError;
use super::dispatcher::Dispatcher;
use super::forward::Admit;
use super::ordering::{OrderingMode, Parked};
use super::plan::Tally;
use super::prefetch::{PendingAdvance, Prefetch};
use super::repair::StreamMarks;
use super::settings::RelaySettings;
use super::stall::StallWatch;
use super::tail::SharedTail;
use super::wakeup::{CHASE_POLL, Wakeup};
use super::window::Window;
use crate::position::Position;
use crate::registry::RegistryError;
use crate::sink::{LateAppend, Sink, SinkError, StreamAppend, Writer, WrongType};
use crate::store::{self, LeaseHolder, OutboxRow};
use crate::telemetry::{self, Health, WorkerHealth};

/// How often an active worker re-reads its parked keys and due retries even when none is due
/// by its own schedule, so an operator's `retry` or `dead retry` is picked up (or every
/// `idle_poll_ms`, when that is longer).
pub const RETRY_SCAN_INTERVAL: Duration = Duration::from_secs(1);

/// The longest a stopping worker waits for its last cursor update and the lease release (a
/// lease it could not release expires after `lease_ttl_ms`).
const RELEASE_TIMEOUT: Duration = Duration::from_millis(500);

pub(super) struct GroupWorker {
    pub name: String,
    pub dispatcher: Arc<Dispatcher>,
    /// The messages read and not committed yet, with their handler calls running.
    pub window: Window,
    pub pool: PgPool,
    pub sink: Sink,
    pub settings: RelaySettings,
    pub owner: String,
    pub key_prefix: String,
    pub state: State,
    pub stall: StallWatch,
    pub wakeup: Wakeup,
    /// The highest transaction id a notification announced (0 when polling).
    pub notified_tx_id: u64,
    pub retries: RetryState,
    /// The process's shared reads of the outbox (one read serves every group at the head).
    pub tail: std::sync::Arc<SharedTail>,
    /// The next batch, being read while the current one is forwarded (a backlog).
    pub prefetch: Option<Prefetch>,
    /// The last batch's cursor update, running while the next batch is forwarded.
    pub pending_advance: Option<PendingAdvance>,
    /// Where this worker reports its state, for readiness.
    pub health: Health,
    /// Empty reads in a row since the last one that found messages (for the idle ramp).
    pub idle_streak: u32,
    /// The state last reported (written again only when it changes).
    pub reported: WorkerHealth,
    /// How far the group appended to each stream (see `repair`).
    pub marks: StreamMarks,
    /// When the marks were last compared with Redis for every stream.
    pub marks_checked_at: Instant,
    /// Dead deliveries may wait for their dead-letter copy (see `append_dead_letters`).
    pub dead_letters_pending: bool,
}

/// What an active worker knows of its group's delivery rows (rebuilt on every takeover).
#[derive(Debug, Clone)]
pub(super) struct RetryState {
    /// Keys (or, for `strict`, the group) held back by a retrying or blocked message.
    pub parked: Parked,
    /// The highest position with a delivery row: a re-read at or below it checks for rows.
    pub recorded_through: Option<Position>,
    /// When the soonest retry is due.
    pub due_at: Option<Instant>,
    /// When to look at the rows again regardless.
    pub scan_at: Instant,
}

impl RetryState {
    pub fn new() -> RetryState {
        RetryState {
            parked: Parked::default(),
            recorded_through: None,
            due_at: None,
            scan_at: Instant::now(),
        }
    }

    fn due_now(&self, now: Instant) -> bool {
        now >= self.scan_at || self.retry_due(now)
    }

    /// Whether a retry's time has come (not only the periodic look at the rows).
    fn retry_due(&self, now: Instant) -> bool {
        self.due_at.is_some_and(|due| now >= due)
    }

    /// The soonest moment the worker must look at its retries.
    fn wake_at(&self) -> Instant {
        self.due_at
            .map_or(self.scan_at, |due| due.min(self.scan_at))
    }

    pub(super) fn retry_in(&mut self, delay: Duration) {
        let at = Instant::now() + delay;
        self.due_at = Some(self.due_at.map_or(at, |due| due.min(at)));
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    Standby,
    Active(Lease),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Lease {
    pub epoch: i64,
    /// The group's replay generation when the lease was taken (a replay takes the lease away,
    /// so it cannot change while the lease is held).
    pub replay_generation: i64,
    pub cursor: Position,
    pub renew_at: Instant,
}

/// How long to wait before the next step.
#[derive(Debug, Clone, Copy)]
enum Pause {
    None,
    For(Duration),
    /// The idle interval, ended early by a notification (`wakeup = "notify"`).
    UntilWoken(Duration),
}

/// The pause after a read that found some messages but not a full batch.
const TRICKLE_PAUSE: Duration = Duration::from_millis(1);

/// When polling, how long the `streak`-th empty read in a row waits (capped by
/// `idle_poll_ms`): 1 ms right after activity, doubling while nothing arrives. Under load a
/// read that finds nothing (an older transaction still open) is followed by a short wait, not
/// the full idle interval; a relay idle for longer polls every `idle_poll_ms` as before, so the
/// idle cost does not change.
fn idle_ramp(streak: u32) -> Duration {
    TRICKLE_PAUSE.saturating_mul(1u32 << streak.min(16))
}

/// What one step found, which decides how long to wait before the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// A full batch: go again at once.
    Busy,
    /// Some messages, not a full batch: a trickle; look again after a short breath.
    Trickle,
    /// Caught up (the read found nothing): wait the idle interval.
    Idle,
    /// Another relay holds the lease: wait, then try to take it.
    Standby,
}

impl GroupWorker {
    /// Runs until `shutdown` is cancelled: the step in flight then has `shutdown_grace` to
    /// finish and is abandoned after it (see [`GroupWorker::step_within_grace`]); then the
    /// lease is released (at most [`RELEASE_TIMEOUT`]) if held.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut backoff = super::backoff(self.settings.max_backoff);
        // Set when shutdown began during a step: the end of its grace.
        let mut grace_ends = None;
        while !shutdown.is_cancelled() {
            // A notification from now on ends the idle wait after this step.
            self.notified_tx_id = self.wakeup.mark_seen();
            let Some(stepped) = self.step_within_grace(&shutdown, &mut grace_ends).await else {
                // Abandoned: the calls still running go with it.
                self.window.reset();
                break;
            };
            let pause = match stepped {
                Ok(step) => {
                    backoff = super::backoff(self.settings.max_backoff);
                    self.report(match self.state {
                        State::Active(_) => WorkerHealth::Active,
                        State::Standby => WorkerHealth::Standby,
                    });
                    let pause = self.pause_after(step);
                    self.idle_streak = match step {
                        Step::Idle => self.idle_streak.saturating_add(1),
                        _ => 0,
                    };
                    pause
                }
                Err(error) => {
                    let delay = backoff.next().unwrap_or(self.settings.max_backoff);
                    let error = error_chain(&error);
                    tracing::warn!(group = %self.name, error = %error, retry_in_ms = delay.as_millis() as u64,
                        "relay step failed; retrying");
                    telemetry::relay_error(&self.name);
                    self.report(WorkerHealth::Failing(error));
                    Pause::For(delay)
                }
            };
            let wait = async {
                match pause {
                    Pause::None => {}
                    Pause::For(delay) => tokio::time::sleep(delay).await,
                    Pause::UntilWoken(idle) => self.wakeup.wait(idle).await,
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = wait => {}
            }
        }
        let grace_ends =
            grace_ends.unwrap_or_else(|| Instant::now() + self.settings.shutdown_grace);
        self.finish_window(grace_ends).await;
        if tokio::time::timeout(RELEASE_TIMEOUT, self.release())
            .await
            .is_err()
        {
            tracing::warn!(group = %self.name, timeout_ms = RELEASE_TIMEOUT.as_millis() as u64,
                "could not release the lease in time; it will expire");
        }
        self.report(WorkerHealth::Standby);
    }

    /// One [`step`](GroupWorker::step), raced against `shutdown`: once shutdown begins, the
    /// step has `shutdown_grace` to finish. `None` when it did not, and was dropped.
    ///
    /// Dropping a step abandons its handler calls and Redis and Postgres requests where they
    /// stand, as a crash would, and marks nothing done that was not: the cursor update of a
    /// batch starts only after its append succeeded ([`PendingAdvance`]), so one still
    /// pending is for appended entries and `release` lets it land; failures recorded before
    /// the append are left to the retry path, as after a crash; entries appended without
    /// their cursor update are skipped by the watermark when the next owner reads them again.
    async fn step_within_grace(
        &mut self,
        shutdown: &CancellationToken,
        grace_ends: &mut Option<Instant>,
    ) -> Option<Result<Step, RelayError>> {
        let grace = self.settings.shutdown_grace;
        let finished = {
            let step = self.step();
            tokio::pin!(step);
            tokio::select! {
                stepped = &mut step => return Some(stepped),
                () = shutdown.cancelled() => {}
            }
            *grace_ends = Some(Instant::now() + grace);
            tokio::time::timeout(grace, step).await
        };
        if finished.is_err() {
            // The next batch's read, if one was started, is dropped (and aborted) too.
            self.prefetch = None;
            tracing::warn!(group = %self.name, grace_ms = grace.as_millis() as u64,
                "shutdown grace over; abandoning the work in flight to the next owner");
        }
        finished.ok()
    }

    /// Publishes this worker's state (and the lease gauge) when it changed.
    fn report(&mut self, health: WorkerHealth) {
        if self.reported == health {
            return;
        }
        telemetry::lease_state(&self.name, health == WorkerHealth::Active);
        self.health.set(&self.name, health.clone());
        self.reported = health;
    }

    fn pause_after(&self, step: Step) -> Pause {
        match step {
            Step::Busy => Pause::None,
            // Under a steady trickle, more has arrived while these were forwarded: look again
            // soon, without spinning (the idle interval only once a read finds nothing).
            Step::Trickle => Pause::UntilWoken(self.settings.idle_poll.min(TRICKLE_PAUSE)),
            // Never idle past the lease renewal, however long the poll interval; and poll
            // briskly while a notified transaction's messages are not read yet.
            Step::Idle => Pause::UntilWoken(match self.state {
                State::Active(lease) => {
                    let idle = if lease.cursor.tx_id < self.notified_tx_id {
                        self.settings.idle_poll.min(CHASE_POLL)
                    } else if self.wakeup.is_polling() {
                        self.settings.idle_poll.min(idle_ramp(self.idle_streak))
                    } else {
                        self.settings.idle_poll
                    };
                    let wake = lease.renew_at.min(self.retries.wake_at());
                    idle.min(wake.saturating_duration_since(Instant::now()))
                }
                State::Standby => self.settings.idle_poll,
            }),
            Step::Standby => Pause::For(
                (self.settings.lease_ttl / 4)
                    .clamp(Duration::from_millis(20), Duration::from_secs(1)),
            ),
        }
    }

    /// Wraps a Postgres error with this group and what it was doing (the name is copied only
    /// when there is an error).
    pub(super) fn store_error(
        &self,
        operation: &'static str,
    ) -> impl FnOnce(sqlx::Error) -> RelayError + '_ {
        move |source| RelayError::Store {
            group: self.name.clone(),
            operation,
            source,
        }
    }

    /// Wraps a schema registry failure (Postgres unreachable, an unusable stored schema).
    pub(super) fn registry_error(&self) -> impl FnOnce(RegistryError) -> RelayError + '_ {
        move |source| RelayError::Registry {
            group: self.name.clone(),
            source,
        }
    }

    pub(super) fn holder(&self, lease: &Lease) -> LeaseHolder<'_> {
        LeaseHolder {
            group: &self.name,
            owner: &self.owner,
            epoch: lease.epoch,
        }
    }

    /// One pass: take the lease if standby; otherwise due retries first, then new messages
    /// (unless a `strict` group is held by a retrying message).
    pub async fn step(&mut self) -> Result<Step, RelayError> {
        let State::Active(lease) = self.state else {
            return self.try_acquire().await;
        };
        let now = Instant::now();
        if !self.window.is_empty() && self.retries.due_now(now) {
            // The window's messages were decided against the parked keys as they are: it
            // finishes (nothing more admitted) before a retry pass releases any.
            if self.retries.retry_due(now) {
                return self.forward_pass(lease, Admit::No).await;
            }
            // Only the periodic look at the rows (operators' changes): no pass, no barrier.
            self.refresh_parked().await?;
            if self.retries.retry_due(Instant::now()) {
                return self.forward_pass(lease, Admit::No).await;
            }
        }
        // A retry pass runs on an empty window only.
        let retries_due = self.window.is_empty() && self.retries.due_now(Instant::now());
        let halted = halts_reading(self.dispatcher.ordering, &self.retries.parked);
        // Anything but a forward batch settles the last cursor update first.
        if (retries_due || halted)
            && let Some(step) = self.settle_advance(lease).await?
        {
            return Ok(step);
        }
        if retries_due && let Some(step) = self.retry_pass(lease).await? {
            return Ok(step);
        }
        if retries_due && let Some(step) = self.append_dead_letters(lease).await? {
            return Ok(step);
        }
        if let Some(step) = self.check_stream_marks(lease, false).await? {
            return Ok(step);
        }
        if halted {
            return self.renew_if_due(lease).await;
        }
        self.forward_pass(lease, Admit::Yes).await
    }

    /// Re-reads the parked keys and when the next retry is due.
    async fn refresh_parked(&mut self) -> Result<(), RelayError> {
        let rows = store::deliveries_parked(&self.pool, &self.name)
            .await
            .map_err(self.store_error("read the parked keys"))?;
        let now = Instant::now();
        self.retries.parked = Parked::from_rows(&rows);
        self.retries.due_at = rows.iter().filter_map(|r| r.due_in).min().map(|d| now + d);
        // Never more often than the idle poll: a relay told to poll rarely stays quiet.
        self.retries.scan_at = now + RETRY_SCAN_INTERVAL.max(self.settings.idle_poll);
        Ok(())
    }

    /// Handles due retries, if any. `Some(step)` when that decides the next step (the lease
    /// was lost, or there are more due retries); `None` to go on to new messages.
    async fn retry_pass(&mut self, lease: Lease) -> Result<Option<Step>, RelayError> {
        // The rows change behind our back only by operators' hands: re-read them on the scan
        // interval; our own schedule (due_at) is kept up to date by the passes themselves.
        if Instant::now() >= self.retries.scan_at {
            self.refresh_parked().await?;
        }
        if self.retries.due_at.is_none_or(|due| Instant::now() < due) {
            return Ok(None);
        }
        let started = Instant::now();
        let due = store::deliveries_due(&self.pool, self.holder(&lease), self.settings.batch_size)
            .await
            .map_err(self.store_error("read the due retries"))?;
        if due.is_empty() {
            return Ok(None);
        }
        let mut plan = self
            .dispatcher
            .retry_pass(&due)
            .await
            .map_err(self.registry_error())?;
        let copies_pending = match self.append(lease, &[], &plan.late).await {
            Ok(()) => Vec::new(),
            Err(AppendFailure::Unwritable(wrong)) => {
                self.report_unwritable(&wrong);
                let pending = plan.fail_streams(&self.dispatcher, &due, &wrong);
                self.dead_letters_pending |= !pending.is_empty();
                pending
            }
            Err(AppendFailure::Step(step)) => return Ok(Some(step)),
            Err(AppendFailure::Lost(_)) => unreachable!("late entries are not compared"),
            Err(AppendFailure::Error(error)) => return Err(error),
        };
        let appended_at = chrono::Utc::now();
        let released: Vec<&str> = plan.released_keys.iter().map(String::as_str).collect();
        let settled = store::deliveries_settle(
            &self.pool,
            self.holder(&lease),
            &plan.settlements,
            &released,
            &copies_pending,
        )
        .await
        .map_err(self.store_error("record the retry results"))?;
        let Some(released) = settled else {
            return Ok(Some(self.lost_lease(lease, "delivery update fenced")));
        };
        self.log_pass("retries handled", &plan.tally, None);
        telemetry::pass_committed(
            &self.name,
            "retry",
            &plan.by_topic,
            started.elapsed(),
            latencies(appended_at, &plan.delivered_at),
        );
        if !released.is_empty() {
            tracing::debug!(group = %self.name, released = released.len(), "blocked messages released");
        }
        self.refresh_parked().await?;
        Ok((due.len() >= self.settings.batch_size || !released.is_empty()).then_some(Step::Busy))
    }

    /// Appends; a refusal the caller can act on comes back as an [`AppendFailure`].
    pub(super) async fn append(
        &mut self,
        lease: Lease,
        appends: &[StreamAppend],
        late: &[LateAppend],
    ) -> Result<(), AppendFailure> {
        let writer = Writer {
            group: &self.name,
            epoch: lease.epoch,
            replay_generation: lease.replay_generation,
        };
        match self.sink.append(writer, appends, late).await {
            Ok(_) => Ok(()),
            Err(error) if error.is_fenced() => {
                tracing::warn!(group = %self.name, epoch = lease.epoch, error = %error, "fenced in Redis");
                Err(AppendFailure::Step(
                    self.lost_lease(lease, "fenced in Redis"),
                ))
            }
            Err(SinkError::WrongType(wrong)) => Err(AppendFailure::Unwritable(wrong)),
            Err(SinkError::Lost(lost)) => Err(AppendFailure::Lost(lost)),
            Err(error) => Err(AppendFailure::Error(self.sink_error()(error))),
        }
    }

    /// One ERROR per unwritable stream key: a person must fix it.
    pub(super) fn report_unwritable(&self, wrong: &[WrongType]) {
        for stream in wrong {
            tracing::error!(group = %self.name, stream = %stream.stream, error = %stream,
                "cannot append: the stream key is not a stream; its messages follow their route's retry policy until the key is fixed");
        }
    }

    /// Appends the dead-letter copies still pending (a crash between recording a dead row and
    /// the append, or a dead-letter stream key of the wrong type), then clears them.
    async fn append_dead_letters(&mut self, lease: Lease) -> Result<Option<Step>, RelayError> {
        if !self.dead_letters_pending {
            return Ok(None);
        }
        let pending = store::deliveries_dead_letter_pending(
            &self.pool,
            self.holder(&lease),
            self.settings.batch_size,
        )
        .await
        .map_err(self.store_error("read the pending dead-letter copies"))?;
        self.dead_letters_pending = pending.len() >= self.settings.batch_size;
        if pending.is_empty() {
            return Ok(None);
        }
        let mut late = Vec::new();
        for (delivery, error) in &pending {
            let attempts = u32::try_from(delivery.attempts).unwrap_or(0);
            self.dispatcher
                .dead_letter_copy(&mut late, &delivery.row, error, attempts);
        }
        let ids: Vec<uuid::Uuid> = pending.iter().map(|(d, _)| d.row.id).collect();
        match self.append(lease, &[], &late).await {
            Ok(()) => {}
            Err(AppendFailure::Unwritable(wrong)) => {
                self.report_unwritable(&wrong);
                self.dead_letters_pending = true;
                return Ok(None);
            }
            Err(AppendFailure::Step(step)) => return Ok(Some(step)),
            Err(AppendFailure::Lost(_)) => unreachable!("late entries are not compared"),
            Err(AppendFailure::Error(error)) => return Err(error),
        }
        store::deliveries_dead_letter_copied(&self.pool, &self.name, &ids)
            .await
            .map_err(self.store_error("clear the pending dead-letter copies"))?;
        tracing::info!(group = %self.name, copies = ids.len(), "pending dead-letter copies appended");
        Ok(None)
    }

    pub(super) fn lost_lease(&mut self, lease: Lease, how: &str) -> Step {
        self.prefetch = None;
        // The calls still running are aborted; nothing of theirs is committed.
        self.window.reset();
        self.pending_advance = None;
        self.tail.release(&self.name);
        tracing::warn!(group = %self.name, epoch = lease.epoch, how, "lease lost; standing by");
        self.state = State::Standby;
        Step::Standby
    }

    pub(super) fn log_pass(&self, what: &'static str, tally: &Tally, position: Option<Position>) {
        let position = position.map(|p| p.to_string()).unwrap_or_default();
        tracing::debug!(group = %self.name, position, delivered = tally.delivered, unrouted = tally.unrouted,
            dropped = tally.dropped, retrying = tally.retrying, blocked = tally.blocked, dead = tally.dead,
            recorded = tally.recorded, "{what}");
        if tally.dead > 0 {
            tracing::error!(group = %self.name, dead = tally.dead,
                "messages dead-lettered; see `outbox-relay dead list --group {}`", self.name);
        } else if tally.retrying > 0 {
            tracing::warn!(group = %self.name, retrying = tally.retrying, "handler failures; will retry");
        }
    }

    /// The ids of `rows` that already have a delivery row (only asked for when a row lies at
    /// or below the highest recorded position: a re-read after a crash).
    pub(super) async fn recorded_among(
        &self,
        rows: &[OutboxRow],
    ) -> Result<HashSet<uuid::Uuid>, RelayError> {
        let Some(through) = self.retries.recorded_through else {
            return Ok(HashSet::new());
        };
        let ids: Vec<uuid::Uuid> = rows
            .iter()
            .take_while(|row| row.position <= through)
            .map(|row| row.id)
            .collect();
        if ids.is_empty() {
            return Ok(HashSet::new());
        }
        let known = store::deliveries_known(&self.pool, &self.name, &ids)
            .await
            .map_err(self.store_error("look up recorded deliveries"))?;
        Ok(known.into_iter().collect())
    }

    async fn try_acquire(&mut self) -> Result<Step, RelayError> {
        let acquired = store::consumer_groups_lease_acquire(
            &self.pool,
            &self.name,
            &self.owner,
            self.settings.lease_ttl,
        )
        .await
        .map_err(self.store_error("acquire the lease"))?;
        let Some(acquired) = acquired else {
            return Ok(Step::Standby);
        };
        tracing::info!(group = %self.name, epoch = acquired.epoch, position = %acquired.cursor, owner = %self.owner,
            "lease acquired; forwarding");
        self.tail.hold(&self.name, acquired.epoch);
        self.retries = RetryState::new();
        self.retries.recorded_through = store::deliveries_recorded_through(&self.pool, &self.name)
            .await
            .map_err(self.store_error("read the recorded deliveries"))?;
        self.refresh_parked().await?;
        let marks = store::stream_marks_of_group(&self.pool, &self.name)
            .await
            .map_err(self.store_error("read the stream marks"))?;
        self.marks = StreamMarks::load(marks);
        // A crash may have come between recording a dead row and appending its copy.
        self.dead_letters_pending = self.dispatcher.dead_letter_stream.is_some();
        let lease = Lease {
            epoch: acquired.epoch,
            replay_generation: acquired.replay_generation,
            cursor: acquired.cursor,
            renew_at: Instant::now() + self.settings.lease_ttl / 3,
        };
        self.state = State::Active(lease);
        // Redis may have lost appends while no relay held the group.
        if let Some(step) = self.check_stream_marks(lease, true).await? {
            return Ok(step);
        }
        Ok(Step::Busy)
    }

    /// Waits for the cursor update still in flight, if any; `Some(Standby)` when it found the
    /// lease gone.
    pub(super) async fn settle_advance(
        &mut self,
        lease: Lease,
    ) -> Result<Option<Step>, RelayError> {
        let Some(pending) = self.pending_advance.take() else {
            return Ok(None);
        };
        let advanced = pending
            .wait()
            .await
            .map_err(self.store_error("advance the cursor"))?;
        Ok((!advanced).then(|| self.lost_lease(lease, "cursor update fenced")))
    }

    pub(super) async fn renew_if_due(&mut self, mut lease: Lease) -> Result<Step, RelayError> {
        if Instant::now() < lease.renew_at {
            return Ok(Step::Idle);
        }
        let renewed = store::consumer_groups_lease_renew(
            &self.pool,
            self.holder(&lease),
            self.settings.lease_ttl,
        )
        .await
        .map_err(self.store_error("renew the lease"))?;
        if !renewed {
            return Ok(self.lost_lease(lease, "renewal found it taken over or the group paused"));
        }
        lease.renew_at = Instant::now() + self.settings.lease_ttl / 3;
        self.state = State::Active(lease);
        Ok(Step::Idle)
    }

    /// Gives the lease up so a standby takes over at once; best effort (it expires anyway).
    async fn release(&mut self) {
        self.window.reset();
        if let State::Active(lease) = self.state
            && let Err(error) = self.settle_advance(lease).await
        {
            tracing::warn!(group = %self.name, error = %error_chain(&error),
                "the last cursor update failed; its batch will be read again");
        }
        self.tail.release(&self.name);
        if let State::Active(lease) = self.state {
            match store::consumer_groups_lease_release(&self.pool, self.holder(&lease)).await {
                Ok(_) => {
                    tracing::info!(group = %self.name, position = %lease.cursor, "lease released")
                }
                Err(error) => {
                    tracing::warn!(group = %self.name, %error, "could not release the lease; it will expire")
                }
            }
            self.state = State::Standby;
        }
    }
}

/// Why an append did not go through, for the pass to act on.
pub(super) enum AppendFailure {
    /// The lease is gone (fenced in Redis): the step to return.
    Step(Step),
    /// Stream keys that are not streams.
    Unwritable(Vec<WrongType>),
    /// Redis lost entries the group had appended to these streams.
    Lost(Vec<crate::sink::LostAppends>),
    Error(RelayError),
}

/// Whether the worker must not read new messages now: only a `strict` group with something
/// parked stops (a parked key under `key` ordering holds back its own key, nothing else, so
/// the cursor update keeps running beside the next batch).
fn halts_reading(ordering: OrderingMode, parked: &Parked) -> bool {
    ordering == OrderingMode::Strict && parked.halts_group()
}

/// From each `created_at` to `appended_at` (0 for a clock that went backwards).
pub(super) fn latencies(
    appended_at: chrono::DateTime<chrono::Utc>,
    created: &[chrono::DateTime<chrono::Utc>],
) -> impl Iterator<Item = Duration> + '_ {
    created
        .iter()
        .map(move |at| (appended_at - *at).to_std().unwrap_or_default())
}

/// An error and its causes on one line, for logs.
pub(super) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod idle_ramp_tests {
    use super::*;
    use crate::relay::ordering::Chain;

    #[test]
    fn only_a_strict_group_with_a_parked_message_stops_reading() {
        let mut parked = Parked::default();
        assert!(!halts_reading(OrderingMode::Strict, &parked));
        parked.park(&Chain::Key("a".into()));
        assert!(!halts_reading(OrderingMode::Key, &parked));
        assert!(!halts_reading(OrderingMode::None, &parked));
        parked.park(&Chain::Group);
        assert!(halts_reading(OrderingMode::Strict, &parked));
    }

    #[test]
    fn empty_reads_wait_1_ms_then_double_up_to_a_bound() {
        let waits: Vec<u128> = (0..5).map(|s| idle_ramp(s).as_millis()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16]);
        assert_eq!(idle_ramp(16), idle_ramp(u32::MAX));
        assert!(idle_ramp(u32::MAX) >= Duration::from_secs(60));
    }
}

//! An active worker: the lease it holds and everything in flight under it.
//!
//! ```text
//!   GroupWorker.state:  Standby ──lease acquired (Active::take_over)──▶ Active(Active)
//!                          ▲                                              │
//!                          └──── the one transition: state = Standby ─────┘
//!                                 (lease lost, released, or abandoned on shutdown)
//! ```
//! [`Active`] owns the window (its handler calls), the read ahead, the cursor update in
//! flight, the retry bookkeeping, the stream marks, the lease keeper and the group's hold on
//! the shared tail. Dropping it — the only way out of the active state — aborts every task it
//! started and releases the tail, so nothing of an old lease can commit under the next one.
//!
//! Nothing periodic runs on the delivery path: the lease keeper renews the lease beside it
//! ([`LeaseKeeper`]), the stall check runs beside it too (see `stall`), and a pass only looks
//! at whether the keeper found the lease gone.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::RelayError;
use super::forward::{Admit, PendingAppend};
use super::group::{Group, Step, latencies};
use super::ordering::{OrderingMode, Parked};
use super::prefetch::{PendingAdvance, Prefetch};
use super::repair::StreamMarks;
use super::stall::StallWatcher;
use super::tail::SharedTail;
use super::window::Window;
use crate::position::Position;
use crate::sink::{LateAppend, SinkError, StreamAppend, Writer, WrongType};
use crate::store::{self, LeaseHolder, OutboxRow};
use crate::telemetry;

/// How often an active worker re-reads its parked keys and due retries even when none is due
/// by its own schedule, so an operator's `retry` or `dead retry` is picked up (or every
/// `idle_poll_ms`, when that is longer).
pub const RETRY_SCAN_INTERVAL: Duration = Duration::from_secs(1);

/// The lease a worker holds, as taken (the cursor moves with each committed batch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Lease {
    pub epoch: i64,
    /// The group's replay generation when the lease was taken (a replay takes the lease away,
    /// so it cannot change while the lease is held).
    pub replay_generation: i64,
    pub cursor: Position,
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
    fn new(recorded_through: Option<Position>) -> RetryState {
        RetryState {
            parked: Parked::default(),
            recorded_through,
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
    pub fn wake_at(&self) -> Instant {
        self.due_at
            .map_or(self.scan_at, |due| due.min(self.scan_at))
    }

    pub(super) fn retry_in(&mut self, delay: Duration) {
        let at = Instant::now() + delay;
        self.due_at = Some(self.due_at.map_or(at, |due| due.min(at)));
    }
}

/// A held lease and the work in flight under it (see the module doc).
pub(super) struct Active {
    pub lease: Lease,
    /// The messages read and not committed yet, with their handler calls running.
    pub window: Window,
    /// The next batch, being read while the current one is forwarded (a backlog).
    pub prefetch: Option<Prefetch>,
    /// The last batch's append, sent while the next batch is read, decided and planned.
    pub pending_append: Option<PendingAppend>,
    /// The last batch's cursor update, running while the next batch is forwarded.
    pub pending_advance: Option<PendingAdvance>,
    pub retries: RetryState,
    /// How far the group appended to each stream (see `repair`).
    pub marks: StreamMarks,
    /// When the marks were last compared with Redis for every stream.
    pub marks_checked_at: Instant,
    /// Dead deliveries may wait for their dead-letter copy (see `append_dead_letters`).
    pub dead_letters_pending: bool,
    /// Looks, beside the pipeline, at why a caught-up group does not move.
    pub stalls: StallWatcher,
    keeper: LeaseKeeper,
    _tail: TailHold,
}

impl Active {
    /// The state of a worker that just took `lease`: the group's delivery rows and stream
    /// marks read, the keeper renewing the lease, the shared tail reading for the group.
    pub async fn take_over(group: &Group, lease: Lease) -> Result<Active, RelayError> {
        let tail = TailHold::new(&group.tail, &group.name, lease.epoch);
        let recorded_through = store::deliveries_recorded_through(&group.pool, &group.name)
            .await
            .map_err(group.store_error("read the recorded deliveries"))?;
        let marks = store::stream_marks_of_group(&group.pool, &group.name)
            .await
            .map_err(group.store_error("read the stream marks"))?;
        let mut active = Active {
            lease,
            window: Window::new(Arc::clone(&group.dispatcher)),
            prefetch: None,
            pending_append: None,
            pending_advance: None,
            retries: RetryState::new(recorded_through),
            marks: StreamMarks::load(marks),
            marks_checked_at: Instant::now(),
            // A crash may have come between recording a dead row and appending its copy.
            dead_letters_pending: group.dispatcher.dead_letter_stream.is_some(),
            stalls: StallWatcher::start(group),
            keeper: LeaseKeeper::start(group, lease.epoch),
            _tail: tail,
        };
        active.refresh_parked(group).await?;
        Ok(active)
    }

    /// Whether the lease keeper found the lease gone (taken over, paused, replayed).
    pub fn lease_lost(&self) -> bool {
        self.keeper.lost.is_cancelled()
    }

    /// Resolves when the lease keeper finds the lease gone.
    pub async fn lease_lost_signal(&self) {
        self.keeper.lost.cancelled().await
    }

    /// Cancelled when the lease keeper finds the lease gone.
    pub fn lease_lost_token(&self) -> CancellationToken {
        self.keeper.lost.clone()
    }

    /// Resolves at the next periodic look at the delivery rows, unless a retry is already
    /// due (then only a finished call ends the wait: the window must drain first) or the
    /// look is overdue (the next step does it).
    pub fn next_scan(&self) -> impl std::future::Future<Output = ()> + 'static {
        let now = Instant::now();
        let at = (!self.retries.retry_due(now) && self.retries.scan_at > now)
            .then_some(self.retries.scan_at);
        async move {
            match at {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        }
    }

    /// The step an active worker takes: due retries first, then new messages (unless a
    /// `strict` group is held by a retrying message). [`Step::Standby`] means the lease is
    /// gone: the caller drops this state.
    pub async fn step(&mut self, group: &Group) -> Result<Step, RelayError> {
        if self.lease_lost() {
            return Ok(lost_lease(
                group,
                &self.lease,
                "renewal found it taken over or the group paused",
            ));
        }
        let now = Instant::now();
        if !self.window.is_empty() && self.retries.due_now(now) {
            // The window's messages were decided against the parked keys as they are: it
            // finishes (nothing more admitted) before a retry pass releases any.
            if self.retries.retry_due(now) {
                return self.forward_pass(group, Admit::No).await;
            }
            // Only the periodic look at the rows (operators' changes): no pass, no barrier.
            self.refresh_parked(group).await?;
            if self.retries.retry_due(Instant::now()) {
                return self.forward_pass(group, Admit::No).await;
            }
        }
        // A retry pass runs on an empty window only.
        let retries_due = self.window.is_empty() && self.retries.due_now(Instant::now());
        let halted = halts_reading(group.dispatcher.ordering, &self.retries.parked);
        // Anything but a forward batch settles the last append and cursor update first.
        if (retries_due || halted)
            && let Some(step) = self.settle(group).await?
        {
            return Ok(step);
        }
        if retries_due && let Some(step) = self.retry_pass(group).await? {
            return Ok(step);
        }
        if retries_due && let Some(step) = self.append_dead_letters(group).await? {
            return Ok(step);
        }
        if let Some(step) = self.check_stream_marks(group, false).await? {
            return Ok(step);
        }
        if halted {
            return Ok(Step::Idle);
        }
        self.forward_pass(group, Admit::Yes).await
    }

    pub(super) fn holder<'a>(&self, group: &'a Group) -> LeaseHolder<'a> {
        group.holder(self.lease.epoch)
    }

    /// Re-reads the parked keys and when the next retry is due.
    pub(super) async fn refresh_parked(&mut self, group: &Group) -> Result<(), RelayError> {
        let rows = store::deliveries_parked(&group.pool, &group.name)
            .await
            .map_err(group.store_error("read the parked keys"))?;
        let now = Instant::now();
        self.retries.parked = Parked::from_rows(&rows);
        self.retries.due_at = rows.iter().filter_map(|r| r.due_in).min().map(|d| now + d);
        // Never more often than the idle poll: a relay told to poll rarely stays quiet.
        self.retries.scan_at = now + RETRY_SCAN_INTERVAL.max(group.settings.idle_poll);
        Ok(())
    }

    /// Handles due retries, if any. `Some(step)` when that decides the next step (the lease
    /// was lost, or there are more due retries); `None` to go on to new messages.
    async fn retry_pass(&mut self, group: &Group) -> Result<Option<Step>, RelayError> {
        // The rows change behind our back only by operators' hands: re-read them on the scan
        // interval; our own schedule (due_at) is kept up to date by the passes themselves.
        if Instant::now() >= self.retries.scan_at {
            self.refresh_parked(group).await?;
        }
        if self.retries.due_at.is_none_or(|due| Instant::now() < due) {
            return Ok(None);
        }
        let started = Instant::now();
        let due = store::deliveries_due(&group.pool, self.holder(group), group.settings.batch_size)
            .await
            .map_err(group.store_error("read the due retries"))?;
        if due.is_empty() {
            return Ok(None);
        }
        let mut plan = group
            .dispatcher
            .retry_pass(&due)
            .await
            .map_err(group.registry_error())?;
        let copies_pending = match self.append(group, &[], &plan.late).await {
            Ok(()) => Vec::new(),
            Err(AppendFailure::Unwritable(wrong)) => {
                group.report_unwritable(&wrong);
                let pending = plan.fail_streams(&group.dispatcher, &due, &wrong);
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
            &group.pool,
            self.holder(group),
            &plan.settlements,
            &released,
            &copies_pending,
        )
        .await
        .map_err(group.store_error("record the retry results"))?;
        let Some(released) = settled else {
            return Ok(Some(lost_lease(
                group,
                &self.lease,
                "delivery update fenced",
            )));
        };
        group.log_pass("retries handled", &plan.tally, None);
        telemetry::pass_committed(
            &group.name,
            "retry",
            &plan.by_topic,
            started.elapsed(),
            latencies(appended_at, &plan.delivered_at),
        );
        if !released.is_empty() {
            tracing::debug!(group = %group.name, released = released.len(), "blocked messages released");
        }
        self.refresh_parked(group).await?;
        Ok((due.len() >= group.settings.batch_size || !released.is_empty()).then_some(Step::Busy))
    }

    /// Appends; a refusal the caller can act on comes back as an [`AppendFailure`].
    pub(super) async fn append(
        &self,
        group: &Group,
        appends: &[StreamAppend],
        late: &[LateAppend],
    ) -> Result<(), AppendFailure> {
        let writer = Writer {
            group: &group.name,
            epoch: self.lease.epoch,
            replay_generation: self.lease.replay_generation,
        };
        match group.sink.append(writer, appends, late).await {
            Ok(_) => Ok(()),
            Err(error) if error.is_fenced() => {
                tracing::warn!(group = %group.name, epoch = self.lease.epoch, error = %error, "fenced in Redis");
                Err(AppendFailure::Step(lost_lease(
                    group,
                    &self.lease,
                    "fenced in Redis",
                )))
            }
            Err(SinkError::WrongType(wrong)) => Err(AppendFailure::Unwritable(wrong)),
            Err(SinkError::Lost(lost)) => Err(AppendFailure::Lost(lost)),
            Err(error) => Err(AppendFailure::Error(group.sink_error()(error))),
        }
    }

    /// Appends the dead-letter copies still pending (a crash between recording a dead row and
    /// the append, or a dead-letter stream key of the wrong type), then clears them.
    async fn append_dead_letters(&mut self, group: &Group) -> Result<Option<Step>, RelayError> {
        if !self.dead_letters_pending {
            return Ok(None);
        }
        let pending = store::deliveries_dead_letter_pending(
            &group.pool,
            self.holder(group),
            group.settings.batch_size,
        )
        .await
        .map_err(group.store_error("read the pending dead-letter copies"))?;
        self.dead_letters_pending = pending.len() >= group.settings.batch_size;
        if pending.is_empty() {
            return Ok(None);
        }
        let mut late = Vec::new();
        for (delivery, error) in &pending {
            let attempts = u32::try_from(delivery.attempts).unwrap_or(0);
            group
                .dispatcher
                .dead_letter_copy(&mut late, &delivery.row, error, attempts);
        }
        let ids: Vec<uuid::Uuid> = pending.iter().map(|(d, _)| d.row.id).collect();
        match self.append(group, &[], &late).await {
            Ok(()) => {}
            Err(AppendFailure::Unwritable(wrong)) => {
                group.report_unwritable(&wrong);
                self.dead_letters_pending = true;
                return Ok(None);
            }
            Err(AppendFailure::Step(step)) => return Ok(Some(step)),
            Err(AppendFailure::Lost(_)) => unreachable!("late entries are not compared"),
            Err(AppendFailure::Error(error)) => return Err(error),
        }
        store::deliveries_dead_letter_copied(&group.pool, &group.name, &ids)
            .await
            .map_err(group.store_error("clear the pending dead-letter copies"))?;
        tracing::info!(group = %group.name, copies = ids.len(), "pending dead-letter copies appended");
        Ok(None)
    }

    /// The ids of `rows` that already have a delivery row (only asked for when a row lies at
    /// or below the highest recorded position: a re-read after a crash).
    pub(super) async fn recorded_among(
        &self,
        group: &Group,
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
        let known = store::deliveries_known(&group.pool, &group.name, &ids)
            .await
            .map_err(group.store_error("look up recorded deliveries"))?;
        Ok(known.into_iter().collect())
    }

    /// Waits for the cursor update still in flight, if any; `Some(Standby)` when it found the
    /// lease gone.
    pub(super) async fn settle_advance(
        &mut self,
        group: &Group,
    ) -> Result<Option<Step>, RelayError> {
        let Some(pending) = self.pending_advance.take() else {
            return Ok(None);
        };
        let advanced = pending
            .wait()
            .await
            .map_err(group.store_error("advance the cursor"))?;
        Ok((!advanced).then(|| lost_lease(group, &self.lease, "cursor update fenced")))
    }

    /// Gives the lease up so a standby takes over at once; best effort (it expires anyway).
    /// The caller drops this state afterwards.
    pub async fn release(&mut self, group: &Group) {
        self.window.reset();
        if let Err(error) = self.settle(group).await {
            tracing::warn!(group = %group.name, error = %super::group::error_chain(&error),
                "the last cursor update failed; its batch will be read again");
        }
        if group.release_lease(self.lease.epoch).await {
            tracing::info!(group = %group.name, position = %self.lease.cursor, "lease released");
        }
    }
}

/// Says why the lease is gone and returns [`Step::Standby`]; the worker then drops its
/// [`Active`] state (and with it everything in flight).
pub(super) fn lost_lease(group: &Group, lease: &Lease, how: &str) -> Step {
    tracing::warn!(group = %group.name, epoch = lease.epoch, how, "lease lost; standing by");
    Step::Standby
}

/// Renews the lease every `lease_ttl / 3`, beside the delivery path; cancels `lost` when a
/// renewal finds the lease gone. A renewal that fails (Postgres unreachable) is tried again
/// sooner; the lease expires meanwhile if it must, and every write of the pass is fenced by
/// the epoch anyway. Stopped when dropped.
struct LeaseKeeper {
    lost: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl LeaseKeeper {
    fn start(group: &Group, epoch: i64) -> LeaseKeeper {
        let lost = CancellationToken::new();
        let pool = group.pool.clone();
        let name = group.name.clone();
        let owner = group.owner.clone();
        let ttl = group.settings.lease_ttl;
        let signal = lost.clone();
        let task = tokio::spawn(async move {
            keep_lease(&pool, &name, &owner, epoch, ttl).await;
            signal.cancel();
        });
        LeaseKeeper { lost, task }
    }
}

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Returns once a renewal finds the lease gone.
async fn keep_lease(pool: &PgPool, group: &str, owner: &str, epoch: i64, ttl: Duration) {
    let every = ttl / 3;
    let mut wait = every;
    loop {
        tokio::time::sleep(wait).await;
        let holder = LeaseHolder {
            group,
            owner,
            epoch,
        };
        match store::consumer_groups_lease_renew(pool, holder, ttl).await {
            Ok(true) => wait = every,
            Ok(false) => return,
            Err(error) => {
                tracing::warn!(group, %error, "could not renew the lease; trying again");
                wait = every / 4;
            }
        }
    }
}

/// The group's hold on the shared tail for the lease's epoch, released when dropped.
struct TailHold {
    tail: Arc<SharedTail>,
    group: String,
}

impl TailHold {
    fn new(tail: &Arc<SharedTail>, group: &str, epoch: i64) -> TailHold {
        tail.hold(group, epoch);
        TailHold {
            tail: Arc::clone(tail),
            group: group.to_owned(),
        }
    }
}

impl Drop for TailHold {
    fn drop(&mut self) {
        self.tail.release(&self.group);
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

#[cfg(test)]
mod tests {
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
}

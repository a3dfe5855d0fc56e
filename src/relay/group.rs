//! One consumer group's worker: standby, or active with its lease and everything in flight.
//!
//! ```text
//!   standby ──lease acquired──▶ active ──shutdown──▶ released
//!      ▲                          │
//!      └── lease lost (renewal, cursor or delivery update matched nothing, or Redis fenced
//!          the epoch): the active state is dropped, and its work in flight with it
//! ```
//! [`GroupWorker::step`] is the unit a worker is driven by (the run loop, and the unit tests
//! that wait on what a step returned rather than on time). The active state and its passes
//! live in `active` (retries, dead-letter copies), `forward` (new messages, through the
//! window) and `repair` (what Redis lost).

use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::RelayError;
use super::active::{Active, Lease};
use super::dispatcher::Dispatcher;
use super::membership::{Assigned, Seat};
use super::partition::Partition;
use super::plan::Tally;
use super::tail::SharedTail;
use super::wakeup::{CHASE_POLL, Wakeup};
use crate::position::Position;
use crate::registry::RegistryError;
use crate::relay::RelaySettings;
use crate::sink::{Sink, SinkError, WrongType};
use crate::store::{self, LeaseAttempt, LeaseHolder, LeaseRefusal};
use crate::telemetry::{self, Health, WorkerHealth};

pub use super::active::RETRY_SCAN_INTERVAL;

/// The longest a stopping worker waits for its last cursor update and the lease release (a
/// lease it could not release expires after `lease_ttl_ms`).
const RELEASE_TIMEOUT: Duration = Duration::from_millis(500);

/// One consumer group as a worker sees it whatever its state: its name, handlers,
/// connections and settings.
pub(super) struct Group {
    pub name: String,
    pub dispatcher: Arc<Dispatcher>,
    pub pool: PgPool,
    pub sink: Sink,
    pub settings: RelaySettings,
    pub owner: String,
    pub key_prefix: String,
    /// The process's shared reads of the outbox (one read serves every group at the head).
    pub tail: Arc<SharedTail>,
    /// For a partition of a partitioned group (`name` is then the partition's row,
    /// `<group>/<index>`): which one, and whether this relay is assigned it.
    pub seat: Option<Seat>,
}

/// One consumer group's worker: its [`Group`] and its [`State`], driven one
/// [`step`](GroupWorker::step) at a time.
pub(super) struct GroupWorker {
    pub group: Group,
    pub state: State,
    pub wakeup: Wakeup,
    /// The highest transaction id a notification announced (0 when polling).
    pub notified_tx_id: u64,
    /// Where this worker reports its state, for readiness.
    pub health: Health,
    /// Empty reads in a row since the last one that found messages (for the idle ramp).
    pub idle_streak: u32,
    /// The state last reported (written again only when it changes).
    pub reported: WorkerHealth,
    /// Why this worker last said it stands by (said once per reason, not at every attempt);
    /// cleared when it takes the lease, so the next wait is said again.
    pub said_standing_by: Option<LeaseRefusal>,
    /// For a partition: its member's assignment, watched so that a worker waiting (standing
    /// by, or idle) steps as soon as the partition is assigned to it or taken away.
    pub assignment: Option<watch::Receiver<Assigned>>,
}

/// Standby, or holding the lease with everything in flight under it (see `active`).
pub(super) enum State {
    Standby,
    Active(Box<Active>),
}

impl State {
    fn is_active(&self) -> bool {
        matches!(self, State::Active(_))
    }
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

/// How often a worker tries to take a partition assigned to it that another member still
/// holds (one conditional UPDATE each; the other member releases it after committing).
const HANDOVER_POLL: Duration = Duration::from_millis(100);

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
    /// A worker for `group`, standing by until its first step takes the lease.
    pub fn new(group: Group, wakeup: Wakeup, health: Health) -> GroupWorker {
        let assignment = group.seat.as_ref().map(|seat| seat.assigned.clone());
        GroupWorker {
            assignment,
            group,
            state: State::Standby,
            wakeup,
            notified_tx_id: 0,
            health,
            idle_streak: 0,
            reported: WorkerHealth::Starting,
            said_standing_by: None,
        }
    }

    /// Runs until `shutdown` is cancelled: the step in flight then has `shutdown_grace` to
    /// finish and is abandoned after it (see [`GroupWorker::step_within_grace`]); then the
    /// lease is released (at most [`RELEASE_TIMEOUT`]) if held.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let settings = self.group.settings.clone();
        let mut backoff = super::backoff(settings.max_backoff);
        // Set when shutdown began during a step: the end of its grace.
        let mut grace_ends = None;
        // Set when that step outlived its grace and was dropped.
        let mut abandoned = false;
        while !shutdown.is_cancelled() {
            // A notification from now on ends the idle wait after this step.
            self.notified_tx_id = self.wakeup.mark_seen();
            let Some(stepped) = self.step_within_grace(&shutdown, &mut grace_ends).await else {
                // The calls still running went with it; the lease is still released below
                // (fenced by its epoch as ever), so the next owner need not wait it out.
                abandoned = true;
                break;
            };
            let pause = match stepped {
                Ok(step) => {
                    backoff = super::backoff(settings.max_backoff);
                    self.report(if self.state.is_active() {
                        WorkerHealth::Active
                    } else {
                        WorkerHealth::Standby
                    });
                    let pause = self.pause_after(step);
                    self.idle_streak = match step {
                        Step::Idle => self.idle_streak.saturating_add(1),
                        _ => 0,
                    };
                    pause
                }
                Err(error) => {
                    let delay = backoff.next().unwrap_or(settings.max_backoff);
                    let error = error_chain(&error);
                    tracing::warn!(group = %self.group.name, error = %error, retry_in_ms = delay.as_millis() as u64,
                        "relay step failed; retrying");
                    telemetry::relay_error(&self.group.name);
                    self.report(WorkerHealth::Failing(error));
                    Pause::For(delay)
                }
            };
            let lease_lost = async {
                match &self.state {
                    State::Active(active) => active.lease_lost_signal().await,
                    State::Standby => std::future::pending().await,
                }
            };
            let wait = async {
                match pause {
                    Pause::None => {}
                    Pause::For(delay) => tokio::time::sleep(delay).await,
                    Pause::UntilWoken(idle) => self.wakeup.wait(idle).await,
                }
            };
            let assignment_changed = async {
                let changed = match &mut self.assignment {
                    Some(assignment) => assignment.changed().await.is_ok(),
                    None => false,
                };
                if !changed {
                    // Not a partition, or its membership has ended (shutdown follows).
                    std::future::pending::<()>().await;
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = wait => {}
                // The keeper found the lease gone: the next step stands by at once.
                () = lease_lost => {}
                // Assigned to this member (take it now) or taken away (hand it over now).
                () = assignment_changed => {}
            }
        }
        let grace_ends = grace_ends.unwrap_or_else(|| Instant::now() + settings.shutdown_grace);
        if let (State::Active(active), false) = (&mut self.state, abandoned) {
            active.finish_window(&self.group, grace_ends).await;
        }
        if tokio::time::timeout(RELEASE_TIMEOUT, self.release())
            .await
            .is_err()
        {
            tracing::warn!(group = %self.group.name, timeout_ms = RELEASE_TIMEOUT.as_millis() as u64,
                "could not release the lease in time; it will expire");
        }
        self.state = State::Standby;
        self.report(WorkerHealth::Standby);
    }

    /// One [`step`](GroupWorker::step), raced against `shutdown`: once shutdown begins, the
    /// step has `shutdown_grace` to finish. `None` when it did not, and was dropped.
    ///
    /// Dropping a step abandons its handler calls and Redis and Postgres requests where they
    /// stand, as a crash would, and marks nothing done that was not: the cursor update of a
    /// batch starts only after its append succeeded (`PendingAdvance`), so one still
    /// pending is for appended entries and `release` lets it land; failures recorded before
    /// the append are left to the retry path, as after a crash; entries appended without
    /// their cursor update are skipped by the watermark when the next owner reads them again.
    async fn step_within_grace(
        &mut self,
        shutdown: &CancellationToken,
        grace_ends: &mut Option<Instant>,
    ) -> Option<Result<Step, RelayError>> {
        let grace = self.group.settings.shutdown_grace;
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
            tracing::warn!(group = %self.group.name, grace_ms = grace.as_millis() as u64,
                "shutdown grace over; abandoning the work in flight to the next owner");
        }
        finished.ok()
    }

    /// Publishes this worker's state (and the lease gauge) when it changed.
    fn report(&mut self, health: WorkerHealth) {
        if self.reported == health {
            return;
        }
        telemetry::lease_state(&self.group.name, health == WorkerHealth::Active);
        self.health.set(&self.group.name, health.clone());
        self.reported = health;
    }

    fn pause_after(&self, step: Step) -> Pause {
        let settings = &self.group.settings;
        match step {
            Step::Busy => Pause::None,
            // Under a steady trickle, more has arrived while these were forwarded: look again
            // soon, without spinning (the idle interval only once a read finds nothing).
            Step::Trickle => Pause::UntilWoken(settings.idle_poll.min(TRICKLE_PAUSE)),
            // Never idle past a due retry, however long the poll interval; and poll briskly
            // while a notified transaction's messages are not read yet.
            Step::Idle => Pause::UntilWoken(match &self.state {
                State::Active(active) => {
                    let idle = if active.lease.cursor.tx_id < self.notified_tx_id {
                        settings.idle_poll.min(CHASE_POLL)
                    } else if self.wakeup.is_polling() {
                        settings.idle_poll.min(idle_ramp(self.idle_streak))
                    } else {
                        settings.idle_poll
                    };
                    let wake = active.retries.wake_at();
                    idle.min(wake.saturating_duration_since(Instant::now()))
                }
                State::Standby => settings.idle_poll,
            }),
            Step::Standby => {
                let standby = (settings.lease_ttl / 4)
                    .clamp(Duration::from_millis(20), Duration::from_secs(1));
                if self.group.seat.is_some() && self.group.is_assigned() {
                    // A partition assigned here and still held by its last member, which lets
                    // it go once its work in flight is committed: take it soon after.
                    Pause::For(standby.min(HANDOVER_POLL))
                } else {
                    Pause::For(standby)
                }
            }
        }
    }

    /// One step — the unit tests drive a worker by: take the lease if standby, else the
    /// active state's step. A step that finds the lease gone drops the active state: this is
    /// the one place a worker leaves it, and everything in flight goes with it.
    pub async fn step(&mut self) -> Result<Step, RelayError> {
        if !self.group.is_assigned() {
            self.hand_over().await;
            return Ok(Step::Standby);
        }
        let State::Active(active) = &mut self.state else {
            return self.try_acquire().await;
        };
        let step = active.step(&self.group).await;
        if matches!(step, Ok(Step::Standby)) {
            self.state = State::Standby;
        }
        step
    }

    async fn try_acquire(&mut self) -> Result<Step, RelayError> {
        let group = &self.group;
        let acquired = store::consumer_groups_lease_acquire(
            &group.pool,
            &group.name,
            &group.owner,
            group.settings.lease_ttl,
            group.partition_count(),
        )
        .await
        .map_err(group.store_error("acquire the lease"))?;
        let acquired = match acquired {
            LeaseAttempt::Acquired(acquired) => acquired,
            LeaseAttempt::Refused(refusal) => {
                if self.said_standing_by.as_ref() != Some(&refusal) {
                    say_standing_by(group, &refusal);
                    self.said_standing_by = Some(refusal.clone());
                }
                if let LeaseRefusal::Repartitioned { stored, .. } = refusal {
                    // A failing step, not a standby: readiness says why until a restart.
                    return Err(group.split_otherwise(stored).await);
                }
                return Ok(Step::Standby);
            }
        };
        self.said_standing_by = None;
        tracing::info!(group = %group.name, epoch = acquired.epoch, position = %acquired.cursor, owner = %group.owner,
            "lease acquired; forwarding");
        let lease = Lease {
            epoch: acquired.epoch,
            replay_generation: acquired.replay_generation,
            cursor: acquired.cursor,
        };
        let taken = async {
            let mut active = Box::new(Active::take_over(group, lease).await?);
            // Redis may have lost appends while no relay held the group.
            let repaired = active.check_stream_marks(group, true).await?;
            Ok::<_, RelayError>((active, repaired))
        };
        let (active, repaired) = match taken.await {
            Ok(taken) => taken,
            Err(error) => {
                // Not left held by a worker that stands by: another member, or this one at
                // its next step, takes it at once instead of after the lease time.
                group.release_lease(lease.epoch).await;
                return Err(error);
            }
        };
        if repaired == Some(Step::Standby) {
            return Ok(Step::Standby);
        }
        self.state = State::Active(active);
        Ok(repaired.unwrap_or(Step::Busy))
    }

    /// A partition no longer assigned to this relay: its work in flight finishes and is
    /// committed (within `shutdown_grace`; what is left then is abandoned, unmarked, as at a
    /// shutdown), then the lease goes, for the relay it is assigned to now.
    async fn hand_over(&mut self) {
        let State::Active(active) = &mut self.state else {
            return;
        };
        let grace_ends = Instant::now() + self.group.settings.shutdown_grace;
        active.finish_window(&self.group, grace_ends).await;
        self.release().await;
        tracing::info!(group = %self.group.name, owner = %self.group.owner,
            "partition assigned to another relay: handed over once its work in flight was committed");
    }

    /// Gives the lease up so a standby takes over at once; best effort (it expires anyway).
    async fn release(&mut self) {
        if let State::Active(active) = &mut self.state {
            active.release(&self.group).await;
        }
        self.state = State::Standby;
    }
}

/// One line when a worker starts waiting for a lease it could not take, and again when the
/// reason changes: who holds it, or that the group is paused (INFO); an ERROR when the group
/// was split otherwise since this relay started (it takes nothing until restarted).
fn say_standing_by(group: &Group, refusal: &LeaseRefusal) {
    let (name, owner) = (&group.name, &group.owner);
    match refusal {
        LeaseRefusal::HeldBy(holder) => tracing::info!(group = %name, %holder, %owner,
            "standing by: another relay holds the lease; taking over when it releases it or it expires"),
        LeaseRefusal::Paused => tracing::info!(group = %name, %owner,
            "standing by: the group is paused (outbox-relay groups resume)"),
        LeaseRefusal::Repartitioned { stored, retired } => tracing::error!(group = %name, %owner,
            configured_partitions = group.partition_count(), stored_partitions = stored,
            retired, "standing by for good: `groups repartition` split the group otherwise since this relay started; restart it with the partitions the group has now"),
        LeaseRefusal::NoRow => tracing::warn!(group = %name, %owner,
            "standing by: the group's row is gone (deleted while this relay ran)"),
    }
}

impl Group {
    /// The error of a worker whose group was split otherwise since the relay started: the
    /// group's current count (a retired row's own is the old one) next to the configured.
    async fn split_otherwise(&self, row_says: u32) -> RelayError {
        let base = self.name.split('/').next().unwrap_or(&self.name);
        let stored = store::consumer_groups_partitions(&self.pool, base)
            .await
            .ok()
            .and_then(|counts| counts.first().map(|&(partitions, _)| partitions))
            .unwrap_or(row_says);
        RelayError::Partitions {
            group: base.to_owned(),
            stored,
            configured: self.partition_count(),
        }
    }

    /// The partition this worker runs, for a partitioned group.
    pub(super) fn partition(&self) -> Option<Partition> {
        self.seat.as_ref().map(|seat| seat.partition)
    }

    /// How many rows a read of the outbox takes: a batch, or for a partition the rows in which
    /// about a batch are its own (`batch_size` × partitions, at most 16 batches), so each
    /// partition's appends and cursor updates stay batch-sized.
    pub(super) fn read_limit(&self) -> usize {
        let batch_size = self.settings.batch_size;
        match self.partition() {
            Some(partition) => batch_size.saturating_mul(partition.count.min(16) as usize),
            None => batch_size,
        }
    }

    /// Whether this relay may hold the lease: always, unless a partition assigned elsewhere.
    fn is_assigned(&self) -> bool {
        self.seat.as_ref().is_none_or(Seat::is_assigned)
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

    /// Wraps a Redis failure with this group.
    pub(super) fn sink_error(&self) -> impl FnOnce(SinkError) -> RelayError + '_ {
        move |source| RelayError::Sink {
            group: self.name.clone(),
            source,
        }
    }

    /// How many partitions this relay splits the group into (1: unpartitioned).
    pub(super) fn partition_count(&self) -> u32 {
        self.partition().map_or(1, |partition| partition.count)
    }

    /// Gives the lease held at `epoch` up so another relay takes it at once; best effort (it
    /// expires anyway): true when the statement ran.
    pub(super) async fn release_lease(&self, epoch: i64) -> bool {
        match store::consumer_groups_lease_release(&self.pool, self.holder(epoch)).await {
            Ok(_) => true,
            Err(error) => {
                tracing::warn!(group = %self.name, %error, "could not release the lease; it will expire");
                false
            }
        }
    }

    /// This relay as the holder of the group's lease at `epoch`.
    pub(super) fn holder(&self, epoch: i64) -> LeaseHolder<'_> {
        LeaseHolder {
            group: &self.name,
            owner: &self.owner,
            epoch,
        }
    }

    /// One ERROR per unwritable stream key: a person must fix it.
    pub(super) fn report_unwritable(&self, wrong: &[WrongType]) {
        for stream in wrong {
            tracing::error!(group = %self.name, stream = %stream.stream, error = %stream,
                "cannot append: the stream key is not a stream; its messages follow their route's retry policy until the key is fixed");
        }
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
pub(super) fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    telemetry::error_text(error)
}

#[cfg(test)]
mod idle_ramp_tests {
    use super::*;

    #[test]
    fn empty_reads_wait_1_ms_then_double_up_to_a_bound() {
        let waits: Vec<u128> = (0..5).map(|s| idle_ramp(s).as_millis()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16]);
        assert_eq!(idle_ramp(16), idle_ramp(u32::MAX));
        assert!(idle_ramp(u32::MAX) >= Duration::from_secs(60));
    }
}

/// A worker driven one [`GroupWorker::step`] at a time against the real Postgres and Redis:
/// each assertion waits on what a step returned, never on time.
#[cfg(test)]
mod driven_tests {
    use super::*;
    use crate::redact::ConnectionUrl;
    use crate::relay::route::{Action, Route, StreamTemplate};
    use crate::relay::tail::SharedTail;
    use crate::sink::RedisSettings;
    use redis::AsyncCommands;

    fn url(variable: &str, default: &str) -> String {
        std::env::var(variable).unwrap_or_else(|_| default.to_owned())
    }

    /// A fresh, migrated database and a worker on it forwarding `t.*` to one stream under a
    /// unique Redis key prefix; [`clean_up`] removes both.
    async fn worker(batch_size: usize) -> (GroupWorker, PgPool, String) {
        let admin_url = url(
            "TEST_DATABASE_URL",
            "postgres://postgres@127.0.0.1/postgres",
        );
        let admin = sqlx::PgPool::connect(&admin_url).await.unwrap();
        let unique = uuid::Uuid::now_v7().simple().to_string();
        let database = format!("outbox_unit_{}", &unique[unique.len() - 16..]);
        store::database_create(&admin, &database).await.unwrap();
        admin.close().await;
        let database_url = ConnectionUrl::parse(&admin_url, &["postgres", "postgresql"]).unwrap();
        let pool = store::connect_to_database(&database_url, &database, 4)
            .await
            .unwrap();
        store::migrate(&pool).await.unwrap();
        store::consumer_groups_ensure(&pool, "g", false)
            .await
            .unwrap();
        let redis_url =
            ConnectionUrl::parse(&url("TEST_REDIS_URL", "redis://127.0.0.1:6379"), &["redis"])
                .unwrap();
        let prefix = format!("unit:{unique}:");
        let sink = Sink::connect(
            &redis_url,
            &RedisSettings {
                key_prefix: prefix.clone(),
                ..RedisSettings::default()
            },
        )
        .await
        .unwrap();
        let forward = Route::new(
            vec!["t.*".into()],
            Action::Forward {
                stream: StreamTemplate::parse("s").unwrap(),
            },
        )
        .unwrap();
        let settings = RelaySettings {
            batch_size,
            ..RelaySettings::default()
        };
        let dispatcher = Arc::new(Dispatcher::new(
            "g",
            vec![forward],
            crate::relay::ordering::OrderingMode::Key,
            None,
        ));
        let group = Group {
            name: "g".into(),
            dispatcher,
            tail: SharedTail::new(pool.clone(), "unit-owner".into(), 1, batch_size),
            pool: pool.clone(),
            key_prefix: prefix.clone(),
            sink,
            settings,
            owner: "unit-owner".into(),
            seat: None,
        };
        let worker = GroupWorker::new(group, Wakeup::poll(), Health::new());
        (worker, pool, format!("{prefix}s"))
    }

    async fn clean_up(worker: GroupWorker, pool: PgPool) {
        let database: String = sqlx::query_scalar("SELECT current_database()")
            .fetch_one(&pool)
            .await
            .unwrap();
        let mut redis = worker.group.sink.connection();
        crate::sink::delete_keys_with_prefix(&mut redis, &worker.group.key_prefix)
            .await
            .unwrap();
        drop(worker);
        pool.close().await;
        let admin_url = url(
            "TEST_DATABASE_URL",
            "postgres://postgres@127.0.0.1/postgres",
        );
        let admin = sqlx::PgPool::connect(&admin_url).await.unwrap();
        store::database_drop(&admin, &database).await.unwrap();
    }

    async fn publish(pool: &PgPool, count: i32) {
        sqlx::query(
            "SELECT outbox.publish('t.x', jsonb_build_object('n', n), 'k' || (n % 7)) \
               FROM generate_series(1, $1) AS n",
        )
        .bind(count)
        .execute(pool)
        .await
        .unwrap();
    }

    async fn stream_length(worker: &GroupWorker, key: &str) -> usize {
        let mut redis = worker.group.sink.connection();
        redis.xlen(key).await.unwrap()
    }

    /// Steps until one returns `until` (at most 50 steps).
    async fn step_until(worker: &mut GroupWorker, until: Step) -> Vec<Step> {
        let mut steps = Vec::new();
        while steps.last() != Some(&until) {
            assert!(steps.len() < 50, "no {until:?} after {steps:?}");
            steps.push(worker.step().await.unwrap());
        }
        steps
    }

    #[tokio::test]
    async fn a_driven_worker_forwards_then_drops_its_work_in_one_transition_when_the_lease_goes() {
        let (mut worker, pool, stream) = worker(100).await;
        publish(&pool, 250).await;
        assert_eq!(worker.step().await.unwrap(), Step::Busy, "takes the lease");
        assert!(worker.state.is_active());
        step_until(&mut worker, Step::Idle).await;
        assert_eq!(stream_length(&worker, &stream).await, 250);
        let State::Active(active) = &worker.state else {
            panic!("still active");
        };
        let through = active.lease.cursor;
        let stored = store::consumer_groups_cursor(&pool, "g")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            stored.cursor, through,
            "every batch committed, the last one included"
        );

        // Another relay takes the group over; the next step finds out and stands by, and
        // nothing is appended or committed after that.
        sqlx::query(
            "UPDATE outbox.consumer_groups \
                SET lease_owner = 'other', lease_epoch = lease_epoch + 1 WHERE name = 'g'",
        )
        .execute(&pool)
        .await
        .unwrap();
        publish(&pool, 30).await;
        assert_eq!(worker.step().await.unwrap(), Step::Standby);
        assert!(
            !worker.state.is_active(),
            "the active state is gone with its work"
        );
        assert_eq!(stream_length(&worker, &stream).await, 250);
        let stored = store::consumer_groups_cursor(&pool, "g")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(stored.cursor, through);
        assert_eq!(stored.lease_owner.as_deref(), Some("other"));
        // Standing by, it cannot take a lease another relay holds.
        assert_eq!(worker.step().await.unwrap(), Step::Standby);
        clean_up(worker, pool).await;
    }
}

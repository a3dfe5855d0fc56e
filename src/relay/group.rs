//! One consumer group's worker: lease, tail, dispatch, append, advance.
//!
//! ```text
//!   standby ──lease acquired──▶ active ──shutdown──▶ released
//!      ▲                          │
//!      └── lease lost (renew or cursor update matched nothing, or Redis fenced the epoch)
//! ```
//! The cursor moves only after the sink said OK. A crash between the append and the cursor
//! update re-reads the batch, and the sink's watermark makes the replay add nothing.

use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::RelayError;
use super::dispatcher::dispatch;
use super::route::Route;
use super::stall::StallWatch;
use super::wakeup::{CHASE_POLL, Wakeup};
use crate::config::RelaySettings;
use crate::position::Position;
use crate::sink::Sink;
use crate::store::{self, LeaseHolder};

pub(super) struct GroupWorker {
    pub name: String,
    pub routes: Vec<Route>,
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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    Standby,
    Active(Lease),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Lease {
    pub epoch: i64,
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
    /// Runs until `shutdown` is cancelled, then releases the lease if held.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut backoff = super::backoff(self.settings.max_backoff);
        while !shutdown.is_cancelled() {
            // A notification from now on ends the idle wait after this step.
            self.notified_tx_id = self.wakeup.mark_seen();
            let pause = match self.step().await {
                Ok(step) => {
                    backoff = super::backoff(self.settings.max_backoff);
                    self.pause_after(step)
                }
                Err(error) => {
                    let delay = backoff.next().unwrap_or(self.settings.max_backoff);
                    tracing::warn!(group = %self.name, error = %error_chain(&error), retry_in_ms = delay.as_millis() as u64,
                        "relay step failed; retrying");
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
        self.release().await;
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
                    } else {
                        self.settings.idle_poll
                    };
                    idle.min(lease.renew_at.saturating_duration_since(Instant::now()))
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
    fn store_error(&self, operation: &'static str) -> impl FnOnce(sqlx::Error) -> RelayError + '_ {
        move |source| RelayError::Store {
            group: self.name.clone(),
            operation,
            source,
        }
    }

    fn holder(&self, lease: &Lease) -> LeaseHolder<'_> {
        LeaseHolder {
            group: &self.name,
            owner: &self.owner,
            epoch: lease.epoch,
        }
    }

    /// One pass: take the lease if standby; otherwise tail → dispatch → append → advance.
    pub async fn step(&mut self) -> Result<Step, RelayError> {
        match self.state {
            State::Standby => self.try_acquire().await,
            State::Active(lease) => self.forward_batch(lease).await,
        }
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
        self.state = State::Active(Lease {
            epoch: acquired.epoch,
            cursor: acquired.cursor,
            renew_at: Instant::now() + self.settings.lease_ttl / 3,
        });
        Ok(Step::Busy)
    }

    async fn forward_batch(&mut self, mut lease: Lease) -> Result<Step, RelayError> {
        let rows =
            store::messages_fetch_visible(&self.pool, lease.cursor, self.settings.batch_size)
                .await
                .map_err(self.store_error("read the outbox"))?;
        let Some(last) = rows.last().map(|row| row.position) else {
            self.stall
                .check(&self.pool, &self.name, lease.cursor, &self.key_prefix)
                .await
                .map_err(self.store_error("check for stalls"))?;
            return self.renew_if_due(lease).await;
        };
        let batch = dispatch(&self.name, &self.routes, &rows);
        let report = match self
            .sink
            .append(&self.name, lease.epoch, &batch.appends)
            .await
        {
            Ok(report) => report,
            Err(error) if error.is_fenced() => {
                tracing::warn!(group = %self.name, epoch = lease.epoch, error = %error, "lease lost (fenced in Redis); standing by");
                self.state = State::Standby;
                return Ok(Step::Standby);
            }
            Err(source) => {
                return Err(RelayError::Sink {
                    group: self.name.clone(),
                    source,
                });
            }
        };
        let advanced = store::consumer_groups_cursor_advance(
            &self.pool,
            self.holder(&lease),
            last,
            self.settings.lease_ttl,
        )
        .await
        .map_err(self.store_error("advance the cursor"))?;
        if !advanced {
            tracing::warn!(group = %self.name, epoch = lease.epoch, position = %last,
                "lease lost (cursor update fenced); standing by");
            self.state = State::Standby;
            return Ok(Step::Standby);
        }
        tracing::debug!(group = %self.name, position = %last, rows = rows.len(), forwarded = batch.forwarded,
            appended = report.appended, duplicates = report.skipped, unrouted = batch.unrouted, dropped = batch.dropped,
            "batch forwarded");
        lease.cursor = last;
        lease.renew_at = Instant::now() + self.settings.lease_ttl / 3;
        self.state = State::Active(lease);
        Ok(if rows.len() >= self.settings.batch_size {
            Step::Busy
        } else {
            Step::Trickle
        })
    }

    async fn renew_if_due(&mut self, mut lease: Lease) -> Result<Step, RelayError> {
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
            tracing::warn!(group = %self.name, epoch = lease.epoch, "lease lost (taken over or group paused); standing by");
            self.state = State::Standby;
            return Ok(Step::Standby);
        }
        lease.renew_at = Instant::now() + self.settings.lease_ttl / 3;
        self.state = State::Active(lease);
        Ok(Step::Idle)
    }

    /// Gives the lease up so a standby takes over at once; best effort (it expires anyway).
    async fn release(&mut self) {
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

//! How a caught-up group worker learns that new messages may be there (DESIGN §3).
//!
//! With `wakeup = "poll"` a worker simply waits `idle_poll` and reads again. With
//! `wakeup = "notify"` one listener per relay process LISTENs on the channel of the opt-in
//! trigger, whose payload is the committing transaction's id, and publishes the highest id
//! heard to every worker. An idle worker wakes at once, and while its cursor has not yet passed
//! that transaction (an older open transaction can hold its messages back) it keeps polling at
//! [`CHASE_POLL`]; otherwise `idle_poll` is the fallback. A notification never says what to
//! read — the cursor does — so a lost one (listener reconnecting, trigger dropped) costs
//! latency, never a message.

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::store::{self, NOTIFY_CHANNEL};

/// How often a notified worker polls until its cursor has passed the notified transaction.
pub(super) const CHASE_POLL: Duration = Duration::from_millis(5);

/// What the listener has heard so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Heard {
    /// Bumped at every notification and after a reconnect (when some may have been lost).
    generation: u64,
    /// The highest transaction id notified.
    max_tx_id: u64,
}

/// A worker's view of the wake-ups: clone one per worker.
#[derive(Clone)]
pub(super) struct Wakeup {
    heard: Option<watch::Receiver<Heard>>,
}

impl Wakeup {
    /// Polling only: waits always last the full interval.
    pub fn poll() -> Wakeup {
        Wakeup { heard: None }
    }

    /// Starts the process's listener; it stops when `shutdown` is cancelled.
    pub fn notify(pool: PgPool, max_backoff: Duration, shutdown: CancellationToken) -> Wakeup {
        let (sender, receiver) = watch::channel(Heard::default());
        tokio::spawn(listen(pool, sender, max_backoff, shutdown));
        Wakeup {
            heard: Some(receiver),
        }
    }

    /// True when no listener runs (`wakeup = "poll"`): only polling finds new messages.
    pub fn is_polling(&self) -> bool {
        self.heard.is_none()
    }

    /// Call before reading: a notification that arrives from now on ends the next [`wait`].
    /// Returns the highest transaction id notified so far (0 when polling).
    ///
    /// [`wait`]: Wakeup::wait
    pub fn mark_seen(&mut self) -> u64 {
        self.heard
            .as_mut()
            .map_or(0, |receiver| receiver.borrow_and_update().max_tx_id)
    }

    /// Waits `idle` or until a notification arrived since [`mark_seen`], whichever is first.
    ///
    /// [`mark_seen`]: Wakeup::mark_seen
    pub async fn wait(&mut self, idle: Duration) {
        let Some(receiver) = &mut self.heard else {
            tokio::time::sleep(idle).await;
            return;
        };
        tokio::select! {
            _ = tokio::time::sleep(idle) => {}
            // An error means the listener stopped (shutdown): the sleep still bounds the wait.
            changed = receiver.changed() => if changed.is_err() {
                tokio::time::sleep(idle).await;
            },
        }
    }
}

async fn listen(
    pool: PgPool,
    heard: watch::Sender<Heard>,
    max_backoff: Duration,
    shutdown: CancellationToken,
) {
    let wake = |tx_id: Option<u64>| {
        heard.send_modify(|heard| {
            heard.generation = heard.generation.wrapping_add(1);
            heard.max_tx_id = heard.max_tx_id.max(tx_id.unwrap_or(0));
        })
    };
    let mut backoff = super::backoff(max_backoff);
    let mut listener = loop {
        let connected = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener.listen(NOTIFY_CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        let result = tokio::select! {
            _ = shutdown.cancelled() => return,
            result = connected => result,
        };
        match result {
            Ok(listener) => break listener,
            Err(error) => {
                let delay = backoff.next().unwrap_or(max_backoff);
                tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64,
                    "could not LISTEN for new messages; polling meanwhile");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    };
    warn_if_trigger_missing(&pool).await;
    tracing::info!(channel = NOTIFY_CHANNEL, "listening for new messages");
    loop {
        let received = tokio::select! {
            _ = shutdown.cancelled() => return,
            received = listener.try_recv() => received,
        };
        match received {
            Ok(Some(notification)) => {
                backoff = super::backoff(max_backoff);
                // Anything else on the channel still wakes the workers.
                wake(notification.payload().parse().ok());
            }
            Ok(None) => {
                // The connection dropped (sqlx reconnects and LISTENs again); what was notified
                // meanwhile is lost, so read now.
                tracing::warn!("LISTEN connection lost; reconnecting");
                wake(None);
            }
            Err(error) => {
                let delay = backoff.next().unwrap_or(max_backoff);
                tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64,
                    "LISTEN failed; polling meanwhile");
                wake(None);
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// Without the trigger nobody notifies: say so once, with the fix (the relay still polls).
async fn warn_if_trigger_missing(pool: &PgPool) {
    match store::notify_trigger_installed(pool).await {
        Ok(true) => {}
        Ok(false) => tracing::warn!(
            "wakeup = \"notify\" but the NOTIFY trigger is not installed, so the relay only polls \
             (every idle_poll_ms); install it with `outbox-relay notify on`"
        ),
        Err(error) => tracing::warn!(%error, "could not check for the NOTIFY trigger"),
    }
}

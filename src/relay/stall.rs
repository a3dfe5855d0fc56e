//! Noticing, while caught up, why a group is not moving although messages exist past its
//! cursor, and telling the operator once per interval:
//! - an open transaction (or a prepared one) holds the snapshot xmin back: which backend
//!   (pid, state, age, application_name) — the group resumes by itself when it ends;
//! - the cursor lies ahead of every transaction id the server has handed out (a dump restored
//!   into a new cluster): the group would wait forever; the log says how to reset it.

use std::time::{Duration, Instant};

use sqlx::PgPool;

use tokio::sync::watch;

use super::group::Group;
use crate::position::Position;
use crate::store::{self, Blockage};

/// The stall check, beside the delivery path: a task that looks every [`CHECK_EVERY`] while
/// the worker says it is caught up (a query never delays a delivery). Stopped when dropped.
pub(super) struct StallWatcher {
    /// Where the worker is caught up; `None` while it forwards.
    caught_up: watch::Sender<Option<Position>>,
    task: tokio::task::JoinHandle<()>,
}

impl StallWatcher {
    pub fn start(group: &Group) -> StallWatcher {
        let (caught_up, at) = watch::channel(None);
        let pool = group.pool.clone();
        let name = group.name.clone();
        let key_prefix = group.key_prefix.clone();
        let mut watch = StallWatch::new(group.settings.stall_report_interval);
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(CHECK_EVERY).await;
                let Some(cursor) = *at.borrow() else {
                    continue;
                };
                if let Err(error) = watch.check(&pool, &name, cursor, &key_prefix).await {
                    tracing::debug!(group = %name, %error, "could not check for stalls");
                }
            }
        });
        StallWatcher { caught_up, task }
    }

    /// The worker read everything visible; its cursor stands at `cursor`.
    pub fn caught_up(&self, cursor: Position) {
        self.caught_up.send_if_modified(|at| {
            let changed = *at != Some(cursor);
            *at = Some(cursor);
            changed
        });
    }

    /// The worker found messages to forward.
    pub fn forwarding(&self) {
        self.caught_up.send_if_modified(|at| at.take().is_some());
    }
}

impl Drop for StallWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How often a caught-up group is looked at (cheap: one index probe).
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// Transactions hold the xmin back for milliseconds all the time; a group counts as stalled
/// only when its cursor has been held back this long.
const STALLED_AFTER: Duration = Duration::from_secs(1);
/// A holder older than this is an ERROR (someone must act), younger a WARN.
const HOLDER_IS_AN_ERROR_AFTER: f64 = 60.0;

struct StallWatch {
    report_interval: Duration,
    next_check: Instant,
    last_report: Option<Instant>,
    /// Since when the group has been held back at this cursor.
    held_since: Option<(Position, Instant)>,
}

impl StallWatch {
    pub fn new(report_interval: Duration) -> Self {
        StallWatch {
            report_interval,
            next_check: Instant::now(),
            last_report: None,
            held_since: None,
        }
    }

    /// Called when a group is caught up; checks at most every [`CHECK_EVERY`], and reports a
    /// cursor held back at least [`STALLED_AFTER`], then once per report interval.
    pub async fn check(
        &mut self,
        pool: &PgPool,
        group: &str,
        cursor: Position,
        key_prefix: &str,
    ) -> Result<(), sqlx::Error> {
        let now = Instant::now();
        if now < self.next_check {
            return Ok(());
        }
        self.next_check = now + CHECK_EVERY;
        let blockage = store::messages_held_back(pool, cursor).await?;
        if !blockage.held_back && !blockage.cursor_ahead {
            if self.last_report.is_some() {
                tracing::info!(group, position = %cursor, "no longer held back");
            }
            self.held_since = None;
            self.last_report = None;
            return Ok(());
        }
        let since = match self.held_since {
            Some((at_cursor, since)) if at_cursor == cursor => since,
            _ => {
                self.held_since = Some((cursor, now));
                now
            }
        };
        if now.duration_since(since) < STALLED_AFTER {
            return Ok(());
        }
        if self
            .last_report
            .is_some_and(|at| now.duration_since(at) < self.report_interval)
        {
            return Ok(());
        }
        self.last_report = Some(now);
        if blockage.cursor_ahead {
            report_cursor_ahead(group, cursor, &blockage, key_prefix);
        } else {
            report_held_back(pool, group, cursor).await?;
        }
        Ok(())
    }
}

fn report_cursor_ahead(group: &str, cursor: Position, blockage: &Blockage, key_prefix: &str) {
    tracing::error!(
        group,
        position = %cursor,
        next_tx_id = %blockage.next_tx_id,
        "cursor is ahead of every transaction id this server has handed out (as after restoring a dump into \
         a new cluster): nothing new can be delivered until the group is reset. Stop the relays of this group, \
         then in psql: UPDATE outbox.consumer_groups SET cursor_tx_id = '0', cursor_seq = 0 WHERE name = '{group}'; \
         and delete the group's Redis watermarks (keys matching '{key_prefix}*:outbox-watermark:{group}'); \
         messages still in the outbox will be delivered again"
    );
}

async fn report_held_back(pool: &PgPool, group: &str, cursor: Position) -> Result<(), sqlx::Error> {
    let holder = store::xmin_holder(pool).await?;
    match holder {
        Some(holder) if holder.age_seconds >= HOLDER_IS_AN_ERROR_AFTER => tracing::error!(
            group, position = %cursor, pid = holder.pid, state = %holder.state, age_s = holder.age_seconds,
            application_name = %holder.application_name, prepared_gid = holder.prepared_gid.as_deref(),
            "committed messages are held back by an open transaction; delivery resumes when it ends \
             (end it, or pg_terminate_backend(pid) / ROLLBACK PREPARED)"
        ),
        Some(holder) => tracing::warn!(
            group, position = %cursor, pid = holder.pid, state = %holder.state, age_s = holder.age_seconds,
            application_name = %holder.application_name, prepared_gid = holder.prepared_gid.as_deref(),
            "committed messages are held back by an open transaction; delivery resumes when it ends"
        ),
        None => tracing::warn!(group, position = %cursor,
            "committed messages are held back by an open transaction that has just ended or is not visible to this role"),
    }
    Ok(())
}

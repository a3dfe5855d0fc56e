//! The relay's settings: `[relay]` (batch size, wakeup, polling, lease, shutdown grace) and
//! one [`GroupConfig`] per `[[groups]]`. The configuration builds them; [`Default`] and
//! [`GroupConfig::new`] are what unset keys mean.

use std::time::Duration;

use super::entry_fields::EntryFields;
use super::ordering::OrderingMode;
use super::route::Route;

/// How a caught-up relay learns about new messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wakeup {
    /// Poll every `idle_poll_ms` while caught up (default; costs publishers nothing).
    Poll,
    /// LISTEN for the trigger installed by `outbox-relay notify on`, polling every
    /// `idle_poll_ms` (default 500) as the fallback for a lost notification.
    Notify,
}

impl Wakeup {
    /// The configuration value: `poll` or `notify`.
    pub fn as_str(self) -> &'static str {
        match self {
            Wakeup::Poll => "poll",
            Wakeup::Notify => "notify",
        }
    }
}

/// `idle_poll` when `wakeup = "notify"` and `idle_poll_ms` is not set.
pub const NOTIFY_FALLBACK_POLL: Duration = Duration::from_millis(500);

/// `[relay]`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelaySettings {
    /// Messages read per batch.
    pub batch_size: usize,
    /// How a caught-up worker learns about new messages.
    pub wakeup: Wakeup,
    /// The wait before polling again when caught up.
    pub idle_poll: Duration,
    /// A group's lease time: a standby takes over this long after the active relay stopped
    /// renewing.
    pub lease_ttl: Duration,
    /// The longest wait between retries after Postgres or Redis failed.
    pub max_backoff: Duration,
    /// How often a stalled group (xmin held back) is reported.
    pub stall_report_interval: Duration,
    /// How long a stopping worker lets its in-flight step finish before abandoning it.
    pub shutdown_grace: Duration,
}

impl Default for RelaySettings {
    fn default() -> Self {
        RelaySettings {
            batch_size: 500,
            wakeup: Wakeup::Poll,
            idle_poll: Duration::from_millis(5),
            lease_ttl: Duration::from_secs(10),
            max_backoff: Duration::from_secs(5),
            stall_report_interval: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// One consumer group: its name, routes (first match wins), ordering under failure, and
/// where dead letters are copied.
#[derive(Debug, Clone)]
pub struct GroupConfig {
    /// The group's name, its row in `outbox.consumer_groups`.
    pub name: String,
    /// Its routes, in order: the first whose patterns match a topic takes the message.
    pub routes: Vec<Route>,
    /// Its order under failure.
    pub ordering: OrderingMode,
    /// A stream (named without the key prefix) that receives a copy of each dead letter.
    pub dead_letter_stream: Option<String>,
    /// The fields its stream entries carry.
    pub entry_fields: EntryFields,
    /// How many handler calls may run at once ([`DEFAULT_MAX_IN_FLIGHT`] unless set).
    pub max_in_flight: usize,
    /// How many key partitions the group is split into (`[[groups]] partitions`, default 1):
    /// each is run by one of the relays running the group, with its own cursor and lease.
    pub partitions: u32,
}

/// `[[groups]] max_in_flight` when unset.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 256;

/// The largest `[[groups]] max_in_flight` accepted.
pub const MAX_IN_FLIGHT_LIMIT: u64 = 65_536;

/// The most partitions a group may have (`[[groups]] partitions`).
pub const MAX_PARTITIONS: u64 = 1024;

impl GroupConfig {
    /// A group with these routes, `key` ordering and no dead-letter stream.
    pub fn new(name: impl Into<String>, routes: Vec<Route>) -> GroupConfig {
        GroupConfig {
            name: name.into(),
            routes,
            ordering: OrderingMode::default(),
            dead_letter_stream: None,
            entry_fields: EntryFields::default(),
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            partitions: 1,
        }
    }
}

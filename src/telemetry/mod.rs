//! Telemetry: the metric names, one function per noteworthy event (each with fixed label
//! names `group` and `topic`, never a message id), the relay's health state
//! ([`Health`]), W3C trace context ([`trace`]), the logging setup ([`logging`]) and how an
//! error reads in a log line or on stderr ([`error_text`]).
//!
//! The library only talks to the `metrics` facade: without an installed recorder every call
//! here is a no-op. The binary installs a Prometheus recorder when `--http` is given.
//!
//! Counters are reported once a pass is committed (the cursor moved, or the retry results
//! were settled), aggregated per topic ([`TopicTally`]), so a pass that is read again after a
//! crash is not counted twice by the relay that committed it.

mod error_text;
mod health;
pub mod logging;
pub mod trace;

use std::time::Duration;

pub use error_text::{MAX_ERROR_TEXT, error_text, error_text_of_role};
pub use health::{Health, WorkerHealth};

use crate::store::{GroupStatus, XminHolder};

/// Messages handled and appended to Redis (or done with no output), by group and topic.
pub const MESSAGES_FORWARDED: &str = "outbox_messages_forwarded_total";
/// Failed handlings (retryable or permanent, schema rejections included), by group and topic.
pub const HANDLER_FAILURES: &str = "outbox_handler_failures_total";
/// Failed handlings scheduled for another attempt, by group and topic.
pub const RETRIES: &str = "outbox_retries_total";
/// Messages that went dead (permanent failure or attempts exhausted), by group and topic.
pub const DEAD_LETTERS: &str = "outbox_dead_letters_total";
/// Relay steps that failed (Postgres or Redis unreachable, …) and are retried, by group.
pub const RELAY_ERRORS: &str = "outbox_relay_errors_total";
/// Stream entries Redis had lost (a restart without persistence, a failover to a lagging
/// replica) that the relay appended again from the outbox, by group and stream.
pub const APPENDS_REPAIRED: &str = "outbox_redis_appends_repaired_total";
/// Time of one committed pass (read → handle → append → advance), by group and `pass`
/// (`new` or `retry`).
pub const BATCH_DURATION: &str = "outbox_batch_duration_seconds";
/// From a message's `created_at` to its append being confirmed by Redis, by group.
pub const DELIVERY_LATENCY: &str = "outbox_delivery_latency_seconds";
/// Messages past the group's cursor (read at scrape time), by group.
pub const LAG_MESSAGES: &str = "outbox_lag_messages";
/// Age of the oldest undelivered message (past the cursor, or retrying/blocked), 0 when
/// caught up, by group.
pub const LAG_SECONDS: &str = "outbox_lag_seconds";
/// Committed messages past the cursor that wait for an older open transaction, by group.
pub const HELD_BACK_MESSAGES: &str = "outbox_held_back_messages";
/// Age of the open transaction holding the snapshot xmin back, 0 when none.
pub const XMIN_HOLDER_AGE: &str = "outbox_xmin_holder_age_seconds";
/// 1 while this process holds the group's lease, 0 while it stands by, by group.
pub const LEASE_ACTIVE: &str = "outbox_lease_active";
/// Scrapes whose status query (lag, held back) failed or timed out.
pub const STATUS_QUERY_FAILURES: &str = "outbox_status_query_failures_total";
/// Seconds the relay spent in each stage of forwarding new messages, summed (monotonic), by
/// group and stage: `read`, `decode`, `handle`, `append`, `cursor`. `bench drain` reads it to
/// say where the time went.
pub const STAGE_SECONDS: &str = "outbox_stage_seconds_total";

/// Histogram buckets for the `_seconds` histograms: 1 ms to 5 min.
pub const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// Registers the help text of every metric (call once, after installing a recorder).
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(MESSAGES_FORWARDED, "Messages handled and appended to Redis");
    describe_counter!(HANDLER_FAILURES, "Failed handlings, retryable or permanent");
    describe_counter!(RETRIES, "Failed handlings scheduled for another attempt");
    describe_counter!(DEAD_LETTERS, "Messages that went dead");
    describe_counter!(RELAY_ERRORS, "Relay steps that failed and are retried");
    describe_counter!(
        APPENDS_REPAIRED,
        "Stream entries Redis lost and the relay appended again from the outbox"
    );
    describe_histogram!(
        BATCH_DURATION,
        metrics::Unit::Seconds,
        "Time of one committed pass"
    );
    describe_histogram!(
        DELIVERY_LATENCY,
        metrics::Unit::Seconds,
        "From a message's created_at to its append confirmed by Redis"
    );
    describe_gauge!(LAG_MESSAGES, "Messages past the group's cursor");
    describe_gauge!(
        LAG_SECONDS,
        "Age of the oldest undelivered message (past the cursor, or retrying/blocked)"
    );
    describe_gauge!(
        HELD_BACK_MESSAGES,
        "Committed messages held back by an open transaction"
    );
    describe_gauge!(
        XMIN_HOLDER_AGE,
        "Age of the transaction holding the snapshot xmin"
    );
    describe_gauge!(LEASE_ACTIVE, "1 while this process holds the group's lease");
    describe_counter!(STATUS_QUERY_FAILURES, "Scrapes whose status query failed");
    describe_gauge!(
        STAGE_SECONDS,
        "Seconds spent per forwarding stage (read, decode, handle, append, cursor), summed"
    );
}

/// What one pass did, per topic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TopicCounts {
    /// Messages handled: appended to Redis, or done with no output.
    pub forwarded: u64,
    /// Failed handlings, retryable or permanent (schema rejections included).
    pub failed: u64,
    /// Of the failed, those scheduled for another attempt.
    pub retrying: u64,
    /// Of the failed, those that went dead.
    pub dead: u64,
}

impl TopicCounts {
    /// A handler failure that will be tried again.
    pub fn failed_to_retry(&mut self) {
        self.failed += 1;
        self.retrying += 1;
    }

    /// A handler failure that is final.
    pub fn failed_for_good(&mut self) {
        self.failed += 1;
        self.dead += 1;
    }
}

/// Per-topic counts of one pass: one entry per distinct topic (a batch has few), in order of
/// first appearance.
#[derive(Debug, Default)]
pub struct TopicTally {
    topics: Vec<(String, TopicCounts)>,
}

impl TopicTally {
    /// The counts of `topic` (the name is copied on its first message in the pass only).
    pub fn of(&mut self, topic: &str) -> &mut TopicCounts {
        let index = match self.topics.iter().position(|(t, _)| t == topic) {
            Some(index) => index,
            None => {
                self.topics.push((topic.to_owned(), TopicCounts::default()));
                self.topics.len() - 1
            }
        };
        &mut self.topics[index].1
    }

    /// The counts of `topic`; `None` when the pass had no message of it.
    pub fn get(&self, topic: &str) -> Option<TopicCounts> {
        self.topics
            .iter()
            .find(|(t, _)| t == topic)
            .map(|(_, c)| *c)
    }
}

/// A pass was committed: counts by topic, its duration, and the delivery latency of each
/// message appended in it (`latencies`, from `created_at` to now).
pub fn pass_committed(
    group: &str,
    pass: &'static str,
    tally: &TopicTally,
    duration: Duration,
    latencies: impl Iterator<Item = Duration>,
) {
    for (topic, counts) in &tally.topics {
        let labels = [("group", group.to_owned()), ("topic", topic.clone())];
        for (name, value) in [
            (MESSAGES_FORWARDED, counts.forwarded),
            (HANDLER_FAILURES, counts.failed),
            (RETRIES, counts.retrying),
            (DEAD_LETTERS, counts.dead),
        ] {
            if value > 0 {
                metrics::counter!(name, &labels).increment(value);
            }
        }
    }
    metrics::histogram!(BATCH_DURATION, "group" => group.to_owned(), "pass" => pass)
        .record(duration.as_secs_f64());
    let latency = metrics::histogram!(DELIVERY_LATENCY, "group" => group.to_owned());
    for value in latencies {
        latency.record(value.as_secs_f64());
    }
}

/// Time one pass of new messages spent in each stage.
#[derive(Debug, Clone, Copy, Default)]
pub struct StageTimes {
    /// Reading the batch from the outbox.
    pub read: Duration,
    /// Validating payloads against their schemas.
    pub decode: Duration,
    /// Routing, handler calls and building the Redis entries.
    pub handle: Duration,
    /// The Redis append (one pipeline).
    pub append: Duration,
    /// Recording failures and moving the cursor in Postgres.
    pub cursor: Duration,
}

/// Adds a pass's stage times to the per-stage totals. A gauge that only grows: the metrics
/// facade's counters count integers, and these are seconds.
pub fn stage_times(group: &str, times: &StageTimes) {
    for (stage, spent) in [
        ("read", times.read),
        ("decode", times.decode),
        ("handle", times.handle),
        ("append", times.append),
        ("cursor", times.cursor),
    ] {
        metrics::gauge!(STAGE_SECONDS, "group" => group.to_owned(), "stage" => stage)
            .increment(spent.as_secs_f64());
    }
}

/// Redis had lost `count` entries of `stream` that the group appended; they were appended
/// again.
pub fn appends_repaired(group: &str, stream: &str, count: u64) {
    metrics::counter!(APPENDS_REPAIRED, "group" => group.to_owned(), "stream" => stream.to_owned())
        .increment(count);
}

/// A relay step failed and will be retried.
pub fn relay_error(group: &str) {
    metrics::counter!(RELAY_ERRORS, "group" => group.to_owned()).increment(1);
}

/// The group's worker is now active (holds the lease) or not.
pub fn lease_state(group: &str, active: bool) {
    metrics::gauge!(LEASE_ACTIVE, "group" => group.to_owned()).set(if active { 1.0 } else { 0.0 });
}

/// A group's status as read at scrape time (from `outbox.group_status`, which defines lag).
pub fn group_status(status: &GroupStatus) {
    let group = || status.name.clone();
    metrics::gauge!(LAG_MESSAGES, "group" => group()).set(status.lag_messages as f64);
    metrics::gauge!(LAG_SECONDS, "group" => group()).set(status.lag_seconds.max(0.0));
    metrics::gauge!(HELD_BACK_MESSAGES, "group" => group()).set(status.held_back as f64);
}

/// The transaction holding the snapshot xmin back, if any, as read at scrape time.
pub fn xmin_holder(holder: Option<&XminHolder>) {
    metrics::gauge!(XMIN_HOLDER_AGE).set(holder.map_or(0.0, |h| h.age_seconds.max(0.0)));
}

/// The status query of a scrape failed or timed out; the gauges keep their last values.
pub fn status_query_failed(error: &dyn std::fmt::Display) {
    tracing::warn!(error = %error, "could not read the groups' status for /metrics");
    metrics::counter!(STATUS_QUERY_FAILURES).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tally_keeps_one_entry_per_topic() {
        let mut tally = TopicTally::default();
        tally.of("a").forwarded += 1;
        tally.of("b").dead += 1;
        tally.of("a").forwarded += 1;
        assert_eq!(tally.topics.len(), 2);
        assert_eq!(tally.get("a").map(|c| c.forwarded), Some(2));
        assert_eq!(tally.get("b").map(|c| c.dead), Some(1));
    }
}

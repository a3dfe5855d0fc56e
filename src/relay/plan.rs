//! What one pass of a group's worker will write: the Redis appends, the delivery rows, and how
//! far the cursor goes.
//!
//! First pass (new messages after the cursor), in position order:
//! ```text
//!   recorded before (a re-read after a crash) → left to the retry path
//!   key parked ─────────────────────────────────▶ blocked row
//!   handled now ─▶ delivered → appended under the position watermark
//!              ├─▶ retry     → retrying row; parks its chain (key / strict)
//!              └─▶ dead      → dead row (+ dead-letter copy); parks nothing
//! ```
//! Messages of one chain (see [`super::ordering`]) are handled one after another, different
//! chains concurrently (see [`super::window`]); after a retry in its chain a message becomes
//! `blocked` (`key`) or is not reached at all (`strict`: the cursor stops at the failing
//! message).
//!
//! The retry pass over due deliveries is planned in [`super::retry_plan`].

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use uuid::Uuid;

use super::dispatcher::{Dispatcher, Outcome, Skip};
use super::ordering::{Chain, OrderingMode, Parked};
use super::window::Window;
use crate::position::Position;
use crate::registry::RegistryError;
use crate::sink::{LateAppend, LateEntry, StreamAppend, WrongType};
use crate::store::{DeliveryStatus, NewDelivery, OutboxRow};
use crate::telemetry::TopicTally;

/// Counts of what a pass did, for logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub delivered: usize,
    pub unrouted: usize,
    pub dropped: usize,
    pub retrying: usize,
    pub blocked: usize,
    pub dead: usize,
    /// Re-read messages that already had a delivery row.
    pub recorded: usize,
}

/// The writes of a first pass.
#[derive(Debug, Default)]
pub struct BatchPlan {
    pub appends: Vec<StreamAppend>,
    /// Dead-letter copies (late entries: their own identity, see `sink`).
    pub late: Vec<LateAppend>,
    pub failures: Vec<NewDelivery>,
    /// The cursor's new position: the last message handled (or parked); `None` if none was.
    pub through: Option<Position>,
    pub handled: usize,
    pub tally: Tally,
    /// The chains a message of this batch parked (retrying, with `key` or `strict` ordering).
    pub parks: Vec<Chain>,
    /// What happened per topic, for metrics.
    pub by_topic: TopicTally,
    /// `created_at` of every message with entries to append, for the latency histogram.
    pub delivered_at: Vec<chrono::DateTime<chrono::Utc>>,
    /// Time spent validating payloads (outside handler chains), for the stage breakdown.
    pub decode_time: std::time::Duration,
}

impl BatchPlan {
    /// Whether the batch of `rows` messages has entries to append and nothing else to act
    /// on — no failure, parked chain, stop or dead-letter copy — so its append may be sent
    /// while the next batch is read and planned.
    pub fn is_clean(&self, rows: usize) -> bool {
        !self.appends.is_empty()
            && self.failures.is_empty()
            && self.parks.is_empty()
            && self.late.is_empty()
            && self.handled == rows
    }

    /// Adds this batch's parked chains to `parked` (once its failures are recorded).
    pub fn apply_parks(&self, parked: &mut Parked) {
        for chain in &self.parks {
            parked.park(chain);
        }
    }

    /// The messages with an entry for one of the `unwritable` streams (keys that are not
    /// streams) become failures of their first attempt, decided by their routes' retry
    /// policies: their entries leave every stream (a retry appends them all again, as late
    /// entries), and later messages of their chains wait as for any failure (`key`: blocked
    /// rows; `strict`: the cursor stops at the first of them). Returns the new delivery rows,
    /// to be recorded before the rest is appended; dead-letter copies go to `late`.
    pub fn fail_streams(
        &mut self,
        dispatcher: &Dispatcher,
        rows: &[OutboxRow],
        unwritable: &[WrongType],
    ) -> Vec<NewDelivery> {
        let failing: HashMap<Position, &WrongType> = self
            .appends
            .iter()
            .filter_map(|a| Some((a, unwritable.iter().find(|w| w.stream == a.stream)?)))
            .flat_map(|(a, wrong)| a.entries.iter().map(move |e| (e.position, wrong)))
            .collect();
        let delivered: HashSet<Position> = self
            .appends
            .iter()
            .flat_map(|a| a.entries.iter().map(|e| e.position))
            .collect();
        let mut failed = Vec::new();
        let mut waiting: HashSet<Chain> = HashSet::new();
        let mut taken: HashSet<Position> = HashSet::new();
        for (i, row) in rows.iter().enumerate() {
            if self.through.is_none_or(|through| row.position > through) {
                break;
            }
            if !delivered.contains(&row.position) {
                continue;
            }
            let chain = dispatcher.ordering.chain(i, row);
            let topic = self.by_topic.of(&row.topic);
            if waiting.contains(&chain) {
                topic.forwarded -= 1;
                self.tally.delivered -= 1;
                self.tally.blocked += 1;
                taken.insert(row.position);
                failed.push(new_delivery(row, DeliveryStatus::Blocked, 0, None, None));
                continue;
            }
            let Some(wrong) = failing.get(&row.position) else {
                continue;
            };
            topic.forwarded -= 1;
            self.tally.delivered -= 1;
            taken.insert(row.position);
            match dispatcher.append_failure(row, 1, &wrong.to_string()) {
                Outcome::Retry {
                    error,
                    attempts,
                    delay,
                } => {
                    self.by_topic.of(&row.topic).failed_to_retry();
                    self.tally.retrying += 1;
                    failed.push(new_delivery(
                        row,
                        DeliveryStatus::Retrying,
                        attempts,
                        Some(error),
                        Some(delay),
                    ));
                    if dispatcher.ordering != OrderingMode::None {
                        self.parks.push(chain.clone());
                        waiting.insert(chain);
                    }
                }
                Outcome::Dead { error, attempts } => {
                    self.by_topic.of(&row.topic).failed_for_good();
                    self.tally.dead += 1;
                    dispatcher.dead_letter_copy(&mut self.late, row, &error, attempts);
                    failed.push(new_delivery(
                        row,
                        DeliveryStatus::Dead,
                        attempts,
                        Some(error),
                        None,
                    ));
                }
                Outcome::Delivered(_) | Outcome::Skipped(_) => unreachable!("a failure"),
            }
            if dispatcher.ordering == OrderingMode::Strict && waiting.contains(&Chain::Group) {
                // The group stops here: what lies after it is read again once this is done.
                self.through = Some(row.position);
                self.handled = i + 1;
                break;
            }
        }
        let through = self.through;
        for append in &mut self.appends {
            append.entries.retain(|e| {
                !taken.contains(&e.position) && through.is_none_or(|t| e.position <= t)
            });
        }
        self.appends.retain(|a| !a.entries.is_empty());
        self.failures.extend(failed.iter().cloned());
        failed
    }
}

/// A delivery row for `row`.
fn new_delivery(
    row: &OutboxRow,
    status: DeliveryStatus,
    attempts: u32,
    error: Option<String>,
    delay: Option<std::time::Duration>,
) -> NewDelivery {
    NewDelivery {
        message_id: row.id,
        position: row.position,
        key: row.key.clone(),
        status,
        attempts: attempts as i32,
        last_error: error,
        delay,
    }
}

/// One message's result in a first pass.
#[derive(Debug, Clone)]
pub(super) enum Step {
    /// It has a delivery row already (a re-read after a crash): the retry path has it.
    Recorded,
    /// Its chain is parked: it waits as a blocked row.
    Blocked,
    /// `strict`: the group stopped before it; it is read again later.
    NotReached,
    /// Another partition's message (the last row of a read, passed so the cursor moves).
    OtherPartition,
    Handled(Outcome),
}

impl Dispatcher {
    /// Plans the first pass over `rows` (position order) at once, waiting for every call:
    /// the worker commits from a [`Window`] instead, as its messages finish; this serves the
    /// re-derivation of lost entries (`repair`). `recorded`: messages that already have a
    /// delivery row; `parked`: the group's parked chains.
    pub async fn first_pass(
        self: &Arc<Self>,
        rows: &[OutboxRow],
        recorded: &HashSet<Uuid>,
        parked: &Parked,
    ) -> Result<BatchPlan, RegistryError> {
        let mut window = Window::new(Arc::clone(self));
        window.admit(rows.to_vec(), recorded, parked).await?;
        while window.next_finished().await? {}
        let (rows, steps) = window.take_finished(usize::MAX);
        debug_assert!(window.is_empty(), "every message is decided");
        let mut plan = self.plan_batch(&rows, steps);
        plan.decode_time = window.take_decode_time();
        Ok(plan)
    }

    /// Turns the steps into writes, up to the first message not reached.
    pub(super) fn plan_batch(&self, rows: &[OutboxRow], steps: Vec<Step>) -> BatchPlan {
        let mut plan = BatchPlan::default();
        let mut streams = StreamIndex::default();
        for (i, (row, step)) in rows.iter().zip(steps).enumerate() {
            let failure =
                |status, attempts, error, delay| new_delivery(row, status, attempts, error, delay);
            match step {
                Step::NotReached => break,
                Step::OtherPartition => {}
                Step::Recorded => plan.tally.recorded += 1,
                // Its chain is parked already: before this batch, or by the retry before it.
                Step::Blocked => {
                    plan.tally.blocked += 1;
                    plan.failures
                        .push(failure(DeliveryStatus::Blocked, 0, None, None));
                }
                Step::Handled(Outcome::Skipped(skip)) => match skip {
                    Skip::Unrouted => plan.tally.unrouted += 1,
                    Skip::Dropped => plan.tally.dropped += 1,
                },
                Step::Handled(Outcome::Delivered(outputs)) => {
                    plan.tally.delivered += 1;
                    plan.by_topic.of(&row.topic).forwarded += 1;
                    if !outputs.is_empty() {
                        plan.delivered_at.push(row.created_at);
                    }
                    streams.add(&mut plan.appends, self, row, outputs);
                }
                Step::Handled(Outcome::Retry {
                    error,
                    attempts,
                    delay,
                }) => {
                    plan.tally.retrying += 1;
                    plan.by_topic.of(&row.topic).failed_to_retry();
                    plan.failures.push(failure(
                        DeliveryStatus::Retrying,
                        attempts,
                        Some(error),
                        Some(delay),
                    ));
                    if self.ordering != OrderingMode::None {
                        plan.parks.push(self.ordering.chain(i, row));
                    }
                }
                Step::Handled(Outcome::Dead { error, attempts }) => {
                    plan.tally.dead += 1;
                    plan.by_topic.of(&row.topic).failed_for_good();
                    self.dead_letter_copy(&mut plan.late, row, &error, attempts);
                    plan.failures
                        .push(failure(DeliveryStatus::Dead, attempts, Some(error), None));
                }
            }
            plan.through = Some(row.position);
            plan.handled += 1;
        }
        plan
    }

    /// Adds the dead-letter copy of `row` (when the group has a dead-letter stream): the
    /// message's fields plus `error` and `attempts`, identified by (message, attempts) so a
    /// message that dies again after an operator's retry is copied again.
    pub(super) fn dead_letter_copy(
        &self,
        late: &mut Vec<LateAppend>,
        row: &OutboxRow,
        error: &str,
        attempts: u32,
    ) {
        let Some(stream) = &self.dead_letter_stream else {
            return;
        };
        let mut entry_fields = self.fields(row, row.payload.clone());
        entry_fields.push(("error", error.to_owned()));
        entry_fields.push(("attempts", attempts.to_string()));
        let entry = LateEntry {
            message_id: row.id,
            token: format!("dead:{}:{attempts}", row.id),
            fields: entry_fields,
        };
        push_late(late, stream, entry);
    }
}

/// Runs `calls`, at most `limit` at a time; results in call order when `ordered`, else as
/// they finish. (The futures are boxed before they get here: built inside a stream
/// combinator's closure, their Send-ness cannot be proven, rust-lang/rust#102211.)
pub(super) async fn run_concurrently<T>(
    calls: Vec<BoxFuture<'_, T>>,
    limit: usize,
    ordered: bool,
) -> Vec<T> {
    let calls = futures_util::stream::iter(calls);
    if ordered {
        calls.buffered(limit).collect().await
    } else {
        calls.buffer_unordered(limit).collect().await
    }
}

/// Appends `entry` to the late entries of `stream`, keeping the order they were added in.
pub(super) fn push_late(late: &mut Vec<LateAppend>, stream: &str, entry: LateEntry) {
    match late.iter_mut().find(|a| a.stream == stream) {
        Some(append) => append.entries.push(entry),
        None => late.push(LateAppend {
            stream: stream.to_owned(),
            entries: vec![entry],
        }),
    }
}

/// Groups a batch's entries by stream, keeping position order within each.
#[derive(Default)]
struct StreamIndex {
    by_stream: HashMap<String, usize>,
}

impl StreamIndex {
    fn add(
        &mut self,
        appends: &mut Vec<StreamAppend>,
        dispatcher: &Dispatcher,
        row: &OutboxRow,
        outputs: Vec<(String, String)>,
    ) {
        let single = outputs.len() == 1;
        for (stream, payload) in outputs {
            let index = match self.by_stream.get(&stream) {
                Some(&index) => index,
                None => {
                    self.by_stream.insert(stream.clone(), appends.len());
                    appends.push(StreamAppend {
                        stream,
                        entries: Vec::new(),
                        appended_through: None,
                    });
                    appends.len() - 1
                }
            };
            let entries = &mut appends[index].entries;
            // A message's second output to the same stream gets the next ordinal.
            let ordinal = match entries.last() {
                Some(last) if !single && last.position == row.position => last.ordinal + 1,
                _ => 0,
            };
            entries.push(dispatcher.entry(row, payload, ordinal));
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::handler::{DecodedMessage, Handler, HandlerError, Output};
    use crate::relay::route::{Action, Route, StreamTemplate};
    use crate::retry::RetryPolicy;

    /// Fails messages whose payload says so; echoes the rest to `out` (twice when asked).
    struct ByPayload;

    #[async_trait::async_trait]
    impl Handler for ByPayload {
        async fn handle(&self, message: &DecodedMessage) -> Result<Vec<Output>, HandlerError> {
            match message.payload["do"].as_str() {
                Some("fail") => Err(HandlerError::retryable("not now")),
                Some("reject") => Err(HandlerError::permanent("never")),
                Some("twice") => Ok(vec![
                    Output::new("out", message.payload.clone()),
                    Output::new("out", message.payload.clone()),
                ]),
                _ => Ok(vec![Output::new("out", message.payload.clone())]),
            }
        }
    }

    /// Routes `fwd` to stream `fwd-out` and `call` to a handler scripted by the payload's `do`;
    /// dead letters go to `dead`.
    pub(in crate::relay) fn dispatcher(ordering: OrderingMode) -> Dispatcher {
        let call = Action::Call {
            name: "h".into(),
            handler: Arc::new(ByPayload),
        };
        Dispatcher {
            jitter: || 0.5,
            ..Dispatcher::new(
                "g",
                vec![
                    Route::new(
                        vec!["fwd".into()],
                        Action::Forward {
                            stream: StreamTemplate::parse("fwd-out").unwrap(),
                        },
                    )
                    .unwrap(),
                    Route::new(vec!["call".into()], call)
                        .unwrap()
                        .with_retry(RetryPolicy {
                            max_attempts: 5,
                            initial: Duration::from_secs(1),
                            max: Duration::from_secs(10),
                            multiplier: 2.0,
                        }),
                ],
                ordering,
                Some("dead".into()),
            )
        }
    }

    pub(in crate::relay) fn row(
        seq: i64,
        topic: &str,
        key: Option<&str>,
        action: &str,
    ) -> OutboxRow {
        OutboxRow {
            position: Position::new(50, seq),
            id: Uuid::from_u128(seq as u128),
            topic: topic.into(),
            key: key.map(Into::into),
            schema_version: None,
            payload: format!(r#"{{"do": "{action}"}}"#),
            headers: "{}".into(),
            created_at: chrono::DateTime::from_timestamp(0, 0).unwrap(),
        }
    }

    fn parked_after(plan: &BatchPlan) -> Parked {
        let mut parked = Parked::default();
        plan.apply_parks(&mut parked);
        parked
    }

    fn statuses(plan: &BatchPlan) -> Vec<(i64, DeliveryStatus)> {
        plan.failures
            .iter()
            .map(|f| (f.position.seq, f.status))
            .collect()
    }

    fn batch() -> Vec<OutboxRow> {
        vec![
            row(1, "call", Some("a"), "fail"),
            row(2, "call", Some("b"), "ok"),
            row(3, "fwd", Some("a"), "ok"),
            row(4, "call", Some("a"), "ok"),
            row(5, "call", None, "reject"),
            row(6, "fwd", Some("c"), "ok"),
        ]
    }

    #[tokio::test]
    async fn key_ordering_blocks_only_the_failing_key() {
        let d = Arc::new(dispatcher(OrderingMode::Key));
        let plan = d
            .first_pass(&batch(), &HashSet::new(), &Parked::default())
            .await
            .unwrap();
        assert_eq!(
            statuses(&plan),
            [
                (1, DeliveryStatus::Retrying),
                (3, DeliveryStatus::Blocked),
                (4, DeliveryStatus::Blocked),
                (5, DeliveryStatus::Dead)
            ]
        );
        assert_eq!(plan.through, Some(Position::new(50, 6)));
        let parked = parked_after(&plan);
        assert!(parked.holds(&Chain::Key("a".into())));
        assert!(!parked.holds(&Chain::Key("b".into())));
        let appended: Vec<(&str, i64)> = plan
            .appends
            .iter()
            .flat_map(|a| {
                a.entries
                    .iter()
                    .map(|e| (a.stream.as_str(), e.position.seq))
            })
            .collect();
        assert_eq!(appended, [("out", 2), ("fwd-out", 6)]);
        assert_eq!(plan.late.len(), 1, "the dead letter is copied");
        assert_eq!(plan.failures[0].delay, Some(Duration::from_secs(1)));
    }

    #[tokio::test]
    async fn strict_ordering_stops_at_the_failing_message() {
        let d = Arc::new(dispatcher(OrderingMode::Strict));
        let rows = [
            row(1, "fwd", None, "ok"),
            row(2, "call", None, "fail"),
            row(3, "fwd", None, "ok"),
        ];
        let plan = d
            .first_pass(&rows, &HashSet::new(), &Parked::default())
            .await
            .unwrap();
        assert_eq!(statuses(&plan), [(2, DeliveryStatus::Retrying)]);
        assert_eq!(plan.through, Some(Position::new(50, 2)));
        assert_eq!(plan.handled, 2);
        assert!(parked_after(&plan).halts_group());
    }

    #[tokio::test]
    async fn no_ordering_lets_later_messages_pass() {
        let d = Arc::new(dispatcher(OrderingMode::None));
        let plan = d
            .first_pass(&batch(), &HashSet::new(), &Parked::default())
            .await
            .unwrap();
        assert_eq!(
            statuses(&plan),
            [(1, DeliveryStatus::Retrying), (5, DeliveryStatus::Dead)]
        );
        assert!(!parked_after(&plan).halts_group());
        assert_eq!(plan.tally.delivered, 4);
    }

    #[tokio::test]
    async fn recorded_messages_are_left_to_the_retry_path_and_parked_keys_wait() {
        let d = Arc::new(dispatcher(OrderingMode::Key));
        let mut parked = Parked::default();
        parked.park(&Chain::Key("c".into()));
        let recorded: HashSet<Uuid> = [Uuid::from_u128(1)].into();
        let plan = d.first_pass(&batch(), &recorded, &parked).await.unwrap();
        assert_eq!(plan.tally.recorded, 1);
        assert_eq!(
            statuses(&plan),
            [(5, DeliveryStatus::Dead), (6, DeliveryStatus::Blocked)]
        );
    }

    #[tokio::test]
    async fn two_outputs_of_one_message_to_one_stream_get_ordinals() {
        let d = Arc::new(dispatcher(OrderingMode::Key));
        let plan = d
            .first_pass(
                &[row(1, "call", None, "twice")],
                &HashSet::new(),
                &Parked::default(),
            )
            .await
            .unwrap();
        let ordinals: Vec<u32> = plan.appends[0].entries.iter().map(|e| e.ordinal).collect();
        assert_eq!(ordinals, [0, 1]);
    }
}

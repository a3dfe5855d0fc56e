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
//! chains concurrently; after a retry in its chain a message becomes `blocked` (`key`) or is
//! not reached at all (`strict`: the cursor stops at the failing message).
//!
//! Retry pass (due deliveries): each is handled again; its outputs are late entries (their own
//! dedupe tokens), and its row is settled: deleted, rescheduled or dead, releasing the next
//! blocked message of its key.

use std::collections::{HashMap, HashSet};

use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use uuid::Uuid;

use super::dispatcher::{Dispatcher, Outcome, Skip, fields};
use super::ordering::{Chain, OrderingMode, Parked};
use super::route::Action;
use crate::position::Position;
use crate::registry::RegistryError;
use crate::sink::{LateAppend, LateEntry, StreamAppend};
use crate::store::{DeliveryStatus, DueDelivery, NewDelivery, OutboxRow, Settlement};

/// How many handler chains run at once.
pub const HANDLER_CONCURRENCY: usize = 16;

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
    /// `parked` after this batch.
    pub parked: Parked,
}

/// The writes of a retry pass.
#[derive(Debug, Default)]
pub struct RetryPlan {
    pub late: Vec<LateAppend>,
    pub settlements: Vec<(Uuid, Settlement)>,
    /// Keys whose parked message is done or dead: their next blocked message is released.
    pub released_keys: Vec<String>,
    pub tally: Tally,
}

/// What a chain's messages came to, by their index in the batch.
type ChainResult = Result<Vec<(usize, Step)>, RegistryError>;

/// One message's result in a first pass.
#[derive(Debug)]
enum Step {
    Recorded,
    Blocked,
    NotReached,
    Handled(Outcome),
}

impl Dispatcher {
    /// Plans the first pass over `rows` (position order). `recorded`: messages that already
    /// have a delivery row; `parked`: the group's parked chains before this batch.
    pub async fn first_pass(
        &self,
        rows: &[OutboxRow],
        recorded: &HashSet<Uuid>,
        parked: &Parked,
    ) -> Result<BatchPlan, RegistryError> {
        let mut steps: Vec<Option<Step>> = (0..rows.len()).map(|_| None).collect();
        let mut chains: Vec<(Chain, Vec<usize>)> = Vec::new();
        let mut chain_index: HashMap<Chain, usize> = HashMap::new();
        for (i, row) in rows.iter().enumerate() {
            if recorded.contains(&row.id) {
                steps[i] = Some(Step::Recorded);
                continue;
            }
            let route = self.route(row);
            let calls_handler = matches!(route.map(|r| &r.action), Some(Action::Call { .. }));
            // The common case — nothing parked, no handler call pending in this batch, none
            // needed — is handled at once, without working out the message's chain.
            if calls_handler || !chain_index.is_empty() || parked.halts_group() {
                let chain = self.ordering.chain(i, row);
                if parked.holds(&chain) {
                    steps[i] = Some(match self.ordering {
                        OrderingMode::Strict => Step::NotReached,
                        _ => Step::Blocked,
                    });
                    continue;
                }
                // A message waits for its chain's earlier handler calls; one that calls a
                // handler itself starts (or joins) its chain.
                if let Some(&c) = chain_index.get(&chain) {
                    chains[c].1.push(i);
                    continue;
                }
                if calls_handler {
                    chain_index.insert(chain.clone(), chains.len());
                    chains.push((chain, vec![i]));
                    continue;
                }
            }
            let decoded = self.decode(row).await?;
            steps[i] = Some(Step::Handled(
                self.handle_routed(row, route, 1, decoded).await,
            ));
        }
        let mut calls: Vec<BoxFuture<'_, ChainResult>> = Vec::with_capacity(chains.len());
        for (_, members) in chains {
            calls.push(self.run_chain(rows, members).boxed());
        }
        let results = run_concurrently(calls, false)
            .await
            .into_iter()
            .collect::<Result<Vec<_>, _>>()?;
        for (i, step) in results.into_iter().flatten() {
            steps[i] = Some(step);
        }
        Ok(self.plan_batch(
            rows,
            steps.into_iter().map(|s| s.expect("every row has a step")),
            parked,
        ))
    }

    /// Handles a chain's messages in order; after a retry, the rest wait.
    async fn run_chain(&self, rows: &[OutboxRow], members: Vec<usize>) -> ChainResult {
        let mut results = Vec::with_capacity(members.len());
        let mut stopped = false;
        for i in members {
            if stopped {
                let waiting = match self.ordering {
                    OrderingMode::Strict => Step::NotReached,
                    _ => Step::Blocked,
                };
                results.push((i, waiting));
                continue;
            }
            let decoded = self.decode(&rows[i]).await?;
            let outcome = self.handle(&rows[i], 1, decoded).await;
            stopped =
                matches!(outcome, Outcome::Retry { .. }) && self.ordering != OrderingMode::None;
            results.push((i, Step::Handled(outcome)));
        }
        Ok(results)
    }

    /// Turns the steps into writes, up to the first message not reached.
    fn plan_batch(
        &self,
        rows: &[OutboxRow],
        steps: impl Iterator<Item = Step>,
        parked: &Parked,
    ) -> BatchPlan {
        let mut plan = BatchPlan {
            parked: parked.clone(),
            ..BatchPlan::default()
        };
        let mut streams = StreamIndex::default();
        for (i, (row, step)) in rows.iter().zip(steps).enumerate() {
            let failure = |status, attempts, error: Option<String>, delay| NewDelivery {
                message_id: row.id,
                position: row.position,
                key: row.key.clone(),
                status,
                attempts: attempts as i32,
                last_error: error,
                delay,
            };
            match step {
                Step::NotReached => break,
                Step::Recorded => plan.tally.recorded += 1,
                Step::Blocked => {
                    plan.tally.blocked += 1;
                    plan.failures
                        .push(failure(DeliveryStatus::Blocked, 0, None, None));
                    plan.parked.park(&self.ordering.chain(i, row));
                }
                Step::Handled(Outcome::Skipped(skip)) => match skip {
                    Skip::Unrouted => plan.tally.unrouted += 1,
                    Skip::Dropped => plan.tally.dropped += 1,
                },
                Step::Handled(Outcome::Delivered(outputs)) => {
                    plan.tally.delivered += 1;
                    streams.add(&mut plan.appends, self, row, outputs);
                }
                Step::Handled(Outcome::Retry {
                    error,
                    attempts,
                    delay,
                }) => {
                    plan.tally.retrying += 1;
                    plan.failures.push(failure(
                        DeliveryStatus::Retrying,
                        attempts,
                        Some(error),
                        Some(delay),
                    ));
                    if self.ordering != OrderingMode::None {
                        plan.parked.park(&self.ordering.chain(i, row));
                    }
                }
                Step::Handled(Outcome::Dead { error, attempts }) => {
                    plan.tally.dead += 1;
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

    /// Plans the retry pass over `due` deliveries (position order).
    pub async fn retry_pass(&self, due: &[DueDelivery]) -> Result<RetryPlan, RegistryError> {
        let mut calls: Vec<BoxFuture<'_, Result<Outcome, RegistryError>>> =
            Vec::with_capacity(due.len());
        for delivery in due {
            let attempt = u32::try_from(delivery.attempts)
                .unwrap_or(0)
                .saturating_add(1);
            calls.push(
                async move {
                    let decoded = self.decode(&delivery.row).await?;
                    Ok(self.handle(&delivery.row, attempt, decoded).await)
                }
                .boxed(),
            );
        }
        let outcomes = run_concurrently(calls, true)
            .await
            .into_iter()
            .collect::<Result<Vec<_>, _>>()?;
        let mut plan = RetryPlan::default();
        for (delivery, outcome) in due.iter().zip(outcomes) {
            let row = &delivery.row;
            let settlement = match outcome {
                Outcome::Skipped(Skip::Dropped) => {
                    plan.tally.dropped += 1;
                    Settlement::Done
                }
                Outcome::Skipped(Skip::Unrouted) => {
                    let attempts = delivery.attempts + 1;
                    let error = format!(
                        "no route of group `{}` takes topic `{}` any more",
                        self.group, row.topic
                    );
                    plan.tally.dead += 1;
                    self.dead_letter_copy(&mut plan.late, row, &error, attempts as u32);
                    Settlement::Dead { attempts, error }
                }
                Outcome::Delivered(outputs) => {
                    plan.tally.delivered += 1;
                    add_late(&mut plan.late, row, outputs, |payload| {
                        fields(&self.group, row, payload)
                    });
                    Settlement::Done
                }
                Outcome::Retry {
                    error,
                    attempts,
                    delay,
                } => {
                    plan.tally.retrying += 1;
                    Settlement::Retry {
                        attempts: attempts as i32,
                        error,
                        delay,
                    }
                }
                Outcome::Dead { error, attempts } => {
                    plan.tally.dead += 1;
                    self.dead_letter_copy(&mut plan.late, row, &error, attempts);
                    Settlement::Dead {
                        attempts: attempts as i32,
                        error,
                    }
                }
            };
            if !matches!(settlement, Settlement::Retry { .. })
                && self.ordering == OrderingMode::Key
                && let Some(key) = &row.key
            {
                plan.released_keys.push(key.clone());
            }
            plan.settlements.push((row.id, settlement));
        }
        Ok(plan)
    }

    /// Adds the dead-letter copy of `row` (when the group has a dead-letter stream): the
    /// message's fields plus `error` and `attempts`, identified by (message, attempts) so a
    /// message that dies again after an operator's retry is copied again.
    fn dead_letter_copy(
        &self,
        late: &mut Vec<LateAppend>,
        row: &OutboxRow,
        error: &str,
        attempts: u32,
    ) {
        let Some(stream) = &self.dead_letter_stream else {
            return;
        };
        let mut entry_fields = fields(&self.group, row, row.payload.clone());
        entry_fields.push(("error", error.to_owned()));
        entry_fields.push(("attempts", attempts.to_string()));
        let entry = LateEntry {
            token: format!("dead:{}:{attempts}", row.id),
            fields: entry_fields,
        };
        match late.iter_mut().find(|a| &a.stream == stream) {
            Some(append) => append.entries.push(entry),
            None => late.push(LateAppend {
                stream: stream.clone(),
                entries: vec![entry],
            }),
        }
    }
}

/// Runs `calls`, at most [`HANDLER_CONCURRENCY`] at a time; results in call order when
/// `ordered`, else as they finish. (The futures are boxed before they get here: built inside a
/// stream combinator's closure, their Send-ness cannot be proven, rust-lang/rust#102211.)
async fn run_concurrently<T>(calls: Vec<BoxFuture<'_, T>>, ordered: bool) -> Vec<T> {
    let calls = futures_util::stream::iter(calls);
    if ordered {
        calls.buffered(HANDLER_CONCURRENCY).collect().await
    } else {
        calls.buffer_unordered(HANDLER_CONCURRENCY).collect().await
    }
}

/// Adds a retried message's outputs as late entries, identified by (message, ordinal in the
/// stream).
fn add_late(
    late: &mut Vec<LateAppend>,
    row: &OutboxRow,
    outputs: Vec<(String, String)>,
    make_fields: impl Fn(String) -> crate::sink::Fields,
) {
    let mut ordinals: HashMap<String, u32> = HashMap::new();
    for (stream, payload) in outputs {
        let ordinal = ordinals.entry(stream.clone()).or_insert(0);
        let entry = LateEntry {
            token: format!("{}:{ordinal}", row.id),
            fields: make_fields(payload),
        };
        *ordinal += 1;
        match late.iter_mut().find(|a| a.stream == stream) {
            Some(append) => append.entries.push(entry),
            None => late.push(LateAppend {
                stream,
                entries: vec![entry],
            }),
        }
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
mod tests {
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

    fn dispatcher(ordering: OrderingMode) -> Dispatcher {
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

    fn row(seq: i64, topic: &str, key: Option<&str>, action: &str) -> OutboxRow {
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
        let d = dispatcher(OrderingMode::Key);
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
        assert!(plan.parked.holds(&Chain::Key("a".into())));
        assert!(!plan.parked.holds(&Chain::Key("b".into())));
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
        let d = dispatcher(OrderingMode::Strict);
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
        assert!(plan.parked.halts_group());
    }

    #[tokio::test]
    async fn no_ordering_lets_later_messages_pass() {
        let d = dispatcher(OrderingMode::None);
        let plan = d
            .first_pass(&batch(), &HashSet::new(), &Parked::default())
            .await
            .unwrap();
        assert_eq!(
            statuses(&plan),
            [(1, DeliveryStatus::Retrying), (5, DeliveryStatus::Dead)]
        );
        assert!(!plan.parked.halts_group());
        assert_eq!(plan.tally.delivered, 4);
    }

    #[tokio::test]
    async fn recorded_messages_are_left_to_the_retry_path_and_parked_keys_wait() {
        let d = dispatcher(OrderingMode::Key);
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
        let d = dispatcher(OrderingMode::Key);
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

    #[tokio::test]
    async fn retries_settle_and_release_their_key() {
        let d = dispatcher(OrderingMode::Key);
        let due = [
            DueDelivery {
                attempts: 1,
                row: row(1, "call", Some("a"), "ok"),
            },
            DueDelivery {
                attempts: 2,
                row: row(2, "call", Some("b"), "fail"),
            },
            DueDelivery {
                attempts: 4,
                row: row(3, "call", Some("c"), "fail"),
            },
        ];
        let plan = d.retry_pass(&due).await.unwrap();
        assert_eq!(plan.settlements[0].1, Settlement::Done);
        assert_eq!(
            plan.settlements[1].1,
            Settlement::Retry {
                attempts: 3,
                error: "h: not now".into(),
                delay: Duration::from_secs(4)
            }
        );
        assert!(matches!(
            plan.settlements[2].1,
            Settlement::Dead { attempts: 5, .. }
        ));
        assert_eq!(plan.released_keys, ["a", "c"]);
        let late: Vec<(&str, Vec<&str>)> = plan
            .late
            .iter()
            .map(|a| {
                (
                    a.stream.as_str(),
                    a.entries.iter().map(|e| e.token.as_str()).collect(),
                )
            })
            .collect();
        assert_eq!(
            late,
            [
                ("out", vec!["00000000-0000-0000-0000-000000000001:0"]),
                ("dead", vec!["dead:00000000-0000-0000-0000-000000000003:5"])
            ]
        );
    }
}

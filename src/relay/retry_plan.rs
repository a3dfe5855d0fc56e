//! What a retry pass will write: each due delivery is handled again; its outputs become late
//! entries (each with a dedupe token of its own, see `sink`), and its row is settled —
//! deleted, rescheduled or dead — releasing the next blocked message of its key.

use std::collections::HashMap;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use uuid::Uuid;

use super::dispatcher::{Dispatcher, Outcome, Skip};
use super::ordering::OrderingMode;
use super::plan::{Tally, push_late, run_concurrently};
use crate::registry::RegistryError;
use crate::sink::{LateAppend, LateEntry, WrongType};
use crate::store::{DueDelivery, OutboxRow, Settlement};
use crate::telemetry::TopicTally;

/// The writes of a retry pass.
#[derive(Debug, Default)]
pub struct RetryPlan {
    pub late: Vec<LateAppend>,
    pub settlements: Vec<(Uuid, Settlement)>,
    /// Keys whose parked message is done or dead: their next blocked message is released.
    pub released_keys: Vec<String>,
    pub tally: Tally,
    /// What happened per topic, for metrics.
    pub by_topic: TopicTally,
    /// `created_at` of every message with entries to append, for the latency histogram.
    pub delivered_at: Vec<chrono::DateTime<chrono::Utc>>,
}

impl RetryPlan {
    /// The late entries for the `unwritable` streams (keys that are not streams) were not
    /// appended: a message with such an entry fails this attempt instead (its route's retry
    /// policy decides; its key is not released), and a dead letter whose copy was refused
    /// keeps it pending. Its entries in other streams may be there already: their tokens make
    /// the next attempt skip them. Returns the ids whose dead-letter copy is pending.
    pub fn fail_streams(
        &mut self,
        dispatcher: &Dispatcher,
        due: &[DueDelivery],
        unwritable: &[WrongType],
    ) -> Vec<Uuid> {
        let mut copies_pending = Vec::new();
        for append in &self.late {
            let Some(wrong) = unwritable.iter().find(|w| w.stream == append.stream) else {
                continue;
            };
            for entry in &append.entries {
                let Some((_, settlement)) = self
                    .settlements
                    .iter_mut()
                    .find(|(id, _)| *id == entry.message_id)
                else {
                    continue;
                };
                if matches!(settlement, Settlement::Dead { .. }) {
                    copies_pending.push(entry.message_id);
                    continue;
                }
                let Some(delivery) = due.iter().find(|d| d.row.id == entry.message_id) else {
                    continue;
                };
                let attempt = u32::try_from(delivery.attempts)
                    .unwrap_or(0)
                    .saturating_add(1);
                self.tally.delivered = self.tally.delivered.saturating_sub(1);
                *settlement =
                    match dispatcher.append_failure(&delivery.row, attempt, &wrong.to_string()) {
                        Outcome::Retry {
                            error,
                            attempts,
                            delay,
                        } => {
                            self.tally.retrying += 1;
                            Settlement::Retry {
                                attempts: attempts as i32,
                                error,
                                delay,
                            }
                        }
                        Outcome::Dead { error, attempts } => {
                            self.tally.dead += 1;
                            // Its copy goes with the next pass over pending dead letters.
                            copies_pending.push(entry.message_id);
                            Settlement::Dead {
                                attempts: attempts as i32,
                                error,
                            }
                        }
                        Outcome::Delivered(_) | Outcome::Skipped(_) => unreachable!("a failure"),
                    };
                if let Some(key) = &delivery.row.key
                    && matches!(settlement, Settlement::Retry { .. })
                {
                    self.released_keys.retain(|k| k != key);
                }
            }
        }
        copies_pending.sort();
        copies_pending.dedup();
        copies_pending
    }
}

impl Dispatcher {
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
        let outcomes = run_concurrently(calls, self.max_in_flight, true)
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
                    plan.by_topic.of(&row.topic).dead += 1;
                    self.dead_letter_copy(&mut plan.late, row, &error, attempts as u32);
                    Settlement::Dead { attempts, error }
                }
                Outcome::Delivered(outputs) => {
                    plan.tally.delivered += 1;
                    plan.by_topic.of(&row.topic).forwarded += 1;
                    if !outputs.is_empty() {
                        plan.delivered_at.push(row.created_at);
                    }
                    self.add_late(&mut plan.late, row, outputs);
                    Settlement::Done
                }
                Outcome::Retry {
                    error,
                    attempts,
                    delay,
                } => {
                    plan.tally.retrying += 1;
                    plan.by_topic.of(&row.topic).failed_to_retry();
                    Settlement::Retry {
                        attempts: attempts as i32,
                        error,
                        delay,
                    }
                }
                Outcome::Dead { error, attempts } => {
                    plan.tally.dead += 1;
                    plan.by_topic.of(&row.topic).failed_for_good();
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

    /// Adds a retried message's outputs as late entries, identified by (message, ordinal in
    /// the stream).
    fn add_late(
        &self,
        late: &mut Vec<LateAppend>,
        row: &OutboxRow,
        outputs: Vec<(String, String)>,
    ) {
        let mut ordinals: HashMap<String, u32> = HashMap::new();
        for (stream, payload) in outputs {
            let ordinal = ordinals.entry(stream.clone()).or_insert(0);
            let entry = LateEntry {
                message_id: row.id,
                token: format!("{}:{ordinal}", row.id),
                fields: self.fields(row, payload),
            };
            *ordinal += 1;
            push_late(late, &stream, entry);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::relay::plan::tests::{dispatcher, row};

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

//! `bench publish`: `publish_in_tx` and `publish_batch_in_tx` next to the same rows inserted
//! with hand-written sqlx statements (the ceiling), in the same scratch database.
//!
//! Each round runs all four workloads, ceiling and library alternating, on an emptied table so
//! neither side inherits a larger index; the report keeps the median round of each.

use std::time::Instant;

use serde_json::{Value, json};
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use sqlx::types::Json;
use uuid::Uuid;

use super::summary::{Line, Machine, Summary};
use super::{BenchError, Comparison, Measurement, Progress, median};
use outbox_relay::publish::{Message, Publisher};
use outbox_relay::registry::{Registry, SchemaFormat, Unregistered};
use outbox_relay::store;

const TOPIC: &str = "bench.published";

/// What to publish. Defaults: 10,000 single-message transactions from 8 tasks, then 1,000
/// transactions of 100 messages, ~1 KiB payloads, 3 rounds.
#[derive(Debug, Clone)]
pub struct PublishBench {
    pub single_messages: u64,
    pub concurrency: u64,
    pub batches: u64,
    pub batch_size: u64,
    pub payload_bytes: usize,
    pub rounds: usize,
    /// Also run both library workloads with the NOTIFY trigger installed (and a listener).
    pub notify_trigger: bool,
    /// Register a JSON Schema for the bench topic first, so the library workloads validate
    /// every payload and stamp `schema_version` (the ceilings still insert unvalidated rows).
    pub schema: bool,
}

impl Default for PublishBench {
    fn default() -> Self {
        PublishBench {
            single_messages: 10_000,
            concurrency: 8,
            batches: 1_000,
            batch_size: 100,
            payload_bytes: 1024,
            rounds: 3,
            notify_trigger: false,
            schema: false,
        }
    }
}

#[derive(Debug, Clone)]
pub struct PublishBenchReport {
    pub settings: PublishBench,
    /// `publish_in_tx`, one message per transaction, vs a hand-written INSERT.
    pub single: Comparison,
    /// `publish_batch_in_tx`, `batch_size` per transaction, vs a hand-written UNNEST insert.
    pub batch: Comparison,
    /// With `notify_trigger`: the library workloads with the trigger (ours) next to without it
    /// (ceiling), i.e. what `outbox-relay notify on` costs publishers.
    pub notify: Option<NotifyCost>,
}

impl PublishBenchReport {
    pub fn summary(&self) -> Summary {
        let s = &self.settings;
        let single = format!("publish_in_tx, {} tx × 1", s.single_messages);
        let batch = format!("publish_batch_in_tx, {} tx × {}", s.batches, s.batch_size);
        let mut lines = vec![
            Line::comparison("publish", &single, &self.single),
            Line::comparison("publish", &batch, &self.batch),
        ];
        if let Some(notify) = &self.notify {
            lines.push(Line::comparison(
                "publish",
                format!("{single}, NOTIFY trigger vs none"),
                &notify.single,
            ));
            lines.push(Line::comparison(
                "publish",
                format!("{batch}, NOTIFY trigger vs none"),
                &notify.batch,
            ));
        }
        Summary {
            scenario: "publish",
            parameters: json!({
                "messages": s.single_messages,
                "concurrency": s.concurrency,
                "batches": s.batches,
                "batch_size": s.batch_size,
                "payload_bytes": s.payload_bytes,
                "rounds": s.rounds,
                "notify_trigger": s.notify_trigger,
                "schema": s.schema,
            }),
            machine: Machine::this_one(),
            lines,
            details: json!({}),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct NotifyCost {
    pub single: Comparison,
    pub batch: Comparison,
}

#[derive(Clone, Copy)]
enum Workload {
    SingleLibrary,
    SinglePlain,
    BatchLibrary,
    BatchPlain,
}

impl PublishBench {
    pub async fn run(
        &self,
        pool: &PgPool,
        publisher: Publisher,
        progress: &dyn Progress,
    ) -> Result<PublishBenchReport, BenchError> {
        let payload = payload_of_size(self.payload_bytes);
        if self.schema {
            register_schema(pool, TOPIC).await?;
        }
        let mut plan = vec![
            (Workload::SinglePlain, false),
            (Workload::SingleLibrary, false),
            (Workload::BatchPlain, false),
            (Workload::BatchLibrary, false),
        ];
        // The trigger's cost includes signalling a listener, as in production.
        let listener = if self.notify_trigger {
            plan.extend([
                (Workload::SingleLibrary, true),
                (Workload::BatchLibrary, true),
            ]);
            Some(tokio::spawn(drain_notifications(pool.clone())))
        } else {
            None
        };
        let mut runs: Vec<Vec<Measurement>> = vec![Vec::new(); plan.len()];
        let measured = async {
            for round in 0..self.rounds.max(1) {
                for (slot, &(workload, notify)) in plan.iter().enumerate() {
                    let trigger = if notify {
                        " with the NOTIFY trigger"
                    } else {
                        ""
                    };
                    progress.phase(
                        &format!(
                            "round {}/{}: {}{trigger}",
                            round + 1,
                            self.rounds.max(1),
                            workload.name()
                        ),
                        None,
                    );
                    set_notify_trigger(pool, notify).await?;
                    truncate(pool).await?;
                    let measurement = self.measure(pool, publisher, workload, &payload).await?;
                    tracing::debug!(
                        round,
                        slot,
                        notify,
                        per_second = measurement.per_second(),
                        "bench publish run"
                    );
                    runs[slot].push(measurement);
                }
            }
            set_notify_trigger(pool, false).await?;
            truncate(pool).await
        }
        .await;
        if let Some(listener) = listener {
            listener.abort();
        }
        measured?;
        let mut medians = runs.into_iter().map(median);
        let mut next = || medians.next().expect("one median per planned workload");
        let (single_plain, single_library, batch_plain, batch_library) =
            (next(), next(), next(), next());
        let notify = self.notify_trigger.then(|| NotifyCost {
            single: Comparison {
                ours: next(),
                ceiling: single_library,
            },
            batch: Comparison {
                ours: next(),
                ceiling: batch_library,
            },
        });
        Ok(PublishBenchReport {
            settings: self.clone(),
            single: Comparison {
                ours: single_library,
                ceiling: single_plain,
            },
            batch: Comparison {
                ours: batch_library,
                ceiling: batch_plain,
            },
            notify,
        })
    }

    async fn measure(
        &self,
        pool: &PgPool,
        publisher: Publisher,
        workload: Workload,
        payload: &Value,
    ) -> Result<Measurement, BenchError> {
        let (transactions, per_tx) = match workload {
            Workload::SingleLibrary | Workload::SinglePlain => (self.single_messages, 1),
            Workload::BatchLibrary | Workload::BatchPlain => (self.batches, self.batch_size),
        };
        let tasks = self.concurrency.max(1);
        let started = Instant::now();
        let mut handles = Vec::new();
        for task in 0..tasks {
            // Spread the transactions evenly; the first ones take the remainder.
            let mine = transactions / tasks + u64::from(task < transactions % tasks);
            let pool = pool.clone();
            let payload = payload.clone();
            handles.push(tokio::spawn(async move {
                for _ in 0..mine {
                    transaction(&pool, publisher, workload, &payload, per_tx).await?;
                }
                Ok::<_, BenchError>(())
            }));
        }
        for handle in handles {
            handle.await.map_err(|e| phase_error(workload, e))??;
        }
        Ok(Measurement {
            messages: transactions * per_tx,
            elapsed: started.elapsed(),
        })
    }
}

async fn transaction(
    pool: &PgPool,
    publisher: Publisher,
    workload: Workload,
    payload: &Value,
    per_tx: u64,
) -> Result<(), BenchError> {
    let fail = |e: Box<dyn std::error::Error + Send + Sync>| BenchError::Phase {
        phase: workload.name(),
        source: e,
    };
    let mut tx = pool.begin().await.map_err(|e| fail(e.into()))?;
    match workload {
        Workload::SingleLibrary => {
            let message = Message::new(TOPIC, payload).key("bench-key");
            publisher
                .publish_in_tx(&mut tx, message)
                .await
                .map_err(|e| fail(e.into()))?;
        }
        Workload::BatchLibrary => {
            let messages: Vec<Message> = (0..per_tx)
                .map(|_| Message::new(TOPIC, payload).key("bench-key"))
                .collect();
            publisher
                .publish_batch_in_tx(&mut tx, &messages)
                .await
                .map_err(|e| fail(e.into()))?;
        }
        Workload::SinglePlain => {
            // The ceiling: what a careful application would write by hand.
            sqlx::query(
                "INSERT INTO outbox.messages (id, topic, key, payload, headers) \
                 VALUES ($1, $2, $3, $4, '{}')",
            )
            .bind(Uuid::now_v7())
            .bind(TOPIC)
            .bind("bench-key")
            .bind(Json(payload))
            .execute(&mut *tx)
            .await
            .map_err(|e| fail(e.into()))?;
        }
        Workload::BatchPlain => {
            let ids: Vec<Uuid> = (0..per_tx).map(|_| Uuid::now_v7()).collect();
            let payloads: Vec<Json<&Value>> = (0..per_tx).map(|_| Json(payload)).collect();
            sqlx::query(
                "INSERT INTO outbox.messages (id, topic, key, payload) \
                 SELECT u.id, $1, $2, u.payload FROM UNNEST($3::uuid[], $4::jsonb[]) AS u (id, payload)",
            )
            .bind(TOPIC)
            .bind("bench-key")
            .bind(&ids)
            .bind(&payloads)
            .execute(&mut *tx)
            .await
            .map_err(|e| fail(e.into()))?;
        }
    }
    tx.commit().await.map_err(|e| fail(e.into()))
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::SingleLibrary => "publish_in_tx",
            Workload::SinglePlain => "plain INSERT",
            Workload::BatchLibrary => "publish_batch_in_tx",
            Workload::BatchPlain => "plain UNNEST INSERT",
        }
    }
}

fn phase_error(workload: Workload, error: tokio::task::JoinError) -> BenchError {
    BenchError::Phase {
        phase: workload.name(),
        source: Box::new(error),
    }
}

async fn set_notify_trigger(pool: &PgPool, on: bool) -> Result<(), BenchError> {
    let result = if on {
        store::notify_trigger_install(pool).await
    } else {
        store::notify_trigger_drop(pool).await
    };
    result.map(drop).map_err(|e| BenchError::Phase {
        phase: "notify trigger",
        source: Box::new(e),
    })
}

/// LISTENs like a relay would, and throws the notifications away.
async fn drain_notifications(pool: PgPool) {
    let Ok(mut listener) = PgListener::connect_with(&pool).await else {
        tracing::warn!("bench publish: could not LISTEN; measuring the trigger without a listener");
        return;
    };
    if listener.listen(store::NOTIFY_CHANNEL).await.is_err() {
        return;
    }
    while listener.recv().await.is_ok() {}
}

async fn truncate(pool: &PgPool) -> Result<(), BenchError> {
    // Identity restarts too, so every run writes the same rows into the same empty table.
    sqlx::query("TRUNCATE outbox.messages RESTART IDENTITY CASCADE")
        .execute(pool)
        .await
        .map_err(|e| BenchError::Phase {
            phase: "truncate",
            source: Box::new(e),
        })?;
    Ok(())
}

/// Registers, for `topic`, a schema every [`payload_of_size`] payload matches (version 1 in a
/// scratch database).
pub(crate) async fn register_schema(pool: &PgPool, topic: &str) -> Result<(), BenchError> {
    let schema = json!({
        "type": "object",
        "required": ["order_id", "note"],
        "additionalProperties": false,
        "properties": {
            "order_id": {"type": "integer", "minimum": 1},
            "note": {"type": "string", "maxLength": 16_777_216}
        }
    });
    Registry::new(pool.clone(), Unregistered::Allow)
        .register(topic, schema, SchemaFormat::JsonSchema, None)
        .await
        .map(drop)
        .map_err(|e| BenchError::Phase {
            phase: "schema register",
            source: Box::new(e),
        })
}

/// A JSON object whose compact text is `bytes` long (at least ~40 bytes).
pub(crate) fn payload_of_size(bytes: usize) -> Value {
    let skeleton = json!({"order_id": 123_456_789, "note": ""});
    let base = skeleton.to_string().len();
    json!({"order_id": 123_456_789, "note": "x".repeat(bytes.saturating_sub(base))})
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn payload_has_the_requested_size() {
        assert_eq!(payload_of_size(1024).to_string().len(), 1024);
        assert_eq!(payload_of_size(4096).to_string().len(), 4096);
    }

    #[test]
    fn durations_are_compared_as_time_over_time() {
        let c = Comparison {
            ours: Measurement {
                messages: 100,
                elapsed: Duration::from_millis(110),
            },
            ceiling: Measurement {
                messages: 100,
                elapsed: Duration::from_millis(100),
            },
        };
        assert!((c.overhead() - 1.10).abs() < 1e-9);
        assert!((c.ratio() - 1.0 / 1.10).abs() < 1e-9);
    }
}

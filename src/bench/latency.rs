//! `bench latency`: a steady rate of single-message transactions for a while, forwarded by a
//! real `outbox-relay run` process; a consumer blocked on XREAD notes when each entry arrives.
//! Latency = entry received − `COMMIT` returned to the publisher, both on this process's clock.
//! The first second (`warmup`) publishes at the rate too but is not counted: it measures how
//! the relay leaves idle polling (up to `idle_poll_ms` for the first message), not the steady
//! state. The publishers' COMMIT durations are reported next to it: a message is read only once
//! every transaction older than it has ended, so a slow commit delays the messages after it.
//!
//! Then, with the relay caught up and nothing published, its idle cost: transactions per
//! second in the scratch database and the CPU of its Postgres backends ([`IdleCost`]).
//! The throughput line compares the rate delivered with the rate asked for.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::streams::{StreamReadOptions, StreamReadReply};
use serde_json::json;
use sqlx::PgPool;
use tokio::time::MissedTickBehavior;

use super::pg_activity::{IdleCost, idle_cost};
use super::publish::payload_of_size;
use super::relay_process::{RelayProcess, RelayScratch, phase};
use super::summary::{Line, Machine, Summary};
use super::{BenchError, Comparison, Measurement, Progress};
use outbox_relay::config::Wakeup;
use outbox_relay::publish::{Message, Publisher};
use outbox_relay::store;

const GROUP: &str = "bench-latency";
const STREAM: &str = "latency";
const TOPIC: &str = "bench.latency";

#[derive(Debug, Clone)]
pub struct LatencyBench {
    /// Messages per second, each in its own transaction.
    pub rate: u64,
    pub duration: Duration,
    /// Publishing at the rate before `duration` begins, not counted: the relay leaves its idle
    /// polling, connections and caches fill.
    pub warmup: Duration,
    pub payload_bytes: usize,
    /// Publishing tasks sharing the rate.
    pub publishers: u64,
    pub wakeup: Wakeup,
    /// `idle_poll_ms` for the relay (`None`: its default for the wake-up mode).
    pub idle_poll_ms: Option<u64>,
    /// How long to watch the caught-up relay with nothing published (zero: not at all).
    pub idle: Duration,
    pub relay_exe: PathBuf,
}

#[derive(Debug, Clone)]
pub struct LatencyBenchReport {
    pub settings: LatencyBench,
    /// Messages published, and over how long (the achieved rate).
    pub published: u64,
    pub publish_elapsed: Duration,
    /// Commit → entry latencies, sorted.
    pub latencies: Vec<Duration>,
    /// How long the publishers' COMMITs took, sorted: a message is read only once every
    /// transaction older than it has ended, so a slow commit delays the messages after it.
    pub commit_durations: Vec<Duration>,
    /// What the relay cost Postgres while idle (`None` when not watched).
    pub idle: Option<IdleCost>,
}

impl LatencyBenchReport {
    /// The `q` quantile (0.0..=1.0) of the latencies.
    pub fn quantile(&self, q: f64) -> Duration {
        quantile(&self.latencies, q)
    }

    /// The `q` quantile of the publishers' COMMIT durations.
    pub fn commit_quantile(&self, q: f64) -> Duration {
        quantile(&self.commit_durations, q)
    }

    /// Messages delivered per second next to the rate asked for.
    pub fn rate_comparison(&self) -> Comparison {
        let elapsed = self.publish_elapsed;
        Comparison {
            ours: Measurement {
                messages: self.latencies.len() as u64,
                elapsed,
            },
            ceiling: Measurement {
                messages: (self.settings.rate as f64 * elapsed.as_secs_f64()).round() as u64,
                elapsed,
            },
        }
    }

    pub fn summary(&self) -> Summary {
        let s = &self.settings;
        let ms = |q: f64| self.quantile(q).as_secs_f64() * 1000.0;
        let mut lines = vec![Line::comparison(
            "latency",
            "delivered vs rate asked for",
            &self.rate_comparison(),
        )];
        for (name, q) in [("p50", 0.50), ("p95", 0.95), ("p99", 0.99), ("max", 1.0)] {
            lines.push(Line::figure(
                "latency",
                format!("commit → entry {name}"),
                ms(q),
                "ms",
            ));
        }
        for (name, q) in [("p99", 0.99), ("max", 1.0)] {
            lines.push(Line::figure(
                "latency",
                format!("publisher COMMIT {name}"),
                self.commit_quantile(q).as_secs_f64() * 1000.0,
                "ms",
            ));
        }
        if let Some(idle) = &self.idle {
            lines.push(Line::figure(
                "latency",
                "idle: Postgres transactions/s",
                idle.transactions_per_second,
                "tx/s",
            ));
            lines.push(Line::figure(
                "latency",
                "idle: Postgres backend CPU",
                idle.backend_cpu_per_second * 100.0,
                "% of a core",
            ));
        }
        Summary {
            scenario: "latency",
            parameters: json!({
                "rate": s.rate,
                "seconds": s.duration.as_secs_f64(),
                "warmup_seconds": s.warmup.as_secs_f64(),
                "payload_bytes": s.payload_bytes,
                "publishers": s.publishers,
                "wakeup": s.wakeup.as_str(),
                "idle_poll_ms": s.idle_poll_ms,
                "idle_seconds": s.idle.as_secs_f64(),
            }),
            machine: Machine::this_one(),
            lines,
            details: json!({
                "published": self.published,
                "publish_seconds": self.publish_elapsed.as_secs_f64(),
                "latency_ms": {"p50": ms(0.5), "p95": ms(0.95), "p99": ms(0.99), "max": ms(1.0)},
                "commit_ms": {
                    "p50": self.commit_quantile(0.5).as_secs_f64() * 1000.0,
                    "p99": self.commit_quantile(0.99).as_secs_f64() * 1000.0,
                    "max": self.commit_quantile(1.0).as_secs_f64() * 1000.0,
                },
                "idle": self.idle,
            }),
        }
    }
}

/// The `q` quantile (0.0..=1.0) of `sorted`; zero when it is empty.
fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize]
}

/// When each message's commit returned, and when its entry arrived, by message id; and how
/// long each COMMIT took.
#[derive(Default)]
struct Observations {
    committed: HashMap<String, Instant>,
    received: HashMap<String, Instant>,
    commit_durations: Vec<Duration>,
    /// Messages committed before this were the warm-up.
    measure_from: Option<Instant>,
}

type Shared = Arc<Mutex<Observations>>;

fn lock(observations: &Shared) -> std::sync::MutexGuard<'_, Observations> {
    observations
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl LatencyBench {
    /// Runs in `scratch`: its database, its key prefix, a relay process pointed at both.
    pub async fn run(
        &self,
        scratch: &mut RelayScratch,
        progress: &dyn Progress,
    ) -> Result<LatencyBenchReport, BenchError> {
        let RelayScratch {
            database,
            database_url,
            redis_url,
            redis,
        } = scratch;
        let pool = &database.pool;
        if self.wakeup == Wakeup::Notify {
            store::notify_trigger_install(pool)
                .await
                .map_err(|e| phase("install the NOTIFY trigger", e))?;
        }
        let wakeup = self.wakeup.as_str();
        let idle_poll = self
            .idle_poll_ms
            .map(|ms| format!("idle_poll_ms = {ms}\n"))
            .unwrap_or_default();
        let toml = format!(
            "{}[relay]\nwakeup = \"{wakeup}\"\n{idle_poll}\
             [[groups]]\nname = \"{GROUP}\"\n[[groups.routes]]\ntopics = [\"*\"]\nhandler = \"forward\"\nstream = \"{STREAM}\"\n",
            redis.relay_section()
        );
        progress.phase("starting the relay", None);
        let mut relay = RelayProcess::start(&self.relay_exe, database_url, redis_url, &toml)?;
        relay
            .wait_for_lease(pool, GROUP, Duration::from_secs(15))
            .await?;
        let expected =
            (self.rate as f64 * (self.warmup + self.duration).as_secs_f64()).round() as u64;
        progress.phase("publishing at a steady rate", Some(expected));
        let observations: Shared = Arc::default();
        let stream_key = format!("{}{STREAM}", redis.prefix);
        let consumer = tokio::spawn(consume(
            redis.connection.clone(),
            stream_key,
            observations.clone(),
        ));
        let publishing = self.publish(pool, &observations);
        tokio::pin!(publishing);
        let (all_published, publish_elapsed) = loop {
            tokio::select! {
                result = &mut publishing => break result?,
                () = tokio::time::sleep(Duration::from_millis(100)) => {
                    progress.advance_to(lock(&observations).received.len() as u64);
                }
            }
        };
        let all_received = tokio::time::timeout(Duration::from_secs(30), async {
            while (lock(&observations).received.len() as u64) < all_published {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        consumer.abort();
        let idle = if self.idle.is_zero() || all_received.is_err() {
            None
        } else {
            progress.phase("watching the idle relay", None);
            Some(idle_cost(database.admin(), database.name(), relay.pid(), self.idle).await?)
        };
        relay.stop().await?;
        let (published, latencies, mut commit_durations) = {
            let observations = lock(&observations);
            let measured = |committed: &Instant| {
                observations
                    .measure_from
                    .is_some_and(|from| *committed >= from)
            };
            let published = observations
                .committed
                .values()
                .filter(|c| measured(c))
                .count();
            let latencies: Vec<Duration> = observations
                .received
                .iter()
                .filter_map(|(id, received)| {
                    let committed = observations.committed.get(id)?;
                    measured(committed).then(|| received.saturating_duration_since(*committed))
                })
                .collect();
            (
                published as u64,
                latencies,
                observations.commit_durations.clone(),
            )
        };
        commit_durations.sort_unstable();
        if all_received.is_err() {
            return Err(phase(
                "check",
                format!(
                    "only {} of {all_published} entries arrived within 30 s of the last commit",
                    lock(&observations).received.len()
                ),
            ));
        }
        let mut latencies = latencies;
        latencies.sort_unstable();
        Ok(LatencyBenchReport {
            settings: self.clone(),
            published,
            publish_elapsed,
            latencies,
            commit_durations,
            idle,
        })
    }

    /// `rate` per second for `duration`, spread over `publishers` tasks on fixed ticks.
    async fn publish(
        &self,
        pool: &PgPool,
        observations: &Shared,
    ) -> Result<(u64, Duration), BenchError> {
        let payload = payload_of_size(self.payload_bytes);
        let publishers = self.publishers.max(1);
        let per_task_rate = (self.rate as f64 / publishers as f64).max(0.001);
        let period = Duration::from_secs_f64(1.0 / per_task_rate);
        let per_task = (per_task_rate * (self.warmup + self.duration).as_secs_f64()).round() as u64;
        let started = Instant::now();
        lock(observations).measure_from = Some(started + self.warmup);
        let mut tasks = tokio::task::JoinSet::new();
        for task in 0..publishers {
            let (pool, payload, observations) =
                (pool.clone(), payload.clone(), observations.clone());
            tasks.spawn(async move {
                // Stagger the tasks across one period so the rate is even, not bursty.
                tokio::time::sleep(period.mul_f64(task as f64 / publishers as f64)).await;
                let mut ticks = tokio::time::interval(period);
                ticks.set_missed_tick_behavior(MissedTickBehavior::Burst);
                let publisher = Publisher::default();
                for _ in 0..per_task {
                    ticks.tick().await;
                    let mut tx = pool.begin().await?;
                    let id = publisher
                        .publish_in_tx(&mut tx, Message::new(TOPIC, &payload))
                        .await
                        .map_err(|e| sqlx::Error::Protocol(e.to_string()))?;
                    let committing = Instant::now();
                    tx.commit().await?;
                    let committed = Instant::now();
                    let mut observations = lock(&observations);
                    observations.committed.insert(id.to_string(), committed);
                    observations.commit_durations.push(committed - committing);
                }
                Ok::<_, sqlx::Error>(per_task)
            });
        }
        let mut published = 0;
        while let Some(result) = tasks.join_next().await {
            published += result
                .map_err(|e| phase("publish", e))?
                .map_err(|e| phase("publish", e))?;
        }
        Ok((published, started.elapsed().saturating_sub(self.warmup)))
    }
}

/// XREAD BLOCK from the start of the stream, noting when each message id arrives.
async fn consume(
    mut connection: outbox_relay::sink::RedisConnection,
    stream_key: String,
    observations: Shared,
) {
    let mut last_id = "0-0".to_owned();
    let options = StreamReadOptions::default().block(1000).count(1000);
    loop {
        let reply: Result<StreamReadReply, _> = redis::AsyncCommands::xread_options(
            &mut connection,
            &[&stream_key],
            &[&last_id],
            &options,
        )
        .await;
        let received = Instant::now();
        let Ok(reply) = reply else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let mut observations = lock(&observations);
        for key in reply.keys {
            for entry in key.ids {
                if let Some(id) = entry.get::<String>("id") {
                    observations.received.insert(id, received);
                }
                last_id = entry.id;
            }
        }
    }
}

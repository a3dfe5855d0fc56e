//! `bench scale`: one partitioned group (`[[groups]] partitions = P`) run by 1, 2 and 4 real
//! `outbox-relay run` processes at once, on the same backlog, through each handler asked for:
//!
//! - `forward`: every message appended to a Redis stream (one per topic with `--streams`, so
//!   that a cluster spreads them over its masters);
//! - `webhook`: an `http` route to a local webhook that answers after `--latency-ms`
//!   ([`SlowEndpoint`], the `bench handler` one), returning no outputs.
//!
//! Each run is a fresh group (so it starts at the beginning of the outbox), timed from the
//! first relay's start until every call was answered (webhook) and every partition's cursor
//! is at the end of the backlog. Per run: deliveries per second next to linear scaling (the
//! fewest relays' rate × relays / fewest), the Postgres rows read from `outbox.messages` per
//! delivery, the relays' CPU time, how busy the machine's cores were (all of them: relays,
//! Postgres, Redis and the bench together), how long until every relay held a partition (the
//! relays start together; the first to heartbeat takes every partition until it learns of the
//! others), and how many relays held partitions at the end.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;
use sqlx::PgPool;

use super::backlog::{Backlog, check_none_failed, wait_until_passed};
use super::cpu::{MachineCpu, process_cpu_seconds};
use super::pg_activity::settled_table_counters;
use super::relay_process::{RelayProcess, RelayScratch, phase};
use super::slow_endpoint::{SlowEndpoint, wait_for_calls};
use super::summary::{Line, Machine, Summary};
use super::{BenchError, Comparison, Measurement, Progress};
use outbox_relay::Position;
use outbox_relay::config::DEFAULT_MAX_IN_FLIGHT;

const TOPIC: &str = "bench.scale";

/// What the group's one route does with each message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ScaleHandler {
    /// Append it to a Redis stream.
    Forward,
    /// POST it to a local webhook that takes `latency` to answer.
    Webhook,
}

impl ScaleHandler {
    pub fn name(self) -> &'static str {
        match self {
            ScaleHandler::Forward => "forward",
            ScaleHandler::Webhook => "webhook",
        }
    }
}

#[derive(Debug, Clone)]
pub struct ScaleBench {
    pub messages: u64,
    pub payload_bytes: usize,
    pub batch_size: usize,
    /// The group's `partitions`.
    pub partitions: u32,
    /// Relay process counts, one run each (default 1, 2, 4).
    pub relay_counts: Vec<u32>,
    /// Distinct message keys (messages take them in turn).
    pub keys: u64,
    /// Topics the backlog is spread over, each forwarded to a stream of its own.
    pub streams: u64,
    pub handlers: Vec<ScaleHandler>,
    /// How long the webhook takes to answer.
    pub latency: Duration,
    /// The group's `max_in_flight` (per partition); `None`: the relay's default.
    pub max_in_flight: Option<usize>,
    pub relay_exe: PathBuf,
}

impl ScaleBench {
    /// Webhook calls that can run at once: one per key, at most `max_in_flight` per partition.
    pub fn webhook_concurrency(&self) -> u64 {
        let per_partition = self.max_in_flight.unwrap_or(DEFAULT_MAX_IN_FLIGHT) as u64;
        self.keys
            .min(per_partition * u64::from(self.partitions))
            .max(1)
    }

    /// The webhook's latency bound: `webhook_concurrency / latency` msg/s, whatever the
    /// number of relays (the concurrency is per partition, not per relay).
    pub fn webhook_latency_bound(&self) -> f64 {
        self.webhook_concurrency() as f64 / self.latency.as_secs_f64().max(f64::EPSILON)
    }
}

/// One handler on one number of relays.
#[derive(Debug, Clone, Serialize)]
pub struct ScaleRun {
    pub handler: ScaleHandler,
    pub relays: u32,
    /// From the first relay's start to the end (see the module docs).
    #[serde(skip)]
    pub handled: Measurement,
    /// Rows read from `outbox.messages` during the run.
    pub rows_read: i64,
    /// utime + stime of the relay processes, together.
    pub relay_cpu_seconds: f64,
    /// The share of all the machine's cores that was busy during the run.
    pub machine_busy: Option<f64>,
    /// Relays holding at least one partition's lease at the end of the run.
    pub relays_holding_partitions: u32,
    /// From the first relay's start until every relay held a partition (as many as there are
    /// partitions); `None` when that was not seen before the end.
    #[serde(skip)]
    pub spread_after: Option<Duration>,
    /// Webhook calls made (webhook only): one per message, none failed.
    pub webhook_calls: Option<u64>,
    /// The most webhook calls that ran at once (webhook only).
    pub peak_in_flight: Option<u64>,
}

impl ScaleRun {
    pub fn rows_per_delivery(&self) -> f64 {
        self.rows_read as f64 / self.handled.messages.max(1) as f64
    }

    /// Relay CPU time per 1,000 deliveries, in milliseconds.
    pub fn relay_cpu_ms_per_1000(&self) -> f64 {
        self.relay_cpu_seconds * 1e6 / self.handled.messages.max(1) as f64
    }
}

#[derive(Debug, Clone)]
pub struct ScaleBenchReport {
    pub settings: ScaleBench,
    pub runs: Vec<ScaleRun>,
}

impl ScaleBenchReport {
    /// `run` next to linear scaling from the same handler's run with the fewest relays.
    pub fn comparison(&self, run: &ScaleRun) -> Comparison {
        let base = self
            .runs
            .iter()
            .filter(|r| r.handler == run.handler)
            .min_by_key(|r| r.relays)
            .unwrap_or(run);
        let factor = f64::from(run.relays) / f64::from(base.relays.max(1));
        Comparison {
            ours: run.handled,
            ceiling: Measurement {
                messages: run.handled.messages,
                elapsed: Duration::from_secs_f64(
                    base.handled.elapsed.as_secs_f64() * run.handled.messages as f64
                        / base.handled.messages.max(1) as f64
                        / factor,
                ),
            },
        }
    }

    pub fn summary(&self) -> Summary {
        let s = &self.settings;
        let mut lines = Vec::new();
        for run in &self.runs {
            let what =
                |figure: &str| format!("{}, {} relay(s): {figure}", run.handler.name(), run.relays);
            lines.push(Line::comparison(
                "scale",
                what("deliveries vs linear"),
                &self.comparison(run),
            ));
            lines.push(Line::figure(
                "scale",
                what("rows read per delivery"),
                run.rows_per_delivery(),
                "rows/delivery",
            ));
            lines.push(Line::figure(
                "scale",
                what("relay CPU per 1000 deliveries"),
                run.relay_cpu_ms_per_1000(),
                "ms",
            ));
            if let Some(busy) = run.machine_busy {
                lines.push(Line::figure(
                    "scale",
                    what("machine CPU busy"),
                    busy * 100.0,
                    "%",
                ));
            }
            if let Some(after) = run.spread_after.filter(|_| run.relays > 1) {
                lines.push(Line::figure(
                    "scale",
                    what("every relay holding a partition after"),
                    after.as_secs_f64(),
                    "s",
                ));
            }
            if let Some(peak) = run.peak_in_flight {
                lines.push(Line::figure(
                    "scale",
                    what("peak webhook calls at once"),
                    peak as f64,
                    "calls",
                ));
            }
        }
        Summary {
            scenario: "scale",
            parameters: json!({
                "messages": s.messages,
                "payload_bytes": s.payload_bytes,
                "batch_size": s.batch_size,
                "partitions": s.partitions,
                "relay_counts": s.relay_counts,
                "keys": s.keys,
                "streams": s.streams,
                "handlers": s.handlers,
                "latency_ms": s.latency.as_secs_f64() * 1000.0,
                "max_in_flight": s.max_in_flight,
            }),
            machine: Machine::this_one(),
            lines,
            details: json!({
                "webhook_concurrency": s.webhook_concurrency(),
                "webhook_latency_bound_per_second": s.webhook_latency_bound(),
                "runs": self.runs.iter().map(|r| json!({
                    "handler": r.handler,
                    "relays": r.relays,
                    "deliveries": r.handled.messages,
                    "seconds": r.handled.elapsed.as_secs_f64(),
                    "per_second": r.handled.per_second(),
                    "linear_ratio": self.comparison(r).ratio(),
                    "rows_read": r.rows_read,
                    "rows_per_delivery": r.rows_per_delivery(),
                    "relay_cpu_seconds": r.relay_cpu_seconds,
                    "machine_busy": r.machine_busy,
                    "relays_holding_partitions": r.relays_holding_partitions,
                    "spread_after_seconds": r.spread_after.map(|d| d.as_secs_f64()),
                    "webhook_calls": r.webhook_calls,
                    "peak_in_flight": r.peak_in_flight,
                })).collect::<Vec<_>>(),
            }),
        }
    }
}

impl ScaleBench {
    /// Fills the backlog once, then runs every handler on every relay count.
    pub async fn run(
        &self,
        scratch: &mut RelayScratch,
        progress: &dyn Progress,
    ) -> Result<ScaleBenchReport, BenchError> {
        let backlog = Backlog {
            topic: TOPIC,
            messages: self.messages,
            payload_bytes: self.payload_bytes,
            schema_version: None,
            keys: self.keys,
            fail_once_every: None,
            topics: self.streams.max(1),
        };
        let streams = backlog.topic_names();
        let (_, last) = backlog.fill(&scratch.database.pool, progress).await?;
        let mut runs = Vec::new();
        for &handler in &self.handlers {
            for &relays in &self.relay_counts {
                let run = match handler {
                    ScaleHandler::Forward => {
                        self.run_forward(scratch, relays, &streams, last, progress)
                            .await?
                    }
                    ScaleHandler::Webhook => {
                        self.run_webhook(scratch, relays, last, progress).await?
                    }
                };
                runs.push(run);
            }
        }
        Ok(ScaleBenchReport {
            settings: self.clone(),
            runs,
        })
    }

    async fn run_forward(
        &self,
        scratch: &mut RelayScratch,
        relays: u32,
        streams: &[String],
        last: Position,
        progress: &dyn Progress,
    ) -> Result<ScaleRun, BenchError> {
        let route = "handler = \"forward\"\nstream = \"{topic}\"\n";
        let run = self
            .run_group(
                scratch,
                ScaleHandler::Forward,
                relays,
                route,
                None,
                last,
                progress,
            )
            .await?;
        let appended: u64 = scratch.redis.stream_lengths(streams).await?.iter().sum();
        if appended != self.messages {
            return Err(phase(
                "check",
                format!(
                    "the stream(s) hold {appended} entries after {relays} relay(s), expected {}",
                    self.messages
                ),
            ));
        }
        scratch.redis.delete_streams(streams).await?;
        Ok(run)
    }

    async fn run_webhook(
        &self,
        scratch: &mut RelayScratch,
        relays: u32,
        last: Position,
        progress: &dyn Progress,
    ) -> Result<ScaleRun, BenchError> {
        let endpoint = SlowEndpoint::start(self.latency).await?;
        let route = format!("handler = \"http\"\nurl = \"{}\"\n", endpoint.url());
        let run = self
            .run_group(
                scratch,
                ScaleHandler::Webhook,
                relays,
                &route,
                Some(&endpoint),
                last,
                progress,
            )
            .await;
        let count = endpoint.count();
        let (calls, peak) = (count.calls(), count.peak());
        endpoint.stop();
        Ok(ScaleRun {
            webhook_calls: Some(calls),
            peak_in_flight: Some(peak),
            ..run?
        })
    }

    /// `relays` processes running a fresh group of `partitions` with one route (`route`,
    /// the lines after `topics`), from the first start until the backlog is handled.
    #[allow(clippy::too_many_arguments)]
    async fn run_group(
        &self,
        scratch: &RelayScratch,
        handler: ScaleHandler,
        relays: u32,
        route: &str,
        endpoint: Option<&SlowEndpoint>,
        last: Position,
        progress: &dyn Progress,
    ) -> Result<ScaleRun, BenchError> {
        let pool = &scratch.database.pool;
        let group = format!("scale-{}-{relays}", handler.name());
        // The consumer_groups rows: `<group>/<p>`, or the group's own with one partition.
        let partitions: Vec<String> = match self.partitions {
            0 | 1 => vec![group.clone()],
            n => (0..n).map(|p| format!("{group}/{p}")).collect(),
        };
        let max_in_flight = self
            .max_in_flight
            .map(|n| format!("max_in_flight = {n}\n"))
            .unwrap_or_default();
        let toml = format!(
            "{redis}[relay]\nbatch_size = {batch}\n\
             [[groups]]\nname = \"{group}\"\npartitions = {partitions}\n{max_in_flight}\
             [[groups.routes]]\ntopics = [\"*\"]\n{route}",
            redis = scratch.redis.relay_section(),
            batch = self.batch_size,
            partitions = self.partitions,
        );
        let before = settled_table_counters(pool, "messages").await?;
        progress.phase(
            &format!("{}: {relays} relay(s) handle the backlog", handler.name()),
            Some(self.messages),
        );
        let cpu_before = MachineCpu::now();
        let started = Instant::now();
        let mut processes = Vec::new();
        for _ in 0..relays {
            processes.push(scratch.start_relay(&self.relay_exe, &toml)?);
        }
        let spread = tokio::spawn(watch_spread(
            pool.clone(),
            partitions.clone(),
            relays.min(self.partitions),
            started,
        ));
        let done = self
            .wait_until_handled(pool, &partitions, last, endpoint, &mut processes, progress)
            .await;
        let elapsed = started.elapsed();
        spread.abort();
        let spread_after = spread.await.ok();
        let machine_busy = MachineCpu::now()
            .zip(cpu_before)
            .and_then(|(after, before)| after.busy_since(before));
        let pids: Vec<u32> = processes.iter().filter_map(RelayProcess::pid).collect();
        let relay_cpu_seconds = process_cpu_seconds(&pids);
        let holding = relays_holding(pool, &partitions).await;
        for process in processes {
            process.stop().await?;
        }
        done?;
        let holding = holding?;
        progress.phase("waiting for Postgres' statistics", None);
        let after = settled_table_counters(pool, "messages").await?;
        check_none_failed(pool, &partitions).await?;
        Ok(ScaleRun {
            handler,
            relays,
            handled: Measurement {
                messages: self.messages,
                elapsed,
            },
            rows_read: after.since(before).rows_read,
            relay_cpu_seconds,
            machine_busy,
            relays_holding_partitions: holding,
            spread_after,
            webhook_calls: None,
            peak_in_flight: None,
        })
    }

    /// Until every webhook call was answered (with an endpoint), then every partition's
    /// cursor is at `last`; fails if a relay exits.
    async fn wait_until_handled(
        &self,
        pool: &PgPool,
        partitions: &[String],
        last: Position,
        endpoint: Option<&SlowEndpoint>,
        processes: &mut [RelayProcess],
        progress: &dyn Progress,
    ) -> Result<(), BenchError> {
        let mut check_alive = || processes.iter_mut().try_for_each(RelayProcess::check_alive);
        if let Some(endpoint) = endpoint {
            wait_for_calls(endpoint.count(), self.messages, &mut check_alive, progress).await?;
        }
        wait_until_passed(pool, partitions, last, check_alive, progress).await
    }
}

/// Waits until `relays` distinct relays hold leases of `partitions`; returns how long after
/// `started` that was seen. Looks every 50 ms (a query the relays do not wait for).
async fn watch_spread(
    pool: PgPool,
    partitions: Vec<String>,
    relays: u32,
    started: Instant,
) -> Duration {
    loop {
        if relays_holding(&pool, &partitions)
            .await
            .is_ok_and(|holding| holding >= relays)
        {
            return started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How many distinct relays hold the leases of `partitions` now.
async fn relays_holding(pool: &PgPool, partitions: &[String]) -> Result<u32, BenchError> {
    let holding: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT g.lease_owner) FROM outbox.consumer_groups g \
          WHERE g.name = ANY($1) AND g.lease_owner IS NOT NULL",
    )
    .bind(partitions)
    .fetch_one(pool)
    .await
    .map_err(|e| phase("read the partitions' owners", e))?;
    Ok(u32::try_from(holding).unwrap_or(u32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bench() -> ScaleBench {
        ScaleBench {
            messages: 1_000,
            payload_bytes: 200,
            batch_size: 500,
            partitions: 8,
            relay_counts: vec![1, 2, 4],
            keys: 1_000,
            streams: 1,
            handlers: vec![ScaleHandler::Forward],
            latency: Duration::from_millis(5),
            max_in_flight: Some(16),
            relay_exe: PathBuf::new(),
        }
    }

    fn run(relays: u32, seconds: f64) -> ScaleRun {
        ScaleRun {
            handler: ScaleHandler::Forward,
            relays,
            handled: Measurement {
                messages: 1_000,
                elapsed: Duration::from_secs_f64(seconds),
            },
            rows_read: 1_500,
            relay_cpu_seconds: 0.5,
            machine_busy: Some(0.9),
            relays_holding_partitions: relays,
            spread_after: None,
            webhook_calls: None,
            peak_in_flight: None,
        }
    }

    #[test]
    fn linear_scaling_is_the_fewest_relays_rate_times_the_relay_factor() {
        let report = ScaleBenchReport {
            settings: bench(),
            runs: vec![run(1, 1.0), run(2, 0.8), run(4, 0.4)],
        };
        // 1 relay: 1,000/s; 2 relays at 1,250/s next to 2,000/s; 4 at 2,500/s next to 4,000/s.
        assert!((report.comparison(&report.runs[0]).ratio() - 1.0).abs() < 1e-9);
        assert!((report.comparison(&report.runs[1]).ratio() - 0.625).abs() < 1e-9);
        assert!((report.comparison(&report.runs[2]).ratio() - 0.625).abs() < 1e-9);
        assert!((report.runs[0].rows_per_delivery() - 1.5).abs() < 1e-9);
        assert!((report.runs[0].relay_cpu_ms_per_1000() - 500.0).abs() < 1e-9);
    }

    #[test]
    fn webhook_concurrency_is_per_partition_and_at_most_one_per_key() {
        let mut bench = bench();
        // 8 partitions × 16 calls, 1,000 keys: 128 calls at once, 5 ms each.
        assert_eq!(bench.webhook_concurrency(), 128);
        assert!((bench.webhook_latency_bound() - 25_600.0).abs() < 1e-6);
        bench.keys = 50;
        assert_eq!(bench.webhook_concurrency(), 50);
    }
}

//! `bench retry`: a backlog in which every n-th message (default: 10 %) fails once then
//! succeeds, drained by one group through an `http` route to a local webhook
//! ([`FlakyEndpoint`]), next to the same backlog with no failures drained the same way in the
//! same run (the ceiling). Reports both rates, the extra time per retried message, and the
//! rows the relay wrote to `outbox.deliveries` (inserted + updated + deleted, from
//! `pg_stat_user_tables` after the relay stopped).
//!
//! A run ends when the group's cursor has passed the backlog, the webhook has accepted
//! every message, and no delivery row is left.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::json;
use sqlx::PgPool;

use super::backlog::{Backlog, wait_until_passed};
use super::flaky_endpoint::FlakyEndpoint;
use super::pg_activity::settled_table_counters;
use super::relay_process::{RelayProcess, RelayScratch, phase};
use super::summary::{Line, Machine, Summary};
use super::{BenchError, Comparison, Measurement, Progress};
use outbox_relay::Position;

const TOPIC: &str = "bench.retry";

#[derive(Debug, Clone)]
pub struct RetryBench {
    pub messages: u64,
    pub payload_bytes: usize,
    pub batch_size: usize,
    /// Every n-th message fails once (10: 10 %).
    pub fail_every: u64,
    /// The group's `ordering`: `key`, `strict` or `none`.
    pub ordering: String,
    /// The route's `backoff_initial_ms`: how long a failed message waits for its retry.
    pub backoff_ms: u64,
    /// Distinct message keys in the backlog.
    pub keys: u64,
    pub relay_exe: PathBuf,
}

#[derive(Debug, Clone)]
pub struct RetryBenchReport {
    pub settings: RetryBench,
    /// The backlog with no failures.
    pub plain: Measurement,
    /// The backlog with every n-th message failing once.
    pub failing: Measurement,
    /// Messages the webhook refused once.
    pub retried: u64,
    /// Requests the webhook received during the failing run.
    pub requests: u64,
    /// Rows inserted, updated and deleted in `outbox.deliveries` during the failing run.
    pub delivery_rows_written: i64,
}

impl RetryBenchReport {
    pub fn comparison(&self) -> Comparison {
        Comparison {
            ours: self.failing,
            ceiling: self.plain,
        }
    }

    /// (failing time − plain time) / retried messages, in seconds.
    pub fn extra_seconds_per_retry(&self) -> f64 {
        (self.failing.elapsed.as_secs_f64() - self.plain.elapsed.as_secs_f64())
            / self.retried.max(1) as f64
    }

    /// `outbox.deliveries` rows written per retried message.
    pub fn delivery_rows_per_retry(&self) -> f64 {
        self.delivery_rows_written as f64 / self.retried.max(1) as f64
    }

    pub fn summary(&self) -> Summary {
        let s = &self.settings;
        Summary {
            scenario: "retry",
            parameters: json!({
                "messages": s.messages,
                "payload_bytes": s.payload_bytes,
                "batch_size": s.batch_size,
                "fail_every": s.fail_every,
                "ordering": s.ordering,
                "backoff_ms": s.backoff_ms,
                "keys": s.keys,
            }),
            machine: Machine::this_one(),
            lines: vec![
                Line::comparison(
                    "retry",
                    format!("drain, 1 in {} failing once, vs none failing", s.fail_every),
                    &self.comparison(),
                ),
                Line::figure(
                    "retry",
                    "extra time per retried message",
                    self.extra_seconds_per_retry() * 1000.0,
                    "ms",
                ),
                Line::figure(
                    "retry",
                    "deliveries rows written per retried message",
                    self.delivery_rows_per_retry(),
                    "rows/msg",
                ),
            ],
            details: json!({
                "retried": self.retried,
                "requests": self.requests,
                "delivery_rows_written": self.delivery_rows_written,
                "plain_seconds": self.plain.elapsed.as_secs_f64(),
                "failing_seconds": self.failing.elapsed.as_secs_f64(),
            }),
        }
    }
}

impl RetryBench {
    pub async fn run(
        &self,
        scratch: &mut RelayScratch,
        progress: &dyn Progress,
    ) -> Result<RetryBenchReport, BenchError> {
        let endpoint = FlakyEndpoint::start().await?;
        let result = self.run_both(scratch, &endpoint, progress).await;
        endpoint.stop();
        result
    }

    async fn run_both(
        &self,
        scratch: &mut RelayScratch,
        endpoint: &FlakyEndpoint,
        progress: &dyn Progress,
    ) -> Result<RetryBenchReport, BenchError> {
        let pool = scratch.database.pool.clone();
        let plain = self
            .drain(scratch, endpoint, "retry-plain", None, progress)
            .await?;
        truncate(&pool).await?;
        endpoint.reset();
        let before = settled_table_counters(&pool, "deliveries").await?;
        let failing = self
            .drain(
                scratch,
                endpoint,
                "retry-failing",
                Some(self.fail_every.max(1)),
                progress,
            )
            .await?;
        progress.phase("waiting for Postgres' statistics", None);
        let after = settled_table_counters(&pool, "deliveries").await?;
        let (requests, retried) = endpoint.requests_and_refusals();
        Ok(RetryBenchReport {
            settings: self.clone(),
            plain,
            failing,
            retried,
            requests,
            delivery_rows_written: after.since(before).rows_written,
        })
    }

    /// Fills the backlog, then one relay with `group` drains it to the endpoint.
    async fn drain(
        &self,
        scratch: &mut RelayScratch,
        endpoint: &FlakyEndpoint,
        group: &str,
        fail_once_every: Option<u64>,
        progress: &dyn Progress,
    ) -> Result<Measurement, BenchError> {
        let pool = scratch.database.pool.clone();
        let backlog = Backlog {
            topic: TOPIC,
            messages: self.messages,
            payload_bytes: self.payload_bytes,
            schema_version: None,
            keys: self.keys,
            fail_once_every,
            topics: 1,
        };
        let (_, last) = backlog.fill(&pool, progress).await?;
        let toml = format!(
            "{redis}[relay]\nbatch_size = {batch}\n\
             [[groups]]\nname = \"{group}\"\nordering = \"{ordering}\"\n\
             [[groups.routes]]\ntopics = [\"*\"]\nhandler = \"http\"\nurl = \"{url}\"\n\
             backoff_initial_ms = {backoff}\nbackoff_max_ms = {backoff_max}\n",
            redis = scratch.redis.relay_section(),
            batch = self.batch_size,
            ordering = self.ordering,
            url = endpoint.url(),
            backoff = self.backoff_ms.max(1),
            backoff_max = self.backoff_ms.max(1) * 10,
        );
        let what = match fail_once_every {
            Some(n) => format!("draining, 1 in {n} failing once"),
            None => "draining, none failing".to_owned(),
        };
        progress.phase(&what, Some(self.messages));
        let started = Instant::now();
        let mut relay = scratch.start_relay(&self.relay_exe, &toml)?;
        let done = self
            .wait_until_settled(&pool, group, last, endpoint, &mut relay, progress)
            .await;
        let elapsed = started.elapsed();
        relay.stop().await?;
        done?;
        Ok(Measurement {
            messages: self.messages,
            elapsed,
        })
    }

    /// Cursor past the backlog, every message accepted, no delivery row left.
    async fn wait_until_settled(
        &self,
        pool: &PgPool,
        group: &str,
        last: Position,
        endpoint: &FlakyEndpoint,
        relay: &mut RelayProcess,
        progress: &dyn Progress,
    ) -> Result<(), BenchError> {
        wait_until_passed(
            pool,
            &[group.to_owned()],
            last,
            || relay.check_alive(),
            progress,
        )
        .await?;
        progress.phase(
            "waiting for every message to be accepted",
            Some(self.messages),
        );
        loop {
            progress.advance_to(endpoint.accepted());
            if endpoint.accepted() >= self.messages {
                let (left, dead): (i64, i64) = sqlx::query_as(
                    "SELECT count(*), count(*) FILTER (WHERE d.status = 'dead') \
                       FROM outbox.deliveries d",
                )
                .fetch_one(pool)
                .await
                .map_err(|e| phase("count delivery rows", e))?;
                if dead > 0 {
                    return Err(phase("check", format!("{dead} message(s) went dead")));
                }
                if left == 0 {
                    return Ok(());
                }
            }
            relay.check_alive()?;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

async fn truncate(pool: &PgPool) -> Result<(), BenchError> {
    sqlx::query("TRUNCATE outbox.messages, outbox.deliveries RESTART IDENTITY")
        .execute(pool)
        .await
        .map_err(|e| phase("truncate between runs", e))?;
    Ok(())
}

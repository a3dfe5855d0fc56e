//! `bench handler`: how close the relay comes to the concurrency its handlers allow. A
//! backlog keyed round-robin over `keys` keys is handled twice, by two groups of the same
//! settings, each through a handler that takes `latency` per call and returns no outputs:
//!
//! 1. `http`: a real `outbox-relay run` process with an `http` route to a local webhook
//!    ([`SlowEndpoint`]);
//! 2. `rust`: an in-process [`Relay`] with a custom Rust handler (a `tokio::time::sleep`).
//!
//! The ideal is `min(keys, max_in_flight) / latency` msg/s: calls of one key run one after
//! another (key ordering), and at most `max_in_flight` run at once. Each run is timed from
//! the relay's start until every call was answered and the group's cursor is at the end of
//! the backlog (and, in the details, from its first call, leaving out the relay's startup);
//! it fails if any message failed (a delivery row left), since its figures would then
//! include retries.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::backlog::{Backlog, check_none_failed, slowest_cursor};
use super::relay_process::{RelayScratch, phase};
use super::slow_endpoint::{CallCount, END_POLL, SlowEndpoint, wait_for_calls};
use super::summary::{Line, Machine, Summary};
use super::{BenchError, Comparison, Measurement, Progress};
use outbox_relay::Position;
use outbox_relay::config::{
    DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_IN_FLIGHT, GroupConfig, RedisSettings, RelaySettings,
};
use outbox_relay::handler::{DecodedMessage, Handler, HandlerError, Output};
use outbox_relay::relay::Relay;
use outbox_relay::sink::Sink;
use outbox_relay::store;

const TOPIC: &str = "bench.handler";
const HTTP_GROUP: &str = "bench-handler-http";
const RUST_GROUP: &str = "bench-handler-rust";

/// Defaults: 5,000 messages over 500 keys, 20 ms per call, the group's default max_in_flight.
#[derive(Debug, Clone)]
pub struct HandlerBench {
    pub messages: u64,
    /// Distinct message keys (messages take them in turn).
    pub keys: u64,
    /// How long every handler call takes.
    pub latency: Duration,
    /// The group's `max_in_flight`; `None`: not set (the relay's default).
    pub max_in_flight: Option<usize>,
    pub payload_bytes: usize,
    pub batch_size: usize,
    /// The `outbox-relay` binary to run as the relay.
    pub relay_exe: PathBuf,
}

impl HandlerBench {
    /// The handler calls the group may run at once.
    pub fn effective_max_in_flight(&self) -> usize {
        self.max_in_flight.unwrap_or(DEFAULT_MAX_IN_FLIGHT)
    }

    /// Calls that can run at once: one per key, at most `max_in_flight`.
    pub fn ideal_concurrency(&self) -> u64 {
        self.keys.min(self.effective_max_in_flight() as u64).max(1)
    }

    /// `min(keys, max_in_flight) / latency`, as the time the backlog would take at that rate.
    pub fn ideal(&self) -> Measurement {
        let seconds =
            self.latency.as_secs_f64() * self.messages as f64 / self.ideal_concurrency() as f64;
        Measurement {
            messages: self.messages,
            elapsed: Duration::from_secs_f64(seconds),
        }
    }
}

/// One group handling the backlog.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HandlerRun {
    /// From the relay's start to every call answered and the cursor at the end.
    pub handled: Measurement,
    /// Handler calls made (one per message when none failed).
    pub calls: u64,
    /// The most calls that ran at once.
    pub peak_in_flight: u64,
    /// From the relay's start to its first call (connecting, taking the lease, the first read).
    pub first_call: Option<Duration>,
    /// The relay process's peak resident set (VmHWM), in bytes: the window of read,
    /// uncommitted messages and the calls in flight are bounded (`None` in process, or
    /// without /proc).
    pub relay_peak_rss: Option<u64>,
}

impl HandlerRun {
    /// The same run timed from its first call: without the relay's startup, which is the
    /// same however large the backlog.
    pub fn since_first_call(&self) -> Option<Measurement> {
        let first_call = self.first_call?;
        Some(Measurement {
            messages: self.handled.messages,
            elapsed: self.handled.elapsed.saturating_sub(first_call),
        })
    }

    fn details(&self, ideal: Measurement) -> Value {
        let from_first_call = self.since_first_call();
        json!({
            "messages": self.handled.messages,
            "calls": self.calls,
            "peak_in_flight": self.peak_in_flight,
            "seconds": self.handled.elapsed.as_secs_f64(),
            "per_second": self.handled.per_second(),
            "ratio": self.handled.per_second() / ideal.per_second(),
            "first_call_seconds": self.first_call.map(|d| d.as_secs_f64()),
            "per_second_from_first_call": from_first_call.map(|m| m.per_second()),
            "ratio_from_first_call": from_first_call.map(|m| m.per_second() / ideal.per_second()),
            "relay_peak_rss_bytes": self.relay_peak_rss,
        })
    }
}

#[derive(Debug, Clone)]
pub struct HandlerBenchReport {
    pub settings: HandlerBench,
    /// Phase 1: a relay process with an `http` route.
    pub http: HandlerRun,
    /// Phase 2: an in-process relay with a custom Rust handler.
    pub rust: HandlerRun,
}

impl HandlerBenchReport {
    /// A run next to the ideal rate.
    pub fn comparison(&self, run: &HandlerRun) -> Comparison {
        Comparison {
            ours: run.handled,
            ceiling: self.settings.ideal(),
        }
    }

    pub fn summary(&self) -> Summary {
        let s = &self.settings;
        let ideal = s.ideal();
        Summary {
            scenario: "handler",
            parameters: json!({
                "messages": s.messages,
                "keys": s.keys,
                "latency_ms": s.latency.as_secs_f64() * 1000.0,
                "max_in_flight": s.max_in_flight,
                "payload_bytes": s.payload_bytes,
                "batch_size": s.batch_size,
            }),
            machine: Machine::this_one(),
            lines: vec![
                Line::comparison(
                    "handler",
                    "http route vs ideal",
                    &self.comparison(&self.http),
                ),
                Line::comparison(
                    "handler",
                    "custom Rust handler vs ideal",
                    &self.comparison(&self.rust),
                ),
                Line::figure(
                    "handler",
                    "http route: peak calls at once",
                    self.http.peak_in_flight as f64,
                    "calls",
                ),
                Line::figure(
                    "handler",
                    "custom Rust handler: peak calls at once",
                    self.rust.peak_in_flight as f64,
                    "calls",
                ),
            ],
            details: json!({
                "max_in_flight": s.effective_max_in_flight(),
                "ideal_concurrency": s.ideal_concurrency(),
                "ideal_per_second": ideal.per_second(),
                "http": self.http.details(ideal),
                "rust": self.rust.details(ideal),
            }),
        }
    }
}

impl HandlerBench {
    /// Fills the backlog once, then drains it through the `http` group (a relay process) and
    /// through the Rust group (in this process).
    pub async fn run(
        &self,
        scratch: &mut RelayScratch,
        progress: &dyn Progress,
    ) -> Result<HandlerBenchReport, BenchError> {
        let backlog = Backlog {
            topic: TOPIC,
            messages: self.messages,
            payload_bytes: self.payload_bytes,
            schema_version: None,
            keys: self.keys,
            fail_once_every: None,
            topics: 1,
        };
        let (_, last) = backlog.fill(&scratch.database.pool, progress).await?;
        let endpoint = SlowEndpoint::start(self.latency).await?;
        let http = self.through_http(scratch, &endpoint, last, progress).await;
        endpoint.stop();
        let http = http?;
        let rust = self.through_rust(scratch, last, progress).await?;
        Ok(HandlerBenchReport {
            settings: self.clone(),
            http,
            rust,
        })
    }

    /// Phase 1: `outbox-relay run` with an `http` route to `endpoint`.
    async fn through_http(
        &self,
        scratch: &RelayScratch,
        endpoint: &SlowEndpoint,
        last: Position,
        progress: &dyn Progress,
    ) -> Result<HandlerRun, BenchError> {
        let pool = &scratch.database.pool;
        let max_in_flight = self
            .max_in_flight
            .map(|n| format!("max_in_flight = {n}\n"))
            .unwrap_or_default();
        let toml = format!(
            "{redis}[relay]\nbatch_size = {batch}\n\
             [[groups]]\nname = \"{HTTP_GROUP}\"\n{max_in_flight}\
             [[groups.routes]]\ntopics = [\"*\"]\nhandler = \"http\"\nurl = \"{url}\"\n",
            redis = scratch.redis.relay_section(),
            batch = self.batch_size,
            url = endpoint.url(),
        );
        progress.phase("http route: handling the backlog", Some(self.messages));
        let count = endpoint.count();
        let started = Instant::now();
        let mut relay = scratch.start_relay(&self.relay_exe, &toml)?;
        let done = self
            .wait_until_handled(
                pool,
                HTTP_GROUP,
                last,
                count,
                || relay.check_alive(),
                progress,
            )
            .await;
        let peak_rss = relay.peak_rss_bytes();
        relay.stop().await?;
        let ended = done?;
        check_none_failed(pool, &[HTTP_GROUP.to_owned()]).await?;
        Ok(HandlerRun {
            relay_peak_rss: peak_rss,
            ..self.measured(count, started, ended)
        })
    }

    /// Phase 2: an in-process [`Relay`] whose group calls [`Sleeper`].
    async fn through_rust(
        &self,
        scratch: &RelayScratch,
        last: Position,
        progress: &dyn Progress,
    ) -> Result<HandlerRun, BenchError> {
        // The relay's own connections, as a relay process would have (the bench's pool
        // watches the cursor).
        let relay_pool = store::connect(&scratch.database_url, DEFAULT_MAX_CONNECTIONS).await?;
        let result = self
            .through_rust_on(scratch, &relay_pool, last, progress)
            .await;
        relay_pool.close().await;
        result
    }

    async fn through_rust_on(
        &self,
        scratch: &RelayScratch,
        relay_pool: &PgPool,
        last: Position,
        progress: &dyn Progress,
    ) -> Result<HandlerRun, BenchError> {
        let pool = &scratch.database.pool;
        let redis = RedisSettings {
            response_timeout: RedisSettings::default().response_timeout,
            ..scratch.redis.settings.clone()
        };
        let sink = Sink::connect(&scratch.redis_url, &redis)
            .await
            .map_err(|e| phase("connect the in-process relay to Redis", e))?;
        let settings = RelaySettings {
            batch_size: self.batch_size,
            ..RelaySettings::default()
        };
        let mut group = GroupConfig::new(RUST_GROUP, Vec::new());
        group.max_in_flight = self.effective_max_in_flight();
        let count = Arc::new(CallCount::default());
        let sleeper = Sleeper {
            latency: self.latency,
            count: Arc::clone(&count),
        };
        let relay = Relay::new(relay_pool.clone(), sink, settings, vec![group])
            .handler(RUST_GROUP, &["*"], sleeper)
            .map_err(|e| phase("route the custom handler", e))?;
        progress.phase(
            "custom Rust handler: handling the backlog",
            Some(self.messages),
        );
        let shutdown = CancellationToken::new();
        let started = Instant::now();
        let mut running = tokio::spawn(relay.run(shutdown.clone()));
        let done = self
            .wait_until_handled(
                pool,
                RUST_GROUP,
                last,
                &count,
                || match running.is_finished() {
                    true => Err(phase("relay", "the in-process relay stopped early")),
                    false => Ok(()),
                },
                progress,
            )
            .await;
        shutdown.cancel();
        // The relay's own error, if it has one, says more than "stopped early".
        match tokio::time::timeout(Duration::from_secs(10), &mut running).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(error))) => return Err(phase("the in-process relay", error)),
            Ok(Err(error)) => return Err(phase("the in-process relay", error)),
            Err(_) => {
                running.abort();
                return Err(phase(
                    "the in-process relay",
                    "it did not stop within 10 s of shutdown",
                ));
            }
        }
        let ended = done?;
        check_none_failed(pool, &[RUST_GROUP.to_owned()]).await?;
        Ok(self.measured(&count, started, ended))
    }

    fn measured(&self, count: &CallCount, started: Instant, ended: Instant) -> HandlerRun {
        HandlerRun {
            handled: Measurement {
                messages: self.messages,
                elapsed: ended - started,
            },
            calls: count.calls(),
            peak_in_flight: count.peak(),
            first_call: count.first_began().map(|first| first - started),
            relay_peak_rss: None,
        }
    }

    /// Waits until every message had its call answered, then until `group`'s cursor is at
    /// `last`; returns when that was seen.
    async fn wait_until_handled(
        &self,
        pool: &PgPool,
        group: &str,
        last: Position,
        count: &CallCount,
        mut check_alive: impl FnMut() -> Result<(), BenchError>,
        progress: &dyn Progress,
    ) -> Result<Instant, BenchError> {
        wait_for_calls(count, self.messages, &mut check_alive, progress).await?;
        let groups = [group.to_owned()];
        loop {
            if slowest_cursor(pool, &groups).await? >= last {
                return Ok(Instant::now());
            }
            check_alive()?;
            tokio::time::sleep(END_POLL).await;
        }
    }
}

/// The custom Rust handler: takes `latency` per message, returns no outputs.
struct Sleeper {
    latency: Duration,
    count: Arc<CallCount>,
}

#[async_trait::async_trait]
impl Handler for Sleeper {
    async fn handle(&self, _message: &DecodedMessage) -> Result<Vec<Output>, HandlerError> {
        let _call = self.count.begin();
        tokio::time::sleep(self.latency).await;
        Ok(Vec::new())
    }

    fn has_outputs(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bench(keys: u64, max_in_flight: Option<usize>) -> HandlerBench {
        HandlerBench {
            messages: 5_000,
            keys,
            latency: Duration::from_millis(20),
            max_in_flight,
            payload_bytes: 256,
            batch_size: 500,
            relay_exe: PathBuf::new(),
        }
    }

    #[test]
    fn the_ideal_is_min_of_keys_and_max_in_flight_over_the_latency() {
        // The defaults: 256 calls at once (the group default), 20 ms each.
        let ideal = bench(500, None).ideal().per_second();
        assert!((ideal - 12_800.0).abs() < 1e-6, "{ideal}");
        // Fewer keys than max_in_flight: one call per key at a time.
        let ideal = bench(50, Some(256)).ideal().per_second();
        assert!((ideal - 2_500.0).abs() < 1e-6, "{ideal}");
        let ideal = bench(500, Some(16)).ideal().per_second();
        assert!((ideal - 800.0).abs() < 1e-6, "{ideal}");
    }
}

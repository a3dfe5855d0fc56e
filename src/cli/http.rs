//! `run --http ADDR`: the operator endpoints, served with axum next to the relay until it
//! stops.
//!
//! - `/metrics`: Prometheus text. Counters and histograms come from the relay through the
//!   `metrics` facade; the lag, held-back and xmin gauges are read from Postgres at scrape
//!   time (bounded by [`PROBE_TIMEOUT`]).
//! - `/healthz`: 200 while the process is alive.
//! - `/readyz`: 200 when Postgres and Redis answer within [`PROBE_TIMEOUT`] and every group's
//!   worker holds its lease or stands by healthily; else 503 with one reason a line (while
//!   `run` still waits for a server at startup: what it waits for and the last error).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use outbox_relay::store;
use outbox_relay::telemetry::{self, Health};
use sqlx::Connection;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::startup::{Connected, Progress};

/// How long a readiness check or a scrape-time status query may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// How often histogram samples are folded in when nobody scrapes (they pile up otherwise).
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// What the endpoints read: the relay's connections (once startup made them), its health and
/// the metrics recorder.
#[derive(Clone)]
pub struct Probe {
    pub startup: Progress,
    pub health: Health,
    /// The groups this relay runs (the status query returns every group).
    pub groups: Vec<String>,
    pub metrics: PrometheusHandle,
}

/// Installs the process-wide Prometheus recorder (no listener of its own: `/metrics`
/// renders it) with buckets for the `_seconds` histograms.
pub fn install_recorder() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Suffix("_seconds".to_owned()),
            telemetry::SECONDS_BUCKETS,
        )
        .context("setting the histogram buckets")?
        .install_recorder()
        .context("installing the metrics recorder")?;
    telemetry::describe();
    Ok(handle)
}

/// Binds `addr` (before the relay starts, so a taken port fails the command at once).
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("could not listen on {addr} (--http)"))
}

/// Serves the endpoints until `shutdown` is cancelled; in-flight requests finish first.
pub async fn serve(
    listener: TcpListener,
    probe: Probe,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let addr = listener
        .local_addr()
        .context("reading the --http address")?;
    tokio::spawn(upkeep(probe.metrics.clone(), shutdown.clone()));
    let app = axum::Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(probe);
    tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
        .context("the --http server failed")
}

async fn upkeep(metrics: PrometheusHandle, shutdown: CancellationToken) {
    let mut interval = tokio::time::interval(UPKEEP_INTERVAL);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = interval.tick() => metrics.run_upkeep(),
        }
    }
}

async fn metrics(State(probe): State<Probe>) -> impl IntoResponse {
    probe.refresh_status_gauges().await;
    probe.metrics.run_upkeep();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        probe.metrics.render(),
    )
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(probe): State<Probe>) -> (StatusCode, String) {
    let problems = probe.readiness_problems().await;
    if problems.is_empty() {
        (StatusCode::OK, "ready\n".to_owned())
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, problems.join("\n") + "\n")
    }
}

impl Probe {
    /// Sets the lag, held-back and xmin gauges from Postgres; on failure they keep their last
    /// values and the failure is counted.
    async fn refresh_status_gauges(&self) {
        // Before startup connected there is nothing to read them from.
        let Some(Connected { pool, .. }) = self.startup.connected() else {
            return;
        };
        let statuses = within(store::consumer_groups_status(&pool, None)).await;
        match statuses {
            Ok(statuses) => statuses
                .iter()
                .filter(|status| self.groups.contains(&status.group))
                .for_each(telemetry::group_status),
            Err(error) => telemetry::status_query_failed(&error),
        }
        match within(store::xmin_holder(&pool)).await {
            Ok(holder) => telemetry::xmin_holder(holder.as_ref()),
            Err(error) => telemetry::status_query_failed(&error),
        }
    }

    /// Why the relay is not ready, one reason per item; empty when it is.
    async fn readiness_problems(&self) -> Vec<String> {
        let Some(Connected { pool, sink }) = self.startup.connected() else {
            return self.startup.problems();
        };
        let postgres = async {
            let mut connection = pool.acquire().await?;
            connection.ping().await
        };
        let (postgres, redis) = tokio::join!(within(postgres), within(sink.ping()));
        let mut problems = Vec::new();
        if let Err(error) = postgres {
            problems.push(format!("postgres: {error}"));
        }
        if let Err(error) = redis {
            problems.push(format!("redis: {error}"));
        }
        for (group, health) in self.health.snapshot() {
            if !health.is_ready() {
                problems.push(format!("group {group}: {health}"));
            }
        }
        problems
    }
}

/// `work`, cut off after [`PROBE_TIMEOUT`]; the error as text.
async fn within<T, E: std::fmt::Display>(
    work: impl Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(PROBE_TIMEOUT, work).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err(format!("no answer within {} ms", PROBE_TIMEOUT.as_millis())),
    }
}

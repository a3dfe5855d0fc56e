//! `outbox-relay run`

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use outbox_relay::config::Config;
use outbox_relay::registry::Registry;
use outbox_relay::relay::Relay;
use outbox_relay::telemetry::Health;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio_util::sync::CancellationToken;

use super::startup::{self, Connected, Progress};

/// Runs the relay for every configured consumer group until SIGTERM or SIGINT (waiting first,
/// as long as it takes, for Postgres and Redis to answer: /readyz says 503 meanwhile); then stops
/// reading, lets the work in flight finish within `[relay] shutdown_grace_ms` (abandoning the
/// rest, unmarked, to the next owner), releases the leases and exits 0.
///
/// Example: outbox-relay --config outbox-relay.toml run --http 127.0.0.1:9187
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Groups that do not exist yet start at the current end of the outbox instead of its
    /// beginning (existing groups keep their cursor).
    #[arg(long)]
    from_now: bool,

    /// Serve /metrics (Prometheus), /healthz and /readyz on this address, e.g.
    /// 127.0.0.1:9187 (overrides `[http] listen`).
    #[arg(long, value_name = "ADDR")]
    http: Option<SocketAddr>,
}

/// How long closing the Postgres connections may take once the relay stopped.
const POOL_CLOSE_TIMEOUT: Duration = Duration::from_millis(500);

pub async fn run(config: &Config, args: Args) -> anyhow::Result<()> {
    let redis_url = config.require_redis_url()?;
    let groups = config.require_groups()?.to_vec();
    // Listen for signals before connecting, so a SIGTERM during startup is a clean stop too.
    let shutdown = CancellationToken::new();
    let signals = tokio::spawn(cancel_on_signal(signal_streams()?, shutdown.clone()));
    let http = match args.http.or(config.http.listen) {
        Some(addr) => Some((
            super::http::bind(addr).await?,
            super::http::install_recorder()?,
        )),
        None => None,
    };
    // The endpoints answer from the start: /readyz says what startup still waits for.
    let health = Health::new();
    let startup = Progress::default();
    let server = http.map(|(listener, metrics)| {
        let probe = super::http::Probe {
            startup: startup.clone(),
            health: health.clone(),
            groups: groups.iter().map(|g| g.name.clone()).collect(),
            metrics,
        };
        tokio::spawn(super::http::serve(listener, probe, shutdown.clone()))
    });
    // One pool for every group, the LISTEN connection of wakeup = "notify" and the HTTP
    // endpoints, capped whatever the number of groups (DESIGN §8). Waits for the servers.
    let connected = startup::connect(config, redis_url, &startup, &shutdown).await;
    let Connected { pool, sink } = match connected {
        Ok(Some(connected)) => connected,
        // A signal (Ok(None)) or what only a configuration change fixes.
        stopped_or_refused => {
            shutdown.cancel();
            if let Some(server) = server {
                stop_server(server, config.relay.shutdown_grace).await;
            }
            signals.abort();
            if stopped_or_refused.is_ok() {
                tracing::info!("stopped before connecting");
            }
            return stopped_or_refused.map(drop);
        }
    };
    tracing::info!(groups = groups.len(), "relay starting");
    let registry = Registry::new(pool.clone(), config.registry.unregistered);
    let relay = async {
        let result = Relay::new(pool.clone(), sink, config.relay.clone(), groups)
            .registry(registry)
            .from_now(args.from_now)
            .health(health)
            .run(shutdown.clone())
            .await
            .context("relay stopped");
        // The relay also returns on an error: stop the HTTP server with it either way.
        shutdown.cancel();
        result
    };
    // The HTTP server stops beside the relay, within the same grace.
    let server = async {
        if let Some(server) = server {
            shutdown.cancelled().await;
            stop_server(server, config.relay.shutdown_grace).await;
        }
    };
    let (result, ()) = tokio::join!(relay, server);
    signals.abort();
    if tokio::time::timeout(POOL_CLOSE_TIMEOUT, pool.close())
        .await
        .is_err()
    {
        tracing::warn!("Postgres connections still closing; leaving them");
    }
    tracing::info!("relay stopped");
    result
}

/// Waits for the HTTP server to finish its requests, at most `grace`.
async fn stop_server(server: tokio::task::JoinHandle<anyhow::Result<()>>, grace: Duration) {
    match tokio::time::timeout(grace, server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(error))) => tracing::warn!(error = format!("{error:#}"), "HTTP server failed"),
        Ok(Err(error)) => tracing::warn!(%error, "HTTP server task failed"),
        Err(_) => tracing::warn!("HTTP server still busy after the relay stopped; leaving it"),
    }
}

fn signal_streams() -> anyhow::Result<(Signal, Signal)> {
    let term = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    let int = signal(SignalKind::interrupt()).context("listening for SIGINT")?;
    Ok((term, int))
}

async fn cancel_on_signal((mut term, mut int): (Signal, Signal), shutdown: CancellationToken) {
    tokio::select! {
        _ = term.recv() => tracing::info!(signal = "SIGTERM", "shutting down"),
        _ = int.recv() => tracing::info!(signal = "SIGINT", "shutting down"),
    }
    shutdown.cancel();
}

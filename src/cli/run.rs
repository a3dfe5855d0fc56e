//! `outbox-relay run`

use anyhow::Context;
use outbox_relay::config::Config;
use outbox_relay::registry::Registry;
use outbox_relay::relay::Relay;
use outbox_relay::sink::Sink;
use outbox_relay::store;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// Runs the relay for every configured consumer group until SIGTERM or SIGINT; then finishes
/// the in-flight batch, releases the leases and exits 0.
///
/// Example: outbox-relay --config outbox-relay.toml run
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Groups that do not exist yet start at the current end of the outbox instead of its
    /// beginning (existing groups keep their cursor).
    #[arg(long)]
    from_now: bool,
}

pub async fn run(config: &Config, args: Args) -> anyhow::Result<()> {
    let redis_url = config.require_redis_url()?;
    let groups = config.require_groups()?.to_vec();
    // Listen for signals before connecting, so a SIGTERM during startup is a clean stop too.
    let shutdown = CancellationToken::new();
    let signals = tokio::spawn(cancel_on_signal(signal_streams()?, shutdown.clone()));
    // Two per group (its reads and writes may overlap with a stall check), the LISTEN
    // connection of wakeup = "notify", and one spare.
    let connections = u32::try_from(groups.len())
        .unwrap_or(u32::MAX)
        .saturating_mul(2)
        .saturating_add(2);
    let connect = async {
        let pool = store::connect(&config.database_url, connections).await?;
        let sink = Sink::connect(redis_url, &config.redis).await?;
        anyhow::Ok((pool, sink))
    };
    let (pool, sink) = tokio::select! {
        _ = shutdown.cancelled() => {
            tracing::info!("stopped before connecting");
            return Ok(());
        }
        connected = connect => connected?,
    };

    tracing::info!(groups = groups.len(), "relay starting");
    let registry = Registry::new(pool.clone(), config.registry.unregistered);
    let result = Relay::new(pool.clone(), sink, config.relay.clone(), groups)
        .registry(registry)
        .from_now(args.from_now)
        .run(shutdown)
        .await
        .context("relay stopped");
    signals.abort();
    pool.close().await;
    tracing::info!("relay stopped");
    result
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

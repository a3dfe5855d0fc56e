//! `outbox-relay bench latency`

use std::time::Duration;

use crate::bench::{LatencyBench, LatencyBenchReport, RelayScratch};
use outbox_relay::config::{Config, Wakeup};

use super::{JsonOut, TerminalProgress, conclude, relay_exe};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Messages per second, one per transaction.
    #[arg(long, default_value_t = 2_000)]
    rate: u64,
    /// How long to publish.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// Publish at the rate this long first, not counted (the relay leaves idle polling).
    #[arg(long, default_value_t = 1.0)]
    warmup_seconds: f64,
    /// Publish this many messages in all instead (at --rate: N / rate seconds).
    #[arg(long, conflicts_with = "seconds")]
    messages: Option<u64>,
    /// Publishing tasks sharing the rate.
    #[arg(long, default_value_t = 8)]
    publishers: u64,
    /// Payload size in bytes of JSON text.
    #[arg(long, default_value_t = 1024)]
    payload_bytes: usize,
    /// The relay's wake-up mode (notify installs the trigger in the scratch database).
    #[arg(long, value_enum, default_value_t = WakeupArg::Poll)]
    wakeup: WakeupArg,
    /// The relay's idle_poll_ms (default: its default for the wake-up mode).
    #[arg(long)]
    idle_poll_ms: Option<u64>,
    /// Afterwards, watch the caught-up relay this many seconds with nothing published and
    /// report what it costs Postgres (0: skip).
    #[arg(long, default_value_t = 5.0)]
    idle_seconds: f64,
    #[command(flatten)]
    out: JsonOut,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum WakeupArg {
    Poll,
    Notify,
}

pub async fn run(config: &Config, args: Args) -> anyhow::Result<()> {
    let redis_url = config.require_redis_url()?;
    let rate = args.rate.max(1);
    let duration = match args.messages {
        Some(n) => Duration::from_secs_f64(n.max(1) as f64 / rate as f64),
        None => Duration::from_secs(args.seconds.max(1)),
    };
    let bench = LatencyBench {
        rate,
        duration,
        warmup: Duration::from_secs_f64(args.warmup_seconds.max(0.0)),
        payload_bytes: args.payload_bytes,
        publishers: args.publishers.max(1),
        wakeup: match args.wakeup {
            WakeupArg::Poll => Wakeup::Poll,
            WakeupArg::Notify => Wakeup::Notify,
        },
        idle_poll_ms: args.idle_poll_ms,
        idle: Duration::from_secs_f64(args.idle_seconds.max(0.0)),
        relay_exe: relay_exe()?,
    };
    let connections = u32::try_from(bench.publishers)
        .unwrap_or(u32::MAX)
        .saturating_add(2);
    let mut scratch = RelayScratch::create(
        &config.database_url,
        redis_url,
        &config.redis,
        "latency",
        connections,
    )
    .await?;
    eprintln!(
        "bench latency: scratch database {}, {} msg/s for {:.1} s from {} publishers, wakeup {:?}",
        scratch.database.name(),
        bench.rate,
        bench.duration.as_secs_f64(),
        bench.publishers,
        args.wakeup
    );
    let progress = TerminalProgress::new("latency");
    let report = bench.run(&mut scratch, &progress).await;
    let show = |report: &_| {
        print_report(report);
        report.summary()
    };
    conclude(progress, scratch.remove(), report, show, &args.out).await
}

fn print_report(report: &LatencyBenchReport) {
    let ms = |d: Duration| format!("{:.2} ms", d.as_secs_f64() * 1000.0);
    outln!(
        "published {} messages in {:.1} s ({:.0} msg/s achieved), after {:.1} s of warm-up at the same rate (not counted)",
        report.published,
        report.publish_elapsed.as_secs_f64(),
        report.published as f64 / report.publish_elapsed.as_secs_f64(),
        report.settings.warmup.as_secs_f64(),
    );
    outln!(
        "commit → entry: p50 {} | p95 {} | p99 {} | max {}",
        ms(report.quantile(0.50)),
        ms(report.quantile(0.95)),
        ms(report.quantile(0.99)),
        ms(report.quantile(1.0)),
    );
    outln!(
        "publisher COMMIT took: p99 {} | max {} (a message waits for every older transaction)",
        ms(report.commit_quantile(0.99)),
        ms(report.commit_quantile(1.0)),
    );
    if let Some(idle) = &report.idle {
        outln!(
            "idle for {:.1} s: {:.1} Postgres transactions/s, backend CPU {:.2} % of a core ({} backend(s) of the relay)",
            idle.seconds,
            idle.transactions_per_second,
            idle.backend_cpu_per_second * 100.0,
            idle.backends
        );
    }
}

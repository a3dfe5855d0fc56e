//! `outbox-relay bench handler`

use std::time::Duration;

use crate::bench::{HandlerBench, HandlerBenchReport, HandlerRun, RelayScratch};
use outbox_relay::config::Config;

use super::{JsonOut, TerminalProgress, conclude, relay_exe};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Messages in the backlog (handled twice: through the http route, then the Rust handler).
    #[arg(long, default_value_t = 5_000)]
    messages: u64,
    /// Distinct message keys in the backlog (messages take them in turn).
    #[arg(long, default_value_t = 500)]
    keys: u64,
    /// How long every handler call takes, in milliseconds.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..))]
    latency_ms: u64,
    /// The group's max_in_flight (default: not set, so the relay's default, 256).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=65_536))]
    max_in_flight: Option<u64>,
    /// Payload size in bytes of JSON text.
    #[arg(long, default_value_t = 256)]
    payload_bytes: usize,
    /// The relay's batch_size.
    #[arg(long, default_value_t = 500)]
    batch_size: usize,
    #[command(flatten)]
    out: JsonOut,
}

pub async fn run(config: &Config, args: Args) -> anyhow::Result<()> {
    let redis_url = config.require_redis_url()?;
    let bench = HandlerBench {
        messages: args.messages.max(1),
        keys: args.keys.max(1),
        latency: Duration::from_millis(args.latency_ms),
        max_in_flight: args.max_in_flight.map(|n| n as usize),
        payload_bytes: args.payload_bytes,
        batch_size: args.batch_size.max(1),
        relay_exe: relay_exe()?,
    };
    let mut scratch =
        RelayScratch::create(&config.database_url, redis_url, &config.redis, "handler", 4).await?;
    eprintln!(
        "bench handler: scratch database {}, {} messages of {} B over {} keys, {} ms per call, max_in_flight {}, batch {}",
        scratch.database.name(),
        bench.messages,
        bench.payload_bytes,
        bench.keys,
        args.latency_ms,
        match bench.max_in_flight {
            Some(n) => n.to_string(),
            None => format!("{} (default)", bench.effective_max_in_flight()),
        },
        bench.batch_size,
    );
    let progress = TerminalProgress::new("handler");
    let report = bench.run(&mut scratch, &progress).await;
    let show = |report: &_| {
        print_report(report);
        report.summary()
    };
    conclude(progress, scratch.remove(), report, show, &args.out).await
}

fn print_report(report: &HandlerBenchReport) {
    print_run(report, "http", &report.http);
    print_run(report, "rust", &report.rust);
}

/// `http: 9000 msg/s, ideal 12800 msg/s (min(keys 500, max_in_flight 256) / 20 ms), ratio …`
fn print_run(report: &HandlerBenchReport, name: &str, run: &HandlerRun) {
    let s = &report.settings;
    let comparison = report.comparison(run);
    let startup = match (run.first_call, run.since_first_call()) {
        (Some(first_call), Some(steady)) => format!(
            "; first call after {:.3} s, from it {:.0} msg/s, ratio {:.3}×",
            first_call.as_secs_f64(),
            steady.per_second(),
            steady.per_second() / comparison.ceiling.per_second(),
        ),
        _ => String::new(),
    };
    let rss = run
        .relay_peak_rss
        .map(|bytes| {
            format!(
                "; relay peak RSS {:.1} MiB",
                bytes as f64 / (1024.0 * 1024.0)
            )
        })
        .unwrap_or_default();
    outln!(
        "{name}: {:.0} msg/s, ideal {:.0} msg/s (min(keys {}, max_in_flight {}) / {} ms), ratio {:.3}×, peak {} calls at once; {} calls for {} messages in {:.3} s{startup}{rss}",
        comparison.ours.per_second(),
        comparison.ceiling.per_second(),
        s.keys,
        s.effective_max_in_flight(),
        s.latency.as_millis(),
        comparison.ratio(),
        run.peak_in_flight,
        run.calls,
        run.handled.messages,
        run.handled.elapsed.as_secs_f64(),
    );
}

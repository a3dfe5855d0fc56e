//! `outbox-relay bench retry`

use crate::bench::{RelayScratch, RetryBench, RetryBenchReport};
use outbox_relay::config::Config;

use super::{JsonOut, TerminalProgress, conclude, relay_exe};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Messages in the backlog (drained twice: with and without failures).
    #[arg(long, default_value_t = 20_000)]
    messages: u64,
    /// Payload size in bytes of JSON text.
    #[arg(long, default_value_t = 1024)]
    payload_bytes: usize,
    /// The relay's batch_size.
    #[arg(long, default_value_t = 500)]
    batch_size: usize,
    /// Every n-th message fails once (10: 10 % of messages).
    #[arg(long, default_value_t = 10)]
    fail_every: u64,
    /// The group's ordering under failure: key (the relay's default), strict or none.
    #[arg(long, value_enum, default_value_t = OrderingArg::Key)]
    ordering: OrderingArg,
    /// The route's backoff_initial_ms: how long a failed message waits before its retry.
    #[arg(long, default_value_t = 50)]
    backoff_ms: u64,
    /// Distinct message keys in the backlog.
    #[arg(long, default_value_t = 1_000)]
    keys: u64,
    #[command(flatten)]
    out: JsonOut,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum OrderingArg {
    Key,
    Strict,
    None,
}

pub async fn run(config: &Config, args: Args) -> anyhow::Result<()> {
    let redis_url = config.require_redis_url()?;
    let bench = RetryBench {
        messages: args.messages.max(1),
        payload_bytes: args.payload_bytes,
        batch_size: args.batch_size.max(1),
        fail_every: args.fail_every.max(1),
        ordering: match args.ordering {
            OrderingArg::Key => "key",
            OrderingArg::Strict => "strict",
            OrderingArg::None => "none",
        }
        .to_owned(),
        backoff_ms: args.backoff_ms.max(1),
        keys: args.keys.max(1),
        relay_exe: relay_exe()?,
    };
    let mut scratch =
        RelayScratch::create(&config.database_url, redis_url, &config.redis, "retry", 4).await?;
    eprintln!(
        "bench retry: scratch database {}, {} messages of {} B, 1 in {} failing once, ordering {}, backoff {} ms, {} keys",
        scratch.database.name(),
        bench.messages,
        bench.payload_bytes,
        bench.fail_every,
        bench.ordering,
        bench.backoff_ms,
        bench.keys,
    );
    let progress = TerminalProgress::new("retry");
    let report = bench.run(&mut scratch, &progress).await;
    let show = |report: &_| {
        print_report(report);
        report.summary()
    };
    conclude(progress, scratch.remove(), report, show, &args.out).await
}

fn print_report(report: &RetryBenchReport) {
    outln!("drain with failures vs none {}", report.comparison());
    outln!(
        "retried {} message(s) ({} webhook requests); extra time per retried message {:.3} ms",
        report.retried,
        report.requests,
        report.extra_seconds_per_retry() * 1000.0
    );
    outln!(
        "outbox.deliveries rows written {} ({:.2} per retried message)",
        report.delivery_rows_written,
        report.delivery_rows_per_retry()
    );
}

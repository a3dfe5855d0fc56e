//! `outbox-relay bench scale`

use std::time::Duration;

use crate::bench::{RelayScratch, ScaleBench, ScaleBenchReport, ScaleHandler};
use outbox_relay::config::{Config, MAX_PARTITIONS};

use super::{JsonOut, TerminalProgress, conclude, relay_exe};

/// The handlers `--handlers` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum HandlerArg {
    /// Append every message to a Redis stream.
    Forward,
    /// POST every message to a local webhook that answers after --latency-ms.
    Webhook,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Messages in the backlog (every run handles all of them).
    #[arg(long, default_value_t = 100_000)]
    messages: u64,
    /// The group's partitions (1: not partitioned, one relay at a time runs the group).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=MAX_PARTITIONS as i64))]
    partitions: u32,
    /// Relay process counts, one run each per handler.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    relays: Vec<u32>,
    /// Handlers, one set of runs each.
    #[arg(long, value_delimiter = ',', default_value = "forward,webhook")]
    handlers: Vec<HandlerArg>,
    /// Distinct message keys in the backlog (messages take them in turn).
    #[arg(long, default_value_t = 1_000)]
    keys: u64,
    /// Topics the backlog is spread over, each forwarded to a stream of its own (on a Redis
    /// Cluster, streams spread over the masters).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1024))]
    streams: u64,
    /// How long the webhook takes to answer, in milliseconds.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    latency_ms: u64,
    /// The group's max_in_flight, per partition (default: not set, so the relay's, 256).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=65_536))]
    max_in_flight: Option<u64>,
    /// Payload size in bytes of JSON text.
    #[arg(long, default_value_t = 200)]
    payload_bytes: usize,
    /// The relays' batch_size.
    #[arg(long, default_value_t = 500)]
    batch_size: usize,
    #[command(flatten)]
    out: JsonOut,
}

pub async fn run(config: &Config, args: Args) -> anyhow::Result<()> {
    let redis_url = config.require_redis_url()?;
    let mut relay_counts: Vec<u32> = args.relays.iter().map(|&r| r.clamp(1, 64)).collect();
    relay_counts.sort_unstable();
    relay_counts.dedup();
    let mut handlers = Vec::new();
    for handler in &args.handlers {
        let handler = match handler {
            HandlerArg::Forward => ScaleHandler::Forward,
            HandlerArg::Webhook => ScaleHandler::Webhook,
        };
        if !handlers.contains(&handler) {
            handlers.push(handler);
        }
    }
    let bench = ScaleBench {
        messages: args.messages.max(1),
        payload_bytes: args.payload_bytes,
        batch_size: args.batch_size.max(1),
        partitions: args.partitions,
        relay_counts,
        keys: args.keys.max(1),
        streams: args.streams,
        handlers,
        latency: Duration::from_millis(args.latency_ms),
        max_in_flight: args.max_in_flight.map(|n| n as usize),
        relay_exe: relay_exe()?,
    };
    let mut scratch =
        RelayScratch::create(&config.database_url, redis_url, &config.redis, "scale", 4).await?;
    eprintln!(
        "bench scale: scratch database {}, {} messages of {} B over {} keys and {} stream(s), \
         {} partitions, relays {:?}, handlers {:?}, webhook {} ms, batch {}",
        scratch.database.name(),
        bench.messages,
        bench.payload_bytes,
        bench.keys,
        bench.streams,
        bench.partitions,
        bench.relay_counts,
        bench.handlers.iter().map(|h| h.name()).collect::<Vec<_>>(),
        args.latency_ms,
        bench.batch_size,
    );
    let progress = TerminalProgress::new("scale");
    let report = bench.run(&mut scratch, &progress).await;
    let show = |report: &_| {
        print_report(report);
        report.summary()
    };
    conclude(progress, scratch.remove(), report, show, &args.out).await
}

fn print_report(report: &ScaleBenchReport) {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    for run in &report.runs {
        let comparison = report.comparison(run);
        let busy = run
            .machine_busy
            .map(|busy| format!(", machine {:.0} % busy", busy * 100.0))
            .unwrap_or_default();
        let spread = match run.spread_after {
            Some(after) => format!(
                "every relay held a partition after {:.2} s",
                after.as_secs_f64()
            ),
            None => "not every relay held a partition before the end".to_owned(),
        };
        let peak = run
            .peak_in_flight
            .map(|peak| format!(", peak {peak} calls at once"))
            .unwrap_or_default();
        outln!(
            "{} on {} relay(s): {:.0} msg/s in {:.3} s, {:.3}× linear ({:.0} msg/s); {:.3} rows read per delivery; relays' CPU {:.1} ms per 1000{busy}{peak}; {spread}, {} at the end",
            run.handler.name(),
            run.relays,
            comparison.ours.per_second(),
            comparison.ours.elapsed.as_secs_f64(),
            comparison.ratio(),
            comparison.ceiling.per_second(),
            run.rows_per_delivery(),
            run.relay_cpu_ms_per_1000(),
            run.relays_holding_partitions,
        );
    }
    if report
        .runs
        .iter()
        .any(|run| run.machine_busy.is_some_and(|busy| busy >= 0.9))
    {
        outln!(
            "the machine's {cores} core(s) were ≥ 90 % busy (relays, Postgres, Redis and this bench together): more relays cannot go faster here"
        );
    }
    if report.settings.handlers.contains(&ScaleHandler::Webhook) {
        outln!(
            "webhook latency bound: {:.0} msg/s ({} calls at once: min(keys, partitions × max_in_flight), / {} ms), whatever the number of relays",
            report.settings.webhook_latency_bound(),
            report.settings.webhook_concurrency(),
            report.settings.latency.as_millis(),
        );
    }
}

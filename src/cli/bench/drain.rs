//! `outbox-relay bench drain`

use crate::bench::{DrainBench, DrainBenchReport, Measurement, RelayScratch, Skipped};
use outbox_relay::config::Config;

use super::{JsonOut, TerminalProgress, conclude, relay_exe};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Messages in the backlog.
    #[arg(long, default_value_t = 1_000_000)]
    messages: u64,
    /// Payload size in bytes of JSON text.
    #[arg(long, default_value_t = 1024)]
    payload_bytes: usize,
    /// The relay's batch_size (and that of ceilings (a) and (b)).
    #[arg(long, default_value_t = 500)]
    batch_size: usize,
    /// Register a JSON Schema for the backlog's topic and stamp every row with it, so the relay
    /// validates every payload (run with and without to see what validation costs).
    #[arg(long)]
    schema: bool,
    /// Spread the backlog over this many streams (one topic each). With `[redis] cluster = true`
    /// they land on the cluster's masters by hash slot.
    #[arg(long, default_value_t = 1)]
    streams: u64,
    #[command(flatten)]
    out: JsonOut,
}

pub async fn run(config: &Config, args: Args) -> anyhow::Result<()> {
    let redis_url = config.require_redis_url()?;
    let bench = DrainBench {
        messages: args.messages.max(1),
        payload_bytes: args.payload_bytes,
        batch_size: args.batch_size.max(1),
        schema: args.schema,
        streams: args.streams.max(1),
        relay_exe: relay_exe()?,
    };
    let mut scratch =
        RelayScratch::create(&config.database_url, redis_url, &config.redis, "drain", 4).await?;
    eprintln!(
        "bench drain: scratch database {}, {} messages of {} B, batch {}, schema validation {}, {} stream(s) on {}",
        scratch.database.name(),
        bench.messages,
        bench.payload_bytes,
        bench.batch_size,
        if bench.schema { "on" } else { "off" },
        bench.streams,
        if scratch.redis.cluster {
            "a Redis Cluster"
        } else {
            "one Redis"
        }
    );
    let progress = TerminalProgress::new("drain");
    let report = bench.run(&mut scratch, &progress).await;
    let show = |report: &_| {
        print_report(report);
        report.summary()
    };
    conclude(progress, scratch.remove(), report, show, &args.out).await
}

fn print_report(report: &DrainBenchReport) {
    let lower = report.against_lower_ceiling();
    outln!(
        "backlog filled           {:>9.0} msg/s in {:>7.3} s (not measured against anything)",
        report.fill.per_second(),
        report.fill.elapsed.as_secs_f64()
    );
    outln!(
        "ceiling (a) plain SELECT {:>9.0} msg/s in {:>7.3} s",
        report.read_ceiling.per_second(),
        report.read_ceiling.elapsed.as_secs_f64()
    );
    outln!(
        "ceiling (b) XADD pipes   {:>9.0} msg/s in {:>7.3} s",
        report.append_ceiling.per_second(),
        report.append_ceiling.elapsed.as_secs_f64()
    );
    print_c_tool(
        "ceiling (c) psql COPY    ",
        &report.c_tools.copy,
        "psql \\copy, process wall clock",
    );
    print_c_tool(
        "ceiling (d) redis-bench  ",
        &report.c_tools.xadd,
        "redis-benchmark XADD, 1 client, 500 deep",
    );
    outln!("relay vs lower ceiling   {lower}");
    match report.against_lower_c_tool_ceiling() {
        Some(c_tool) => outln!("relay vs lower C-tool    {c_tool}"),
        None => outln!("relay vs lower C-tool    unavailable: needs both (c) and (d)"),
    }
    match report.relay_peak_rss {
        Some(bytes) => outln!(
            "relay peak RSS           {:.1} MiB",
            bytes as f64 / (1024.0 * 1024.0)
        ),
        None => outln!("relay peak RSS           unknown (no /proc)"),
    }
    let wall = report.relay.elapsed.as_secs_f64();
    match &report.stages {
        Some(stages) => {
            let shares: Vec<String> = stages
                .shares(wall)
                .iter()
                .map(|(stage, share)| format!("{stage} {:.1} %", share * 100.0))
                .collect();
            outln!(
                "where the time went      {} (of {wall:.3} s wall)",
                shares.join(" | ")
            );
        }
        None if report.metrics_scraped => outln!(
            "where the time went      stage breakdown unavailable (the relay's /metrics has no outbox_stage_seconds_total)"
        ),
        None => outln!(
            "where the time went      stage breakdown unavailable (the relay's /metrics did not answer)"
        ),
    }
}

/// A C-tool ceiling's line: its rate, or that it was skipped and why.
fn print_c_tool(label: &str, ceiling: &Result<Measurement, Skipped>, how: &str) {
    match ceiling {
        Ok(m) => outln!(
            "{label}{:>9.0} msg/s in {:>7.3} s ({how})",
            m.per_second(),
            m.elapsed.as_secs_f64()
        ),
        Err(skipped) => outln!("{label}skipped: {skipped}"),
    }
}

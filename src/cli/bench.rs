//! `outbox-relay bench <scenario>`

use std::time::Duration;

use anyhow::Context;
use outbox_relay::Publisher;
use outbox_relay::bench::{DrainBench, LatencyBench, PublishBench, RelayScratch, ScratchDatabase};
use outbox_relay::config::{Config, Wakeup};

#[derive(Debug, clap::Subcommand)]
pub enum Scenario {
    /// publish_in_tx (single-message transactions from concurrent tasks) and
    /// publish_batch_in_tx, each next to the same rows inserted by hand-written sqlx statements.
    ///
    /// Example: outbox-relay bench publish --messages 10000 --concurrency 8 --batches 1000 --batch-size 100
    Publish(PublishArgs),
    /// A backlog forwarded to one stream by one group (a real `outbox-relay run` process),
    /// next to a plain SELECT of the same rows and pipelined XADD of the same entries.
    ///
    /// Example: outbox-relay bench drain --messages 100000
    Drain(DrainArgs),
    /// Commit → stream latency at a steady rate of single-message transactions.
    ///
    /// Example: outbox-relay bench latency --rate 2000 --seconds 30 [--wakeup notify]
    Latency(LatencyArgs),
}

#[derive(Debug, clap::Args)]
pub struct DrainArgs {
    /// Messages in the backlog.
    #[arg(long, default_value_t = 1_000_000)]
    messages: u64,
    /// Payload size in bytes of JSON text.
    #[arg(long, default_value_t = 1024)]
    payload_bytes: usize,
    /// The relay's batch_size (and the ceilings').
    #[arg(long, default_value_t = 500)]
    batch_size: usize,
    /// Register a JSON Schema for the backlog's topic and stamp every row with it, so the relay
    /// validates every payload (run with and without to see what validation costs).
    #[arg(long)]
    schema: bool,
}

#[derive(Debug, clap::Args)]
pub struct LatencyArgs {
    /// Messages per second, one per transaction.
    #[arg(long, default_value_t = 2_000)]
    rate: u64,
    /// How long to publish.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
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
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum WakeupArg {
    Poll,
    Notify,
}

#[derive(Debug, clap::Args)]
pub struct PublishArgs {
    /// Single-message transactions per run.
    #[arg(long, default_value_t = 10_000)]
    messages: u64,
    /// Concurrent tasks (each with its own connection).
    #[arg(long, default_value_t = 8)]
    concurrency: u64,
    /// Batch transactions per run.
    #[arg(long, default_value_t = 1_000)]
    batches: u64,
    /// Messages per batch transaction.
    #[arg(long, default_value_t = 100)]
    batch_size: u64,
    /// Payload size in bytes of JSON text.
    #[arg(long, default_value_t = 1024)]
    payload_bytes: usize,
    /// Rounds of all four workloads; the median round is reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Also run the library workloads with the NOTIFY trigger of `outbox-relay notify on`
    /// installed (and a listener), and report them next to the runs without it.
    #[arg(long)]
    notify_trigger: bool,
    /// Register a JSON Schema for the bench topic first: the library workloads then validate
    /// every payload and stamp schema_version (the ceilings still insert unvalidated rows).
    #[arg(long)]
    schema: bool,
}

pub async fn run(config: &Config, scenario: Scenario) -> anyhow::Result<()> {
    match scenario {
        Scenario::Publish(args) => publish(config, args).await,
        Scenario::Drain(args) => drain(config, args).await,
        Scenario::Latency(args) => latency(config, args).await,
    }
}

async fn publish(config: &Config, args: PublishArgs) -> anyhow::Result<()> {
    let bench = PublishBench {
        single_messages: args.messages,
        concurrency: args.concurrency.max(1),
        batches: args.batches,
        batch_size: args.batch_size.max(1),
        payload_bytes: args.payload_bytes,
        rounds: args.rounds.max(1),
        notify_trigger: args.notify_trigger,
        schema: args.schema,
    };
    let connections = u32::try_from(bench.concurrency)
        .unwrap_or(u32::MAX)
        .saturating_add(2);
    let scratch = ScratchDatabase::create(&config.database_url, connections).await?;
    eprintln!(
        "bench publish: scratch database {}, {} round(s), payload {} B",
        scratch.name(),
        bench.rounds,
        bench.payload_bytes
    );
    let spinner = super::spinner("bench publish: library and hand-written inserts");
    let report = bench
        .run(&scratch.pool, Publisher::new(config.publish))
        .await;
    spinner.finish_and_clear();
    scratch.drop().await;
    let report = report?;
    println!(
        "publish_in_tx        {:>6} tx × 1   from {} tasks: {}",
        bench.single_messages, bench.concurrency, report.single
    );
    println!(
        "publish_batch_in_tx  {:>6} tx × {:<3} from {} tasks: {}",
        bench.batches, bench.batch_size, bench.concurrency, report.batch
    );
    if let Some(notify) = report.notify {
        println!("with the NOTIFY trigger (ceiling: the same calls without it):");
        println!(
            "publish_in_tx        {:>6} tx × 1   from {} tasks: {}",
            bench.single_messages, bench.concurrency, notify.single
        );
        println!(
            "publish_batch_in_tx  {:>6} tx × {:<3} from {} tasks: {}",
            bench.batches, bench.batch_size, bench.concurrency, notify.batch
        );
    }
    Ok(())
}

/// The binary the relay child runs: this one.
fn relay_exe() -> anyhow::Result<std::path::PathBuf> {
    std::env::current_exe().context("finding the outbox-relay binary to run as the relay")
}

async fn drain(config: &Config, args: DrainArgs) -> anyhow::Result<()> {
    let redis_url = config.require_redis_url()?;
    let bench = DrainBench {
        messages: args.messages.max(1),
        payload_bytes: args.payload_bytes,
        batch_size: args.batch_size.max(1),
        schema: args.schema,
        relay_exe: relay_exe()?,
    };
    let mut scratch = RelayScratch::create(&config.database_url, redis_url, "drain", 4).await?;
    eprintln!(
        "bench drain: scratch database {}, {} messages of {} B, batch {}, schema validation {}",
        scratch.database.name(),
        bench.messages,
        bench.payload_bytes,
        bench.batch_size,
        if bench.schema { "on" } else { "off" }
    );
    let spinner = super::spinner("bench drain: filling, ceilings, then the relay");
    let report = bench.run(&mut scratch).await;
    spinner.finish_and_clear();
    scratch.remove().await;
    let report = report?;
    let lower = report.against_lower_ceiling();
    println!(
        "backlog filled           {:>9.0} msg/s in {:>7.3} s (not measured against anything)",
        report.fill.per_second(),
        report.fill.elapsed.as_secs_f64()
    );
    println!(
        "ceiling (a) plain SELECT {:>9.0} msg/s in {:>7.3} s",
        report.read_ceiling.per_second(),
        report.read_ceiling.elapsed.as_secs_f64()
    );
    println!(
        "ceiling (b) XADD pipes   {:>9.0} msg/s in {:>7.3} s",
        report.append_ceiling.per_second(),
        report.append_ceiling.elapsed.as_secs_f64()
    );
    println!("relay vs lower ceiling   {lower}");
    match report.relay_peak_rss {
        Some(bytes) => println!(
            "relay peak RSS           {:.1} MiB",
            bytes as f64 / (1024.0 * 1024.0)
        ),
        None => println!("relay peak RSS           unknown (no /proc)"),
    }
    Ok(())
}

async fn latency(config: &Config, args: LatencyArgs) -> anyhow::Result<()> {
    let redis_url = config.require_redis_url()?;
    let bench = LatencyBench {
        rate: args.rate.max(1),
        duration: Duration::from_secs(args.seconds.max(1)),
        payload_bytes: args.payload_bytes,
        publishers: args.publishers.max(1),
        wakeup: match args.wakeup {
            WakeupArg::Poll => Wakeup::Poll,
            WakeupArg::Notify => Wakeup::Notify,
        },
        idle_poll_ms: args.idle_poll_ms,
        relay_exe: relay_exe()?,
    };
    let connections = u32::try_from(bench.publishers)
        .unwrap_or(u32::MAX)
        .saturating_add(2);
    let mut scratch =
        RelayScratch::create(&config.database_url, redis_url, "latency", connections).await?;
    eprintln!(
        "bench latency: scratch database {}, {} msg/s for {} s from {} publishers, wakeup {:?}",
        scratch.database.name(),
        bench.rate,
        bench.duration.as_secs(),
        bench.publishers,
        args.wakeup
    );
    let spinner = super::spinner("bench latency: publishing at a steady rate");
    let report = bench.run(&mut scratch).await;
    spinner.finish_and_clear();
    scratch.remove().await;
    let report = report?;
    let ms = |d: Duration| format!("{:.2} ms", d.as_secs_f64() * 1000.0);
    println!(
        "published {} messages in {:.1} s ({:.0} msg/s achieved)",
        report.published,
        report.publish_elapsed.as_secs_f64(),
        report.published as f64 / report.publish_elapsed.as_secs_f64()
    );
    println!(
        "commit → entry: p50 {} | p95 {} | p99 {} | max {}",
        ms(report.quantile(0.50)),
        ms(report.quantile(0.95)),
        ms(report.quantile(0.99)),
        ms(report.quantile(1.0)),
    );
    Ok(())
}

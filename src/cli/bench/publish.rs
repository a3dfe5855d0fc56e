//! `outbox-relay bench publish`

use crate::bench::{Comparison, PublishBench, PublishBenchReport, ScratchDatabase};
use outbox_relay::Publisher;
use outbox_relay::config::Config;

use super::{JsonOut, TerminalProgress, conclude};

#[derive(Debug, clap::Args)]
pub struct Args {
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
    #[command(flatten)]
    out: JsonOut,
}

pub async fn run(config: &Config, args: Args) -> anyhow::Result<()> {
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
    let progress = TerminalProgress::new("publish");
    let report = bench
        .run(&scratch.pool, Publisher::new(config.publish), &progress)
        .await;
    let show = |report: &PublishBenchReport| {
        print_pair(&bench, &report.single, &report.batch);
        if let Some(notify) = &report.notify {
            outln!("with the NOTIFY trigger (ceiling: the same calls without it):");
            print_pair(&bench, &notify.single, &notify.batch);
        }
        report.summary()
    };
    conclude(progress, scratch.drop(), report, show, &args.out).await
}

/// The single-message and the batch comparison, a line each.
fn print_pair(bench: &PublishBench, single: &Comparison, batch: &Comparison) {
    outln!(
        "publish_in_tx        {:>6} tx × 1   from {} tasks: {single}",
        bench.single_messages,
        bench.concurrency
    );
    outln!(
        "publish_batch_in_tx  {:>6} tx × {:<3} from {} tasks: {batch}",
        bench.batches,
        bench.batch_size,
        bench.concurrency
    );
}

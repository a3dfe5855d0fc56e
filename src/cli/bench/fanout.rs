//! `outbox-relay bench fanout`

use crate::bench::{FanoutBench, FanoutBenchReport, Growth, RelayScratch};
use outbox_relay::config::Config;

use super::{JsonOut, TerminalProgress, conclude, relay_exe};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Messages in the backlog (every group forwards all of them: Redis holds one group
    /// count's streams at a time, messages × groups entries).
    #[arg(long, default_value_t = 100_000)]
    messages: u64,
    /// Payload size in bytes of JSON text.
    #[arg(long, default_value_t = 1024)]
    payload_bytes: usize,
    /// The relay's batch_size (and the ceilings').
    #[arg(long, default_value_t = 500)]
    batch_size: usize,
    /// Group counts, one relay run each.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    groups: Vec<u32>,
    #[command(flatten)]
    out: JsonOut,
}

pub async fn run(config: &Config, args: Args) -> anyhow::Result<()> {
    let redis_url = config.require_redis_url()?;
    let mut group_counts: Vec<u32> = args.groups.iter().map(|&g| g.max(1)).collect();
    group_counts.sort_unstable();
    group_counts.dedup();
    let bench = FanoutBench {
        messages: args.messages.max(1),
        payload_bytes: args.payload_bytes,
        batch_size: args.batch_size.max(1),
        group_counts,
        relay_exe: relay_exe()?,
    };
    let mut scratch =
        RelayScratch::create(&config.database_url, redis_url, &config.redis, "fanout", 4).await?;
    eprintln!(
        "bench fanout: scratch database {}, {} messages of {} B, batch {}, groups {:?}",
        scratch.database.name(),
        bench.messages,
        bench.payload_bytes,
        bench.batch_size,
        bench.group_counts
    );
    let progress = TerminalProgress::new("fanout");
    let report = bench.run(&mut scratch, &progress).await;
    let show = |report: &_| {
        print_report(report);
        report.summary()
    };
    conclude(progress, scratch.remove(), report, show, &args.out).await
}

fn print_report(report: &FanoutBenchReport) {
    let n = report.settings.messages;
    for run in &report.runs {
        outln!(
            "{:>2} group(s): deliveries {} | rows read {} = {:.3} per message, {:.3} per delivery",
            run.groups,
            run.comparison(),
            run.rows_read,
            run.rows_per_message(n),
            run.rows_per_delivery(n),
        );
    }
    match report.growth() {
        Some(Growth::Linear) => {
            outln!("read cost grows linearly with groups: each group reads the outbox for itself")
        }
        Some(Growth::Sublinear) => {
            outln!("read cost grows with groups, less than linearly (reads partly shared)")
        }
        Some(Growth::Flat) => {
            outln!("read cost per message stays flat as groups are added (reads shared)")
        }
        None => outln!("read cost growth: needs two group counts"),
    }
}

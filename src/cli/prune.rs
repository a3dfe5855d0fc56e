//! `outbox-relay prune`

use std::time::Duration;

use outbox_relay::Position;
use outbox_relay::config::Config;
use outbox_relay::store::{self, Horizon};

/// Deletes old messages every consumer group has passed and no delivery row references, in
/// small batches (each a short statement of its own, so publishers are never blocked), oldest
/// position first, and prints the counts. Stops at the first message younger than
/// --older-than, and at the slowest group's cursor.
///
/// Example: outbox-relay prune --older-than 7d --dry-run
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only messages written longer ago than this (30m, 12h, 7d).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    older_than: Duration,
    /// Only count what would be deleted.
    #[arg(long)]
    dry_run: bool,
    /// Messages per batch (each batch is one short statement).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(i64).range(1..=100_000))]
    batch_size: i64,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Default, serde::Serialize)]
struct PruneReport {
    dry_run: bool,
    cutoff: chrono::DateTime<chrono::Utc>,
    /// The slowest group: nothing past its cursor is pruned.
    horizon: Option<Horizon>,
    deleted: i64,
    /// In a dry run: what would be deleted.
    deletable: i64,
    /// Old and passed, but kept: a delivery row (retrying, blocked, dead) references them.
    kept_for_deliveries: i64,
    batches: u64,
}

pub async fn run(config: &Config, args: Args) -> anyhow::Result<()> {
    let pool = store::connect(&config.database_url, 1).await?;
    let result = prune(&pool, &args).await;
    pool.close().await;
    let report = result?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print(&report);
    }
    Ok(())
}

async fn prune(pool: &sqlx::PgPool, args: &Args) -> anyhow::Result<PruneReport> {
    let cutoff = chrono::Utc::now() - chrono::Duration::from_std(args.older_than)?;
    let mut report = PruneReport {
        dry_run: args.dry_run,
        cutoff,
        horizon: store::consumer_groups_slowest(pool).await?,
        ..PruneReport::default()
    };
    if report.horizon.is_none() {
        return Ok(report);
    }
    let spinner = super::spinner("pruning");
    let mut after = Position::ZERO;
    loop {
        let batch =
            store::messages_prune_batch(pool, after, cutoff, args.batch_size, args.dry_run).await?;
        report.batches += 1;
        report.deleted += batch.deleted;
        report.deletable += batch.deletable;
        report.kept_for_deliveries += batch.referenced;
        spinner.set_message(format!(
            "{} {} messages in {} batches",
            if args.dry_run { "counted" } else { "deleted" },
            report.deletable,
            report.batches
        ));
        tracing::debug!(
            batch = report.batches,
            deleted = batch.deleted,
            "prune batch"
        );
        match batch.last {
            Some(last) if !batch.done => after = last,
            _ => break,
        }
    }
    spinner.finish_and_clear();
    Ok(report)
}

fn print(report: &PruneReport) {
    let Some(horizon) = &report.horizon else {
        outln!("no consumer groups: no message is known to be delivered, so nothing is pruned");
        return;
    };
    let cutoff = report
        .cutoff
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    if report.dry_run {
        outln!(
            "dry run: {} messages written before {cutoff} would be deleted",
            report.deletable
        );
    } else {
        outln!(
            "deleted {} messages written before {cutoff} in {} batches",
            report.deleted,
            report.batches
        );
    }
    outln!(
        "kept: {} referenced by a retrying, blocked or dead delivery; everything past the slowest group `{}` (cursor {})",
        report.kept_for_deliveries,
        horizon.group,
        horizon.cursor
    );
}

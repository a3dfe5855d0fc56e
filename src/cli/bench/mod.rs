//! `outbox-relay bench <scenario>`: one file per scenario; here the scenario list, the
//! progress drawn on a terminal, and the summary table and `--json` file every scenario ends
//! with.

mod drain;
mod fanout;
mod handler;
mod latency;
mod publish;
mod retry;
mod scale;

use std::path::PathBuf;

use crate::bench::{Progress, Summary};
use anyhow::Context;

#[derive(Debug, clap::Subcommand)]
pub enum Scenario {
    /// publish_in_tx (single-message transactions from concurrent tasks) and
    /// publish_batch_in_tx, each next to the same rows inserted by hand-written sqlx statements.
    ///
    /// Example: outbox-relay bench publish --messages 10000 --concurrency 8 --batches 1000 --batch-size 100
    Publish(publish::Args),
    /// A backlog forwarded to one stream by one group (a real `outbox-relay run` process),
    /// next to four ceilings for the same work: (a) a plain SELECT of the same rows, (b)
    /// pipelined XADD of the same entries, (c) `psql` \copy of the same rows, (d)
    /// `redis-benchmark` XADD of the same entries; with the relay's peak RSS and where its time
    /// went (read / decode / handle / append / cursor).
    ///
    /// (a) and (b) run in this process, batch by batch like the relay. (c) and (d) are the
    /// servers' own C clients: psql copies the rows to /dev/null (timed as the process's wall
    /// clock); redis-benchmark appends the relay's entry for the last row (same fields and
    /// sizes) with 1 client, 500 deep, to a key of the run's own, deleted after; the relay is
    /// also set against the lower of the two. A C tool missing from PATH, failing, or not given
    /// a URL it can take safely (a Redis URL with a password, which redis-benchmark takes only
    /// as an argument; rediss://) is reported as skipped, and the bench goes on.
    ///
    /// Example: outbox-relay bench drain --messages 100000 --json drain.json
    Drain(drain::Args),
    /// Commit → stream latency at a steady rate of single-message transactions, then what
    /// the idle relay costs Postgres (transactions/s and backend CPU).
    ///
    /// Example: outbox-relay bench latency --rate 2000 --seconds 30 [--wakeup notify]
    Latency(latency::Args),
    /// The same backlog forwarded by 1, 4 and 16 groups of one relay: deliveries/s and
    /// Postgres rows read per message delivered.
    ///
    /// Example: outbox-relay bench fanout --messages 100000 --groups 1,4,16
    Fanout(fanout::Args),
    /// A backlog where 10 % of messages fail once (an http route to a local webhook that
    /// answers 503 once), next to the same backlog with no failures: rate, extra time per
    /// retried message, rows written to outbox.deliveries.
    ///
    /// Example: outbox-relay bench retry --messages 20000
    Retry(retry::Args),
    /// A backlog keyed over --keys keys handled through a handler that takes --latency-ms per
    /// call: an http route to a local webhook (a real `outbox-relay run` process), then a
    /// custom Rust handler (an in-process relay). Each rate next to the ideal,
    /// min(keys, max_in_flight) / latency, with the most calls seen running at once.
    ///
    /// Example: outbox-relay bench handler --messages 5000 --keys 500 --latency-ms 20 --max-in-flight 16
    Handler(handler::Args),
    /// One partitioned group ([[groups]] partitions = N) run by 1, 2 and 4 `outbox-relay run`
    /// processes at once, through a forward route and through an http route to a local
    /// webhook that answers after --latency-ms: deliveries/s next to linear scaling from the
    /// fewest relays, Postgres rows read per delivery, the relays' CPU time and how busy the
    /// machine's cores were (what bounds it).
    ///
    /// Example: outbox-relay bench scale --messages 100000 --partitions 8 --relays 1,2,4
    Scale(scale::Args),
}

/// `--json FILE`, common to every scenario.
#[derive(Debug, clap::Args)]
pub struct JsonOut {
    /// Also write the figures (with the parameters and the machine: cores, memory) as JSON
    /// to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

pub async fn run(config: &outbox_relay::config::Config, scenario: Scenario) -> anyhow::Result<()> {
    match scenario {
        Scenario::Publish(args) => publish::run(config, args).await,
        Scenario::Drain(args) => drain::run(config, args).await,
        Scenario::Latency(args) => latency::run(config, args).await,
        Scenario::Fanout(args) => fanout::run(config, args).await,
        Scenario::Retry(args) => retry::run(config, args).await,
        Scenario::Handler(args) => handler::run(config, args).await,
        Scenario::Scale(args) => scale::run(config, args).await,
    }
}

/// The binary the relay child runs: this one.
fn relay_exe() -> anyhow::Result<PathBuf> {
    std::env::current_exe().context("finding the outbox-relay binary to run as the relay")
}

/// After a scenario: clears the progress, removes its scratch database (and keys) with
/// `cleanup` whatever happened, then (on success) prints the report and the summary.
async fn conclude<R>(
    progress: TerminalProgress,
    cleanup: impl std::future::Future<Output = ()>,
    report: Result<R, crate::bench::BenchError>,
    show: impl FnOnce(&R) -> Summary,
    out: &JsonOut,
) -> anyhow::Result<()> {
    progress.finish();
    cleanup.await;
    let report = report?;
    finish(&show(&report), out)
}

/// The summary table on stdout, and the JSON file when asked for.
fn finish(summary: &Summary, out: &JsonOut) -> anyhow::Result<()> {
    outln!();
    outln!("{}", summary_table(summary));
    if let Some(path) = &out.json {
        let text = serde_json::to_string_pretty(summary).context("encoding the figures")?;
        std::fs::write(path, text + "\n")
            .with_context(|| format!("writing the figures to {}", path.display()))?;
        eprintln!("figures written to {}", path.display());
    }
    Ok(())
}

fn summary_table(summary: &Summary) -> comfy_table::Table {
    let mut table = super::table(["scenario", "what", "value", "ceiling", "ratio"]);
    for line in &summary.lines {
        table.add_row([
            line.scenario.to_owned(),
            line.what.clone(),
            format!("{} {}", number(line.value), line.unit),
            line.ceiling
                .map(|c| format!("{} {}", number(c), line.unit))
                .unwrap_or_else(|| "-".to_owned()),
            line.ratio
                .map(|r| format!("{r:.3}"))
                .unwrap_or_else(|| "-".to_owned()),
        ]);
    }
    table
}

/// Whole numbers for large figures, three significant decimals for small ones.
fn number(value: f64) -> String {
    if value.abs() >= 100.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.3}")
    }
}

/// Progress on stderr when it is a terminal: a bar for a phase of known size, a spinner
/// otherwise; nothing at all into pipes and logs.
struct TerminalProgress {
    bar: indicatif::ProgressBar,
    scenario: &'static str,
}

impl TerminalProgress {
    fn new(scenario: &'static str) -> TerminalProgress {
        let bar = super::spinner("starting");
        bar.set_message(format!("bench {scenario}: starting"));
        TerminalProgress { bar, scenario }
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl Progress for TerminalProgress {
    fn phase(&self, name: &str, total: Option<u64>) {
        let style = match total {
            Some(_) => indicatif::ProgressStyle::with_template(
                "{spinner} {msg} {human_pos}/{human_len} [{bar:30}] eta {eta}",
            ),
            None => indicatif::ProgressStyle::with_template("{spinner} {msg} {elapsed}"),
        };
        // Each setter may draw: order them so that no frame shows the new phase's name with
        // the old phase's figures (a spinner's style goes first, a bar's last).
        let message = format!("bench {}: {name}", self.scenario);
        let style = style.map(|style| style.progress_chars("=> "));
        if total.is_none()
            && let Ok(style) = &style
        {
            self.bar.set_style(style.clone());
        }
        self.bar.reset();
        self.bar.set_length(total.unwrap_or(0));
        self.bar.set_message(message);
        if total.is_some()
            && let Ok(style) = style
        {
            self.bar.set_style(style);
        }
    }

    fn advance_to(&self, done: u64) {
        self.bar.set_position(done);
    }
}

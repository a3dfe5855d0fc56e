//! `outbox-relay stuck`

use outbox_relay::config::Config;
use outbox_relay::store::{self, StuckDelivery, StuckFilter};

/// Lists every delivery that did not go through first time (retrying, blocked, dead), in
/// group and position order: what failed, how often, the last error, when the next attempt is
/// due, and for a blocked message the earlier message of its key it waits for. The same rows as
/// `SELECT * FROM outbox.stuck` in psql.
///
/// Example: outbox-relay stuck --group notifications --topic orders.created --limit 20
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only this consumer group.
    #[arg(long)]
    group: Option<String>,
    /// Only this topic (exact).
    #[arg(long)]
    topic: Option<String>,
    /// At most this many rows.
    #[arg(long, default_value_t = 100)]
    limit: u32,
    /// Print JSON (with payloads) instead of a table.
    #[arg(long)]
    json: bool,
}

pub async fn run(config: &Config, args: Args) -> anyhow::Result<()> {
    let pool = store::connect(&config.database_url, 1).await?;
    if let Err(error) = super::require_group(&pool, args.group.as_deref()).await {
        pool.close().await;
        return Err(error);
    }
    let filter = StuckFilter {
        group: args.group,
        topic: args.topic,
        limit: i64::from(args.limit),
    };
    let stuck = store::deliveries_stuck(&pool, &filter).await;
    pool.close().await;
    let stuck = stuck?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&stuck)?);
    } else {
        print_table(&stuck);
    }
    Ok(())
}

fn print_table(stuck: &[StuckDelivery]) {
    if stuck.is_empty() {
        outln!("nothing stuck: no retrying, blocked or dead deliveries match");
        return;
    }
    let now = chrono::Utc::now();
    let mut table = super::table([
        "GROUP",
        "MESSAGE",
        "STATUS",
        "TOPIC",
        "KEY",
        "POSITION",
        "ATTEMPTS",
        "NEXT ATTEMPT",
        "LAST ERROR / WAITS FOR",
    ]);
    for row in stuck {
        let next = match row.next_attempt_at {
            Some(at) if row.status == "retrying" => {
                let secs = (at - now).num_milliseconds() as f64 / 1000.0;
                if secs <= 0.0 {
                    "due".to_owned()
                } else {
                    format!("in {secs:.1}s")
                }
            }
            _ => "-".to_owned(),
        };
        let why = match (&row.blocked_by, &row.last_error) {
            (Some(head), _) => format!("waits for {head}"),
            (None, Some(error)) => super::first_line(error, 60),
            (None, None) => "-".to_owned(),
        };
        table.add_row([
            row.group.clone(),
            row.message_id.to_string(),
            row.status.clone(),
            row.topic.clone(),
            row.key.clone().unwrap_or_else(|| "-".into()),
            row.position.clone(),
            row.attempts.to_string(),
            next,
            why,
        ]);
    }
    outln!("{table}");
    let count = |status: &str| stuck.iter().filter(|r| r.status == status).count();
    outln!(
        "{} stuck: {} retrying, {} blocked, {} dead",
        stuck.len(),
        count("retrying"),
        count("blocked"),
        count("dead")
    );
}

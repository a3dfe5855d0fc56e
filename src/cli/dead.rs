//! `outbox-relay dead list|retry|discard`

use chrono::{DateTime, Utc};
use outbox_relay::config::Config;
use outbox_relay::store::{self, DeadLetter, DeadLetterFilter};
use uuid::Uuid;

/// Dead letters: messages a group gave up on (a permanent error, attempts exhausted, or a
/// payload its schema rejects). They stay in `outbox.deliveries` until retried or discarded.
///
/// Example: outbox-relay dead list --group notifications --since 1h
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// List dead letters (oldest failure first).
    List {
        #[command(flatten)]
        filter: Filter,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Retry the matching dead letters now (attempts kept: one more attempt each).
    Retry {
        #[command(flatten)]
        filter: Filter,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Delete the matching dead letters: the group counts them as handled from then on.
    Discard {
        #[command(flatten)]
        filter: Filter,
        /// Discard every dead letter when no filter is given.
        #[arg(long)]
        all: bool,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// Which dead letters; filters combine with AND.
#[derive(Debug, clap::Args)]
pub struct Filter {
    /// Only this consumer group.
    #[arg(long)]
    group: Option<String>,
    /// Only this topic (exact).
    #[arg(long)]
    topic: Option<String>,
    /// Only those that first failed since this time: RFC 3339 (2026-11-24T03:00:00Z) or a
    /// duration ago (90s, 15m, 2h, 1d).
    #[arg(long, value_parser = super::parse_time_or_ago)]
    since: Option<DateTime<Utc>>,
    /// Only this message.
    #[arg(long)]
    message: Option<Uuid>,
}

impl Filter {
    fn is_empty(&self) -> bool {
        self.group.is_none()
            && self.topic.is_none()
            && self.since.is_none()
            && self.message.is_none()
    }

    fn to_store(&self) -> DeadLetterFilter {
        DeadLetterFilter {
            group: self.group.clone(),
            topic: self.topic.clone(),
            since: self.since,
            message_id: self.message,
        }
    }
}

pub async fn run(config: &Config, command: Command) -> anyhow::Result<()> {
    let pool = store::connect(&config.database_url, 1).await?;
    let group = match &command {
        Command::List { filter, .. }
        | Command::Retry { filter, .. }
        | Command::Discard { filter, .. } => filter.group.as_deref(),
    };
    if let Err(error) = super::require_group(&pool, group).await {
        pool.close().await;
        return Err(error);
    }
    let result = match command {
        Command::List {
            filter,
            limit,
            json,
        } => {
            let letters = store::deliveries_dead_list(&pool, &filter.to_store(), limit).await?;
            print(&letters, json, "dead letters", "no dead letters match");
            Ok(())
        }
        Command::Retry { filter, json } => {
            let letters = store::deliveries_dead_retry(&pool, &filter.to_store()).await?;
            print(
                &letters,
                json,
                "dead → retrying, due now",
                "no dead letters match; nothing changed",
            );
            Ok(())
        }
        Command::Discard { filter, all, json } => {
            if filter.is_empty() && !all {
                Err(super::usage(
                    "refusing to discard every dead letter: give --group, --topic, --since or --message, or --all",
                ))
            } else {
                let letters =
                    store::deliveries_dead_discard(&pool, &filter.to_store(), all).await?;
                print(
                    &letters,
                    json,
                    "discarded",
                    "no dead letters match; nothing changed",
                );
                Ok(())
            }
        }
    };
    pool.close().await;
    result
}

fn print(letters: &[DeadLetter], json: bool, what: &str, none: &str) {
    if json {
        outln!(
            "{}",
            serde_json::to_string_pretty(letters).expect("dead letters serialize")
        );
        return;
    }
    if letters.is_empty() {
        outln!("{none}");
        return;
    }
    let mut table = super::table([
        "GROUP",
        "MESSAGE",
        "TOPIC",
        "KEY",
        "POSITION",
        "ATTEMPTS",
        "FIRST FAILED",
        "LAST ERROR",
    ]);
    for letter in letters {
        table.add_row([
            letter.group.clone(),
            letter.message_id.to_string(),
            letter.topic.clone(),
            letter.key.clone().unwrap_or_else(|| "-".into()),
            letter.position.clone(),
            letter.attempts.to_string(),
            letter
                .first_failed_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            super::first_line(letter.last_error.as_deref().unwrap_or("-"), 80),
        ]);
    }
    outln!("{table}");
    outln!("{}: {}", what, letters.len());
}

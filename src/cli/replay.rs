//! `outbox-relay replay`

use chrono::{DateTime, Utc};
use outbox_relay::Position;
use outbox_relay::config::Config;
use uuid::Uuid;

use super::cursor_move::{self, Target};

/// Moves a group's cursor back so the relay delivers messages again, and says how many.
///
/// Entries sent again are appended to the streams once more (the replay starts a new replay
/// generation, which the duplicate filter keys on), exactly once each even if the relay crashes
/// during the replay. Messages with a retrying, blocked or dead delivery row keep it and are not
/// sent by the replay (retry them with `retry` / `dead retry`). A running relay loses its lease
/// and picks the new cursor up at its next step.
///
/// Example: outbox-relay replay --group notifications --from-time 2h --dry-run
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("from").required(true)
    .args(["from_position", "from_time", "from_message"])))]
pub struct Args {
    /// The consumer group whose cursor moves back.
    #[arg(long)]
    group: String,
    /// Deliver again every message after this position (`<tx_id>:<seq>`, as `status` and
    /// `stuck` print it).
    #[arg(long, value_name = "POSITION")]
    from_position: Option<Position>,
    /// Deliver again every message from the first one written at or after this time: RFC 3339
    /// or a duration ago (30m, 2h).
    #[arg(long, value_name = "TIME", value_parser = super::parse_time_or_ago)]
    from_time: Option<DateTime<Utc>>,
    /// Deliver again this message and every message after it.
    #[arg(long, value_name = "ID")]
    from_message: Option<Uuid>,
    #[command(flatten)]
    confirm: super::Confirm,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub async fn run(config: &Config, args: Args) -> anyhow::Result<()> {
    let dry_run = args.confirm.dry_run("replay moves the cursor back")?;
    let target = match (args.from_position, args.from_time, args.from_message) {
        (Some(position), _, _) => Target::After(position),
        (_, Some(at), _) => Target::Since(at),
        (_, _, Some(id)) => Target::Message(id),
        (None, None, None) => {
            return Err(super::usage(
                "replay needs --from-position, --from-time or --from-message",
            ));
        }
    };
    let report = cursor_move::move_cursor(config, &args.group, target, dry_run, false).await?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        cursor_move::print(&report, "replay");
    }
    Ok(())
}

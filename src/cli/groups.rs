//! `outbox-relay groups list|pause|resume|reset`

use outbox_relay::config::{Config, MAX_PARTITIONS};
use outbox_relay::store::{self, GroupStatus};

use super::cursor_move::{self, Target};
use super::repartition;

/// Consumer groups: list them, pause and resume them, reset their cursor.
///
/// Example: outbox-relay groups pause notifications
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Every group: state, cursor, lag, lease owner, retrying/blocked/dead counts.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Stop delivering for a group: the relay holding it loses its lease at its next step and
    /// no relay takes it until `resume`. Messages wait in the outbox; nothing is lost.
    Pause {
        /// The consumer group.
        group: String,
    },
    /// Let relays take a paused group again (at their next lease attempt).
    Resume {
        /// The consumer group.
        group: String,
    },
    /// Forget a group's progress: move its cursor to the start (deliver everything again) or
    /// to the end (skip the backlog), and delete its retrying, blocked and dead delivery rows.
    ///
    /// Example: outbox-relay groups reset notifications --to-end --dry-run
    Reset {
        /// The consumer group.
        group: String,
        /// Deliver every message in the outbox again.
        #[arg(long, conflicts_with = "to_end")]
        to_start: bool,
        /// Skip every message of every transaction that has ended; deliver only new ones.
        #[arg(long)]
        to_end: bool,
        #[command(flatten)]
        confirm: super::Confirm,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Split a group into another number of key partitions (`[[groups]] partitions`): stop
    /// its relays first. Every new partition starts at the furthest cursor of the old ones;
    /// messages an old partition had not reached, and every retrying, blocked or dead
    /// delivery, become delivery rows of their new partition, so nothing is skipped or sent
    /// twice and each key keeps its order. Then start the relays with the new `partitions`.
    ///
    /// Example: outbox-relay groups repartition webhooks --partitions 16 --dry-run
    Repartition {
        /// The consumer group.
        group: String,
        /// The new number of partitions (1: unpartitioned).
        #[arg(long)]
        partitions: u64,
        #[command(flatten)]
        confirm: super::Confirm,
    },
}

pub async fn run(config: &Config, command: Command) -> anyhow::Result<()> {
    match command {
        Command::List { json } => list(config, json).await,
        Command::Pause { group } => pause(config, &group, true).await,
        Command::Resume { group } => pause(config, &group, false).await,
        Command::Repartition {
            group,
            partitions,
            confirm,
        } => {
            if !(1..=MAX_PARTITIONS).contains(&partitions) {
                return Err(super::usage(format!(
                    "--partitions {partitions} is out of range: between 1 and {MAX_PARTITIONS}"
                )));
            }
            let dry_run = confirm.dry_run("groups repartition rewrites the group's rows")?;
            repartition::repartition(config, &group, partitions as u32, dry_run).await
        }
        Command::Reset {
            group,
            to_start,
            to_end,
            confirm,
            json,
        } => {
            // Checked here rather than by clap, whose message would name --to-start alone.
            let target = match (to_start, to_end) {
                (true, _) => Target::Start,
                (false, true) => Target::End,
                (false, false) => {
                    return Err(super::usage(format!(
                        "groups reset needs where the cursor goes: --to-start (deliver every message again) or --to-end (skip the backlog), and --yes to do it or --dry-run to see what it would do, e.g. `outbox-relay groups reset {group} --to-end --dry-run`"
                    )));
                }
            };
            let dry_run =
                confirm.dry_run("groups reset moves the cursor and deletes retry state")?;
            let report = cursor_move::move_cursor(config, &group, target, dry_run, true).await?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                cursor_move::print(&report, "reset");
            }
            Ok(())
        }
    }
}

async fn list(config: &Config, json: bool) -> anyhow::Result<()> {
    let pool = store::connect(&config.database_url, 1).await?;
    let groups = store::consumer_groups_status(&pool, None).await;
    let members = store::group_members_list(&pool, None).await;
    pool.close().await;
    let (groups, members) = (groups?, members?);
    if json {
        outln!("{}", serde_json::to_string_pretty(&groups)?);
        return Ok(());
    }
    if groups.is_empty() {
        outln!("{}", super::NO_GROUPS_YET);
        return Ok(());
    }
    let mut table = super::table([
        "GROUP",
        "STATE",
        "CURSOR",
        "LAG",
        "LAG AGE",
        "RETRYING",
        "BLOCKED",
        "DEAD",
        "LEASE OWNER",
    ]);
    for group in &groups {
        table.add_row([
            group.name.clone(),
            state(group).to_owned(),
            group.cursor.to_string(),
            lag(group),
            format!("{:.1}s", group.lag_seconds),
            group.retrying.to_string(),
            group.blocked.to_string(),
            group.dead.to_string(),
            group.lease_owner.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    outln!("{table}");
    super::status::print_members(&members);
    Ok(())
}

/// One word for a group's state, as `status` and `groups list` print it.
pub fn state(group: &GroupStatus) -> &'static str {
    if group.cursor_ahead {
        "CURSOR AHEAD (see logs)"
    } else if group.paused {
        "paused"
    } else if group.lease_owner.is_some() {
        "active"
    } else {
        "no relay"
    }
}

/// The LAG column: messages not delivered yet — past the cursor, plus those the group has
/// passed that are retrying or blocked (a group whose cursor caught up while messages retry
/// is not caught up); `~` in front when the count past the cursor is an estimate. The view's
/// `lag_messages` (and `--json`) keep counting only those past the cursor.
pub fn lag(group: &GroupStatus) -> String {
    let undelivered = group.lag_messages + group.retrying + group.blocked;
    if group.lag_estimated {
        format!("~{undelivered}")
    } else {
        undelivered.to_string()
    }
}

async fn pause(config: &Config, group: &str, paused: bool) -> anyhow::Result<()> {
    let pool = store::connect(&config.database_url, 1).await?;
    let change = match store::consumer_groups_pause(&pool, group, paused).await {
        Ok(Some(change)) => Ok(change),
        Ok(None) => Err(super::require_group(&pool, Some(group))
            .await
            .err()
            .unwrap_or_else(|| anyhow::anyhow!("consumer group `{group}` was just deleted"))),
        Err(error) => Err(error.into()),
    };
    pool.close().await;
    let change = change?;
    match (paused, change.was_paused) {
        (true, true) => outln!("group `{group}` was already paused"),
        (true, false) => {
            outln!("group `{group}` paused");
            match change.previous_owners.as_slice() {
                [] => {}
                [owner] => {
                    outln!("the lease was taken from relay `{owner}`; it stops at its next step")
                }
                owners => outln!(
                    "the leases were taken from relays `{}`; they stop at their next step",
                    owners.join("`, `")
                ),
            }
        }
        (false, false) => outln!("group `{group}` was not paused"),
        (false, true) => {
            outln!("group `{group}` resumed; a relay takes it at its next lease attempt")
        }
    }
    Ok(())
}

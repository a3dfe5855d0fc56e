//! `outbox-relay groups list|pause|resume|reset`

use std::collections::HashSet;

use outbox_relay::config::{Config, MAX_PARTITIONS};
use outbox_relay::relay::route::route_for;
use outbox_relay::relay::{OrderingMode, Partition, partition_of};
use outbox_relay::store::{self, GroupStatus, NewSplit};

use super::cursor_move::{self, Target};

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
            repartition(config, &group, partitions as u32, dry_run).await
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
            if let Some(owner) = change.previous_owner {
                outln!("the lease was taken from relay `{owner}`; it stops at its next step");
            }
        }
        (false, false) => outln!("group `{group}` was not paused"),
        (false, true) => {
            outln!("group `{group}` resumed; a relay takes it at its next lease attempt")
        }
    }
    Ok(())
}

/// `groups repartition`: one transaction (see `store::repartition`).
async fn repartition(
    config: &Config,
    group: &str,
    partitions: u32,
    dry_run: bool,
) -> anyhow::Result<()> {
    // The group's routes say which messages it handles at all (a message of a topic it does
    // not route is passed over, not handed to the retry path, which would dead-letter it);
    // blocked rows follow its ordering (`none`: nothing waits; `key` and `strict`: a key's
    // later messages wait behind its earlier ones).
    let Some(configured) = config.groups.iter().find(|g| g.name == group) else {
        return Err(super::usage(format!(
            "the configuration has no [[groups]] named `{group}`: repartition reads its routes and ordering from it (pass the relays' --config)"
        )));
    };
    let ordering = configured.ordering;
    let pool = store::connect(&config.database_url, 1).await?;
    let mut tx = pool.begin().await?;
    let rows = store::consumer_groups_lock_all(&mut tx, group).await?;
    let current: Vec<_> = rows.iter().filter(|r| !r.retired).collect();
    let Some(first) = current.first() else {
        let known = store::consumer_groups_names(&mut *tx).await?;
        return Err(super::unknown_group(group, &known));
    };
    let before = first.partitions as u32;
    if before == partitions {
        outln!("group `{group}` has {partitions} partition(s) already; nothing to do");
        return Ok(());
    }
    // Only a relay that stopped cleanly (SIGTERM) has landed everything it appended: one that
    // died may have appended entries its cursor does not show, which the old partition's
    // watermark would skip but a new partition would send again.
    if let Some(held) = current.iter().find(|r| r.lease_owner.is_some()) {
        let how = if held.leased {
            "holds"
        } else {
            "did not release (it died, or is still stopping)"
        };
        return Err(super::usage(format!(
            "relay {} {how} the lease of `{}`: stop every relay running group `{group}` with SIGTERM; one that died must be started again with `partitions = {before}` and stopped cleanly, so what it appended is committed",
            held.lease_owner.as_deref().unwrap_or("?"),
            held.name
        )));
    }
    let cursor = current.iter().map(|r| r.cursor).max().unwrap_or_default();
    let names: Vec<String> = if partitions == 1 {
        vec![group.to_owned()]
    } else {
        (0..partitions)
            .map(|index| {
                Partition {
                    index,
                    count: partitions,
                }
                .row_name(group)
            })
            .collect()
    };
    let row_of = |id: uuid::Uuid, key: Option<&str>| -> &str {
        &names[partition_of(key, id, partitions) as usize]
    };
    let deliveries = store::deliveries_of_group(&mut tx, group).await?;
    let mut parked: HashSet<&str> = deliveries
        .iter()
        .filter(|(_, _, status)| status != "dead")
        .filter_map(|(_, key, _)| key.as_deref())
        .collect();
    let not_reached = store::messages_not_reached(&mut tx, group, cursor).await?;
    let mut split = NewSplit {
        partitions,
        cursor,
        paused: current.iter().any(|r| r.paused),
        moves: deliveries
            .iter()
            .map(|(id, key, _)| (*id, row_of(*id, key.as_deref())))
            .collect(),
        not_reached: Vec::with_capacity(not_reached.len()),
    };
    let routed = not_reached
        .iter()
        .filter(|(_, _, topic)| route_for(&configured.routes, topic).is_some());
    for (id, key, _) in routed {
        let waits =
            ordering != OrderingMode::None && key.as_deref().is_some_and(|key| !parked.insert(key));
        let status = if waits { "blocked" } else { "retrying" };
        split
            .not_reached
            .push((*id, row_of(*id, key.as_deref()), status));
    }
    store::consumer_groups_repartition(&mut tx, group, &split).await?;
    if dry_run {
        tx.rollback().await?;
    } else {
        tx.commit().await?;
    }
    pool.close().await;
    let blocked = split
        .not_reached
        .iter()
        .filter(|n| n.2 == "blocked")
        .count();
    let verb = if dry_run { "would split" } else { "split" };
    outln!(
        "group `{group}`: {verb} into {partitions} partition(s) (was {before}), every one starting at {cursor}"
    );
    outln!(
        "  {} message(s) not reached by their old partition become delivery rows of their new one ({} due now, {blocked} blocked behind an earlier message of their key)",
        split.not_reached.len(),
        split.not_reached.len() - blocked
    );
    outln!(
        "  {} retrying/blocked/dead delivery row(s) moved to their new partition",
        split.moves.len()
    );
    if !dry_run {
        outln!("  now start the relays of `{group}` with `partitions = {partitions}`");
    }
    Ok(())
}

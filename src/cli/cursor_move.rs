//! Moving a group's cursor on purpose, shared by `replay` (back) and `groups reset` (to the
//! start or the end): one transaction locks the group's row, counts the messages the move
//! passes over (per topic, and how many the group routes), and moves the cursor unless it is a
//! dry run. The move bumps the group's replay generation, so the Redis duplicate filter lets
//! the re-sent entries through once, and takes the lease away, so a running relay picks the
//! new cursor up at its next step.

use chrono::{DateTime, Utc};
use outbox_relay::Position;
use outbox_relay::config::Config;
use outbox_relay::relay::route::route_for;
use outbox_relay::store::{self, TopicCount};
use uuid::Uuid;

/// Where the cursor goes.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    /// Just after this position: every message after it is delivered again.
    After(Position),
    /// Just before this message: it and every message after it are delivered again.
    Message(Uuid),
    /// Just before the first message written at or after this time.
    Since(DateTime<Utc>),
    /// Before every message.
    Start,
    /// Past every message of every ended transaction (skipping the backlog).
    End,
}

/// What a move did (or, in a dry run, would do).
#[derive(Debug, serde::Serialize)]
pub struct MoveReport {
    pub group: String,
    pub dry_run: bool,
    /// The cursor moved from: for a partitioned group, the partition's furthest from `to`.
    pub from: Position,
    pub to: Position,
    /// Whether any cursor moved (false: every one was already at `to`).
    pub moved: bool,
    /// `back` (messages are delivered again) or `forward` (messages are skipped).
    pub direction: &'static str,
    /// Messages the cursor moves over (for a partitioned group, each partition's own between
    /// its cursor and `to`).
    pub messages: i64,
    /// Of those, in topics the group routes (all of them when the config does not know the
    /// group) and without a delivery row that keeps them: delivered again (back) or skipped
    /// (forward).
    pub affected: i64,
    /// Of those, with a retrying, blocked or dead delivery row in the group: they keep it (a
    /// replay), or lose it with the row (a reset).
    pub with_delivery_row: i64,
    /// Of those, in topics the group does not route: passed over again, nothing sent.
    pub unrouted: i64,
    pub by_topic: Vec<TopicCount>,
    /// Delivery rows deleted (a reset), by status.
    pub deliveries_deleted: Vec<(String, i64)>,
    /// The group's replay generation after the move (`None` in a dry run).
    pub replay_generation: Option<i64>,
    /// The relay that held the lease (the move took it away).
    pub previous_owner: Option<String>,
}

/// Moves `group`'s cursor to `target` (or, with `dry_run`, only counts). `forget_deliveries`
/// also deletes the group's delivery rows (a reset).
pub async fn move_cursor(
    config: &Config,
    group: &str,
    target: Target,
    dry_run: bool,
    forget_deliveries: bool,
) -> anyhow::Result<MoveReport> {
    let pool = store::connect(&config.database_url, 1).await?;
    let spinner = super::spinner("counting the messages the cursor moves over");
    let mut tx = pool.begin().await?;
    let Some(locked) = store::consumer_groups_lock(&mut tx, group).await? else {
        let known = store::consumer_groups_names(&mut *tx).await?;
        return Err(super::unknown_group(group, &known));
    };
    let to = resolve(&mut tx, target, locked.cursor()).await?;
    let back_only = matches!(
        target,
        Target::After(_) | Target::Message(_) | Target::Since(_)
    );
    let from = locked.from_for(to);
    if back_only && to > from {
        return Err(super::usage(format!(
            "{to} is past group `{group}`'s cursor {from}: replay moves a cursor back \
             (to skip messages, use `outbox-relay groups reset {group} --to-end`)"
        )));
    }
    let moved = locked.moves_to(to, back_only);
    let by_topic = store::messages_count_between(&mut tx, group, to, back_only).await?;
    let deliveries_deleted = if forget_deliveries {
        store::deliveries_delete_group(&mut tx, group).await?
    } else {
        Vec::new()
    };
    let replay_generation = if dry_run || !moved && !forget_deliveries {
        None
    } else {
        Some(store::consumer_groups_move_cursor(&mut tx, group, to, back_only).await?)
    };
    if dry_run {
        tx.rollback().await?;
    } else {
        tx.commit().await?;
    }
    spinner.finish_and_clear();
    pool.close().await;
    Ok(report(
        config,
        group,
        dry_run,
        (from, to, moved),
        by_topic,
        deliveries_deleted,
        replay_generation,
        locked.lease_owner,
        forget_deliveries,
    ))
}

async fn resolve(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    target: Target,
    cursor: Position,
) -> anyhow::Result<Position> {
    Ok(match target {
        Target::After(position) => position,
        Target::Message(id) => match store::messages_position(tx, id).await? {
            Some(position) => just_before(position),
            None => anyhow::bail!("message {id} is not in the outbox (never published, or pruned)"),
        },
        Target::Since(at) => match store::messages_first_since(tx, at, cursor).await? {
            Some(position) => just_before(position),
            // Nothing written since then that the group has passed: nothing to replay.
            None => cursor,
        },
        Target::Start => Position::ZERO,
        Target::End => store::messages_end_position(tx).await?,
    })
}

/// The cursor that puts `position` first in line: every message of the same transaction
/// before it, and of older transactions, stays passed.
fn just_before(position: Position) -> Position {
    Position::new(position.tx_id, position.seq - 1)
}

#[allow(clippy::too_many_arguments)]
fn report(
    config: &Config,
    group: &str,
    dry_run: bool,
    (from, to, moved): (Position, Position, bool),
    by_topic: Vec<TopicCount>,
    deliveries_deleted: Vec<(String, i64)>,
    replay_generation: Option<i64>,
    previous_owner: Option<String>,
    forget_deliveries: bool,
) -> MoveReport {
    let routes = config
        .groups
        .iter()
        .find(|g| g.name == group)
        .map(|g| g.routes.as_slice());
    let routed = |topic: &str| routes.is_none_or(|routes| route_for(routes, topic).is_some());
    let messages = by_topic.iter().map(|t| t.messages).sum();
    let unrouted = by_topic
        .iter()
        .filter(|t| !routed(&t.topic))
        .map(|t| t.messages)
        .sum();
    let with_delivery_row = by_topic
        .iter()
        .filter(|t| routed(&t.topic))
        .map(|t| t.with_delivery_row)
        .sum();
    let kept = if forget_deliveries {
        0
    } else {
        with_delivery_row
    };
    MoveReport {
        group: group.to_owned(),
        dry_run,
        from,
        to,
        moved,
        direction: if to < from { "back" } else { "forward" },
        messages,
        affected: messages - unrouted - kept,
        with_delivery_row,
        unrouted,
        by_topic,
        deliveries_deleted,
        replay_generation,
        previous_owner,
    }
}

/// The human summary of a move.
pub fn print(report: &MoveReport, verb: &str) {
    let prefix = if report.dry_run { "dry run: " } else { "" };
    let would = if report.dry_run {
        "would be"
    } else {
        "will be"
    };
    outln!(
        "{prefix}{verb} group `{}`: cursor {} → {}",
        report.group,
        report.from,
        report.to
    );
    if !report.moved && report.deliveries_deleted.is_empty() {
        outln!("nothing to do: the cursor is already there");
        return;
    }
    let fate = if report.direction == "back" {
        "delivered again"
    } else {
        "skipped (never delivered to this group)"
    };
    let lie = if report.messages == 1 {
        "message lies"
    } else {
        "messages lie"
    };
    outln!(
        "{} {lie} between: {} {would} {fate}",
        report.messages,
        report.affected
    );
    if report.with_delivery_row > 0 && report.deliveries_deleted.is_empty() {
        let keep = if report.with_delivery_row == 1 {
            "keeps its"
        } else {
            "keep their"
        };
        outln!(
            "{} {keep} retrying/blocked/dead delivery row (see `outbox-relay stuck --group {}`)",
            report.with_delivery_row,
            report.group
        );
    }
    if report.unrouted > 0 {
        let are_in = if report.unrouted == 1 {
            "is in a topic"
        } else {
            "are in topics"
        };
        outln!(
            "{} {are_in} the group does not route (passed over, nothing sent)",
            report.unrouted
        );
    }
    for (status, count) in &report.deliveries_deleted {
        let rows = if *count == 1 { "row" } else { "rows" };
        let verb = if report.dry_run {
            "would be deleted"
        } else {
            "deleted"
        };
        outln!("{count} {status} delivery {rows} {verb}");
    }
    if report.dry_run {
        outln!("nothing changed (run again with --yes to do it)");
        return;
    }
    if let Some(generation) = report.replay_generation {
        outln!("replay generation is now {generation}");
    }
    if let Some(owner) = &report.previous_owner {
        outln!(
            "the lease was taken from relay `{owner}`; it picks the new cursor up at its next step"
        );
    }
}

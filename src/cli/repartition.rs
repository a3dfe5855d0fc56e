//! `outbox-relay groups repartition`: split a group into another number of key partitions,
//! in one transaction (see `store::repartition`), once nothing of the old split is running or
//! left half done.
//!
//! ```text
//!   lock the group's rows ──▶ refuse while a relay holds a lease or heartbeats as a member
//!        ──▶ refuse while Redis holds appends an old row did not commit (watermark past its
//!            cursor, a late entry whose delivery row was not updated)
//!        ──▶ new rows at the furthest cursor, deliveries moved, messages not reached queued
//! ```
//!
//! Why the Redis check: a row's duplicate filter is its own watermark (and late-entry tokens)
//! in Redis. Entries appended by a relay that stopped before committing them are skipped by
//! the same row's next owner, but a message that moves to another row would be sent again.

use std::collections::{HashMap, HashSet};

use outbox_relay::config::Config;
use outbox_relay::relay::route::route_for;
use outbox_relay::relay::{OrderingMode, Partition, partition_of};
use outbox_relay::sink::Sink;
use outbox_relay::store::{self, GroupDelivery, GroupRow, NewSplit};
use sqlx::{Postgres, Transaction};

/// `groups repartition`: one transaction (see `store::repartition`).
pub async fn repartition(
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
    refuse_while_running(&mut tx, group, &current, before).await?;
    let deliveries = store::deliveries_of_group(&mut tx, group).await?;
    let sink = Sink::connect(config.require_redis_url()?, &config.redis).await?;
    refuse_uncommitted_appends(&sink, group, &current, &deliveries, before).await?;
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
    let mut parked: HashSet<&str> = deliveries
        .iter()
        .filter(|delivery| delivery.status != "dead")
        .filter_map(|delivery| delivery.key.as_deref())
        .collect();
    let not_reached = store::messages_not_reached(&mut tx, group, cursor).await?;
    let mut split = NewSplit {
        partitions,
        cursor,
        paused: current.iter().any(|r| r.paused),
        moves: deliveries
            .iter()
            .map(|delivery| (delivery.id, row_of(delivery.id, delivery.key.as_deref())))
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

/// Refuses while a relay runs the group: one holds (or died holding) a lease — only a relay
/// that stopped cleanly released it after landing what it appended — or heartbeats as a
/// member (a relay standing by with the old split would take a row of the new one).
async fn refuse_while_running(
    tx: &mut Transaction<'_, Postgres>,
    group: &str,
    current: &[&GroupRow],
    before: u32,
) -> anyhow::Result<()> {
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
    let members = store::group_members_list(&mut **tx, Some(group)).await?;
    let alive: Vec<&str> = members
        .iter()
        .filter(|m| m.alive)
        .map(|m| m.member.as_str())
        .collect();
    if !alive.is_empty() {
        return Err(super::usage(format!(
            "relay(s) {} are running group `{group}` (their heartbeats in outbox.group_members have not run out): stop every relay running it with SIGTERM first",
            alive.join(", ")
        )));
    }
    Ok(())
}

/// Refuses while Redis holds appends of an old row that its cursor or delivery rows do not
/// show: a watermark past the row's cursor (a batch appended, its cursor update lost), or a
/// late-entry token of a delivery row still waiting to be appended (a retry or dead-letter
/// copy appended, its row not updated).
async fn refuse_uncommitted_appends(
    sink: &Sink,
    group: &str,
    current: &[&GroupRow],
    deliveries: &[GroupDelivery],
    before: u32,
) -> anyhow::Result<()> {
    let restart = format!(
        "start the relays of `{group}` with `partitions = {before}` again and let them catch up (the row's next owner finds those entries in Redis, skips them and commits them), stop them with SIGTERM, then repartition"
    );
    let mut pending: HashMap<&str, HashSet<uuid::Uuid>> = HashMap::new();
    for delivery in deliveries.iter().filter(|d| d.appends_pending()) {
        pending
            .entry(delivery.group_name.as_str())
            .or_default()
            .insert(delivery.id);
    }
    let rows: HashMap<&str, &GroupRow> = current.iter().map(|r| (r.name.as_str(), *r)).collect();
    for (row, key, mark) in sink.watermarks_of_group(group).await? {
        let Some(row) = rows.get(row.as_str()) else {
            continue; // a retired row: revived, it gets a new replay generation
        };
        if (mark.replay_generation, mark.position) > (row.replay_generation, row.cursor) {
            return Err(super::usage(format!(
                "`{}` appended to Redis past its cursor: watermark `{key}` is at {}, the cursor at {} (its last relay stopped before committing that batch): {restart}",
                row.name, mark.position, row.cursor
            )));
        }
    }
    for (row, key, token) in sink.late_tokens_of_group(group).await? {
        let (Some(row), Some((generation, message))) =
            (rows.get(row.as_str()), token_message(&token))
        else {
            continue;
        };
        let waiting = pending.get(row.name.as_str());
        if generation == row.replay_generation && waiting.is_some_and(|w| w.contains(&message)) {
            return Err(super::usage(format!(
                "`{}` appended message {message} to Redis (`{key}`) but its delivery row does not say so (its last relay stopped before updating it): {restart}; `outbox-relay retry {message}` makes its retry due now",
                row.name
            )));
        }
    }
    Ok(())
}

/// The replay generation and message of a late-entry token: `[r<generation>:]<id>:<ordinal>`
/// for a retry's output, `[r<generation>:]dead:<id>:<attempts>` for a dead-letter copy.
fn token_message(token: &str) -> Option<(i64, uuid::Uuid)> {
    let (generation, rest) = match token.strip_prefix('r') {
        Some(rest) => {
            let (generation, rest) = rest.split_once(':')?;
            (generation.parse().ok()?, rest)
        }
        None => (0, token),
    };
    let rest = rest.strip_prefix("dead:").unwrap_or(rest);
    let (id, _) = rest.split_once(':')?;
    Some((generation, uuid::Uuid::parse_str(id).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_names_its_generation_and_message() {
        let id = uuid::Uuid::now_v7();
        assert_eq!(token_message(&format!("{id}:0")), Some((0, id)));
        assert_eq!(token_message(&format!("r3:{id}:2")), Some((3, id)));
        assert_eq!(token_message(&format!("dead:{id}:5")), Some((0, id)));
        assert_eq!(token_message(&format!("r12:dead:{id}:1")), Some((12, id)));
        assert_eq!(token_message("not-a-token"), None);
    }
}

//! `outbox-relay status`

use outbox_relay::config::Config;
use outbox_relay::store::{self, GroupMember, GroupStatus, XminHolder};

/// Shows every consumer group: cursor, lag (messages and age of the oldest), lease owner, and
/// the open transaction holding delivery back, if any.
///
/// Example: outbox-relay --config outbox-relay.toml status --json
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only this group.
    #[arg(long)]
    group: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(serde::Serialize)]
struct Status {
    groups: Vec<GroupStatus>,
    /// The relays running partitioned groups (heartbeats in `outbox.group_members`).
    members: Vec<GroupMember>,
    xmin_holder: Option<XminHolder>,
    /// Whether `outbox-relay notify on` installed the NOTIFY trigger.
    notify_trigger: bool,
}

pub async fn run(config: &Config, args: Args) -> anyhow::Result<()> {
    let pool = store::connect(&config.database_url, 1).await?;
    super::require_group(&pool, args.group.as_deref()).await?;
    let groups = store::consumer_groups_status(&pool, args.group.as_deref()).await?;
    let xmin_holder = if groups.iter().any(|g| g.held_back > 0) {
        store::xmin_holder(&pool).await?
    } else {
        None
    };
    let notify_trigger = store::notify_trigger_installed(&pool).await?;
    let members = store::group_members_list(&pool, args.group.as_deref()).await?;
    pool.close().await;
    let status = Status {
        groups,
        members,
        xmin_holder,
        notify_trigger,
    };
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print_table(&status);
    }
    Ok(())
}

fn print_table(status: &Status) {
    if status.groups.is_empty() {
        outln!("{}", super::NO_GROUPS_YET);
        return;
    }
    let now = chrono::Utc::now();
    let mut table = super::table([
        "GROUP",
        "CURSOR",
        "LAG",
        "HELD BACK",
        "OLDEST",
        "LEASE OWNER",
        "EXPIRES IN",
        "STATE",
    ]);
    for group in &status.groups {
        let oldest = group
            .oldest_undelivered_at
            .map(|at| format!("{:.1}s", (now - at).num_milliseconds() as f64 / 1000.0))
            .unwrap_or_else(|| "-".into());
        let expires = group
            .lease_expires_at
            .map(|at| format!("{:.1}s", (at - now).num_milliseconds() as f64 / 1000.0))
            .unwrap_or_else(|| "-".into());
        table.add_row([
            group.name.clone(),
            group.cursor.to_string(),
            super::groups::lag(group),
            group.held_back.to_string(),
            oldest,
            group.lease_owner.clone().unwrap_or_else(|| "-".into()),
            expires,
            super::groups::state(group).to_owned(),
        ]);
    }
    outln!("{table}");
    print_members(&status.members);
    if let Some(holder) = &status.xmin_holder {
        let who = match (&holder.pid, &holder.prepared_gid) {
            (_, Some(gid)) => format!("prepared transaction '{gid}'"),
            (Some(pid), None) => format!(
                "pid {pid} ({}, application_name '{}')",
                holder.state, holder.application_name
            ),
            (None, None) => "an unknown session".to_owned(),
        };
        outln!("held back by {who}, open for {:.1}s", holder.age_seconds);
    }
    if status.notify_trigger {
        outln!("NOTIFY trigger installed (wakeup = \"notify\" relays wake on commit)");
    }
}

/// One line per partitioned group: its live members, and those that stopped heartbeating.
pub fn print_members(members: &[GroupMember]) {
    let mut groups: Vec<&str> = members.iter().map(|m| m.group.as_str()).collect();
    groups.dedup();
    for group in groups {
        let of = |alive: bool| -> Vec<&str> {
            members
                .iter()
                .filter(|m| m.group == group && m.alive == alive)
                .map(|m| m.member.as_str())
                .collect()
        };
        let (live, gone) = (of(true), of(false));
        let mut line = format!("members of {group}: {}", live.len());
        if !live.is_empty() {
            line.push_str(&format!(" ({})", live.join(", ")));
        }
        if !gone.is_empty() {
            line.push_str(&format!("; stopped heartbeating: {}", gone.join(", ")));
        }
        outln!("{line}");
    }
}

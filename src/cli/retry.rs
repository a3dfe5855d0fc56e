//! `outbox-relay retry <message-id>`

use outbox_relay::config::Config;
use outbox_relay::store::{self, DeliveryStatus};
use uuid::Uuid;

/// Retries a message now: its retrying or dead delivery becomes due at once, attempts kept
/// (a dead one gets one more attempt). The relay holding the group picks it up within a
/// second. A blocked delivery is left alone: it waits for the earlier message of its key.
///
/// Example: outbox-relay retry 0193a5c4-7d2e-7cc1-9f0e-3b1f2a4c5d6e --group notifications
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The message id (as printed by `publish`, `dead list` or the `outbox.deliveries` row).
    message_id: Uuid,
    /// Only this group's delivery (default: every group that has one).
    #[arg(long)]
    group: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub async fn run(config: &Config, args: Args) -> anyhow::Result<()> {
    let pool = store::connect(&config.database_url, 1).await?;
    if let Err(error) = super::require_group(&pool, args.group.as_deref()).await {
        pool.close().await;
        return Err(error);
    }
    let deliveries =
        store::deliveries_retry_now(&pool, args.message_id, args.group.as_deref()).await?;
    pool.close().await;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&deliveries)?);
    }
    if deliveries.is_empty() {
        let scope = args
            .group
            .map(|g| format!("in group `{g}`"))
            .unwrap_or_else(|| "in any group".to_owned());
        anyhow::bail!(
            "message {} has no retrying or dead delivery {scope} (delivered, not reached yet, or unknown)",
            args.message_id
        );
    }
    if !args.json {
        for delivery in &deliveries {
            let what = match (delivery.changed, delivery.previous_status) {
                (true, DeliveryStatus::Dead) => "dead → retrying, due now (attempts kept)",
                (true, _) => "retrying, due now (attempts kept)",
                (false, _) => "blocked behind an earlier message of its key; left as it is",
            };
            outln!("{} in group {}: {what}", args.message_id, delivery.group);
        }
    }
    if deliveries.iter().all(|d| !d.changed) {
        anyhow::bail!("nothing changed");
    }
    Ok(())
}

//! `outbox-relay notify on|off`

use anyhow::Context;
use outbox_relay::config::Config;
use outbox_relay::store;

/// Installs or drops the NOTIFY trigger on outbox.messages that `wakeup = "notify"` listens for.
///
/// The trigger wakes idle relays at once, but every publishing transaction then takes a
/// cluster-wide lock at commit, which lowers publish throughput (figures in README). Without
/// it, relays poll every `idle_poll_ms`. Idempotent. Example: outbox-relay notify on
#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(value_enum)]
    state: Switch,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Switch {
    /// Install the trigger.
    On,
    /// Drop the trigger.
    Off,
}

pub async fn run(config: &Config, args: Args) -> anyhow::Result<()> {
    let pool = store::connect(&config.database_url, 1).await?;
    let message = match args.state {
        Switch::On => {
            let installed = store::notify_trigger_install(&pool)
                .await
                .context("installing the NOTIFY trigger")?;
            if installed {
                "NOTIFY trigger installed: relays with wakeup = \"notify\" wake on every commit"
            } else {
                "NOTIFY trigger was already installed"
            }
        }
        Switch::Off => {
            let dropped = store::notify_trigger_drop(&pool)
                .await
                .context("dropping the NOTIFY trigger")?;
            if dropped {
                "NOTIFY trigger dropped: relays find new messages by polling"
            } else {
                "NOTIFY trigger was not installed"
            }
        }
    };
    pool.close().await;
    outln!("{message}");
    Ok(())
}

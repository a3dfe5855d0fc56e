//! `outbox-relay migrate`

use anyhow::Context;
use outbox_relay::config::Config;
use outbox_relay::store;

/// Applies the outbox migrations (tables, functions) to the configured database.
///
/// Idempotent; coexists with the application's own sqlx migrations (ours are recorded in
/// outbox._sqlx_migrations). Example: outbox-relay migrate --database-url postgres://postgres@127.0.0.1/app
#[derive(Debug, clap::Args)]
pub struct Args {}

pub async fn run(config: &Config, _args: Args) -> anyhow::Result<()> {
    let pool = store::connect(&config.database_url, 1).await?;
    let report = outbox_relay::migrate(&pool)
        .await
        .with_context(|| format!("migrating {}", config.database_url))?;
    pool.close().await;
    if report.applied.is_empty() {
        outln!("outbox schema is up to date ({} migrations)", report.known);
    } else {
        for migration in &report.applied {
            outln!("applied {:04} {}", migration.version, migration.description);
        }
        outln!(
            "outbox schema migrated: {} applied, {} known",
            report.applied.len(),
            report.known
        );
    }
    Ok(())
}

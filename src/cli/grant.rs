//! `outbox-relay grant publisher|relay ROLE`: least privilege for the application and the
//! relay. Grants (idempotently) what a publisher or a relay needs on the `outbox` schema to a
//! role a DBA created; `--print` shows the SQL instead, to run with psql.

use outbox_relay::config::{Config, Overrides};
use outbox_relay::store::{self, RoleKind};

/// Grants a role what it needs to publish, or to run the relay, and nothing more.
///
/// Run it as the owner of the outbox schema (the role that ran `migrate`) or a superuser.
/// The role must exist; running it again changes nothing. Example:
///   psql -c "CREATE ROLE app_publisher LOGIN PASSWORD 'change-me'"
///   outbox-relay grant publisher app_publisher
#[derive(Debug, clap::Args)]
pub struct Args {
    /// What the role may do.
    #[arg(value_enum)]
    kind: Kind,
    /// The role (created beforehand by a DBA; roles are cluster-wide).
    role: String,
    /// Print the SQL instead of running it (for a DBA to review or run with psql); needs no
    /// configuration.
    #[arg(long)]
    print: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Kind {
    /// May only publish: outbox.publish() and publish_in_tx (INSERT into outbox.messages,
    /// read outbox.schemas). Cannot read messages, move cursors or read deliveries.
    Publisher,
    /// May run the relay: read messages and schemas, update its consumer groups, keep retry
    /// state in outbox.deliveries. Cannot create, drop or delete messages.
    Relay,
}

impl From<Kind> for RoleKind {
    fn from(kind: Kind) -> RoleKind {
        match kind {
            Kind::Publisher => RoleKind::Publisher,
            Kind::Relay => RoleKind::Relay,
        }
    }
}

pub async fn run(overrides: &Overrides, args: Args) -> anyhow::Result<()> {
    let kind = RoleKind::from(args.kind);
    if args.print {
        out!("{}", store::roles_grant_sql(kind, &args.role));
        return Ok(());
    }
    let config = Config::load(overrides)?;
    let pool = store::connect(&config.database_url, 1).await?;
    let granted = store::roles_grant(&pool, kind, &args.role).await;
    pool.close().await;
    granted?;
    outln!(
        "granted {} privileges on schema outbox to role {}",
        kind.as_str(),
        store::quote_ident(&args.role)
    );
    Ok(())
}

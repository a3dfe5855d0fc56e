//! The `outbox-relay` command line: global flags, the command list, and one file per command.
//! Commands print with `outln!` / `out!` (`output.rs`), never `println!` (denied in main.rs):
//! `output.rs` says why.

#[macro_use]
mod output;

mod bench;
mod config;
mod cursor_move;
mod dead;
mod demo;
mod grant;
mod groups;
mod http;
mod migrate;
mod notify;
mod prune;
mod publish;
mod repartition;
mod replay;
mod retry;
mod run;
mod schema;
mod startup;
mod status;
mod stuck;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use outbox_relay::config::{Config, ConfigErrors, Overrides};
use outbox_relay::store;

/// The heading the flags every command takes are listed under in each command's `--help`,
/// apart from the command's own options.
const GLOBAL_OPTIONS: &str = "Global options";

/// Transactional outbox relay: Postgres outbox → Redis Streams, exactly once per consumer group.
///
/// Configuration is layered: the TOML file (--config) < DATABASE_URL / REDIS_URL < OUTBOX_*
/// variables (OUTBOX_PUBLISH__MAX_PAYLOAD_BYTES for [publish] max_payload_bytes) < flags.
///
/// Exit codes: 0 ok, 1 runtime failure, 2 usage or configuration error, 141 stdout closed by its
/// reader (`| head`).
#[derive(Debug, Parser)]
#[command(name = "outbox-relay", version, max_term_width = 100)]
pub struct Cli {
    /// Configuration file (TOML).
    #[arg(long, global = true, env = "OUTBOX_CONFIG", value_name = "FILE", help_heading = GLOBAL_OPTIONS)]
    config: Option<PathBuf>,

    /// Postgres URL of the primary, e.g. postgres://user@127.0.0.1/app. Also read from
    /// OUTBOX_DATABASE_URL, DATABASE_URL or `database_url` in the config file.
    #[arg(long, global = true, value_name = "URL", help_heading = GLOBAL_OPTIONS)]
    database_url: Option<String>,

    /// Redis URL, e.g. redis://127.0.0.1:6379 (rediss:// for TLS). Also read from
    /// OUTBOX_REDIS_URL, REDIS_URL or `redis_url` in the config file.
    #[arg(long, global = true, value_name = "URL", help_heading = GLOBAL_OPTIONS)]
    redis_url: Option<String>,

    /// Log lines on stderr: `text` (human-readable) or `json` (one object a line, the event's
    /// fields at the top level). The level comes from RUST_LOG (default: INFO for `run`, WARN
    /// for the other commands, which print their result on stdout).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, value_name = "FORMAT", help_heading = GLOBAL_OPTIONS)]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create or upgrade the `outbox` schema; a no-op when it is up to date.
    Migrate(migrate::Args),
    /// Run the relay: forward every configured group's messages to Redis Streams.
    Run(run::Args),
    /// Show every consumer group: cursor, lag, lease owner, and what holds delivery back.
    Status(status::Args),
    /// List what is stuck: every retrying, blocked and dead delivery, with the last error.
    Stuck(stuck::Args),
    /// Retry a message now (its retrying or dead delivery becomes due; attempts kept).
    Retry(retry::Args),
    /// List, retry or discard dead letters.
    #[command(subcommand)]
    Dead(dead::Command),
    /// Move a group's cursor back so messages are delivered again.
    Replay(replay::Args),
    /// Delete old messages every group has passed and no delivery row references.
    Prune(prune::Args),
    /// List, pause, resume or reset consumer groups.
    #[command(subcommand)]
    Groups(groups::Command),
    /// Install or drop the NOTIFY trigger used by `wakeup = "notify"`.
    Notify(notify::Args),
    /// Publish one message (in its own transaction) and print its id.
    Publish(publish::Args),
    /// The schema registry: register, list, show and check JSON Schemas per topic.
    #[command(subcommand)]
    Schema(schema::Command),
    /// Publish from concurrent transactions while a relay forwards, then check what landed.
    Demo(demo::Args),
    /// Measure the library next to the ceiling for the same work (in a scratch database).
    #[command(subcommand)]
    Bench(bench::Scenario),
    /// Check the configuration and print it with secrets redacted.
    #[command(subcommand)]
    Config(config::Command),
    /// Grant a role what a publisher or the relay needs, and nothing more.
    Grant(grant::Args),
}

/// A time on the command line: RFC 3339 (2026-11-24T03:00:00Z) or a duration ago (90s, 15m,
/// 2h, 1d).
pub fn parse_time_or_ago(text: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    if let Ok(at) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(at.with_timezone(&chrono::Utc));
    }
    let ago = humantime::parse_duration(text)
        .map_err(|e| format!("`{text}` is neither RFC 3339 nor a duration like 15m ({e})"))?;
    let ago = chrono::Duration::from_std(ago).map_err(|e| e.to_string())?;
    Ok(chrono::Utc::now() - ago)
}

/// `--yes` / `--dry-run` for commands that change what gets delivered (replay, groups reset).
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct Confirm {
    /// Do it (without this the command refuses, unless --dry-run).
    #[arg(long, conflicts_with = "dry_run")]
    yes: bool,
    /// Only say what would happen; change nothing.
    #[arg(long)]
    dry_run: bool,
}

impl Confirm {
    /// True for a dry run; a usage error (exit 2) when neither flag was given.
    pub fn dry_run(self, what: &str) -> anyhow::Result<bool> {
        if !self.yes && !self.dry_run {
            return Err(usage(format!(
                "{what}: add --yes to do it, or --dry-run to see what it would do"
            )));
        }
        Ok(self.dry_run)
    }
}

/// A spinner on stderr for long work, drawn only when stderr is a terminal (never into pipes
/// or logs).
pub fn spinner(message: &'static str) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new_spinner().with_message(message);
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    bar
}

/// An aligned table with no borders and this header, for human output.
pub fn table<const N: usize>(header: [&str; N]) -> comfy_table::Table {
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::NOTHING);
    table.set_header(header);
    table
}

/// The first line of `text`, cut to `max` characters (for table cells).
pub fn first_line(text: &str, max: usize) -> String {
    let line = text.lines().next().unwrap_or_default();
    if line.chars().count() <= max {
        line.to_owned()
    } else {
        format!("{}…", line.chars().take(max - 1).collect::<String>())
    }
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// A failure with the exit code it maps to.
pub struct Failure {
    pub code: u8,
    pub error: anyhow::Error,
    /// The Postgres role the command connected as, when the URL names it: a missing-privilege
    /// error then says which role to grant to.
    pub role: Option<String>,
}

/// A command line that asks for something the command refuses as asked (a missing `--yes`,
/// no filter where one is required): exit code 2, like clap's own usage errors.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(String);

/// Every command given a group name (`status --group`, `stuck --group`, `dead … --group`,
/// `retry --group`, `groups pause|resume|reset`, `replay`) refuses one that does not exist,
/// rather than reporting a mistyped name as a healthy group with nothing to show.
pub async fn require_group(
    executor: impl sqlx::PgExecutor<'_>,
    group: Option<&str>,
) -> anyhow::Result<()> {
    let Some(group) = group else {
        return Ok(());
    };
    let known = store::consumer_groups_names(executor).await?;
    if known.iter().any(|name| name == group) {
        Ok(())
    } else {
        Err(unknown_group(group, &known))
    }
}

/// The error for a group name that has no row in `outbox.consumer_groups`, naming the groups
/// that do.
pub fn unknown_group(group: &str, known: &[String]) -> anyhow::Error {
    const LISTED: usize = 20;
    if known.is_empty() {
        return anyhow::anyhow!(
            "consumer group `{group}` does not exist: there are no consumer groups yet (a group is created by its first `outbox-relay run`)"
        );
    }
    let mut names: Vec<String> = known
        .iter()
        .take(LISTED)
        .map(|name| format!("`{name}`"))
        .collect();
    if known.len() > LISTED {
        names.push(format!("and {} more", known.len() - LISTED));
    }
    anyhow::anyhow!(
        "consumer group `{group}` does not exist; the groups are {} (see `outbox-relay groups list`; a group is created by its first `outbox-relay run`)",
        names.join(", ")
    )
}

/// What listing commands print when no group has a row yet.
pub const NO_GROUPS_YET: &str =
    "no consumer groups yet (a group is created by its first `outbox-relay run`)";

/// A usage error saying `what`.
pub fn usage(what: impl Into<String>) -> anyhow::Error {
    UsageError(what.into()).into()
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Self {
        let usage = error.downcast_ref::<ConfigErrors>().is_some()
            || error.downcast_ref::<UsageError>().is_some()
            || error.downcast_ref::<startup::NotStartable>().is_some();
        let code = if usage { 2 } else { 1 };
        Failure {
            code,
            error,
            role: None,
        }
    }
}

impl Cli {
    /// The log filter when `RUST_LOG` is not set: the relay's progress at INFO for `run`; the
    /// other commands say what they did on stdout, so stderr carries warnings and errors only
    /// (no `INFO registered schema` beside `schema register`'s own line).
    pub fn default_log_filter(&self) -> &'static str {
        match self.command {
            Command::Run(_) => "outbox_relay=info,warn",
            _ => "warn",
        }
    }

    /// How log events are written (`--log-format`).
    pub fn log_format(&self) -> outbox_relay::telemetry::logging::Format {
        match self.log_format {
            LogFormat::Text => outbox_relay::telemetry::logging::Format::Text,
            LogFormat::Json => outbox_relay::telemetry::logging::Format::Json,
        }
    }

    pub async fn run(self) -> Result<(), Failure> {
        let overrides = Overrides {
            config_file: self.config,
            database_url: self.database_url,
            redis_url: self.redis_url,
        };
        let config = match self.command {
            // The demo falls back to the services of docker-compose.yml.
            Command::Demo(_) => demo::load_config(&overrides),
            // Reports configuration problems itself (--json), so it loads the layers itself.
            Command::Config(command) => return Ok(config::run(&overrides, command).await?),
            // `--print` needs no configuration.
            Command::Grant(args) => return Ok(grant::run(&overrides, args).await?),
            _ => Config::load(&overrides),
        }
        .map_err(anyhow::Error::from)?;
        let result = match self.command {
            Command::Migrate(args) => migrate::run(&config, args).await,
            Command::Publish(args) => publish::run(&config, args).await,
            Command::Schema(command) => schema::run(&config, command).await,
            Command::Notify(args) => notify::run(&config, args).await,
            Command::Run(args) => run::run(&config, args).await,
            Command::Status(args) => status::run(&config, args).await,
            Command::Stuck(args) => stuck::run(&config, args).await,
            Command::Retry(args) => retry::run(&config, args).await,
            Command::Replay(args) => replay::run(&config, args).await,
            Command::Prune(args) => prune::run(&config, args).await,
            Command::Groups(command) => groups::run(&config, command).await,
            Command::Dead(command) => dead::run(&config, command).await,
            Command::Bench(scenario) => bench::run(&config, scenario).await,
            Command::Demo(args) => demo::run(&config, args).await,
            // Returned above already; kept so the match stays exhaustive without a panic.
            Command::Config(command) => config::run(&overrides, command).await,
            Command::Grant(args) => grant::run(&overrides, args).await,
        };
        let role = url::Url::parse(config.database_url.expose())
            .ok()
            .map(|url| url.username().to_owned())
            .filter(|role| !role.is_empty());
        result.map_err(|error| Failure {
            role,
            ..Failure::from(error)
        })
    }
}

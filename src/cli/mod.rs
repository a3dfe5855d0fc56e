//! The `outbox-relay` command line: global flags, the command list, and one file per command.

mod bench;
mod dead;
mod demo;
mod http;
mod migrate;
mod notify;
mod publish;
mod retry;
mod run;
mod schema;
mod status;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use outbox_relay::config::{Config, ConfigErrors, Overrides};

/// Transactional outbox relay: Postgres outbox → Redis Streams, exactly once per consumer group.
///
/// Configuration is layered: the TOML file (--config) < DATABASE_URL / REDIS_URL < OUTBOX_*
/// variables (OUTBOX_PUBLISH__MAX_PAYLOAD_BYTES for [publish] max_payload_bytes) < flags.
///
/// Exit codes: 0 ok, 1 runtime failure, 2 usage or configuration error.
#[derive(Debug, Parser)]
#[command(name = "outbox-relay", version, max_term_width = 100)]
pub struct Cli {
    /// Configuration file (TOML).
    #[arg(long, global = true, env = "OUTBOX_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,

    /// Postgres URL of the primary, e.g. postgres://user@127.0.0.1/app. Also read from
    /// OUTBOX_DATABASE_URL, DATABASE_URL or `database_url` in the config file.
    #[arg(long, global = true, value_name = "URL")]
    database_url: Option<String>,

    /// Redis URL, e.g. redis://127.0.0.1:6379 (rediss:// for TLS). Also read from
    /// OUTBOX_REDIS_URL, REDIS_URL or `redis_url` in the config file.
    #[arg(long, global = true, value_name = "URL")]
    redis_url: Option<String>,

    /// Log lines on stderr: `text` (human-readable) or `json` (one object a line, the event's
    /// fields at the top level). The level comes from RUST_LOG (default: INFO for the relay).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, value_name = "FORMAT")]
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
    /// Retry a message now (its retrying or dead delivery becomes due; attempts kept).
    Retry(retry::Args),
    /// List, retry or discard dead letters.
    #[command(subcommand)]
    Dead(dead::Command),
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
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Self {
        let code = if error.downcast_ref::<ConfigErrors>().is_some() {
            2
        } else {
            1
        };
        Failure { code, error }
    }
}

impl Cli {
    /// The log filter when `RUST_LOG` is not set: the relay's progress at INFO, except for the
    /// demo, whose own output tells the story.
    pub fn default_log_filter(&self) -> &'static str {
        match self.command {
            Command::Demo(_) => "warn",
            _ => "outbox_relay=info,warn",
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
            Command::Retry(args) => retry::run(&config, args).await,
            Command::Dead(command) => dead::run(&config, command).await,
            Command::Bench(scenario) => bench::run(&config, scenario).await,
            Command::Demo(args) => demo::run(&config, args).await,
        };
        result.map_err(Failure::from)
    }
}

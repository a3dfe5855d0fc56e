//! `outbox-relay schema register | list | show | check`

use std::io::Read;
use std::path::PathBuf;

use anyhow::{Context, bail};
use comfy_table::{Table, presets};
use outbox_relay::config::Config;
use outbox_relay::json;
use outbox_relay::registry::{Compatibility, Registry, SchemaFormat};
use outbox_relay::store::{self, StoredSchema};

/// The schema registry: JSON Schema versions per topic in outbox.schemas.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Store a new version of a topic's schema (refused when incompatible; a no-op when
    /// identical to the latest version).
    ///
    /// Example: outbox-relay schema register --topic orders.created --file orders.created.json --compat backward
    Register(RegisterArgs),
    /// List the registered versions.
    ///
    /// Example: outbox-relay schema list --topic orders.created --json
    List(ListArgs),
    /// Print a version's definition (the latest unless --version).
    ///
    /// Example: outbox-relay schema show orders.created --version 2 > orders.created.v2.json
    Show(ShowArgs),
    /// Check a payload against a topic's schema (the latest unless --version): exit 0 when
    /// valid, 1 with each failing JSON path when not.
    ///
    /// Example: outbox-relay schema check --topic orders.created '{"order_id":42}'
    Check(CheckArgs),
}

#[derive(Debug, clap::Args)]
pub struct RegisterArgs {
    /// The topic, e.g. orders.created.
    #[arg(long)]
    topic: String,
    /// The definition: a JSON Schema file, or `-` for standard input.
    #[arg(long, value_name = "FILE")]
    file: PathBuf,
    /// The definition's language (only json-schema today).
    #[arg(long, default_value = "json-schema", value_parser = str::parse::<SchemaFormat>)]
    format: SchemaFormat,
    /// Compatibility mode: none, backward, forward or full. Default: the latest version's
    /// mode, or backward for a topic's first version.
    #[arg(long, value_name = "MODE", value_parser = str::parse::<Compatibility>)]
    compat: Option<Compatibility>,
}

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Only this topic.
    #[arg(long)]
    topic: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub struct ShowArgs {
    /// The topic.
    topic: String,
    /// The version (default: the latest).
    #[arg(long)]
    version: Option<i32>,
    /// Print the version with its metadata as JSON instead of the bare definition.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The topic.
    #[arg(long)]
    topic: String,
    /// The version to check against (default: the latest).
    #[arg(long)]
    version: Option<i32>,
    /// Print {"valid", "topic", "version", "errors": [{"path", "message"}]} as JSON.
    #[arg(long)]
    json: bool,
    /// The payload, or `-` to read it from standard input.
    #[arg(value_name = "PAYLOAD_JSON")]
    payload: String,
}

pub async fn run(config: &Config, command: Command) -> anyhow::Result<()> {
    let pool = store::connect(&config.database_url, 1).await?;
    let registry = Registry::new(pool.clone(), config.registry.unregistered);
    let result = match command {
        Command::Register(args) => register(&registry, args).await,
        Command::List(args) => list(&registry, args).await,
        Command::Show(args) => show(&registry, args).await,
        Command::Check(args) => check(&registry, args).await,
    };
    pool.close().await;
    result
}

async fn register(registry: &Registry, args: RegisterArgs) -> anyhow::Result<()> {
    let text = if args.file.as_os_str() == "-" {
        read_stdin()?
    } else {
        std::fs::read_to_string(&args.file)
            .with_context(|| format!("reading {}", args.file.display()))?
    };
    let definition: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", args.file.display()))?;
    let registered = registry
        .register(&args.topic, definition, args.format, args.compat)
        .await?;
    if registered.created {
        outln!(
            "registered {} version {} ({})",
            registered.topic,
            registered.version,
            registered.compatibility
        );
    } else {
        outln!(
            "unchanged: identical to {} version {}",
            registered.topic,
            registered.version
        );
    }
    Ok(())
}

/// A row of `schema list --json`: everything but the definition.
#[derive(serde::Serialize)]
struct Listed<'a> {
    topic: &'a str,
    version: i32,
    format: &'a str,
    compatibility: &'a str,
    fingerprint: &'a str,
    created_at: chrono::DateTime<chrono::Utc>,
}

impl<'a> From<&'a StoredSchema> for Listed<'a> {
    fn from(s: &'a StoredSchema) -> Self {
        Listed {
            topic: &s.topic,
            version: s.version,
            format: &s.format,
            compatibility: &s.compatibility,
            fingerprint: &s.fingerprint,
            created_at: s.created_at,
        }
    }
}

async fn list(registry: &Registry, args: ListArgs) -> anyhow::Result<()> {
    let schemas = registry.list(args.topic.as_deref()).await?;
    if args.json {
        let listed: Vec<Listed<'_>> = schemas.iter().map(Listed::from).collect();
        outln!("{}", serde_json::to_string_pretty(&listed)?);
        return Ok(());
    }
    if schemas.is_empty() {
        outln!("no schemas registered (outbox-relay schema register --topic T --file F)");
        return Ok(());
    }
    let mut table = Table::new();
    table.load_preset(presets::NOTHING);
    table.set_header([
        "TOPIC",
        "VERSION",
        "FORMAT",
        "COMPAT",
        "FINGERPRINT",
        "CREATED",
    ]);
    for schema in &schemas {
        table.add_row([
            schema.topic.clone(),
            schema.version.to_string(),
            schema.format.clone(),
            schema.compatibility.clone(),
            schema.fingerprint.chars().take(12).collect(),
            schema
                .created_at
                .format("%Y-%m-%d %H:%M:%S UTC")
                .to_string(),
        ]);
    }
    outln!("{table}");
    Ok(())
}

async fn show(registry: &Registry, args: ShowArgs) -> anyhow::Result<()> {
    let schema = registry.get(&args.topic, args.version).await?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&schema)?);
    } else {
        outln!("{}", serde_json::to_string_pretty(&schema.definition)?);
    }
    Ok(())
}

async fn check(registry: &Registry, args: CheckArgs) -> anyhow::Result<()> {
    let text = if args.payload == "-" {
        read_stdin()?
    } else {
        args.payload
    };
    // Any depth: a payload Postgres would store is checked, not refused by the parser.
    let payload: serde_json::Value = match json::from_str(&text) {
        Ok(payload) => payload,
        Err(e) => bail!("PAYLOAD_JSON is not valid JSON: {e}"),
    };
    let validation = registry.validate(&args.topic, args.version, &payload).await;
    json::drop_value(payload);
    let validation = validation?;
    let valid = validation.errors.is_empty();
    if args.json {
        let out = serde_json::json!({
            "valid": valid,
            "topic": validation.topic,
            "version": validation.version,
            "errors": validation.errors,
        });
        outln!("{}", serde_json::to_string_pretty(&out)?);
    } else if valid {
        outln!(
            "valid against {} version {}",
            validation.topic,
            validation.version
        );
    } else {
        outln!(
            "invalid against {} version {}:",
            validation.topic,
            validation.version
        );
        for error in &validation.errors {
            outln!("  {error}");
        }
    }
    if !valid {
        bail!(
            "payload does not match {} version {} ({} error(s))",
            validation.topic,
            validation.version,
            validation.errors.len()
        );
    }
    Ok(())
}

fn read_stdin() -> anyhow::Result<String> {
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .context("reading standard input")?;
    Ok(text)
}

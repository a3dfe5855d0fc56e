//! `outbox-relay publish`

use std::io::Read;

use anyhow::{Context, bail};
use outbox_relay::config::Config;
use outbox_relay::{Message, Publisher, json, store};
use serde_json::value::RawValue;

/// Publishes one message in its own transaction and prints its id (UUIDv7). The payload must
/// match the topic's latest registered schema, if any (`[registry] unregistered` decides about
/// topics without one).
///
/// Example: outbox-relay publish --topic orders.created --key order-42 --header correlation_id=c-7 '{"order_id":42}'
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Topic, e.g. orders.created (no whitespace, at most 255 bytes).
    #[arg(long)]
    topic: String,

    /// Ordering key, e.g. the aggregate id.
    #[arg(long)]
    key: Option<String>,

    /// A header as NAME=VALUE; repeat for more.
    #[arg(long = "header", value_name = "NAME=VALUE", value_parser = parse_header)]
    headers: Vec<(String, String)>,

    /// Print {"id", "topic", "key", "position"} as JSON instead of the bare id.
    #[arg(long)]
    json: bool,

    /// The payload: a JSON object or array, or `-` to read it from standard input.
    #[arg(value_name = "PAYLOAD_JSON")]
    payload: String,
}

fn parse_header(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_owned(), value.to_owned())),
        _ => Err(format!("`{text}` is not NAME=VALUE")),
    }
}

/// The payload as compact JSON text, at any nesting depth (Postgres decides how deep is too
/// deep). Passed to [`Message::new`] as text, so nothing recurses over its depth again.
fn compact_payload(text: &str) -> anyhow::Result<Box<RawValue>> {
    let payload: serde_json::Value = match json::from_str(text) {
        Ok(payload) => payload,
        Err(e) => bail!("PAYLOAD_JSON is not valid JSON: {e}"),
    };
    let compact = json::to_string(&payload);
    json::drop_value(payload);
    Ok(RawValue::from_string(compact)?)
}

pub async fn run(config: &Config, args: Args) -> anyhow::Result<()> {
    let text = if args.payload == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading the payload from standard input")?;
        text
    } else {
        args.payload
    };
    let mut message = Message::new(args.topic, compact_payload(&text)?);
    if let Some(key) = args.key {
        message = message.key(key);
    }
    for (name, value) in args.headers {
        message = message.header(name, value);
    }
    let topic = message.topic().to_owned();
    let key = message.key_str().map(str::to_owned);

    let pool = store::connect(&config.database_url, 1).await?;
    let mut tx = pool.begin().await.context("beginning a transaction")?;
    let id = Publisher::new(config.publish)
        .with_unregistered(config.registry.unregistered)
        .publish_in_tx(&mut tx, message)
        .await?;
    // Only --json shows the position: reading it back needs SELECT on outbox.messages, which
    // a publisher role (`outbox-relay grant publisher`) does not have.
    let position = if args.json {
        store::messages_position(&mut tx, id)
            .await
            .context("reading the new message's position")?
    } else {
        None
    };
    tx.commit()
        .await
        .context("committing the publish transaction")?;
    pool.close().await;

    if args.json {
        let out = serde_json::json!({
            "id": id,
            "topic": topic,
            "key": key,
            "position": position.map(|p| p.to_string()),
        });
        outln!("{out}");
    } else {
        outln!("{id}");
    }
    Ok(())
}

//! `outbox-relay config check`: loads the configuration exactly as every other command does
//! (file < `DATABASE_URL`/`REDIS_URL` < `OUTBOX_*` < flags), and prints the effective result
//! with every default filled in and every secret redacted: URL passwords (as
//! [`ConnectionUrl`] prints them), the query values of http routes' URLs (as [`WebhookUrl`]
//! prints them), the values of http routes' headers and the arguments of exec routes'
//! commands (the program is shown, resolved on `PATH` when given as a bare name).
//!
//! [`ConnectionUrl`]: outbox_relay::config::ConnectionUrl
//! [`WebhookUrl`]: outbox_relay::config::WebhookUrl
//!
//! Exit 0 when valid; 2 with every problem named by its key when not; with `--connect`, 1 when
//! Postgres or Redis cannot be reached or the outbox schema is not this version's (`migrate`).

use std::collections::BTreeMap;

use outbox_relay::config::{
    Config, ConfigErrors, Overrides, RawConfig, RawRoute, redact_headers, redact_webhook_url,
};
use outbox_relay::handler::exec::ExecHandler;
use outbox_relay::relay::route::Route;
use outbox_relay::sink::Sink;
use outbox_relay::store;
use serde::Serialize;
use serde_json::{Value, json};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Validate the configuration and print it, defaults filled in, secrets redacted.
    ///
    /// Exit codes: 0 valid, 2 invalid (every problem named by its key), 1 with --connect when
    /// Postgres or Redis cannot be reached or the outbox schema needs `outbox-relay migrate`.
    ///
    /// Example: outbox-relay --config outbox-relay.toml config check --json
    Check(CheckArgs),
}

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Print JSON instead of `key = value` lines.
    #[arg(long)]
    json: bool,
    /// Also connect to Postgres and Redis (when redis_url is set), report whether they answer
    /// and whether the outbox schema is the one this version needs.
    #[arg(long)]
    connect: bool,
}

pub async fn run(overrides: &Overrides, command: Command) -> anyhow::Result<()> {
    let Command::Check(args) = command;
    let checked = RawConfig::load_with_unknown_keys(overrides).and_then(|(raw, unknown)| {
        let config = Config::from_raw_and_unknown_keys(raw.clone(), unknown)?;
        Ok((raw, config))
    });
    let (raw, config) = match checked {
        Ok(checked) => checked,
        Err(errors) => {
            if args.json {
                outln!("{}", serde_json::to_string_pretty(&invalid(&errors))?);
            }
            return Err(errors.into());
        }
    };
    let mut report = json!({ "valid": true, "config": effective(&raw, &config) });
    if args.connect {
        report["connect"] = connect(&config).await;
    }
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_text(&report);
    }
    let failed: Vec<(&str, &str)> = report["connect"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, result)| result["ok"] == false)
        .map(|(name, result)| (name.as_str(), result["error"].as_str().unwrap_or("")))
        .collect();
    if let Some((_, problem)) = failed.iter().find(|(name, _)| *name == "schema") {
        anyhow::bail!("{problem}");
    }
    if !failed.is_empty() {
        let names: Vec<&str> = failed.iter().map(|(name, _)| *name).collect();
        anyhow::bail!("could not connect to {}", names.join(" and "));
    }
    Ok(())
}

fn invalid(errors: &ConfigErrors) -> Value {
    let problems: Vec<Value> = errors
        .problems
        .iter()
        .map(|p| json!({ "key": p.key, "message": p.message }))
        .collect();
    json!({ "valid": false, "errors": problems })
}

/// Tries each server once, and checks that `migrate` brought the outbox schema to this
/// version; the result per server (and for `schema`) is `{ok, error}` (errors carry no
/// password).
async fn connect(config: &Config) -> Value {
    let mut results = serde_json::Map::new();
    match store::connect(&config.database_url, 1).await {
        Ok(pool) => {
            results.insert("postgres".into(), json!({ "ok": true }));
            let schema = match super::startup::schema_problem(&pool, &config.database_url).await {
                Ok(None) => json!({ "ok": true }),
                Ok(Some(problem)) => json!({ "ok": false, "error": problem }),
                Err(e) => json!({ "ok": false, "error": format!("{e:#}") }),
            };
            results.insert("schema".into(), schema);
            pool.close().await;
        }
        Err(e) => {
            let failed = json!({ "ok": false, "error": e.to_string() });
            results.insert("postgres".into(), failed);
        }
    }
    if let Some(url) = &config.redis_url {
        // On a cluster the ping also checks that every slot has a master.
        let redis = match Sink::connect(url, &config.redis).await {
            Ok(sink) => match sink.ping().await {
                Ok(()) => json!({ "ok": true }),
                Err(e) => json!({ "ok": false, "error": format!("{e}: {}", error_chain(&e)) }),
            },
            Err(e) => json!({ "ok": false, "error": e.to_string() }),
        };
        results.insert("redis".into(), redis);
    }
    Value::Object(results)
}

/// The causes under an error, joined (a [`SinkError::Redis`] says only "append to Redis
/// failed"; the reason is its source).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut causes = Vec::new();
    let mut source = error.source();
    while let Some(cause) = source {
        causes.push(cause.to_string());
        source = cause.source();
    }
    causes.join(": ")
}

/// The checked configuration with defaults filled in, in the shape of the config file.
fn effective(raw: &RawConfig, config: &Config) -> Value {
    let tls = &config.redis.tls;
    let path = |p: Option<&std::path::PathBuf>| p.map(|p| p.display().to_string());
    json!({
        "database_url": config.database_url.redacted(),
        "redis_url": config.redis_url.as_ref().map(|u| u.redacted()),
        "postgres": { "max_connections": config.postgres.max_connections },
        "publish": { "max_payload_bytes": config.publish.max_payload_bytes },
        "redis": {
            "key_prefix": config.redis.key_prefix,
            "max_len": config.redis.max_len,
            "response_timeout_ms": config.redis.response_timeout.as_millis() as u64,
            "wait_replicas": config.redis.wait_replicas,
            "wait_timeout_ms": config.redis.wait_timeout.as_millis() as u64,
            "tls_ca_file": path(tls.ca_file.as_ref()),
            "tls_client_cert_file": path(tls.client.as_ref().map(|c| &c.cert_file)),
            "tls_client_key_file": path(tls.client.as_ref().map(|c| &c.key_file)),
            "cluster": config.redis.cluster.is_some(),
            "cluster_nodes": config.redis.cluster.as_ref().map_or_else(Vec::new, |seeds| {
                seeds.nodes.iter().map(|url| url.redacted()).collect()
            }),
        },
        "relay": {
            "batch_size": config.relay.batch_size,
            "wakeup": config.relay.wakeup.as_str(),
            "idle_poll_ms": config.relay.idle_poll.as_millis() as u64,
            "lease_ttl_ms": config.relay.lease_ttl.as_millis() as u64,
            "max_backoff_ms": config.relay.max_backoff.as_millis() as u64,
            "stall_report_interval_ms": config.relay.stall_report_interval.as_millis() as u64,
            "shutdown_grace_ms": config.relay.shutdown_grace.as_millis() as u64,
        },
        "http": { "listen": config.http.listen.map(|addr| addr.to_string()) },
        "registry": {
            "unregistered": config.registry.unregistered.as_str(),
        },
        "groups": raw.groups.iter().zip(&config.groups).map(|(raw_group, group)| json!({
            "name": group.name,
            "ordering": group.ordering.as_str(),
            "max_in_flight": group.max_in_flight,
            "entry_fields": group.entry_fields.names(),
            "dead_letter_stream": group.dead_letter_stream,
            "routes": raw_group.routes.iter().zip(&group.routes)
                .map(|(raw_route, route)| effective_route(raw_route, route))
                .collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

/// One route as configured (handler, stream, url, headers, command) with the checked timeout
/// and retry policy; the URL's password and query values, every header value and every
/// argument of the command redacted (the command's program is the one that runs).
fn effective_route(raw: &RawRoute, route: &Route) -> Value {
    #[derive(Serialize)]
    struct EffectiveRoute<'a> {
        topics: &'a [String],
        handler: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        stream: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        url: Option<String>,
        #[serde(skip_serializing_if = "BTreeMap::is_empty")]
        headers: BTreeMap<&'a str, &'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        command: Option<Vec<String>>,
        timeout_ms: u64,
        max_attempts: u32,
        backoff_initial_ms: u64,
        backoff_max_ms: u64,
        backoff_multiplier: f64,
    }
    let headers = redact_headers(raw.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    serde_json::to_value(EffectiveRoute {
        topics: route.patterns(),
        handler: &raw.handler,
        stream: raw.stream.as_deref(),
        url: raw.url.as_deref().map(redact_webhook_url),
        headers,
        // Checked already: building it again resolves the program the same way.
        command: raw
            .command
            .as_deref()
            .and_then(|command| ExecHandler::new(command).ok())
            .map(|handler| handler.shown_command()),
        timeout_ms: route.timeout.as_millis() as u64,
        max_attempts: route.retry.max_attempts,
        backoff_initial_ms: route.retry.initial.as_millis() as u64,
        backoff_max_ms: route.retry.max.as_millis() as u64,
        backoff_multiplier: route.retry.multiplier,
    })
    .unwrap_or(Value::Null)
}

/// `key = value` lines, keys as in error messages (`groups[0].routes[1].url`); unset keys omitted.
fn print_text(report: &Value) {
    outln!("configuration is valid");
    let mut lines = Vec::new();
    flatten("", &report["config"], &mut lines);
    if let Some(results) = report["connect"].as_object() {
        for (name, result) in results {
            let status = match result["error"].as_str() {
                Some(error) if name == "schema" => error.to_owned(),
                Some(error) => format!("unreachable: {error}"),
                None => "ok".to_owned(),
            };
            lines.push((format!("connect.{name}"), status));
        }
    }
    let width = lines.iter().map(|(key, _)| key.len()).max().unwrap_or(0);
    for (key, value) in lines {
        outln!("{key:width$} = {value}");
    }
}

fn flatten(prefix: &str, value: &Value, lines: &mut Vec<(String, String)>) {
    match value {
        Value::Null => {}
        Value::Object(map) => {
            for (key, value) in map {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                flatten(&path, value, lines);
            }
        }
        Value::Array(items) if items.iter().all(|v| !v.is_object()) => {
            lines.push((prefix.to_owned(), value.to_string()));
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                flatten(&format!("{prefix}[{i}]"), item, lines);
            }
        }
        other => lines.push((prefix.to_owned(), other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flattened_keys_are_the_error_key_paths() {
        let mut lines = Vec::new();
        flatten(
            "",
            &json!({"a": {"b": 1, "c": null}, "groups": [{"topics": ["x"], "n": "s"}]}),
            &mut lines,
        );
        assert_eq!(
            lines,
            [
                ("a.b".to_owned(), "1".to_owned()),
                ("groups[0].n".to_owned(), "\"s\"".to_owned()),
                ("groups[0].topics".to_owned(), "[\"x\"]".to_owned()),
            ]
        );
    }
}

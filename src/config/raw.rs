//! [`RawConfig`]: the configuration as written, merged from its layers, before any check.
//! Every field is optional here. Unknown keys are not refused by serde (that stops at the
//! first): [`RawConfig::load`] and [`RawConfig::from_toml`] collect every one of them
//! (`unknown.rs`) and report them together, each with the nearest known key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use super::{ConfigErrors, unknown};

/// The configuration file as written, before checks. Deserializing it directly skips
/// unknown keys silently: read it with [`RawConfig::load`] or [`RawConfig::from_toml`], which
/// report them.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct RawConfig {
    /// Postgres URL, e.g. `postgres://postgres@127.0.0.1/app` (the primary, not a standby).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_url: Option<String>,
    /// Redis URL, e.g. `redis://127.0.0.1:6379` or `rediss://…` for TLS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_url: Option<String>,
    /// `[postgres]`: the relay's connections to Postgres.
    #[serde(default, skip_serializing_if = "is_default")]
    pub postgres: RawPostgres,
    /// `[publish]`: limits applied to messages published through outbox-relay.
    #[serde(default, skip_serializing_if = "is_default")]
    pub publish: RawPublish,
    /// `[redis]`: how the relay writes to Redis.
    #[serde(default, skip_serializing_if = "is_default")]
    pub redis: RawRedis,
    /// `[relay]`: how the relay reads the outbox.
    #[serde(default, skip_serializing_if = "is_default")]
    pub relay: RawRelay,
    /// `[registry]`: the schema registry's policy.
    #[serde(default, skip_serializing_if = "is_default")]
    pub registry: RawRegistry,
    /// `[http]`: the metrics and health endpoints of `outbox-relay run`.
    #[serde(default, skip_serializing_if = "is_default")]
    pub http: RawHttp,
    /// `[[groups]]`: the consumer groups this relay runs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<RawGroup>,
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

/// `[postgres]` section.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RawPostgres {
    /// Most connections `outbox-relay run` opens to Postgres, shared by every group, the
    /// `wakeup = "notify"` listener and the HTTP endpoints (default 10; at least 1, 2 with
    /// `wakeup = "notify"`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
}

/// `[publish]` section.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RawPublish {
    /// Largest payload accepted, in bytes of JSON text (default 1048576 = 1 MiB).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_payload_bytes: Option<u64>,
}

/// `[redis]` section.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RawRedis {
    /// Prepended to every key the relay writes (streams and their bookkeeping), e.g. `app:`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_prefix: Option<String>,
    /// Cap streams at about this many entries (`XADD … MAXLEN ~ N`); unset = uncapped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_len: Option<u64>,
    /// How long one Redis call may take before it is retried (default 5000).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_timeout_ms: Option<u64>,
    /// After each append, wait until this many replicas acknowledged it (`WAIT`) before the
    /// cursor moves; a shortfall means the batch is appended (and waited for) again later
    /// (default 0: no wait).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wait_replicas: Option<u32>,
    /// How long one `WAIT` for `wait_replicas` may take (default 1000).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wait_timeout_ms: Option<u64>,
    /// With a `rediss://` URL: the CA certificate(s), PEM, that signed the server's certificate,
    /// e.g. `/etc/outbox-relay/redis-ca.pem`. Unset: the public web roots (webpki-roots) and the
    /// system's trust store.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_ca_file: Option<PathBuf>,
    /// With a `rediss://` URL and a server that asks for client certificates (mutual TLS): this
    /// client's certificate chain, PEM. Needs `tls_client_key_file` too.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_client_cert_file: Option<PathBuf>,
    /// The private key, PEM, of `tls_client_cert_file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_client_key_file: Option<PathBuf>,
    /// `true`: `redis_url` is a seed node of a Redis Cluster; the relay discovers the masters
    /// and follows `MOVED`/`ASK` (default false: one Redis server).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<bool>,
    /// With `cluster = true`: more seed nodes, e.g. `["redis://10.0.0.2:6379"]`, tried when
    /// `redis_url` does not answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_nodes: Option<Vec<String>>,
}

/// `[relay]` section.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RawRelay {
    /// Messages read per batch (default 500).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<u64>,
    /// `poll` (default) or `notify`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wakeup: Option<String>,
    /// Wait before polling again when caught up, in ms (default 5).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_poll_ms: Option<u64>,
    /// Lease time of a group, in ms (default 10000): a standby takes over this long after the
    /// active relay stopped renewing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_ttl_ms: Option<u64>,
    /// Longest wait between reconnect attempts after Postgres or Redis failed, in ms (default 5000).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_backoff_ms: Option<u64>,
    /// How often a stalled group (xmin held back) is reported, in ms (default 10000).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stall_report_interval_ms: Option<u64>,
    /// On SIGTERM/SIGINT, how long in-flight work (a handler call, an append) may take to
    /// finish, in ms (default 5000); what is still running then is abandoned, unmarked, for
    /// the next owner. 0 abandons it at once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shutdown_grace_ms: Option<u64>,
}

/// `[registry]` section.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RawRegistry {
    /// Topics without a registered schema: `allow` (default; published unvalidated, relayed as
    /// they are) or `reject` (publishing refuses them, the relay dead-letters their rows).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unregistered: Option<String>,
}

/// `[http]` section.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RawHttp {
    /// Address to serve `/metrics`, `/healthz` and `/readyz` on while `run` runs, e.g.
    /// `127.0.0.1:9187` (`run --http` overrides it); unset = no HTTP server.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
}

/// `[[groups]]` entry.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct RawGroup {
    /// Group name: letters, digits, `_`, `.`, `-`; at most 100 characters.
    pub name: String,
    /// Order under failure: `key` (default: a failing message holds back later messages with
    /// its key only), `strict` (the group stops at a failing message), `none` (failures retry
    /// independently).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ordering: Option<String>,
    /// A stream that receives a copy of every message that goes dead in this group, with the
    /// reason in its `error` field. Unset: dead letters stay in `outbox.deliveries` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dead_letter_stream: Option<String>,
    /// The fields of this group's stream entries (default: all of DESIGN §6); `payload` must
    /// be one of them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entry_fields: Option<Vec<String>>,
    /// How many handler calls of this group may run at once (default 256): messages of one
    /// key one after another, different keys concurrently.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<u64>,
    /// How many key partitions the group is split into (default 1: one relay at a time runs
    /// it). With N > 1 the relays running the group share its N partitions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partitions: Option<u64>,
    /// `[[groups.routes]]`: topic patterns and what to do with them, first match wins.
    #[serde(default)]
    pub routes: Vec<RawRoute>,
}

/// `[[groups.routes]]` entry.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct RawRoute {
    /// Glob patterns matched against the whole topic, e.g. `["orders.*", "users.signed_up"]`.
    #[serde(default)]
    pub topics: Vec<String>,
    /// `forward` (append to `stream`), `drop`, `http` (POST to `url`) or `exec` (run
    /// `command`).
    #[serde(default)]
    pub handler: String,
    /// For `forward`: the stream name, with `{topic}` and `{key}` placeholders.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// For `http`: the URL to POST each message to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// For `http`: extra request headers, e.g. `{ authorization = "Bearer …" }`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// For `exec`: the program and its arguments, e.g. `["/usr/local/bin/notify", "--channel",
    /// "orders"]`; the program an absolute path or a name found on `PATH`. Each message is
    /// written to its stdin as JSON. The arguments are never shown (they may hold secrets).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// How long one handler call may take, in ms (default 10000); longer is a retryable failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Attempts in all before a message is dead, the first included (default 10).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// Delay before the first retry, in ms (default 1000).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backoff_initial_ms: Option<u64>,
    /// Longest delay between attempts, in ms (default 300000).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backoff_max_ms: Option<u64>,
    /// Each retry waits this many times longer than the one before (default 2.0); ±20 % jitter.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backoff_multiplier: Option<f64>,
}

/// Values from the command line. They beat every other layer.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// The TOML file to read, if any.
    pub config_file: Option<PathBuf>,
    /// `--database-url`: beats `OUTBOX_DATABASE_URL`, `DATABASE_URL` and the file.
    pub database_url: Option<String>,
    /// `--redis-url`: beats `OUTBOX_REDIS_URL`, `REDIS_URL` and the file.
    pub redis_url: Option<String>,
}

impl RawConfig {
    /// Parses TOML text; every unknown key is an error.
    pub fn from_toml(text: &str) -> Result<RawConfig, ConfigErrors> {
        refuse_unknown(RawConfig::from_toml_with_unknown_keys(text)?)
    }

    /// Parses TOML text; returns the problems of its unknown keys beside it (for a caller
    /// that reports them together with the checks of [`super::Config::from_raw`]).
    pub fn from_toml_with_unknown_keys(
        text: &str,
    ) -> Result<(RawConfig, ConfigErrors), ConfigErrors> {
        unknown::extract(&Figment::from(Toml::string(text)))
    }

    /// Merges the layers, lowest first: file, `DATABASE_URL`/`REDIS_URL`, `OUTBOX_*`, flags;
    /// every unknown key is an error.
    pub fn load(overrides: &Overrides) -> Result<RawConfig, ConfigErrors> {
        refuse_unknown(RawConfig::load_with_unknown_keys(overrides)?)
    }

    /// As [`RawConfig::load`], returning the problems of unknown keys beside the
    /// configuration (for a caller that reports them together with the checks of
    /// [`super::Config::from_raw`]).
    pub fn load_with_unknown_keys(
        overrides: &Overrides,
    ) -> Result<(RawConfig, ConfigErrors), ConfigErrors> {
        let mut figment = Figment::new();
        if let Some(path) = &overrides.config_file {
            check_readable(path)?;
            figment = figment.merge(Toml::file_exact(path));
        }
        let flags = RawConfig {
            database_url: overrides.database_url.clone(),
            redis_url: overrides.redis_url.clone(),
            ..RawConfig::default()
        };
        let figment = figment
            .merge(Env::raw().only(&["database_url", "redis_url"]))
            .merge(Env::prefixed("OUTBOX_").ignore(&["config"]).split("__"))
            .merge(Serialized::defaults(flags));
        unknown::extract(&figment)
    }
}

fn refuse_unknown((raw, unknown): (RawConfig, ConfigErrors)) -> Result<RawConfig, ConfigErrors> {
    if unknown.is_empty() {
        Ok(raw)
    } else {
        Err(unknown)
    }
}

fn check_readable(path: &Path) -> Result<(), ConfigErrors> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() => Ok(()),
        Ok(_) => Err(ConfigErrors::one(
            "--config",
            format!("{} is not a file", path.display()),
        )),
        Err(e) => Err(ConfigErrors::one(
            "--config",
            format!("cannot read {}: {e}", path.display()),
        )),
    }
}

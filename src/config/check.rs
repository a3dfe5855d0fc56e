//! Checks of the single sections (`[publish]`, `[redis]`, `[relay]`, `[registry]`): each turns
//! its raw section into settings, pushing every problem with its key path and keeping the
//! default where a value is wrong, so all problems are reported at once.

use std::path::Path;
use std::time::Duration;

use super::suggest::unknown_value;
use super::{
    ClusterSeeds, ConfigErrors, ConnectionUrl, NOTIFY_FALLBACK_POLL, PostgresSettings, RawPostgres,
    RawPublish, RawRedis, RawRegistry, RawRelay, RedisClientCert, RedisSettings, RegistrySettings,
    RelaySettings, Wakeup,
};
use crate::publish::PublishLimits;
use crate::registry::Unregistered;

pub(super) fn check_publish(raw: &RawPublish, errors: &mut ConfigErrors) -> PublishLimits {
    let mut publish = PublishLimits::default();
    match raw.max_payload_bytes {
        Some(0) => errors.push("publish.max_payload_bytes", "must be at least 1"),
        Some(bytes) => match usize::try_from(bytes) {
            Ok(bytes) => publish.max_payload_bytes = bytes,
            Err(_) => errors.push("publish.max_payload_bytes", "too large for this platform"),
        },
        None => {}
    }
    publish
}

pub(super) fn check_redis(raw: &RawRedis, errors: &mut ConfigErrors) -> RedisSettings {
    let mut redis = RedisSettings::default();
    if let Some(prefix) = &raw.key_prefix {
        if prefix.chars().any(|c| c.is_whitespace() || c.is_control()) {
            errors.push(
                "redis.key_prefix",
                "must not contain whitespace or control characters",
            );
        }
        redis.key_prefix = prefix.clone();
    }
    match raw.max_len {
        Some(0) => errors.push(
            "redis.max_len",
            "must be at least 1 (leave it out for uncapped streams)",
        ),
        other => redis.max_len = other,
    }
    if let Some(ms) = positive_ms(raw.response_timeout_ms, "redis.response_timeout_ms", errors) {
        redis.response_timeout = ms;
    }
    redis.wait_replicas = raw.wait_replicas.unwrap_or(0);
    if let Some(ms) = positive_ms(raw.wait_timeout_ms, "redis.wait_timeout_ms", errors) {
        redis.wait_timeout = ms;
    }
    if redis.wait_replicas > 0 && redis.wait_timeout >= redis.response_timeout {
        errors.push(
            "redis.wait_timeout_ms",
            format!(
                "{} ms is not below redis.response_timeout_ms ({} ms): a WAIT that long would time out as a Redis error instead of reporting too few replicas",
                redis.wait_timeout.as_millis(),
                redis.response_timeout.as_millis()
            ),
        );
    }
    if let Some(path) = &raw.tls_ca_file {
        check_pem_file(path, Pem::Certificate, "redis.tls_ca_file", errors);
        redis.tls.ca_file = Some(path.clone());
    }
    match (&raw.tls_client_cert_file, &raw.tls_client_key_file) {
        (Some(cert_file), Some(key_file)) => {
            check_pem_file(
                cert_file,
                Pem::Certificate,
                "redis.tls_client_cert_file",
                errors,
            );
            check_pem_file(
                key_file,
                Pem::PrivateKey,
                "redis.tls_client_key_file",
                errors,
            );
            redis.tls.client = Some(RedisClientCert {
                cert_file: cert_file.clone(),
                key_file: key_file.clone(),
            });
        }
        (Some(_), None) => errors.push(
            "redis.tls_client_key_file",
            "not set, but tls_client_cert_file is: mutual TLS needs both",
        ),
        (None, Some(_)) => errors.push(
            "redis.tls_client_cert_file",
            "not set, but tls_client_key_file is: mutual TLS needs both",
        ),
        (None, None) => {}
    }
    redis
}

/// `[redis] cluster` and `cluster_nodes`, next to the URL they go with: seeds are only
/// meaningful for a cluster, and every node of one cluster is reached the same way (TCP, with
/// or without TLS, as `redis_url` says).
pub(super) fn check_redis_cluster(
    raw: &RawRedis,
    redis_url: Option<&ConnectionUrl>,
    errors: &mut ConfigErrors,
) -> Option<ClusterSeeds> {
    let listed = raw.cluster_nodes.as_deref().unwrap_or_default();
    if raw.cluster != Some(true) {
        if !listed.is_empty() {
            errors.push(
                "redis.cluster_nodes",
                "set, but `redis.cluster` is not true: seed nodes are for a Redis Cluster (set `cluster = true`, or remove them)",
            );
        }
        return None;
    }
    let tls = redis_url.map(ConnectionUrl::is_tls);
    if let Some(url) = redis_url
        && !matches!(url.scheme(), "redis" | "rediss")
    {
        errors.push(
            "redis_url",
            "a Redis Cluster is reached over TCP: with `redis.cluster = true` the URL must start with redis:// or rediss://",
        );
    }
    let mut nodes = Vec::with_capacity(listed.len());
    for node in listed {
        match ConnectionUrl::parse(node, &["redis", "rediss"]) {
            Ok(url) if tls.is_some_and(|tls| tls != url.is_tls()) => errors.push(
                "redis.cluster_nodes",
                format!(
                    "`{}` and redis_url differ in TLS: every node of one cluster is reached the same way (redis:// or rediss:// for all)",
                    url.redacted()
                ),
            ),
            Ok(url) => nodes.push(url),
            Err(problem) => errors.push("redis.cluster_nodes", problem),
        }
    }
    Some(ClusterSeeds { nodes })
}

/// The certificate files a Postgres URL names (`sslrootcert`, `sslcert`, `sslkey`) must be
/// readable PEM, so a typo is reported at load rather than as a TLS failure at connect.
pub(super) fn check_postgres_tls_files(url: &ConnectionUrl, errors: &mut ConfigErrors) {
    for (param, kind) in [
        ("sslrootcert", Pem::Certificate),
        ("sslcert", Pem::Certificate),
        ("sslkey", Pem::PrivateKey),
    ] {
        // `sslrootcert=system` is libpq's name for the system trust store, not a file.
        if let Some(path) = url.query_value(param).filter(|p| p != "system") {
            check_pem_file(
                Path::new(&path),
                kind,
                &format!("database_url ({param})"),
                errors,
            );
        }
    }
}

/// What a PEM file must hold.
#[derive(Debug, Clone, Copy)]
enum Pem {
    Certificate,
    PrivateKey,
}

/// Pushes a problem under `key` unless `path` is a readable file holding PEM of `kind`. The
/// problem names the file, never its contents (a key file is a secret).
fn check_pem_file(path: &Path, kind: Pem, key: &str, errors: &mut ConfigErrors) {
    let text = match std::fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) => {
            errors.push(key, format!("cannot read {}: {e}", path.display()));
            return;
        }
    };
    let (marker, what) = match kind {
        Pem::Certificate => ("-----BEGIN CERTIFICATE-----", "a PEM certificate"),
        Pem::PrivateKey => ("PRIVATE KEY-----", "a PEM private key"),
    };
    if !text.contains(marker) {
        errors.push(key, format!("{} does not hold {what}", path.display()));
    }
}

pub(super) fn check_relay(raw: &RawRelay, errors: &mut ConfigErrors) -> RelaySettings {
    let mut relay = RelaySettings::default();
    match raw.batch_size {
        Some(0) => errors.push("relay.batch_size", "must be at least 1"),
        Some(n) if n > 100_000 => errors.push("relay.batch_size", "must be at most 100000"),
        Some(n) => relay.batch_size = n as usize,
        None => {}
    }
    match raw.wakeup.as_deref() {
        None | Some("poll") => {}
        Some("notify") => relay.wakeup = Wakeup::Notify,
        Some(other) => errors.push(
            "relay.wakeup",
            unknown_value("value", other, &["poll", "notify"]),
        ),
    }
    match raw.idle_poll_ms {
        Some(0) => errors.push("relay.idle_poll_ms", "must be at least 1"),
        Some(ms) => relay.idle_poll = Duration::from_millis(ms),
        // With notifications the poll is only the fallback for a lost one.
        None if relay.wakeup == Wakeup::Notify => relay.idle_poll = NOTIFY_FALLBACK_POLL,
        None => {}
    }
    if let Some(ttl) = positive_ms(raw.lease_ttl_ms, "relay.lease_ttl_ms", errors) {
        if ttl < Duration::from_millis(100) {
            errors.push("relay.lease_ttl_ms", "must be at least 100");
        }
        relay.lease_ttl = ttl;
    }
    if let Some(ms) = positive_ms(raw.max_backoff_ms, "relay.max_backoff_ms", errors) {
        relay.max_backoff = ms;
    }
    if let Some(ms) = positive_ms(
        raw.stall_report_interval_ms,
        "relay.stall_report_interval_ms",
        errors,
    ) {
        relay.stall_report_interval = ms;
    }
    if let Some(ms) = raw.shutdown_grace_ms {
        relay.shutdown_grace = Duration::from_millis(ms);
    }
    relay
}

/// The fewest connections the relay works with: one for everything, plus the one the
/// `wakeup = "notify"` listener keeps for itself. Nothing in the relay holds a connection
/// while it waits for another, so a pool this small is slow under load, never stuck.
fn min_connections(wakeup: Wakeup) -> u32 {
    match wakeup {
        Wakeup::Poll => 1,
        Wakeup::Notify => 2,
    }
}

pub(super) fn check_postgres(
    raw: &RawPostgres,
    wakeup: Wakeup,
    errors: &mut ConfigErrors,
) -> PostgresSettings {
    let mut postgres = PostgresSettings::default();
    if let Some(max) = raw.max_connections {
        let min = min_connections(wakeup);
        if max < min {
            let why = match wakeup {
                Wakeup::Poll => String::new(),
                Wakeup::Notify => {
                    " with wakeup = \"notify\" (its LISTEN connection is held for good)".to_owned()
                }
            };
            errors.push(
                "postgres.max_connections",
                format!("must be at least {min}{why}"),
            );
        }
        postgres.max_connections = max;
    }
    postgres
}

pub(super) fn check_registry(raw: &RawRegistry, errors: &mut ConfigErrors) -> RegistrySettings {
    let mut registry = RegistrySettings::default();
    if let Some(text) = &raw.unregistered {
        match text.parse::<Unregistered>() {
            Ok(policy) => registry.unregistered = policy,
            Err(_) => errors.push(
                "registry.unregistered",
                unknown_value(
                    "value",
                    text,
                    &[Unregistered::Allow.as_str(), Unregistered::Reject.as_str()],
                ),
            ),
        }
    }
    registry
}

pub(super) fn positive_ms(
    value: Option<u64>,
    key: &str,
    errors: &mut ConfigErrors,
) -> Option<Duration> {
    match value {
        Some(0) => {
            errors.push(key, "must be at least 1");
            None
        }
        other => other.map(Duration::from_millis),
    }
}

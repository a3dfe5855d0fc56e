//! Redis Streams output: the only Redis code. One [`Sink`] per relay process.
//!
//! An append is one optimistic transaction per batch (`watermark.rs`): `WATCH` the group's
//! watermark beside each of the batch's streams (in the stream's hash slot) and read it, then
//! `MULTI`, the `XADD`s of the entries past it, the new watermarks, `EXEC`. Entries the group
//! already appended are skipped, and a caller whose lease epoch is older than one that already
//! wrote there is refused, so replays add nothing and a relay that lost its lease cannot write.
//!
//! Late entries (outputs of retried messages, dead-letter copies) are older than what the
//! watermark has passed; they go through `append_late.lua` instead, which gives each entry a
//! token key of its own (set together with the XADD), so a retry after a crash adds nothing
//! and a late entry is never mistaken for a replay.
//!
//! A deliberate replay (`outbox-relay replay`, `groups reset`) bumps the group's replay
//! generation in Postgres. Positions the watermark compares, and late tokens, carry that
//! generation, so the entries a replay sends again pass the filter once, and a crash during the
//! replay still adds nothing twice.

mod cluster;
mod connection;
mod dedupe_mark;
mod keys;
mod settings;
mod watermark;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{
    AsyncConnectionConfig, ClientTlsConfig, ErrorKind, RedisError, Script, ServerErrorKind,
    TlsCertificates,
};

use cluster::Cluster;
pub use connection::RedisConnection;
pub use dedupe_mark::DedupeMark;
pub use keys::{hash_tag, late_token_key, watermark_key};
pub use settings::{ClusterSeeds, RedisClientCert, RedisSettings, RedisTls};
use watermark::{ReplicaWait, StreamKeys, WatchConnections};

use crate::position::Position;
use crate::redact::ConnectionUrl;

/// One entry for a stream: the message's position and the output's ordinal among that
/// message's entries in this stream (together, its identity for deduplication), and its fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The position of the message the entry comes from.
    pub position: Position,
    /// The entry's ordinal among that message's entries in this stream, from 0.
    pub ordinal: u32,
    /// The entry's fields.
    pub fields: Vec<(&'static str, String)>,
}

/// Entry fields: name, value.
pub type Fields = Vec<(&'static str, String)>;

/// One late entry: a token unique to it within (group, stream) — e.g. `<message id>:<ordinal>`
/// — and its fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LateEntry {
    /// The message the entry comes from (a failed append is charged to it).
    pub message_id: uuid::Uuid,
    /// Unique to the entry within (group, stream): an append with a token already seen adds
    /// nothing.
    pub token: String,
    /// The entry's fields.
    pub fields: Fields,
}

/// The late entries of one stream, in the order they should appear.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LateAppend {
    /// The stream, named without the key prefix.
    pub stream: String,
    /// Its late entries.
    pub entries: Vec<LateEntry>,
}

/// How long a late entry's token key lives: far longer than any gap between an append and the
/// Postgres commit that settles it (7 days).
pub const LATE_TOKEN_TTL_SECS: u64 = 7 * 24 * 3600;

/// Who appends: the consumer group, its lease epoch (older epochs are refused), and its replay
/// generation (entries of a newer generation are not compared with older ones).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Writer<'a> {
    /// The consumer group.
    pub group: &'a str,
    /// The epoch of the lease the writer holds.
    pub epoch: i64,
    /// The group's replay generation.
    pub replay_generation: i64,
}

/// The entries of one batch for one stream (named without the key prefix), ascending by position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamAppend {
    /// The stream, named without the key prefix.
    pub stream: String,
    /// Its entries, ascending by position.
    pub entries: Vec<Entry>,
    /// How far the group has appended to this stream before, as far as the caller knows (from
    /// Postgres and its own appends). A watermark in Redis behind it means Redis lost
    /// acknowledged entries: the append is refused with [`SinkError::Lost`] so the caller can
    /// re-append the gap first. `None`: nothing to compare (a repair, or nothing known).
    pub appended_through: Option<DedupeMark>,
}

/// A stream key that holds something other than a stream: no entry can be appended there
/// until an operator fixes the key. On a Redis Cluster also a stream whose name cannot keep
/// its watermark in its hash slot ([`WrongType::CROSS_SLOT`]): until its route names another
/// stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrongType {
    /// The stream's name (without the key prefix), as routes name it.
    pub stream: String,
    /// The Redis key.
    pub key: String,
    /// What the key holds (`string`, `hash`, …, as `TYPE` says), or [`WrongType::CROSS_SLOT`].
    pub kind: String,
}

impl WrongType {
    /// The `kind` of a stream key with a `}` outside a hash tag on a Redis Cluster: its
    /// watermark key cannot share its slot, so no transaction can write both.
    pub const CROSS_SLOT: &'static str = "cross-slot name";
}

impl std::fmt::Display for WrongType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.kind == WrongType::CROSS_SLOT {
            return write!(
                f,
                "CROSSSLOT: on Redis Cluster {} cannot keep its watermark in its hash slot (a `}}` outside a `{{…}}` hash tag); route its messages to a stream name without braces",
                self.key
            );
        }
        write!(
            f,
            "WRONGTYPE: {} holds a {}, not a stream",
            self.key, self.kind
        )
    }
}

/// A stream whose watermark in Redis is behind what the group appended there (Redis
/// restarted empty or from an older snapshot, or failed over to a replica that lagged).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LostAppends {
    /// The stream, named without the key prefix.
    pub stream: String,
    /// What the watermark in Redis holds now (`None`: gone).
    pub redis_mark: Option<DedupeMark>,
    /// How far the group had appended.
    pub appended_through: DedupeMark,
}

fn join<T: std::fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(T::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Why connecting to Redis, or an append, failed.
///
/// A connect failure says whether trying again later may help
/// ([`SinkError::is_transient_connect`]). After a failed append the caller must not move its
/// cursor, and appending the same batch again is safe: the watermark and the late tokens
/// deduplicate, so what did reach Redis is not added twice. [`SinkError::is_fenced`] means the
/// caller lost its lease and must stop writing.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// `transient`: connecting again later may work (see [`SinkError::is_transient_connect`]).
    #[error("could not connect to Redis at {url}: {cause}")]
    Connect {
        /// The URL, its password redacted.
        url: String,
        /// What went wrong, with what to check for TLS and authentication failures.
        cause: String,
        /// True when connecting again later may work.
        transient: bool,
    },
    /// A `[redis] tls_*` file could not be read when connecting.
    #[error("could not read `redis.{key}` ({path}): {source}")]
    TlsFile {
        /// The setting (`tls_ca_file`, …).
        key: &'static str,
        /// The file.
        path: String,
        /// Why it could not be read.
        #[source]
        source: std::io::Error,
    },
    /// A newer lease epoch has written to the stream: this relay lost its lease.
    #[error("append to stream `{stream}` refused: {detail} (another relay holds the lease)")]
    Fenced {
        /// The stream, named without the key prefix.
        stream: String,
        /// Why it was refused (the writer's lease epoch against the newer one).
        detail: String,
    },
    /// A watermark holds something this relay never writes: a bug, or another program's key.
    #[error("watermark `{key}` holds `{value}`, which is not a position this relay writes")]
    CorruptWatermark {
        /// The watermark's Redis key.
        key: String,
        /// What it holds.
        value: String,
    },
    /// Stream keys that are not streams: nothing was appended to them (see
    /// [`SinkError::WrongType`]'s entries for which).
    #[error("append refused: {}", join(.0))]
    WrongType(Vec<WrongType>),
    /// Redis holds less than the group appended to these streams: nothing was appended; the
    /// caller re-appends the gap, then this batch.
    #[error("Redis lost appended entries of stream(s) {}", .0.iter().map(|l| l.stream.as_str()).collect::<Vec<_>>().join(", "))]
    Lost(Vec<LostAppends>),
    /// Fewer replicas than `[redis] wait_replicas` acknowledged the append within
    /// `wait_timeout_ms`: it is in the master, but the cursor must not move yet.
    #[error(
        "append acknowledged by {acked} of {wanted} replica(s) within {timeout_ms} ms ([redis] wait_replicas); it will be appended and waited for again"
    )]
    NotReplicated {
        /// How many replicas acknowledged.
        acked: i64,
        /// `[redis] wait_replicas`.
        wanted: u32,
        /// `[redis] wait_timeout_ms`.
        timeout_ms: u64,
    },
    /// The watched watermarks changed under every attempt (other writers kept appending).
    #[error("append gave up after {attempts} attempts: the stream's watermark kept changing")]
    Contended {
        /// How many times the transaction was tried.
        attempts: usize,
    },
    /// Redis failed or timed out; the append may or may not have happened. Retrying is safe:
    /// the watermark and the late tokens deduplicate.
    #[error("append to Redis failed")]
    Redis(#[source] RedisError),
}

impl SinkError {
    /// True when the relay should go back to standby rather than retry.
    pub fn is_fenced(&self) -> bool {
        matches!(self, SinkError::Fenced { .. })
    }

    /// True for a connect failure that connecting again later may cure (Redis down, loading,
    /// restarting); false for what only a configuration change fixes (a refused password, a
    /// TLS setting the server rejects, an unreadable certificate file, an invalid URL).
    pub fn is_transient_connect(&self) -> bool {
        matches!(
            self,
            SinkError::Connect {
                transient: true,
                ..
            }
        )
    }
}

/// Whether a failed connection attempt is worth repeating (see
/// [`SinkError::is_transient_connect`]).
fn connect_error_is_transient(error: &RedisError) -> bool {
    let text = error.to_string().to_ascii_lowercase();
    let refused_password = ["wrongpass", "noauth", "noperm"]
        .iter()
        .any(|word| text.contains(word));
    !refused_password
        && !is_tls_refusal(&text)
        && !matches!(
            error.kind(),
            ErrorKind::AuthenticationFailed
                | ErrorKind::InvalidClientConfig
                | ErrorKind::RESP3NotSupported
        )
}

/// Whether a connect error's text (lower case) is the TLS handshake failing.
fn is_tls_refusal(lower: &str) -> bool {
    lower.contains("certificate") || lower.contains("tls") || lower.contains("handshake")
}

/// A client for the server at `url`, with `certificates` for TLS, whose connections send each
/// write at once (`TCP_NODELAY`; redis-rs leaves Nagle's algorithm on, which can hold a small
/// write back until the server acknowledges the previous one).
fn client(
    url: &ConnectionUrl,
    certificates: Option<TlsCertificates>,
) -> Result<redis::Client, RedisError> {
    use redis::IntoConnectionInfo;
    let info = url
        .expose()
        .into_connection_info()?
        .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
    match certificates {
        Some(certificates) => redis::Client::build_with_tls(info, certificates),
        None => redis::Client::open(info),
    }
}

/// The certificates of `[redis] tls_*`, read now (so a renewed file is used after a restart),
/// or `None` when none is configured and the default trust roots apply.
fn tls_certificates(tls: &RedisTls) -> Result<Option<TlsCertificates>, SinkError> {
    if !tls.is_set() {
        return Ok(None);
    }
    let read = |key: &'static str, path: &Path| {
        std::fs::read(path).map_err(|source| SinkError::TlsFile {
            key,
            path: path.display().to_string(),
            source,
        })
    };
    let root_cert = match &tls.ca_file {
        Some(path) => Some(read("tls_ca_file", path)?),
        None => None,
    };
    let client_tls = match &tls.client {
        Some(client) => Some(ClientTlsConfig {
            client_cert: read("tls_client_cert_file", &client.cert_file)?,
            client_key: read("tls_client_key_file", &client.key_file)?,
        }),
        None => None,
    };
    Ok(Some(TlsCertificates {
        client_tls,
        root_cert,
    }))
}

/// A connect failure in one line, with a hint when it is the server's certificate that was
/// refused. redis-rs's texts name neither the URL nor the password.
fn describe_connect_error(error: &RedisError) -> String {
    let text = error.to_string();
    let lower = text.to_ascii_lowercase();
    if lower.contains("certificaterequired") || lower.contains("certificate required") {
        format!(
            "TLS handshake failed: {text} (the server wants a client certificate: set [redis] tls_client_cert_file and tls_client_key_file)"
        )
    } else if is_tls_refusal(&lower) {
        format!(
            "TLS handshake failed: {text} (check that [redis] tls_ca_file is the CA that signed the server's certificate and that the URL's host is in it)"
        )
    } else {
        text
    }
}

/// One Redis server, or a cluster.
#[derive(Clone)]
enum Backend {
    /// One server: a batch's streams in one transaction.
    Single {
        connection: ConnectionManager,
        watch: Arc<WatchConnections>,
    },
    /// `[redis] cluster = true`: one transaction per stream, on its slot's master.
    Cluster(Arc<Cluster>),
}

/// How many entries an append added (the rest were already there).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AppendReport {
    /// Entries added to their streams.
    pub appended: u64,
    /// Entries skipped: the group had appended them already.
    pub skipped: u64,
}

/// The Redis Streams output of a relay process: connect one with [`Sink::connect`] and hand
/// it to [`Relay::new`](crate::relay::Relay::new). Clones share one connection, which
/// reconnects by itself.
///
/// [`Sink::append`] is the effectively-once append: entries a group already appended are
/// skipped (so a replay after a crash adds nothing), and a writer whose lease epoch is older
/// than one that already wrote to the stream is refused ([`SinkError::Fenced`]).
#[derive(Clone)]
pub struct Sink {
    backend: Backend,
    key_prefix: String,
    max_len: u64,
    late_script: Script,
    /// `[redis] wait_replicas` and `wait_timeout_ms`, when set.
    wait: Option<ReplicaWait>,
}

impl Sink {
    /// Connects (and keeps reconnecting in the background) to `url`: one Redis server, or with
    /// `settings.cluster` the Redis Cluster `url` (and the other seeds) belong to. Either way
    /// the server is asked first whether it is a cluster node, so a `[redis] cluster` that
    /// does not match the server is a clear error rather than `MOVED` replies later.
    pub async fn connect(url: &ConnectionUrl, settings: &RedisSettings) -> Result<Sink, SinkError> {
        let fail = |e: RedisError| SinkError::Connect {
            url: url.to_string(),
            cause: describe_connect_error(&e),
            transient: connect_error_is_transient(&e),
        };
        let certificates = tls_certificates(&settings.tls)?;
        let client = client(url, certificates.clone()).map_err(fail)?;
        let wait = (settings.wait_replicas > 0).then_some(ReplicaWait {
            replicas: settings.wait_replicas,
            timeout: settings.wait_timeout,
        });
        // A WAIT rides behind the EXEC on the same connection: its reply may take that long more.
        let watch_timeout = settings.response_timeout + wait.map_or(Duration::ZERO, |w| w.timeout);
        let watch_config = AsyncConnectionConfig::new()
            .set_response_timeout(Some(watch_timeout))
            .set_connection_timeout(Some(settings.response_timeout));
        let backend = match &settings.cluster {
            None => {
                let config = ConnectionManagerConfig::new()
                    .set_response_timeout(Some(settings.response_timeout))
                    .set_connection_timeout(Some(settings.response_timeout))
                    .set_number_of_retries(2)
                    .set_max_delay(Duration::from_secs(1));
                let connection = ConnectionManager::new_with_config(client.clone(), config)
                    .await
                    .map_err(fail)?;
                check_cluster_setting(url, &mut connection.clone(), false).await?;
                if let Some(wait) = wait {
                    warn_if_too_few_replicas(&url.to_string(), &mut connection.clone(), wait).await;
                }
                Backend::Single {
                    connection,
                    watch: Arc::new(WatchConnections::new(client, watch_config)),
                }
            }
            Some(seeds) => {
                let mut all = vec![url.clone()];
                all.extend(seeds.nodes.iter().cloned());
                check_seed_is_a_cluster(&all, &certificates, settings.response_timeout).await?;
                let cluster =
                    Cluster::connect(&all, certificates, settings.response_timeout, watch_config)
                        .await
                        .map_err(fail)?;
                if let Some(wait) = wait {
                    for master in cluster.masters() {
                        if let Ok(client) = cluster.client_for(&master)
                            && let Ok(mut connection) =
                                client.get_multiplexed_async_connection().await
                        {
                            warn_if_too_few_replicas(&master.to_string(), &mut connection, wait)
                                .await;
                        }
                    }
                }
                Backend::Cluster(Arc::new(cluster))
            }
        };
        Ok(Sink {
            backend,
            key_prefix: settings.key_prefix.clone(),
            max_len: settings.max_len.unwrap_or(0),
            late_script: Script::new(include_str!("append_late.lua")),
            wait,
        })
    }

    /// A handle on the sink's Redis connection (it reconnects by itself; on a cluster it
    /// routes each command to its key's master), for reading back what was appended.
    pub fn connection(&self) -> RedisConnection {
        match &self.backend {
            Backend::Single { connection, .. } => RedisConnection::Single(connection.clone()),
            Backend::Cluster(cluster) => RedisConnection::Cluster(cluster.routed()),
        }
    }

    /// On a cluster, the master that holds `key`'s hash slot now (`host`, `port`), as the
    /// sink's slot map says; `None` on one server (or a slot without a master).
    pub fn master_of(&self, key: &str) -> Option<(String, u16)> {
        match &self.backend {
            Backend::Single { .. } => None,
            Backend::Cluster(cluster) => cluster.master_of(key).map(|node| (node.host, node.port)),
        }
    }

    /// True when the sink writes to a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.backend, Backend::Cluster(_))
    }

    /// `[redis] key_prefix`: what every key this sink writes starts with.
    pub fn key_prefix(&self) -> &str {
        &self.key_prefix
    }

    /// The Redis key of a stream (the key prefix prepended).
    pub fn stream_key(&self, stream: &str) -> String {
        format!("{}{stream}", self.key_prefix)
    }

    /// Appends every stream's entries, skipping those `group` already appended there (one
    /// optimistic transaction), then the late entries whose tokens are new (one pipeline).
    pub async fn append(
        &self,
        writer: Writer<'_>,
        appends: &[StreamAppend],
        late: &[LateAppend],
    ) -> Result<AppendReport, SinkError> {
        let total = appends.iter().map(|a| a.entries.len() as u64).sum::<u64>()
            + late.iter().map(|a| a.entries.len() as u64).sum::<u64>();
        let mut appended = 0;
        if !appends.is_empty() {
            let keys: Vec<StreamKeys> = appends
                .iter()
                .map(|append| StreamKeys {
                    stream: self.stream_key(&append.stream),
                    watermark: watermark_key(&self.key_prefix, &append.stream, writer.group),
                })
                .collect();
            appended += match &self.backend {
                Backend::Single { watch, .. } => {
                    watch
                        .append(writer, &keys, appends, self.max_len, self.wait)
                        .await?
                }
                Backend::Cluster(cluster) => {
                    cluster
                        .append(writer, &keys, appends, self.max_len, self.wait)
                        .await?
                }
            };
        }
        if !late.is_empty() {
            appended += self.append_late(writer, late).await?;
        }
        Ok(AppendReport {
            appended,
            skipped: total - appended,
        })
    }

    /// Appends the late entries, one script call per stream in one pipeline (on a cluster, a
    /// pipeline per stream, all at once: one pipeline cannot span slots). Streams whose key is
    /// not a stream get nothing (the script checks before writing) and come back in
    /// [`SinkError::WrongType`] once the others are appended.
    async fn append_late(&self, writer: Writer<'_>, late: &[LateAppend]) -> Result<u64, SinkError> {
        if !self.is_cluster() {
            return self.append_late_pipelined(writer, late).await;
        }
        let results = futures_util::future::join_all(late.iter().map(|append| async move {
            let stream = self.stream_key(&append.stream);
            let watermark = watermark_key(&self.key_prefix, &append.stream, writer.group);
            if let Some(wrong) = cluster::split_slot(&append.stream, &stream, &watermark) {
                return Err(SinkError::WrongType(vec![wrong]));
            }
            self.append_late_pipelined(writer, std::slice::from_ref(append))
                .await
        }))
        .await;
        cluster::merge_results(results)
    }

    /// [`Sink::append_late`] of `late` in one pipeline (all in one slot on a cluster).
    async fn append_late_pipelined(
        &self,
        writer: Writer<'_>,
        late: &[LateAppend],
    ) -> Result<u64, SinkError> {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for append in late {
            pipe.invoke_script(&self.late_invocation(writer, append));
        }
        if let Some(wait) = self.wait {
            pipe.cmd("WAIT")
                .arg(wait.replicas)
                .arg(wait.timeout.as_millis() as u64);
        }
        let mut connection = self.connection();
        let mut replies: Vec<redis::Value> = pipe
            .query_async(&mut connection)
            .await
            .map_err(SinkError::Redis)?;
        // After a Redis restart or failover the script cache is empty: load and go again.
        if replies.iter().any(is_no_script) {
            self.late_script
                .prepare_invoke()
                .load_async(&mut connection)
                .await
                .map_err(SinkError::Redis)?;
            replies = pipe
                .query_async(&mut connection)
                .await
                .map_err(SinkError::Redis)?;
        }
        let waited = match self.wait {
            Some(_) => replies.pop(),
            None => None,
        };
        let mut appended = 0;
        let mut wrong = Vec::new();
        for (append, reply) in late.iter().zip(replies) {
            match reply {
                redis::Value::Int(count) => appended += count as u64,
                redis::Value::ServerError(error) => {
                    let text = error.details().unwrap_or_default().to_owned();
                    match error.code() {
                        "OUTBOX_WRONGTYPE" => wrong.push(WrongType {
                            stream: append.stream.clone(),
                            key: self.stream_key(&append.stream),
                            kind: text,
                        }),
                        "OUTBOX_FENCED" => {
                            return Err(SinkError::Fenced {
                                stream: append.stream.clone(),
                                detail: text,
                            });
                        }
                        _ => return Err(SinkError::Redis(error.into())),
                    }
                }
                other => {
                    return Err(SinkError::Redis(RedisError::from((
                        ErrorKind::Parse,
                        "unexpected reply to the late append",
                        format!("{other:?}"),
                    ))));
                }
            }
        }
        if let (Some(wait), Some(reply)) = (self.wait, waited) {
            wait.check(reply)?;
        }
        if !wrong.is_empty() {
            return Err(SinkError::WrongType(wrong));
        }
        Ok(appended)
    }

    fn late_invocation<'a>(
        &'a self,
        writer: Writer<'_>,
        append: &'a LateAppend,
    ) -> redis::ScriptInvocation<'a> {
        let mut invocation = self.late_script.key(self.stream_key(&append.stream));
        invocation.key(watermark_key(
            &self.key_prefix,
            &append.stream,
            writer.group,
        ));
        for entry in &append.entries {
            let token = match writer.replay_generation {
                0 => late_token_key(&self.key_prefix, &append.stream, writer.group, &entry.token),
                generation => late_token_key(
                    &self.key_prefix,
                    &append.stream,
                    writer.group,
                    &format!("r{generation}:{}", entry.token),
                ),
            };
            invocation.key(token);
        }
        invocation
            .arg(writer.epoch)
            .arg(self.max_len)
            .arg(LATE_TOKEN_TTL_SECS);
        for entry in &append.entries {
            invocation.arg(entry.fields.len() * 2);
            for (name, value) in &entry.fields {
                invocation.arg(*name).arg(value.as_str());
            }
        }
        invocation
    }

    /// What `group`'s watermark beside each of `streams` holds (`None`: no watermark), for
    /// comparing with what the group appended ([`StreamAppend::appended_through`]).
    pub async fn watermarks(
        &self,
        group: &str,
        streams: &[&str],
    ) -> Result<Vec<Option<DedupeMark>>, SinkError> {
        let keys: Vec<String> = streams
            .iter()
            .map(|stream| watermark_key(&self.key_prefix, stream, group))
            .collect();
        self.read_watermarks(&keys).await
    }

    /// Every watermark of `group`'s rows (`<group>`, `<group>/<p>`) under the key prefix,
    /// whatever the stream, as `(row, key, mark)` — found by one SCAN, for `groups
    /// repartition`, not for the hot path.
    pub async fn watermarks_of_group(
        &self,
        group: &str,
    ) -> Result<Vec<(String, String, DedupeMark)>, SinkError> {
        let (rows, keys): (Vec<String>, Vec<String>) = self
            .scan(&keys::watermark_pattern(&self.key_prefix, group))
            .await?
            .into_iter()
            .filter_map(|key| {
                let row = keys::watermark_row(&key).filter(|row| keys::row_of_group(row, group))?;
                Some((row.to_owned(), key))
            })
            .unzip();
        let marks = self.read_watermarks(&keys).await?;
        Ok(rows
            .into_iter()
            .zip(keys)
            .zip(marks)
            .filter_map(|((row, key), mark)| Some((row, key, mark?)))
            .collect())
    }

    /// Every late-entry token of `group`'s rows under the key prefix (they expire after a
    /// day), as `(row, key, token)` — found by one SCAN, for `groups repartition`.
    pub async fn late_tokens_of_group(
        &self,
        group: &str,
    ) -> Result<Vec<(String, String, String)>, SinkError> {
        let keys = self
            .scan(&keys::late_token_pattern(&self.key_prefix, group))
            .await?;
        Ok(keys
            .iter()
            .filter_map(|key| {
                let (row, token) = keys::late_token_parts(key)?;
                keys::row_of_group(row, group)
                    .then(|| (row.to_owned(), key.clone(), token.to_owned()))
            })
            .collect())
    }

    /// What the watermark hashes `keys` hold (`None`: no such key).
    async fn read_watermarks(&self, keys: &[String]) -> Result<Vec<Option<DedupeMark>>, SinkError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let texts: Vec<Option<String>> = if self.is_cluster() {
            // One command per key: a pipeline cannot span slots.
            let reads = keys.iter().map(|key| {
                let mut connection = self.connection();
                async move {
                    redis::cmd("HGET")
                        .arg(key)
                        .arg("position")
                        .query_async::<Option<String>>(&mut connection)
                        .await
                }
            });
            futures_util::future::join_all(reads)
                .await
                .into_iter()
                .collect::<Result<_, _>>()
                .map_err(SinkError::Redis)?
        } else {
            let mut pipe = redis::pipe();
            for key in keys {
                pipe.cmd("HGET").arg(key).arg("position");
            }
            pipe.query_async(&mut self.connection())
                .await
                .map_err(SinkError::Redis)?
        };
        texts
            .into_iter()
            .zip(keys)
            .map(|(text, key)| {
                text.map(|text| watermark::parse_watermark(key, text))
                    .transpose()
            })
            .collect()
    }

    /// Deletes every key that starts with `prefix` (SCAN, then UNLINK; on a cluster, on every
    /// master) and says how many there were: for tools that wrote under a prefix of their own
    /// (`demo`, `bench`).
    pub async fn delete_keys_with_prefix(&self, prefix: &str) -> Result<usize, SinkError> {
        match &self.backend {
            Backend::Single { connection, .. } => {
                delete_keys_with_prefix(&mut connection.clone(), prefix)
                    .await
                    .map_err(SinkError::Redis)
            }
            Backend::Cluster(cluster) => {
                let mut deleted = 0;
                for master in cluster.masters() {
                    let mut connection = cluster.master_connection(&master).await?;
                    deleted += delete_keys_with_prefix(&mut connection, prefix)
                        .await
                        .map_err(SinkError::Redis)?;
                }
                Ok(deleted)
            }
        }
    }

    /// Every key matching the glob `pattern` (SCAN; on a cluster, on every master).
    async fn scan(&self, pattern: &str) -> Result<Vec<String>, SinkError> {
        match &self.backend {
            Backend::Single { connection, .. } => scan_keys(&mut connection.clone(), pattern)
                .await
                .map_err(SinkError::Redis),
            Backend::Cluster(cluster) => {
                let mut keys = Vec::new();
                for master in cluster.masters() {
                    let mut connection = cluster.master_connection(&master).await?;
                    keys.extend(
                        scan_keys(&mut connection, pattern)
                            .await
                            .map_err(SinkError::Redis)?,
                    );
                }
                Ok(keys)
            }
        }
    }

    /// A cheap round trip, for health checks. On a cluster, also that every slot has a
    /// master (`cluster_state:ok`): while one is not covered, appends to it cannot succeed.
    pub async fn ping(&self) -> Result<(), SinkError> {
        match &self.backend {
            Backend::Single { connection, .. } => redis::cmd("PING")
                .query_async::<String>(&mut connection.clone())
                .await
                .map(|_| ())
                .map_err(SinkError::Redis),
            Backend::Cluster(cluster) => cluster.check_state().await.map_err(SinkError::Redis),
        }
    }
}

/// Whether the server's `INFO cluster` matches `[redis] cluster`: a cluster node where one
/// server was configured (every key of another slot would come back `MOVED`), or a plain
/// server where a cluster was, is a configuration error naming the setting. A server that
/// does not answer `INFO` (a proxy that hides it) is taken at its word.
async fn check_cluster_setting<C>(
    url: &ConnectionUrl,
    connection: &mut C,
    configured: bool,
) -> Result<(), SinkError>
where
    C: redis::aio::ConnectionLike + Send,
{
    let Ok(info) = redis::cmd("INFO")
        .arg("cluster")
        .query_async::<String>(connection)
        .await
    else {
        return Ok(());
    };
    let enabled = info.lines().any(|line| line.trim() == "cluster_enabled:1");
    let cause = match (configured, enabled) {
        (false, true) => {
            "this Redis is a cluster node (INFO: cluster_enabled:1): set `[redis] cluster = true` (OUTBOX_REDIS__CLUSTER=true) to write to a Redis Cluster"
        }
        (true, false) => {
            "this Redis is not a cluster node (INFO: cluster_enabled:0): remove `[redis] cluster = true`, or point redis_url at a node of the cluster"
        }
        _ => return Ok(()),
    };
    Err(SinkError::Connect {
        url: url.to_string(),
        cause: cause.to_owned(),
        transient: false,
    })
}

/// A WARN when the server (a cluster's master) has fewer connected replicas than
/// `[redis] wait_replicas`: every append to it would come back short until one connects.
async fn warn_if_too_few_replicas<C>(server: &str, connection: &mut C, wait: ReplicaWait)
where
    C: redis::aio::ConnectionLike + Send,
{
    let Ok(info) = redis::cmd("INFO")
        .arg("replication")
        .query_async::<String>(connection)
        .await
    else {
        return;
    };
    let connected = info
        .lines()
        .find_map(|line| line.trim().strip_prefix("connected_slaves:"))
        .and_then(|n| n.parse::<u32>().ok())
        .unwrap_or(0);
    if connected < wait.replicas {
        tracing::warn!(
            server,
            connected,
            wait_replicas = wait.replicas,
            "fewer replicas connected than [redis] wait_replicas: appends will wait and be retried until enough acknowledge them"
        );
    }
}

/// [`check_cluster_setting`] against the first seed that answers (`[redis] cluster = true`).
/// None answering is a transient connect error.
async fn check_seed_is_a_cluster(
    seeds: &[ConnectionUrl],
    certificates: &Option<TlsCertificates>,
    timeout: Duration,
) -> Result<(), SinkError> {
    let config = AsyncConnectionConfig::new()
        .set_response_timeout(Some(timeout))
        .set_connection_timeout(Some(timeout));
    let mut last_error = None;
    for seed in seeds {
        let connected = match client(seed, certificates.clone()) {
            Ok(client) => {
                client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
            }
            Err(error) => Err(error),
        };
        match connected {
            Ok(mut connection) => return check_cluster_setting(seed, &mut connection, true).await,
            Err(error) => last_error = Some((seed, error)),
        }
    }
    let (seed, error) = last_error.expect("at least one seed");
    Err(SinkError::Connect {
        url: seed.to_string(),
        cause: describe_connect_error(&error),
        transient: connect_error_is_transient(&error),
    })
}

/// True for a `NOSCRIPT` reply (the server does not have the script cached).
fn is_no_script(reply: &redis::Value) -> bool {
    matches!(reply, redis::Value::ServerError(e) if e.kind() == Some(ServerErrorKind::NoScript))
}

/// Every key on one server that matches the glob `pattern` (SCAN).
async fn scan_keys<C>(connection: &mut C, pattern: &str) -> Result<Vec<String>, RedisError>
where
    C: redis::aio::ConnectionLike + Send + Sync,
{
    let mut iter = redis::AsyncCommands::scan_match::<_, String>(connection, pattern).await?;
    let mut keys = Vec::new();
    while let Some(key) = iter.next_item().await {
        keys.push(key?);
    }
    Ok(keys)
}

/// Deletes every key on one server that starts with `prefix` (SCAN, then UNLINK one key at a
/// time in a pipeline, so keys of different cluster slots mix) and says how many there were.
/// [`Sink::delete_keys_with_prefix`] does it on every master of a cluster.
pub async fn delete_keys_with_prefix<C>(
    connection: &mut C,
    prefix: &str,
) -> Result<usize, RedisError>
where
    C: redis::aio::ConnectionLike + Send + Sync,
{
    let keys = scan_keys(connection, &format!("{prefix}*")).await?;
    if !keys.is_empty() {
        let mut pipe = redis::pipe();
        for key in &keys {
            pipe.cmd("UNLINK").arg(key).ignore();
        }
        pipe.query_async::<()>(connection).await?;
    }
    Ok(keys.len())
}

//! Redis Cluster (`[redis] cluster = true`): which master holds each stream's hash slot, and
//! connections to it.
//!
//! Two kinds of traffic, two kinds of connection:
//! - Commands and pipelines whose keys share one slot (the late script, watermark reads,
//!   tools reading streams) go through redis-rs's cluster connection, which discovers the
//!   masters and follows `MOVED` and `ASK` by itself.
//! - The watermarked append holds a `WATCH` on its connection from step 1 to `EXEC` (see
//!   `watermark.rs`), which a multiplexed, rerouting cluster connection cannot do. So this
//!   module keeps its own map of slots to masters (`CLUSTER SLOTS`) and a pool of watch
//!   connections per master, and runs each stream's transaction on the master of its slot.
//!   A transaction never spans streams here (Redis refuses one across slots), so a batch's
//!   streams are appended concurrently, each on its own master. A redirect (the slot moved,
//!   is migrating, the cluster is failing over) reloads the map and the stream's transaction
//!   runs again after a short pause: its watermark makes a second run add nothing twice.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures_util::future::join_all;
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{AsyncConnectionConfig, ErrorKind, RedisError, Value};

use super::watermark::{ReplicaWait, StreamKeys, WatchConnections};
use super::{SinkError, StreamAppend, Writer, WrongType};
use crate::redact::ConnectionUrl;

/// Streams of one batch appended at once (in turns of this many), each on a watch connection
/// of its own: a bound on the connections a batch to many streams (a `{key}` route) opens.
const CONCURRENT_STREAMS: usize = 16;

/// How often one stream's transaction is run again after a redirect or a lost node before the
/// error goes to the caller (which retries the batch later).
const REROUTE_ATTEMPTS: u32 = 6;

/// The first pause after a redirect; it doubles each time (50 ms … 1.6 s, 3.15 s in all: a
/// slot migration of a few keys, or a replica's promotion after `cluster-node-timeout`).
const REROUTE_PAUSE: Duration = Duration::from_millis(50);

/// A master: its address as the cluster names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct NodeAddress {
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for NodeAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// Slot ranges (first, last, master), sorted by first slot.
type SlotMap = Vec<(u16, u16, NodeAddress)>;

/// The cluster side of a [`Sink`](super::Sink).
pub(super) struct Cluster {
    /// redis-rs's cluster connection: routes by key, follows redirects.
    routed: ClusterConnection,
    /// Where new node connections get their scheme and credentials.
    template: ConnectionUrl,
    certificates: Option<redis::TlsCertificates>,
    watch_config: AsyncConnectionConfig,
    slots: RwLock<SlotMap>,
    masters: Mutex<HashMap<NodeAddress, Arc<WatchConnections>>>,
}

impl Cluster {
    /// Connects to the cluster through the first seed that answers and loads the slot map.
    pub(super) async fn connect(
        seeds: &[ConnectionUrl],
        certificates: Option<redis::TlsCertificates>,
        response_timeout: Duration,
        watch_config: AsyncConnectionConfig,
    ) -> Result<Cluster, RedisError> {
        let mut builder = ClusterClientBuilder::new(seeds.iter().map(ConnectionUrl::expose))
            .connection_timeout(response_timeout)
            .response_timeout(response_timeout)
            .tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true))
            .retries(3);
        if let Some(certificates) = certificates.clone() {
            builder = builder.certs(certificates);
        }
        let routed = builder.build()?.get_async_connection().await?;
        let cluster = Cluster {
            routed,
            template: seeds[0].clone(),
            certificates,
            watch_config,
            slots: RwLock::new(Vec::new()),
            masters: Mutex::new(HashMap::new()),
        };
        cluster.reload_slots().await?;
        Ok(cluster)
    }

    /// The routed connection (clones share it).
    pub(super) fn routed(&self) -> ClusterConnection {
        self.routed.clone()
    }

    /// Reads `CLUSTER SLOTS` again: after a redirect, a failover, a lost node.
    pub(super) async fn reload_slots(&self) -> Result<(), RedisError> {
        let reply = self
            .routed
            .clone()
            .route_command(
                redis::cmd("CLUSTER").arg("SLOTS").clone(),
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
            )
            .await?;
        let map = parse_slots(reply, &self.template)?;
        *self.slots.write().expect("slot map poisoned") = map;
        Ok(())
    }

    /// `CLUSTER INFO` of a node: an error unless `cluster_state:ok` (every slot has a master
    /// that answers). The slot map is reloaded while it is not, so appends find the new
    /// masters once a failover is done.
    pub(super) async fn check_state(&self) -> Result<(), RedisError> {
        let info: String = redis::from_redis_value(
            self.routed
                .clone()
                .route_command(
                    redis::cmd("CLUSTER").arg("INFO").clone(),
                    RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
                )
                .await?,
        )?;
        let state = info
            .lines()
            .find_map(|line| line.trim().strip_prefix("cluster_state:"))
            .unwrap_or("unknown")
            .to_owned();
        if state == "ok" && self.covers_every_slot() {
            return Ok(());
        }
        self.reload_slots().await?;
        if state == "ok" && self.covers_every_slot() {
            return Ok(());
        }
        Err(RedisError::from((
            ErrorKind::Server(redis::ServerErrorKind::ClusterDown),
            "the cluster does not cover every slot",
            format!("cluster_state:{state}"),
        )))
    }

    /// The masters the slot map names now.
    pub(super) fn masters(&self) -> Vec<NodeAddress> {
        let mut masters: Vec<NodeAddress> = self
            .slots
            .read()
            .expect("slot map poisoned")
            .iter()
            .map(|(_, _, node)| node.clone())
            .collect();
        masters.sort_by(|a, b| (&a.host, a.port).cmp(&(&b.host, b.port)));
        masters.dedup();
        masters
    }

    /// Whether every slot has a master in the map (a failover in progress leaves none).
    pub(super) fn covers_every_slot(&self) -> bool {
        let slots = self.slots.read().expect("slot map poisoned");
        let mut next = 0u32;
        for (first, last, _) in slots.iter() {
            if u32::from(*first) != next {
                return false;
            }
            next = u32::from(*last) + 1;
        }
        next == 16384
    }

    /// A plain client for one master (same scheme, credentials and certificates as the seed).
    pub(super) fn client_for(&self, node: &NodeAddress) -> Result<redis::Client, RedisError> {
        let url = self
            .template
            .with_host_port(&node.host, node.port)
            .map_err(|problem| {
                RedisError::from((
                    ErrorKind::InvalidClientConfig,
                    "a cluster node's address",
                    format!("{node}: {problem}"),
                ))
            })?;
        super::client(&url, self.certificates.clone())
    }

    /// A connection of its own to one master, for commands that go to every master (SCAN).
    pub(super) async fn master_connection(
        &self,
        node: &NodeAddress,
    ) -> Result<redis::aio::MultiplexedConnection, super::SinkError> {
        let client = self.client_for(node).map_err(super::SinkError::Redis)?;
        client
            .get_multiplexed_async_connection()
            .await
            .map_err(super::SinkError::Redis)
    }

    /// The master of `key`'s slot, as the map says now.
    pub(super) fn master_of(&self, key: &str) -> Option<NodeAddress> {
        let slot = hash_slot(key);
        let slots = self.slots.read().expect("slot map poisoned");
        let index = slots.partition_point(|(first, _, _)| *first <= slot);
        let (first, last, node) = slots.get(index.checked_sub(1)?)?;
        (*first <= slot && slot <= *last).then(|| node.clone())
    }

    /// The watch connections of the master that holds `key`.
    fn watch_connections(&self, key: &str) -> Result<Arc<WatchConnections>, SinkError> {
        let node = self.master_of(key).ok_or_else(|| {
            SinkError::Redis(RedisError::from((
                ErrorKind::Server(redis::ServerErrorKind::ClusterDown),
                "no master holds the slot",
                key.to_owned(),
            )))
        })?;
        let mut masters = self.masters.lock().expect("master pool poisoned");
        if let Some(connections) = masters.get(&node) {
            return Ok(connections.clone());
        }
        let client = self.client_for(&node).map_err(SinkError::Redis)?;
        let connections = Arc::new(WatchConnections::new(client, self.watch_config.clone()));
        masters.insert(node, connections.clone());
        Ok(connections)
    }

    /// Forgets the idle watch connections of the master that holds `key` (as the map says).
    fn drop_idle_connections(&self, key: &str) {
        let Some(node) = self.master_of(key) else {
            return;
        };
        if let Some(pool) = self
            .masters
            .lock()
            .expect("master pool poisoned")
            .get(&node)
        {
            pool.drop_idle();
        }
    }

    /// Appends each stream's entries in a transaction of its own on its slot's master, all
    /// streams at once; the number of entries added. When some streams fail, the others have
    /// still been appended (the caller sends the batch again; their watermarks skip them).
    pub(super) async fn append(
        &self,
        writer: Writer<'_>,
        keys: &[StreamKeys],
        appends: &[StreamAppend],
        max_len: u64,
        wait: Option<ReplicaWait>,
    ) -> Result<u64, SinkError> {
        let mut results = Vec::with_capacity(appends.len());
        for (keys, appends) in keys
            .chunks(CONCURRENT_STREAMS)
            .zip(appends.chunks(CONCURRENT_STREAMS))
        {
            results.extend(
                join_all(keys.iter().zip(appends).map(|(key, append)| {
                    self.append_stream(
                        writer,
                        std::slice::from_ref(key),
                        std::slice::from_ref(append),
                        max_len,
                        wait,
                    )
                }))
                .await,
            );
        }
        merge_results(results)
    }

    /// One stream's transaction on its master, run again on the new master after a redirect.
    async fn append_stream(
        &self,
        writer: Writer<'_>,
        keys: &[StreamKeys],
        appends: &[StreamAppend],
        max_len: u64,
        wait: Option<ReplicaWait>,
    ) -> Result<u64, SinkError> {
        if let Some(wrong) = split_slot(&appends[0].stream, &keys[0].stream, &keys[0].watermark) {
            return Err(SinkError::WrongType(vec![wrong]));
        }
        let mut pause = REROUTE_PAUSE;
        let mut attempt = 1;
        loop {
            let result = match self.watch_connections(&keys[0].stream) {
                Ok(connections) => {
                    connections
                        .append(writer, keys, appends, max_len, wait)
                        .await
                }
                Err(error) => Err(error),
            };
            match result {
                Err(SinkError::Redis(error)) if attempt < REROUTE_ATTEMPTS && rerouted(&error) => {
                    tracing::debug!(stream = %appends[0].stream, attempt, %error,
                        "the stream's slot moved or its master is gone; reloading the slot map");
                    // The master's other idle connections are likely as dead (it restarted,
                    // failed over, or closed them as idle): none is tried again.
                    self.drop_idle_connections(&keys[0].stream);
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                    attempt += 1;
                    if let Err(error) = self.reload_slots().await {
                        tracing::debug!(%error, "could not reload the slot map yet");
                    }
                }
                Err(
                    error @ (SinkError::Redis(_)
                    | SinkError::NotReplicated { .. }
                    | SinkError::Contended { .. }),
                ) => {
                    // The batch's error names neither the stream nor its master: this does.
                    let master = self.master_of(&keys[0].stream);
                    tracing::warn!(stream = %appends[0].stream,
                        master = %master.map_or_else(|| "none".to_owned(), |m| m.to_string()),
                        attempts = attempt, error = %crate::telemetry::error_text(&error),
                        "append to a cluster master failed");
                    return Err(error);
                }
                other => return other,
            }
        }
    }
}

/// On a cluster, the refusal of a stream whose watermark key lands in another hash slot than
/// the stream key (a `}` outside a hash tag in its name): no transaction can write both, and
/// trying would fail the whole batch forever. Its messages fail instead (their route's retry
/// policy, then dead), and the batch's other streams go on.
pub(super) fn split_slot(stream: &str, stream_key: &str, watermark_key: &str) -> Option<WrongType> {
    (hash_slot(stream_key) != hash_slot(watermark_key)).then(|| WrongType {
        stream: stream.to_owned(),
        key: stream_key.to_owned(),
        kind: WrongType::CROSS_SLOT.to_owned(),
    })
}

/// Redis Cluster's hash slot of `key`: CRC16 (XMODEM) of its hash tag, modulo 16384.
fn hash_slot(key: &str) -> u16 {
    crc16::State::<crc16::XMODEM>::calculate(super::hash_tag(key).as_bytes()) % 16384
}

/// Whether an append's error means "ask the cluster where the slot is now and go again":
/// a redirect, a migration in progress, a cluster without a master for the slot, or a master
/// that went away (killed, failed over).
fn rerouted(error: &RedisError) -> bool {
    if error.is_cluster_error()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_io_error()
    {
        return true;
    }
    // Inside MULTI a redirect shows up as the transaction's abort (a queued command was
    // redirected), or as an error code in a reply's text; a node just promoted or restarted
    // answers LOADING or MASTERDOWN for a moment.
    let text = error.to_string();
    [
        "MOVED ",
        "ASK ",
        "TRYAGAIN",
        "CLUSTERDOWN",
        "EXECABORT",
        "READONLY",
        "LOADING",
        "MASTERDOWN",
    ]
    .iter()
    .any(|code| text.contains(code))
}

/// One result for the batch from each stream's: the entries added, or the error that matters
/// most (a lost lease, then a Redis failure, then wrong-typed keys, then lost appends, each
/// listing every stream it concerns).
pub(super) fn merge_results(results: Vec<Result<u64, SinkError>>) -> Result<u64, SinkError> {
    let mut appended = 0;
    let mut first_error = None;
    let mut wrong = Vec::new();
    let mut lost = Vec::new();
    for result in results {
        match result {
            Ok(count) => appended += count,
            Err(SinkError::Fenced { stream, detail }) => {
                return Err(SinkError::Fenced { stream, detail });
            }
            Err(SinkError::WrongType(streams)) => wrong.extend(streams),
            Err(SinkError::Lost(streams)) => lost.extend(streams),
            Err(other) => {
                first_error.get_or_insert(other);
            }
        }
    }
    if let Some(error) = first_error {
        return Err(error);
    }
    if !wrong.is_empty() {
        return Err(SinkError::WrongType(wrong));
    }
    if !lost.is_empty() {
        return Err(SinkError::Lost(lost));
    }
    Ok(appended)
}

/// The masters of `CLUSTER SLOTS`'s reply: `[[first, last, [host, port, id, …], replicas…], …]`.
/// A master announced without a host (`""` or `?`) is taken to share the seed's host.
fn parse_slots(reply: Value, seed: &ConnectionUrl) -> Result<SlotMap, RedisError> {
    let malformed = |what: &str| {
        RedisError::from((
            ErrorKind::Parse,
            "unexpected CLUSTER SLOTS reply",
            what.to_owned(),
        ))
    };
    let Value::Array(ranges) = reply else {
        return Err(malformed("not an array"));
    };
    let seed_host = url::Url::parse(seed.expose())
        .ok()
        .and_then(|url| url.host_str().map(str::to_owned))
        .unwrap_or_default();
    let mut map = SlotMap::with_capacity(ranges.len());
    for range in ranges {
        let Value::Array(range) = range else {
            return Err(malformed("a range is not an array"));
        };
        let [first, last, master, ..] = range.as_slice() else {
            return Err(malformed("a range without a master"));
        };
        let first: u16 = redis::from_redis_value_ref(first)?;
        let last: u16 = redis::from_redis_value_ref(last)?;
        let Value::Array(master) = master else {
            return Err(malformed("a master is not an array"));
        };
        let [endpoint, port, rest @ ..] = master.as_slice() else {
            return Err(malformed("a master without host and port"));
        };
        let endpoint: Option<String> = redis::from_redis_value_ref(endpoint)?;
        let port: u16 = redis::from_redis_value_ref(port)?;
        // Redis 7 names a node without a usable endpoint `?` or NULL, and may give its `ip` in
        // the metadata that follows the node id.
        let ip = rest.get(1).and_then(|metadata| {
            let pairs: HashMap<String, String> = redis::from_redis_value_ref(metadata).ok()?;
            pairs.get("ip").cloned()
        });
        let host = match endpoint {
            Some(host) if !host.is_empty() && host != "?" => host,
            _ => ip.unwrap_or_else(|| seed_host.clone()),
        };
        map.push((first, last, NodeAddress { host, port }));
    }
    map.sort_by_key(|(first, _, _)| *first);
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(first: i64, last: i64, host: &str, port: i64) -> Value {
        Value::Array(vec![
            Value::Int(first),
            Value::Int(last),
            Value::Array(vec![
                Value::BulkString(host.as_bytes().to_vec()),
                Value::Int(port),
                Value::BulkString(b"id".to_vec()),
            ]),
        ])
    }

    #[test]
    fn hash_slots_are_redis_clusters() {
        // CLUSTER KEYSLOT on Redis 7: foo 12182, {user1000}.following 3443, a{}b 15495.
        assert_eq!(hash_slot("foo"), 12182);
        assert_eq!(hash_slot("{user1000}.following"), 3443);
        assert_eq!(hash_slot("{user1000}.followers"), 3443);
    }

    #[test]
    fn slots_parse_into_sorted_ranges_and_an_unnamed_host_is_the_seeds() {
        let seed = ConnectionUrl::parse("redis://10.1.2.3:7000", &["redis"]).unwrap();
        let reply = Value::Array(vec![
            range(8192, 16383, "", 7001),
            range(0, 8191, "10.0.0.1", 7000),
        ]);
        let map = parse_slots(reply, &seed).unwrap();
        assert_eq!(map[0].0, 0);
        assert_eq!(map[0].2.to_string(), "10.0.0.1:7000");
        assert_eq!(map[1].2.to_string(), "10.1.2.3:7001");
    }

    #[test]
    fn a_stream_name_with_a_stray_brace_is_refused_on_a_cluster_and_others_are_not() {
        let watermark = super::super::watermark_key("t:", "events.a}b", "g");
        let wrong = split_slot("events.a}b", "t:events.a}b", &watermark).expect("refused");
        assert!(
            wrong
                .to_string()
                .starts_with("CROSSSLOT: on Redis Cluster t:events.a}b"),
            "{wrong}"
        );
        for name in ["events.ok", "events.{tag}x", "a{b}c"] {
            let key = format!("t:{name}");
            let watermark = super::super::watermark_key("t:", name, "g");
            assert!(split_slot(name, &key, &watermark).is_none(), "{name}");
        }
    }

    #[test]
    fn a_redirect_inside_a_transaction_is_rerouted_and_a_refusal_is_not() {
        let moved = RedisError::from((
            ErrorKind::Server(redis::ServerErrorKind::ExecAbort),
            "EXECABORT",
            "Transaction discarded because of previous errors: MOVED 3999 127.0.0.1:7002".into(),
        ));
        assert!(rerouted(&moved));
        let wrong = RedisError::from((ErrorKind::Parse, "unexpected reply", "x".to_owned()));
        assert!(!rerouted(&wrong));
    }
}

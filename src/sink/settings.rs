//! `[redis]`'s settings as the sink uses them: key prefix, stream trimming, timeouts, replica
//! acknowledgement and TLS certificates. The configuration builds them; [`Default`] is what an
//! unset `[redis]` section means.

use std::path::PathBuf;
use std::time::Duration;

use crate::redact::ConnectionUrl;

/// `[redis]`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisSettings {
    /// Prepended to every key the relay writes (streams and their bookkeeping).
    pub key_prefix: String,
    /// Cap streams at about this many entries (`XADD … MAXLEN ~ N`); `None`: uncapped.
    pub max_len: Option<u64>,
    /// How long one Redis call may take (and connecting).
    pub response_timeout: Duration,
    /// Replicas that must acknowledge an append (`WAIT`) before the cursor moves; 0: none.
    pub wait_replicas: u32,
    /// How long one `WAIT` may take.
    pub wait_timeout: Duration,
    /// Certificates for a `rediss://` URL; all unset means the default trust roots.
    pub tls: RedisTls,
    /// `[redis] cluster = true`: the URL is a seed node of a Redis Cluster. `None`: one Redis
    /// server (or a proxy that looks like one).
    pub cluster: Option<ClusterSeeds>,
}

/// `[redis] cluster_nodes`: seed nodes besides `redis_url`, tried in order when discovering
/// the cluster's masters. Each has the URL's scheme; the URL's user and password are used for
/// every node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterSeeds {
    /// More seed nodes (may be empty).
    pub nodes: Vec<ConnectionUrl>,
}

impl Default for RedisSettings {
    fn default() -> Self {
        RedisSettings {
            key_prefix: String::new(),
            max_len: None,
            response_timeout: Duration::from_secs(5),
            wait_replicas: 0,
            wait_timeout: Duration::from_secs(1),
            tls: RedisTls::default(),
            cluster: None,
        }
    }
}

/// `[redis] tls_*`, checked: files that existed and held PEM when the configuration was
/// loaded. They are read again when the relay connects, so a rotated certificate is picked up
/// by a restart.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedisTls {
    /// The CA certificate(s) the server's certificate must chain to.
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key for mutual TLS (both or neither).
    pub client: Option<RedisClientCert>,
}

/// A client certificate and its private key, for Redis servers that require mutual TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisClientCert {
    /// The client's certificate chain, PEM.
    pub cert_file: PathBuf,
    /// Its private key, PEM.
    pub key_file: PathBuf,
}

impl RedisTls {
    /// True when any certificate is configured (so the URL must be `rediss://`).
    pub fn is_set(&self) -> bool {
        self.ca_file.is_some() || self.client.is_some()
    }
}

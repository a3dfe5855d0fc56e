//! The relay under measurement: a real `outbox-relay run` child process (so its peak RSS is
//! its own), configured by a file in a temporary directory, plus the scratch Redis key prefix
//! it writes under.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio::process::{Child, Command};

use super::{BenchError, ScratchDatabase};
use outbox_relay::config::ConnectionUrl;
use outbox_relay::sink::{RedisConnection, RedisSettings, Sink};
use outbox_relay::store;

/// A key prefix of this run's own on the configured Redis (one server or a cluster, as
/// `[redis]` says); [`ScratchRedis::clean`] deletes everything under it.
pub struct ScratchRedis {
    pub prefix: String,
    /// Routed by key on a cluster: each command (or pipeline) must stay within one stream.
    pub connection: RedisConnection,
    /// True when `[redis] cluster = true`: the relays the bench starts are told so too.
    pub cluster: bool,
    /// What it was connected with: `[redis]`, this prefix.
    pub settings: RedisSettings,
    sink: Sink,
}

impl ScratchRedis {
    pub async fn connect(
        url: &ConnectionUrl,
        settings: &RedisSettings,
        scenario: &str,
    ) -> Result<Self, BenchError> {
        let prefix = format!("outbox-bench:{}:{scenario}:", std::process::id());
        let settings = RedisSettings {
            key_prefix: prefix.clone(),
            // Reading back or deleting a million entries takes a while.
            response_timeout: Duration::from_secs(60),
            ..settings.clone()
        };
        let sink = Sink::connect(url, &settings)
            .await
            .map_err(|e| phase("connect to Redis", e))?;
        Ok(ScratchRedis {
            prefix,
            connection: sink.connection(),
            cluster: sink.is_cluster(),
            settings,
            sink,
        })
    }

    /// On a cluster, the master that holds `key` (`host`, `port`).
    pub fn master_of(&self, key: &str) -> Option<(String, u16)> {
        self.sink.master_of(key)
    }

    /// The `[redis]` section of a relay the bench starts: this prefix, and `cluster = true`
    /// on a cluster.
    pub fn relay_section(&self) -> String {
        let cluster = if self.cluster { "cluster = true\n" } else { "" };
        format!("[redis]\nkey_prefix = \"{}\"\n{cluster}", self.prefix)
    }

    /// The entries in each of `streams` (names under the prefix).
    pub async fn stream_lengths(&mut self, streams: &[String]) -> Result<Vec<u64>, BenchError> {
        let mut lengths = Vec::with_capacity(streams.len());
        for stream in streams {
            let length: u64 = redis::cmd("XLEN")
                .arg(format!("{}{stream}", self.prefix))
                .query_async(&mut self.connection)
                .await
                .map_err(|e| phase("count a stream", e))?;
            lengths.push(length);
        }
        Ok(lengths)
    }

    /// Deletes `streams` (names under the prefix), one at a time (a cluster routes by key).
    pub async fn delete_streams(&mut self, streams: &[String]) -> Result<(), BenchError> {
        for stream in streams {
            redis::cmd("DEL")
                .arg(format!("{}{stream}", self.prefix))
                .query_async::<()>(&mut self.connection)
                .await
                .map_err(|e| phase("delete a stream", e))?;
        }
        Ok(())
    }

    /// Deletes every key under the prefix; a failure is logged, not returned.
    pub async fn clean(self) {
        if let Err(error) = self.sink.delete_keys_with_prefix(&self.prefix).await {
            tracing::warn!(prefix = %self.prefix, %error, "could not delete the bench keys");
        }
    }
}

/// Where a relay benchmark runs: a scratch database (and its URL, for the relay process) and
/// a scratch key prefix. [`RelayScratch::remove`] drops both.
pub struct RelayScratch {
    pub database: ScratchDatabase,
    pub database_url: ConnectionUrl,
    pub redis_url: ConnectionUrl,
    pub redis: ScratchRedis,
}

impl RelayScratch {
    pub async fn create(
        database_url: &ConnectionUrl,
        redis_url: &ConnectionUrl,
        redis_settings: &RedisSettings,
        scenario: &str,
        max_connections: u32,
    ) -> Result<Self, BenchError> {
        let redis = ScratchRedis::connect(redis_url, redis_settings, scenario).await?;
        let database = ScratchDatabase::create(database_url, max_connections).await?;
        Ok(RelayScratch {
            database_url: database_url.with_database(database.name()),
            redis_url: redis_url.clone(),
            database,
            redis,
        })
    }

    /// `outbox-relay run` (the binary `exe`) on this scratch database and Redis, with `toml`.
    pub fn start_relay(&self, exe: &Path, toml: &str) -> Result<RelayProcess, BenchError> {
        RelayProcess::start(exe, &self.database_url, &self.redis_url, toml)
    }

    /// Deletes the keys and drops the database; failures are logged.
    pub async fn remove(self) {
        self.redis.clean().await;
        self.database.drop().await;
    }
}

/// `outbox-relay run` on a configuration written for the run.
pub struct RelayProcess {
    child: Child,
    dir: PathBuf,
    /// Where `run --http` serves `/metrics`, when started with it.
    http: Option<SocketAddr>,
}

impl RelayProcess {
    /// Starts `exe --config <file> --database-url .. --redis-url .. run` with `toml` as the
    /// file (flags, not the file, carry the URLs, so they beat any DATABASE_URL around).
    pub fn start(
        exe: &Path,
        database_url: &ConnectionUrl,
        redis_url: &ConnectionUrl,
        toml: &str,
    ) -> Result<Self, BenchError> {
        Self::start_inner(exe, database_url, redis_url, toml, None)
    }

    /// Like [`RelayProcess::start`], with `run --http 127.0.0.1:<a free port>`, so that
    /// [`RelayProcess::scrape_metrics`] can read its `/metrics`.
    pub fn start_with_http(
        exe: &Path,
        database_url: &ConnectionUrl,
        redis_url: &ConnectionUrl,
        toml: &str,
    ) -> Result<Self, BenchError> {
        let addr = free_local_port().map_err(|e| phase("find a free port for --http", e))?;
        Self::start_inner(exe, database_url, redis_url, toml, Some(addr))
    }

    fn start_inner(
        exe: &Path,
        database_url: &ConnectionUrl,
        redis_url: &ConnectionUrl,
        toml: &str,
        http: Option<SocketAddr>,
    ) -> Result<Self, BenchError> {
        // A directory per relay: `bench scale` runs several at once, each with its own log.
        static STARTED: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "outbox-bench-{}-{}",
            std::process::id(),
            STARTED.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).map_err(|e| phase("write the relay config", e))?;
        let config = dir.join("relay.toml");
        std::fs::write(&config, toml).map_err(|e| phase("write the relay config", e))?;
        let log = std::fs::File::create(dir.join("relay.log"))
            .map_err(|e| phase("create the relay log", e))?;
        let mut command = Command::new(exe);
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("OUTBOX_") {
                command.env_remove(name);
            }
        }
        let child = command
            .arg("--config")
            .arg(&config)
            .args(["--database-url", database_url.expose()])
            .args(["--redis-url", redis_url.expose()])
            .arg("run")
            .args(
                http.iter()
                    .flat_map(|addr| ["--http".to_owned(), addr.to_string()]),
            )
            .env("RUST_LOG", "outbox_relay=info,warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| phase("start outbox-relay run", e))?;
        Ok(RelayProcess { child, dir, http })
    }

    /// The relay's process id (`None` once it has been waited for).
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// The relay's `/metrics` text; `None` without `--http` or when it does not answer.
    pub async fn scrape_metrics(&self) -> Option<String> {
        let addr = self.http?;
        // reqwest is built without a default TLS provider; plain http needs none, but the
        // client builder wants one installed (as the http handler does).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .ok()?;
        let response = client
            .get(format!("http://{addr}/metrics"))
            .send()
            .await
            .ok()?;
        if !response.status().is_success() {
            return None;
        }
        response.text().await.ok()
    }

    /// Waits until the relay holds `group`'s lease.
    pub async fn wait_for_lease(
        &mut self,
        pool: &PgPool,
        group: &str,
        deadline: Duration,
    ) -> Result<(), BenchError> {
        let until = Instant::now() + deadline;
        loop {
            let cursor = store::consumer_groups_cursor(pool, group)
                .await
                .map_err(|e| phase("read the group's cursor", e))?;
            if cursor.is_some_and(|c| c.lease_owner.is_some()) {
                return Ok(());
            }
            self.check_alive()?;
            if Instant::now() > until {
                return Err(self.failed("the relay did not take the lease in time"));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// An error if the relay has exited.
    pub fn check_alive(&mut self) -> Result<(), BenchError> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(self.failed(&format!("the relay exited ({status})"))),
            Err(e) => Err(phase("watch the relay", e)),
        }
    }

    /// The relay's peak resident set (VmHWM), in bytes.
    pub fn peak_rss_bytes(&self) -> Option<u64> {
        let pid = self.child.id()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }

    /// SIGTERM, and wait for the exit (SIGKILL after 10 s).
    pub async fn stop(mut self) -> Result<(), BenchError> {
        // Not `kill` from PATH: a bench run with a PATH that lacks it (as the C-tool ceilings'
        // test does) left the relay running until the 10 s deadline.
        if let Some(pid) = self.child.id().and_then(|id| i32::try_from(id).ok()) {
            // SAFETY: kill(2) takes two integers and touches no memory of this process; the
            // child is not reaped before `wait` below, so its pid cannot have been reused.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        match tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await {
            Ok(Ok(status)) if status.success() => {
                let _ = std::fs::remove_dir_all(&self.dir);
                Ok(())
            }
            Ok(Ok(status)) => Err(self.failed(&format!("the relay exited with {status}"))),
            Ok(Err(e)) => Err(phase("stop the relay", e)),
            Err(_) => {
                let _ = self.child.kill().await;
                Err(self.failed("the relay did not stop within 10 s of SIGTERM"))
            }
        }
    }

    fn failed(&self, what: &str) -> BenchError {
        let log = self.dir.join("relay.log");
        let tail: String = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .rev()
            .take(5)
            .collect::<Vec<_>>()
            .join(" | ");
        phase(
            "relay",
            format!("{what}; log {} ends: {tail}", log.display()),
        )
    }
}

/// A port on 127.0.0.1 nobody listens on right now (the relay binds it a moment later).
fn free_local_port() -> std::io::Result<SocketAddr> {
    std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()
}

pub(super) fn phase(
    phase: &'static str,
    error: impl Into<Box<dyn std::error::Error + Send + Sync>>,
) -> BenchError {
    BenchError::Phase {
        phase,
        source: error.into(),
    }
}

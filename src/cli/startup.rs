//! `run` before the servers answer: under systemd, compose or Kubernetes the relay often starts
//! first. Connecting to Postgres and to Redis is retried, each on its own, with the relay's
//! capped backoff (`[relay] max_backoff_ms`) and a WARN per failed attempt (URLs redacted),
//! while `/readyz` answers 503 with the latest failure. Only what a configuration change must
//! fix ends the command: a refused password, no such database, a TLS setting the server
//! rejects (exit 1, as for every command), a schema `migrate` has not brought up to date
//! (exit 2); a signal ends it quietly.

use std::sync::{Arc, Mutex, PoisonError};

use outbox_relay::config::{Config, ConnectionUrl};
use outbox_relay::relay;
use outbox_relay::sink::{Sink, SinkError};
use outbox_relay::store::{self, ConnectError, SchemaVersion};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// The relay's connections, once both servers answered and the schema is current.
#[derive(Clone)]
pub struct Connected {
    pub pool: PgPool,
    pub sink: Sink,
}

/// An outbox schema this outbox-relay cannot run on: exit code 2, like a configuration error
/// (a refused connection stays exit 1, as for every other command).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NotStartable(String);

/// How far startup is, for `/readyz`: shared between [`connect`] and the HTTP server.
#[derive(Clone, Default)]
pub struct Progress(Arc<Mutex<Progressing>>);

#[derive(Default)]
struct Progressing {
    postgres: ServerState,
    redis: ServerState,
    connected: Option<Connected>,
}

#[derive(Default, Clone)]
enum ServerState {
    #[default]
    Connecting,
    /// The latest attempt failed with this error; another follows.
    Waiting(String),
    Up,
}

impl Progress {
    /// The connections, once startup is through.
    pub fn connected(&self) -> Option<Connected> {
        self.lock().connected.clone()
    }

    /// Why startup is not through yet, one reason a line (empty once it is).
    pub fn problems(&self) -> Vec<String> {
        let progress = self.lock();
        [("postgres", &progress.postgres), ("redis", &progress.redis)]
            .into_iter()
            .filter_map(|(server, state)| match state {
                ServerState::Connecting => Some(format!("{server}: connecting")),
                ServerState::Waiting(error) => Some(format!("{server}: waiting: {error}")),
                ServerState::Up => None,
            })
            .collect()
    }

    fn set(&self, server: Server, state: ServerState) {
        let mut progress = self.lock();
        match server {
            Server::Postgres => progress.postgres = state,
            Server::Redis => progress.redis = state,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Progressing> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[derive(Debug, Clone, Copy)]
enum Server {
    Postgres,
    Redis,
}

impl Server {
    fn as_str(self) -> &'static str {
        match self {
            Server::Postgres => "Postgres",
            Server::Redis => "Redis",
        }
    }
}

/// Connects to both servers, waiting for them as long as it takes; `None` when `shutdown` came
/// first.
pub async fn connect(
    config: &Config,
    redis_url: &ConnectionUrl,
    progress: &Progress,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<Connected>> {
    let postgres = async {
        let pool = retry(Server::Postgres, config, progress, || async {
            store::connect(&config.database_url, config.postgres.max_connections)
                .await
                .map_err(Attempt::postgres)
        })
        .await?;
        check_schema(&pool, &config.database_url).await?;
        progress.set(Server::Postgres, ServerState::Up);
        anyhow::Ok(pool)
    };
    let redis = async {
        let sink = retry(Server::Redis, config, progress, || async {
            Sink::connect(redis_url, &config.redis)
                .await
                .map_err(Attempt::redis)
        })
        .await?;
        progress.set(Server::Redis, ServerState::Up);
        anyhow::Ok(sink)
    };
    let connected = tokio::select! {
        _ = shutdown.cancelled() => return Ok(None),
        connected = async { tokio::try_join!(postgres, redis) } => connected?,
    };
    let (pool, sink) = connected;
    let connected = Connected { pool, sink };
    progress.lock().connected = Some(connected.clone());
    Ok(Some(connected))
}

/// One failed connection attempt: its text, and whether another attempt may work.
struct Attempt {
    error: anyhow::Error,
    transient: bool,
}

impl Attempt {
    fn postgres(error: ConnectError) -> Attempt {
        Attempt {
            transient: error.is_transient(),
            error: error.into(),
        }
    }

    fn redis(error: SinkError) -> Attempt {
        Attempt {
            transient: error.is_transient_connect(),
            error: error.into(),
        }
    }
}

/// Runs `attempt` until it succeeds, sleeping the relay's backoff between tries; a
/// non-transient failure is returned as it is. A shutdown drops it where it waits (the
/// caller selects on it).
async fn retry<T, F, Fut>(
    server: Server,
    config: &Config,
    progress: &Progress,
    attempt: F,
) -> anyhow::Result<T>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<T, Attempt>>,
{
    let mut delays = relay::backoff(config.relay.max_backoff);
    let mut attempts = 0u64;
    loop {
        attempts += 1;
        let failed = match attempt().await {
            Ok(value) => {
                if attempts > 1 {
                    tracing::info!(server = server.as_str(), attempts, "connected");
                }
                return Ok(value);
            }
            Err(failed) => failed,
        };
        if !failed.transient {
            return Err(failed.error);
        }
        let error = outbox_relay::telemetry::error_text(failed.error.as_ref());
        let delay = delays.next().unwrap_or(config.relay.max_backoff);
        let server_name = server.as_str();
        tracing::warn!(
            server = server_name,
            attempts,
            retry_in_ms = delay.as_millis() as u64,
            error = %error,
            "waiting for {server_name}"
        );
        progress.set(server, ServerState::Waiting(error));
        tokio::time::sleep(delay).await;
    }
}

/// Refuses a database whose outbox schema `migrate` has not brought to this version.
async fn check_schema(pool: &PgPool, url: &ConnectionUrl) -> anyhow::Result<()> {
    match schema_problem(pool, url).await? {
        Some(refusal) => Err(NotStartable(refusal).into()),
        None => Ok(()),
    }
}

/// What is wrong with the outbox schema of the database at `url` for this outbox-relay
/// (`None`: it is current). A role that may not read the migrations table (granted by an
/// older `grant relay`) is let through with a WARN.
pub async fn schema_problem(pool: &PgPool, url: &ConnectionUrl) -> anyhow::Result<Option<String>> {
    let version = match store::schema_version(pool).await {
        Ok(version) => version,
        Err(store::MigrateError::ReadApplied(sqlx::Error::Database(db)))
            if db.code().as_deref() == Some("42501") =>
        {
            tracing::warn!(
                "cannot read outbox._sqlx_migrations ({}); the schema version is not checked: run `outbox-relay grant relay ROLE` again to let it",
                db.message()
            );
            return Ok(None);
        }
        Err(error) => return Err(error.into()),
    };
    Ok(match version {
        SchemaVersion::Current => None,
        SchemaVersion::Behind { applied: 0, .. } => Some(format!(
            "the database at {url} has no outbox schema: run `outbox-relay migrate` first"
        )),
        SchemaVersion::Behind { applied, known } => Some(format!(
            "the outbox schema at {url} has {applied} of the {known} migrations this outbox-relay needs: run `outbox-relay migrate` first"
        )),
        SchemaVersion::Newer(version) => Some(format!(
            "the outbox schema at {url} is newer than this outbox-relay (migration {version} is unknown here): upgrade outbox-relay"
        )),
    })
}

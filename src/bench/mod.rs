//! `outbox-relay bench`: measurements of this crate next to the ceiling for the same work,
//! taken in the same run against the configured Postgres, in a scratch database that is
//! created for the run and dropped after it.
//!
//! One module per scenario (`publish`, `drain`, `latency`, `fanout`, `retry`, `handler`,
//! `scale`); the relay scenarios share a [`RelayScratch`] (database + key prefix), real relay
//! processes, a backlog filler, and Postgres' own counters ([`pg_activity`]). Every report
//! turns into a [`Summary`]: the lines of the summary table and the `--json` document.

mod backlog;
mod c_tools;
mod cpu;
mod drain;
mod fanout;
mod flaky_endpoint;
mod handler;
mod latency;
mod pg_activity;
mod progress;
mod publish;
mod relay_process;
mod retry;
mod scale;
mod slow_endpoint;
mod stages;
mod summary;
mod webhook;

use std::fmt;
use std::time::Duration;

use sqlx::PgPool;

pub use c_tools::Skipped;
pub use drain::{DrainBench, DrainBenchReport};
pub use fanout::{FanoutBench, FanoutBenchReport, Growth};
pub use handler::{HandlerBench, HandlerBenchReport, HandlerRun};
pub use latency::{LatencyBench, LatencyBenchReport};
pub use progress::Progress;
pub use publish::{PublishBench, PublishBenchReport};
pub use relay_process::RelayScratch;
pub use retry::{RetryBench, RetryBenchReport};
pub use scale::{ScaleBench, ScaleBenchReport, ScaleHandler};
pub use summary::Summary;

use outbox_relay::config::ConnectionUrl;
use outbox_relay::store::{self, ConnectError};

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("could not create the scratch database `{name}`")]
    CreateScratch {
        name: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("could not migrate the scratch database")]
    Migrate(#[from] store::MigrateError),
    #[error("benchmark `{phase}` failed")]
    Phase {
        phase: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// A migrated database that exists for one benchmark run. Call [`ScratchDatabase::drop`] at the
/// end; the name carries the process id, so a leftover one says which run left it.
pub struct ScratchDatabase {
    name: String,
    admin: PgPool,
    pub pool: PgPool,
}

impl ScratchDatabase {
    pub async fn create(url: &ConnectionUrl, max_connections: u32) -> Result<Self, BenchError> {
        let admin = store::connect(url, 1).await?;
        let name = format!("outbox_bench_{}", std::process::id());
        store::database_drop(&admin, &name)
            .await
            .map_err(|source| BenchError::CreateScratch {
                name: name.clone(),
                source,
            })?;
        store::database_create(&admin, &name)
            .await
            .map_err(|source| BenchError::CreateScratch {
                name: name.clone(),
                source,
            })?;
        let pool = match store::connect_to_database(url, &name, max_connections).await {
            Ok(pool) => pool,
            Err(error) => {
                let _ = store::database_drop(&admin, &name).await;
                return Err(error.into());
            }
        };
        let scratch = ScratchDatabase { name, admin, pool };
        if let Err(error) = store::migrate(&scratch.pool).await {
            scratch.drop().await;
            return Err(error.into());
        }
        Ok(scratch)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A connection to the server's maintenance database (not the scratch one), for watching
    /// the scratch database without adding to what is watched.
    pub fn admin(&self) -> &PgPool {
        &self.admin
    }

    /// Closes the pool and drops the database; a failure is logged, not returned.
    pub async fn drop(self) {
        self.pool.close().await;
        if let Err(error) = store::database_drop(&self.admin, &self.name).await {
            tracing::warn!(database = %self.name, %error, "could not drop the scratch database");
        }
        self.admin.close().await;
    }
}

/// `messages` messages handled in `elapsed`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measurement {
    pub messages: u64,
    pub elapsed: Duration,
}

impl Measurement {
    pub fn per_second(&self) -> f64 {
        self.messages as f64 / self.elapsed.as_secs_f64().max(f64::EPSILON)
    }
}

/// The project's figure next to the ceiling for the same work.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Comparison {
    pub ours: Measurement,
    pub ceiling: Measurement,
}

impl Comparison {
    /// Our throughput as a fraction of the ceiling's (1.0 = as fast).
    pub fn ratio(&self) -> f64 {
        self.ours.per_second() / self.ceiling.per_second()
    }

    /// Our time over the ceiling's for the same work (1.10 = 10 % overhead).
    pub fn overhead(&self) -> f64 {
        self.ours.elapsed.as_secs_f64() / self.ceiling.elapsed.as_secs_f64()
    }
}

impl fmt::Display for Comparison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:>9.0} msg/s in {:>7.3} s | ceiling {:>9.0} msg/s in {:>7.3} s | ratio {:.3} (time {:.3}×)",
            self.ours.per_second(),
            self.ours.elapsed.as_secs_f64(),
            self.ceiling.per_second(),
            self.ceiling.elapsed.as_secs_f64(),
            self.ratio(),
            self.overhead(),
        )
    }
}

/// The median of an odd or even number of measurements of the same work, by elapsed time.
fn median(mut runs: Vec<Measurement>) -> Measurement {
    runs.sort_by_key(|run| run.elapsed);
    runs[runs.len() / 2]
}

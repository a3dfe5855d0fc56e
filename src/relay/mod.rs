//! The relay: for every configured consumer group, tail the outbox from the group's cursor,
//! route each message, append the outputs to Redis Streams, then advance the cursor.
//!
//! ```text
//!  Relay::run ──spawns──▶ one GroupWorker per group (lease → tail → dispatch → append → advance)
//!       │                     ▲ each holds its group's lease; a second relay waits as standby
//!       └── shutdown: workers finish the in-flight batch within `shutdown_grace` (abandoning
//!           it, unmarked, after that), release their leases, return
//! ```

mod active;
pub(crate) mod dispatcher;
pub(crate) mod entry_fields;
mod forward;
mod group;
mod membership;
pub(crate) mod ordering;
mod partition;
pub(crate) mod plan;
mod prefetch;
mod repair;
pub(crate) mod retry_plan;
pub mod route;
mod settings;
mod stall;
mod tail;
mod wakeup;
mod window;

use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

pub use entry_fields::{EntryField, EntryFields};
pub use group::{RETRY_SCAN_INTERVAL, Step};
pub use ordering::OrderingMode;
pub use partition::{Partition, partition_of};
pub use route::{Action, InvalidPattern, Route};
pub use settings::{
    DEFAULT_MAX_IN_FLIGHT, GroupConfig, MAX_IN_FLIGHT_LIMIT, MAX_PARTITIONS, NOTIFY_FALLBACK_POLL,
    RelaySettings, Wakeup,
};

use dispatcher::Dispatcher;
use membership::{Membership, Seat};

use crate::registry::{Registry, RegistryError, Unregistered};
use crate::sink::{Sink, SinkError};
use crate::store;
use crate::telemetry::{Health, WorkerHealth};

/// Why a consumer group's step failed: Postgres, the schema registry or Redis, naming the
/// group.
///
/// Inside [`Relay::run`] none of these stops the relay: the group's worker logs the error
/// (WARN), counts it in `outbox_relay_errors_total`, reports the group as failing in its
/// [`Health`], and tries the step again after a capped backoff. Nothing is lost meanwhile: the
/// cursor moves only after Redis accepted the batch, and what is appended again is
/// deduplicated. [`Relay::run`] itself returns one only when it cannot create a group's row at
/// startup.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// A statement failed (reading the batch, advancing the cursor, renewing the lease, …).
    #[error("consumer group `{group}`: could not {operation}")]
    Store {
        /// The consumer group.
        group: String,
        /// What the worker was doing, as in "could not {operation}".
        operation: &'static str,
        /// Postgres' error.
        #[source]
        source: sqlx::Error,
    },
    /// A message could not be checked against its schema because reading the registry failed
    /// (a message that fails its schema is a permanent failure of that message, not this).
    #[error("consumer group `{group}`: could not decode a message through the schema registry")]
    Registry {
        /// The consumer group.
        group: String,
        /// The registry's error.
        #[source]
        source: RegistryError,
    },
    /// The append to Redis failed (a fenced append is not an error: the worker goes back to
    /// standby).
    #[error("consumer group `{group}`: could not append to Redis")]
    Sink {
        /// The consumer group.
        group: String,
        /// The sink's error.
        #[source]
        source: SinkError,
    },
    /// The group is stored with another number of partitions than configured (at startup).
    #[error(
        "consumer group `{group}` has {stored} partition(s) in the database but {configured} configured: \
         set `partitions = {stored}` back, or stop its relays and run \
         `outbox-relay groups repartition {group} --partitions {configured}`"
    )]
    Partitions {
        /// The consumer group.
        group: String,
        /// What its rows in `outbox.consumer_groups` say.
        stored: u32,
        /// What the configuration says.
        configured: u32,
    },
}

/// A relay process: its connections, settings and groups. Build it, then [`Relay::run`].
pub struct Relay {
    pool: PgPool,
    sink: Sink,
    settings: RelaySettings,
    groups: Vec<GroupConfig>,
    owner: String,
    from_now: bool,
    /// Routes registered in code, per group, in registration order.
    custom_routes: Vec<(String, Route)>,
    registry: Registry,
    health: Health,
}

impl Relay {
    /// A relay reading the outbox through `pool` and appending through `sink`, one worker per
    /// group of `groups`, with `settings` (the binary builds both from its configuration:
    /// `Config::relay` and `Config::groups`). Nothing connects or runs yet: add handlers and
    /// options with the builder methods ([`Relay::handler`], [`Relay::route`],
    /// [`Relay::registry`], [`Relay::health`], [`Relay::owner`], [`Relay::from_now`]), then
    /// call [`Relay::run`], which is where errors come from.
    ///
    /// `groups` may be empty when every group is defined in code: [`Relay::route`] creates a
    /// group it does not know. Every group shares `pool`; it needs one connection, two with
    /// `wakeup = "notify"` (its listener keeps one), and more only make it faster under load.
    pub fn new(
        pool: PgPool,
        sink: Sink,
        settings: RelaySettings,
        groups: Vec<GroupConfig>,
    ) -> Relay {
        Relay {
            registry: Registry::new(pool.clone(), Unregistered::Allow),
            pool,
            sink,
            settings,
            groups,
            owner: default_owner(),
            from_now: false,
            custom_routes: Vec::new(),
            health: Health::new(),
        }
    }

    /// Reports every group worker's state (active, standby, failing) into `health`, e.g. for a
    /// readiness probe (default: a handle nobody reads).
    pub fn health(mut self, health: Health) -> Relay {
        self.health = health;
        self
    }

    /// Groups created by this run start at the current end of the outbox instead of its start.
    pub fn from_now(mut self, from_now: bool) -> Relay {
        self.from_now = from_now;
        self
    }

    /// Decodes rows through `registry` (default: one on the relay's pool with
    /// `unregistered = "allow"`; the binary passes the configured policy).
    pub fn registry(mut self, registry: Registry) -> Relay {
        self.registry = registry;
        self
    }

    /// Adds `route` to `group`, before the group's configured routes (so code-registered
    /// handlers win over the file); a group not in the configuration is created with `key`
    /// ordering. Build the route with [`Route::call`] for a custom [`Handler`].
    ///
    /// [`Handler`]: crate::handler::Handler
    pub fn route(mut self, group: &str, route: Route) -> Relay {
        self.custom_routes.push((group.to_owned(), route));
        self
    }

    /// Registers a custom handler for the topics matching `patterns` in `group`, with the
    /// default retry policy and timeout (see [`Relay::route`] and [`Route::call`] to set them).
    pub fn handler(
        self,
        group: &str,
        patterns: &[&str],
        handler: impl crate::handler::Handler,
    ) -> Result<Relay, InvalidPattern> {
        let route = Route::call(patterns, std::any::type_name_of_val(&handler), handler)?;
        Ok(self.route(group, route))
    }

    /// The identity written into `consumer_groups.lease_owner` (default `host:pid:random`).
    pub fn owner(mut self, owner: impl Into<String>) -> Relay {
        self.owner = owner.into();
        self
    }

    /// Runs every group until `shutdown` is cancelled; then each finishes its in-flight batch
    /// within [`RelaySettings::shutdown_grace`] (abandoning it after that: nothing of it is
    /// marked done, the next owner handles it), releases its lease, and this returns.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), RelayError> {
        self.merge_custom_routes();
        for group in &self.groups {
            self.ensure_group(group).await?;
        }
        let wakeup = match self.settings.wakeup {
            Wakeup::Poll => wakeup::Wakeup::poll(),
            Wakeup::Notify => wakeup::Wakeup::notify(
                self.pool.clone(),
                self.settings.max_backoff,
                shutdown.clone(),
            ),
        };
        let workers_count = self.groups.iter().map(|g| g.partitions as usize).sum();
        let tail = tail::SharedTail::new(
            self.pool.clone(),
            self.owner.clone(),
            workers_count,
            self.settings.batch_size,
        );
        let mut workers = tokio::task::JoinSet::new();
        let mut memberships = Vec::new();
        let mut heartbeats = tokio::task::JoinSet::new();
        let beats = CancellationToken::new();
        for group in std::mem::take(&mut self.groups) {
            let (seats, membership) = self.seats(&group);
            if let Some(membership) = membership {
                let membership = Arc::new(membership);
                let beating = Arc::clone(&membership);
                let beats = beats.clone();
                heartbeats.spawn(async move { beating.run(beats).await });
                memberships.push(membership);
            }
            for seat in seats {
                let name = match &seat {
                    Some(seat) => seat.partition.row_name(&group.name),
                    None => group.name.clone(),
                };
                self.health.set(&name, WorkerHealth::Starting);
                let dispatcher = Arc::new(
                    Dispatcher::new(
                        group.name.clone(),
                        group.routes.clone(),
                        group.ordering,
                        group.dead_letter_stream.clone(),
                    )
                    .with_registry(self.registry.clone())
                    .with_entry_fields(group.entry_fields)
                    .with_max_in_flight(group.max_in_flight)
                    .with_partition(seat.as_ref().map(|seat| seat.partition)),
                );
                let worker = group::Group {
                    name,
                    dispatcher,
                    pool: self.pool.clone(),
                    sink: self.sink.clone(),
                    settings: self.settings.clone(),
                    owner: self.owner.clone(),
                    key_prefix: self.sink.key_prefix().to_owned(),
                    tail: tail.clone(),
                    seat,
                };
                let worker = group::GroupWorker::new(worker, wakeup.clone(), self.health.clone());
                workers.spawn(worker.run(shutdown.clone()));
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => beats.cancel(),
            _ = async { while workers.join_next().await.is_some() {} } => {}
        }
        while workers.join_next().await.is_some() {}
        beats.cancel();
        // A heartbeat in flight ends first (landing after `leave`, it would bring the member
        // back until its row expired); one stuck on an unreachable Postgres is dropped.
        let ended = async { while heartbeats.join_next().await.is_some() {} };
        if tokio::time::timeout(Duration::from_secs(2), ended)
            .await
            .is_err()
        {
            heartbeats.abort_all();
        }
        // Once the leases are released: the others take this relay's partitions at once.
        for membership in memberships {
            membership.leave().await;
        }
        Ok(())
    }
}

impl Relay {
    /// Creates `group`'s rows if new (one, or one per partition); refuses a group stored with
    /// another number of partitions than configured.
    async fn ensure_group(&self, group: &GroupConfig) -> Result<(), RelayError> {
        let store_error = |operation| {
            move |source| RelayError::Store {
                group: group.name.clone(),
                operation,
                source,
            }
        };
        let stored = store::consumer_groups_partitions(&self.pool, &group.name)
            .await
            .map_err(store_error("read the group's rows"))?;
        if let Some(&(partitions, _)) = stored.iter().find(|(n, _)| *n != group.partitions) {
            return Err(RelayError::Partitions {
                group: group.name.clone(),
                stored: partitions,
                configured: group.partitions,
            });
        }
        let created = if group.partitions > 1 {
            store::consumer_groups_ensure_partitions(
                &self.pool,
                &group.name,
                group.partitions,
                self.from_now,
            )
            .await
        } else {
            store::consumer_groups_ensure(&self.pool, &group.name, self.from_now).await
        }
        .map_err(store_error("create the group's rows"))?;
        if created {
            tracing::info!(group = %group.name, partitions = group.partitions, from_now = self.from_now,
                "consumer group created");
        }
        Ok(())
    }

    /// The workers `group` needs: one (no seat) when unpartitioned, else one seat per
    /// partition, all watching this relay's membership of the group.
    fn seats(&self, group: &GroupConfig) -> (Vec<Option<Seat>>, Option<Membership>) {
        if group.partitions <= 1 {
            return (vec![None], None);
        }
        let (membership, assigned) = Membership::new(
            self.pool.clone(),
            &group.name,
            &self.owner,
            group.partitions,
            self.settings.lease_ttl,
        );
        let seats = (0..group.partitions)
            .map(|index| {
                Some(Seat {
                    partition: Partition {
                        index,
                        count: group.partitions,
                    },
                    assigned: assigned.clone(),
                })
            })
            .collect();
        (seats, Some(membership))
    }

    /// Puts the routes registered in code in front of each group's configured routes.
    fn merge_custom_routes(&mut self) {
        for (group, route) in std::mem::take(&mut self.custom_routes).into_iter().rev() {
            match self.groups.iter_mut().find(|g| g.name == group) {
                Some(config) => config.routes.insert(0, route),
                None => self.groups.push(GroupConfig::new(group, vec![route])),
            }
        }
    }
}

/// Capped exponential backoff with jitter, from 50 ms up to `max`, for retrying after a failure
/// (the relay's workers use it with `[relay] max_backoff_ms`; so does `run` waiting for the
/// servers at startup).
pub fn backoff(max: Duration) -> impl Iterator<Item = Duration> + use<> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(50))
        .with_max_delay(max)
        .with_jitter()
        .without_max_times()
        .build()
}

/// `host:pid:random`, unique per process start.
fn default_owner() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "unknown-host".to_owned());
    // The tail of a UUIDv7 is random.
    let nonce = uuid::Uuid::now_v7().simple().to_string();
    format!("{host}:{}:{}", std::process::id(), &nonce[24..])
}

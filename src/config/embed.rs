//! A relay inside your own service, from the same configuration as `outbox-relay run`:
//! [`Config::relay`].

use super::{Config, ConfigErrors};
use crate::registry::Registry;
use crate::relay::Relay;
use crate::sink::{Sink, SinkError};
use crate::store::{self, ConnectError};

/// Why [`Config::relay`] could not build a relay.
#[derive(Debug, thiserror::Error)]
pub enum RelayFromConfigError {
    /// The configuration lacks what a relay needs (`redis_url`, a `[[groups]]` section).
    #[error("{0}")]
    Config(ConfigErrors),
    /// Postgres did not answer or refused the connection.
    #[error(transparent)]
    Postgres(#[from] ConnectError),
    /// Redis did not answer or refused the connection (or `[redis] cluster` does not match it).
    #[error(transparent)]
    Redis(#[from] SinkError),
}

impl Config {
    /// Connects to Postgres (a pool of `[postgres] max_connections`) and Redis and builds the
    /// relay `outbox-relay run` would run: every `[[groups]]`, `[relay]` and `[registry]`
    /// setting. Add custom handlers with [`Relay::handler`] / [`Relay::route`], then
    /// [`Relay::run`] it on your runtime with a shutdown token of yours. Unlike `run`, this
    /// does not wait for the servers to come up: a connect failure is returned at once
    /// ([`ConnectError::is_transient`] and [`SinkError::is_transient_connect`] say whether
    /// trying again may help), and there is no HTTP endpoint (wire [`Relay::health`] into
    /// yours).
    ///
    /// Groups may also be defined in code only: without `[[groups]]` the relay starts with
    /// the routes added by [`Relay::route`].
    pub async fn relay(&self) -> Result<Relay, RelayFromConfigError> {
        let redis_url = self
            .require_redis_url()
            .map_err(RelayFromConfigError::Config)?;
        let pool = store::connect(&self.database_url, self.postgres.max_connections).await?;
        let sink = Sink::connect(redis_url, &self.redis).await?;
        let registry = Registry::new(pool.clone(), self.registry.unregistered);
        Ok(Relay::new(pool, sink, self.relay.clone(), self.groups.clone()).registry(registry))
    }
}

//! Configuration, layered: the TOML file (`--config` / `OUTBOX_CONFIG`) < `DATABASE_URL` and
//! `REDIS_URL` < `OUTBOX_*` variables (`OUTBOX_RELAY__BATCH_SIZE` for `[relay] batch_size`)
//! < command-line flags.
//!
//! [`RawConfig`] is what the layers deserialize into (every unknown key is an error that names
//! the key and the nearest known one); [`Config::from_raw`] checks it and reports every problem
//! at once, each with its key path (`groups[0].routes[1].topics[0]`) and, for a misspelled
//! value, the value it probably meant. Connection URLs are [`ConnectionUrl`]s: their
//! `Display` and `Debug` never show a password.
//!
//! This module only builds: the settings types it fills live with the modules that use them
//! ([`RelaySettings`], [`GroupConfig`] and [`Wakeup`] in [`crate::relay`], [`RedisSettings`]
//! in [`crate::sink`], the URL types with the crate's redaction) and are re-exported here, so
//! imports point from configuration down to them and never back.

mod check;
mod embed;
mod errors;
mod groups;
mod raw;
mod suggest;
mod unknown;

pub use crate::redact::{
    ConnectionUrl, REDACTED, WebhookUrl, redact_headers, redact_url, redact_webhook_url,
};
pub use crate::relay::{
    DEFAULT_MAX_IN_FLIGHT, GroupConfig, MAX_IN_FLIGHT_LIMIT, MAX_PARTITIONS, NOTIFY_FALLBACK_POLL,
    RelaySettings, Wakeup,
};
pub use crate::sink::{ClusterSeeds, RedisClientCert, RedisSettings, RedisTls};
pub use embed::RelayFromConfigError;
pub use errors::{ConfigErrors, ConfigProblem};
pub use raw::{
    Overrides, RawConfig, RawGroup, RawHttp, RawPostgres, RawPublish, RawRedis, RawRegistry,
    RawRelay, RawRoute,
};

use crate::publish::PublishLimits;
use crate::registry::Unregistered;
use check::{
    check_postgres, check_postgres_tls_files, check_publish, check_redis, check_redis_cluster,
    check_registry, check_relay,
};
use groups::check_groups;

/// The checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The Postgres URL (of the primary).
    pub database_url: ConnectionUrl,
    /// The Redis URL; `None` when not set ([`Config::require_redis_url`] says how to set it).
    pub redis_url: Option<ConnectionUrl>,
    /// `[postgres]`: the relay's connection pool.
    pub postgres: PostgresSettings,
    /// `[publish]`: the limits a published message must keep.
    pub publish: PublishLimits,
    /// `[redis]`: how the relay writes to Redis.
    pub redis: RedisSettings,
    /// `[relay]`: how the relay reads the outbox.
    pub relay: RelaySettings,
    /// `[registry]`: the schema registry's policy.
    pub registry: RegistrySettings,
    /// `[http]`: the metrics and health endpoints of `run`.
    pub http: HttpSettings,
    /// `[[groups]]`, in file order; may be empty ([`Config::require_groups`] refuses that).
    pub groups: Vec<GroupConfig>,
}

/// `[postgres]`, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PostgresSettings {
    /// The cap on the relay's pool: every group, the LISTEN connection of `wakeup = "notify"`
    /// and the HTTP endpoints share it.
    pub max_connections: u32,
}

/// `[postgres] max_connections` when not set: room for the application beside a relay of
/// any number of groups, on a server with the default `max_connections = 100`.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 10;

impl Default for PostgresSettings {
    fn default() -> Self {
        PostgresSettings {
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

/// `[http]`, checked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HttpSettings {
    /// Where `run` serves `/metrics`, `/healthz` and `/readyz`; `None`: no HTTP server.
    pub listen: Option<std::net::SocketAddr>,
}

/// `[registry]`, checked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RegistrySettings {
    /// What publishing and the relay do with topics that have no registered schema.
    pub unregistered: Unregistered,
}

impl Config {
    /// Reads every layer and checks the result: unknown keys and every other problem are
    /// reported together.
    pub fn load(overrides: &Overrides) -> Result<Config, ConfigErrors> {
        let (raw, unknown) = RawConfig::load_with_unknown_keys(overrides)?;
        Config::from_raw_and_unknown_keys(raw, unknown)
    }

    /// Parses and checks a configuration written as TOML (as in `outbox-relay.toml`), without
    /// the environment and flag layers: for embedding the relay and for tests.
    pub fn from_toml(text: &str) -> Result<Config, ConfigErrors> {
        let (raw, unknown) = RawConfig::from_toml_with_unknown_keys(text)?;
        Config::from_raw_and_unknown_keys(raw, unknown)
    }

    /// Checks `raw` as [`Config::from_raw`] does; the problems of its unknown keys
    /// ([`RawConfig::load_with_unknown_keys`]) come first in the report.
    pub fn from_raw_and_unknown_keys(
        raw: RawConfig,
        mut unknown: ConfigErrors,
    ) -> Result<Config, ConfigErrors> {
        match Config::from_raw(raw) {
            Ok(config) if unknown.is_empty() => Ok(config),
            Ok(_) => Err(unknown),
            Err(problems) => {
                unknown.extend(problems);
                Err(unknown)
            }
        }
    }

    /// Checks a raw configuration, reporting every problem at once.
    pub fn from_raw(raw: RawConfig) -> Result<Config, ConfigErrors> {
        let mut errors = ConfigErrors::default();
        let database_url = match raw.database_url.as_deref() {
            None => {
                errors.push(
                    "database_url",
                    "not set: pass --database-url, set DATABASE_URL, or write database_url in the config file",
                );
                None
            }
            Some(url) => ConnectionUrl::parse(url, &["postgres", "postgresql"])
                .map_err(|problem| errors.push("database_url", problem))
                .ok(),
        };
        let redis_url = raw.redis_url.as_deref().and_then(|url| {
            ConnectionUrl::parse(url, &["redis", "rediss", "redis+unix", "unix"])
                .map_err(|problem| errors.push("redis_url", problem))
                .ok()
        });
        if let Some(url) = &database_url {
            check_postgres_tls_files(url, &mut errors);
        }
        let publish = check_publish(&raw.publish, &mut errors);
        let mut redis = check_redis(&raw.redis, &mut errors);
        redis.cluster = check_redis_cluster(&raw.redis, redis_url.as_ref(), &mut errors);
        if redis.tls.is_set() && redis_url.as_ref().is_some_and(|url| !url.is_tls()) {
            errors.push(
                "redis_url",
                "[redis] tls_* certificates are set, so the URL must start with rediss:// (TLS)",
            );
        }
        let relay = check_relay(&raw.relay, &mut errors);
        let postgres = check_postgres(&raw.postgres, relay.wakeup, &mut errors);
        let registry = check_registry(&raw.registry, &mut errors);
        let http = HttpSettings {
            listen: raw.http.listen.as_deref().and_then(|listen| {
                listen
                    .parse()
                    .map_err(|_| {
                        errors.push(
                            "http.listen",
                            format!(
                                "`{listen}` is not an IP address and port such as 127.0.0.1:9187"
                            ),
                        )
                    })
                    .ok()
            }),
        };
        let groups = check_groups(&raw.groups, &mut errors);
        match (database_url, errors.is_empty()) {
            (Some(database_url), true) => Ok(Config {
                database_url,
                redis_url,
                postgres,
                publish,
                redis,
                relay,
                registry,
                http,
                groups,
            }),
            _ => Err(errors),
        }
    }

    /// The Redis URL, or the configuration error saying how to set it.
    pub fn require_redis_url(&self) -> Result<&ConnectionUrl, ConfigErrors> {
        self.redis_url.as_ref().ok_or_else(|| {
            ConfigErrors::one(
                "redis_url",
                "not set: pass --redis-url, set REDIS_URL, or write redis_url in the config file",
            )
        })
    }

    /// The groups to run, or the configuration error saying none is configured.
    pub fn require_groups(&self) -> Result<&[GroupConfig], ConfigErrors> {
        if self.groups.is_empty() {
            Err(ConfigErrors::one(
                "groups",
                "no consumer group configured: add a [[groups]] section with at least one [[groups.routes]]",
            ))
        } else {
            Ok(&self.groups)
        }
    }
}

#[cfg(test)]
// figment::Jail's closures return figment's own (large) error type.
#[allow(clippy::result_large_err)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use super::*;
    use crate::relay::ordering::OrderingMode;
    use figment::Jail;

    fn load(overrides: &Overrides) -> Result<Config, ConfigErrors> {
        Config::load(overrides)
    }

    #[test]
    fn flags_beat_outbox_env_beat_plain_env_beat_the_file() {
        Jail::expect_with(|jail| {
            jail.clear_env();
            jail.create_file(
                "outbox-relay.toml",
                "database_url = \"postgres://file@h/db\"\nredis_url = \"redis://file:6379\"\n\
                 [publish]\nmax_payload_bytes = 10\n",
            )?;
            let file = Overrides {
                config_file: Some("outbox-relay.toml".into()),
                ..Overrides::default()
            };
            let config = load(&file).unwrap();
            assert_eq!(config.database_url.expose(), "postgres://file@h/db");
            assert_eq!(config.publish.max_payload_bytes, 10);

            jail.set_env("DATABASE_URL", "postgres://plainenv@h/db");
            assert_eq!(
                load(&file).unwrap().database_url.expose(),
                "postgres://plainenv@h/db"
            );

            jail.set_env("OUTBOX_DATABASE_URL", "postgres://outboxenv@h/db");
            jail.set_env("OUTBOX_PUBLISH__MAX_PAYLOAD_BYTES", "20");
            let config = load(&file).unwrap();
            assert_eq!(config.database_url.expose(), "postgres://outboxenv@h/db");
            assert_eq!(config.publish.max_payload_bytes, 20);
            assert_eq!(config.redis_url.unwrap().expose(), "redis://file:6379");

            let flags = Overrides {
                database_url: Some("postgres://flag@h/db".into()),
                redis_url: Some("rediss://flag:6380".into()),
                ..file
            };
            let config = load(&flags).unwrap();
            assert_eq!(config.database_url.expose(), "postgres://flag@h/db");
            assert_eq!(config.redis_url.unwrap().expose(), "rediss://flag:6380");
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_are_errors_that_name_the_key() {
        Jail::expect_with(|jail| {
            jail.clear_env();
            jail.create_file(
                "c.toml",
                "database_url = \"postgres://h/db\"\n[publish]\nmax_payload = 1\n\
                 [redis]\nmax_len = 0\n[relay]\nbatch_siz = 1\n",
            )?;
            let errors = load(&Overrides {
                config_file: Some("c.toml".into()),
                ..Overrides::default()
            })
            .unwrap_err();
            let keys: Vec<&str> = errors.problems.iter().map(|p| p.key.as_str()).collect();
            assert_eq!(
                keys,
                ["publish.max_payload", "relay.batch_siz", "redis.max_len"],
                "every unknown key, then the other problems, in one report: {errors}"
            );
            let text = errors.to_string();
            assert!(
                text.contains("publish.max_payload: unknown key (from ")
                    && text.contains("c.toml); did you mean `max_payload_bytes`?"),
                "{text}"
            );
            assert!(text.contains("did you mean `batch_size`?"), "{text}");

            jail.set_env("OUTBOX_BATCH_SIZ", "5");
            let text = load(&Overrides::default()).unwrap_err().to_string();
            assert!(
                text.contains("batch_siz: unknown key (from `OUTBOX_` environment"),
                "{text}"
            );
            assert!(text.contains("OUTBOX_RELAY__BATCH_SIZE"), "{text}");
            Ok(())
        });
    }

    #[test]
    fn reports_every_problem_at_once() {
        let raw = RawConfig {
            database_url: Some("mysql://h/db".into()),
            redis_url: Some("not a url".into()),
            publish: RawPublish {
                max_payload_bytes: Some(0),
            },
            redis: RawRedis {
                max_len: Some(0),
                ..RawRedis::default()
            },
            relay: RawRelay {
                wakeup: Some("push".into()),
                ..RawRelay::default()
            },
            postgres: RawPostgres {
                max_connections: Some(0),
            },
            registry: RawRegistry {
                unregistered: Some("deny".into()),
            },
            http: RawHttp {
                listen: Some("localhost".into()),
            },
            groups: vec![
                RawGroup {
                    name: "ok".into(),
                    routes: vec![
                        RawRoute {
                            topics: vec!["orders.*".into(), "bad[".into()],
                            handler: "forward".into(),
                            stream: Some("events.{topic}".into()),
                            ..RawRoute::default()
                        },
                        RawRoute {
                            topics: vec!["x".into()],
                            handler: "forward".into(),
                            stream: Some("events.{topc}".into()),
                            max_attempts: Some(0),
                            ..RawRoute::default()
                        },
                        RawRoute {
                            topics: vec!["y".into()],
                            handler: "http".into(),
                            ..RawRoute::default()
                        },
                    ],
                    ordering: Some("random".into()),
                    ..RawGroup::default()
                },
                RawGroup {
                    name: "no routes".into(),
                    ..RawGroup::default()
                },
                RawGroup {
                    name: "ok".into(),
                    routes: vec![RawRoute {
                        topics: vec!["*".into()],
                        handler: "forward".into(),
                        ..RawRoute::default()
                    }],
                    ..RawGroup::default()
                },
                RawGroup {
                    name: "trimmed".into(),
                    routes: vec![RawRoute {
                        topics: vec!["*".into()],
                        handler: "forward".into(),
                        stream: Some("out".into()),
                        ..RawRoute::default()
                    }],
                    entry_fields: Some(vec!["id".into(), "bogus".into(), "id".into()]),
                    ..RawGroup::default()
                },
            ],
        };
        let errors = Config::from_raw(raw).unwrap_err();
        let keys: Vec<&str> = errors.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "database_url",
                "redis_url",
                "publish.max_payload_bytes",
                "redis.max_len",
                "relay.wakeup",
                "postgres.max_connections",
                "registry.unregistered",
                "http.listen",
                "groups[0].ordering",
                "groups[0].routes[0].topics[1]",
                "groups[0].routes[1].max_attempts",
                "groups[0].routes[1].stream",
                "groups[0].routes[2].url",
                "groups[1].name",
                "groups[1].routes",
                "groups[2].name",
                "groups[2].routes[0].stream",
                "groups[3].entry_fields[1]",
                "groups[3].entry_fields[2]",
                "groups[3].entry_fields",
            ]
        );
        let text = errors.to_string();
        assert!(
            text.contains("unknown field `bogus`; expected some of id, topic, key, payload"),
            "{text}"
        );
        assert!(text.contains("`id` is listed twice"), "{text}");
        assert!(text.contains("must include `payload`"), "{text}");
    }

    #[test]
    fn a_full_relay_config_parses() {
        Jail::expect_with(|jail| {
            jail.clear_env();
            jail.create_file(
                "outbox-relay.toml",
                r#"
                database_url = "postgres://postgres@127.0.0.1/app"
                redis_url = "redis://127.0.0.1:6379"
                [redis]
                key_prefix = "app:"
                max_len = 1000000
                [relay]
                batch_size = 500
                wakeup = "poll"
                idle_poll_ms = 5
                [[groups]]
                name = "notifications"
                ordering = "strict"
                dead_letter_stream = "dead-letters"
                [[groups.routes]]
                topics = ["orders.*", "users.signed_up"]
                handler = "forward"
                stream = "events.{topic}"
                [[groups.routes]]
                topics = ["payments.*"]
                handler = "http"
                url = "http://127.0.0.1:8080/hooks/payments"
                headers = { authorization = "Bearer t0ken" }
                timeout_ms = 2500
                max_attempts = 4
                backoff_initial_ms = 200
                backoff_max_ms = 60000
                backoff_multiplier = 3.0
                "#,
            )?;
            jail.set_env("OUTBOX_RELAY__BATCH_SIZE", "50");
            let config = load(&Overrides {
                config_file: Some("outbox-relay.toml".into()),
                ..Overrides::default()
            })
            .unwrap();
            assert_eq!(config.redis.key_prefix, "app:");
            assert_eq!(config.redis.max_len, Some(1_000_000));
            assert_eq!(config.relay.batch_size, 50);
            assert_eq!(config.relay.wakeup, Wakeup::Poll);
            assert_eq!(config.groups.len(), 1);
            assert_eq!(
                config.groups[0].routes[0].patterns(),
                ["orders.*", "users.signed_up"]
            );
            let group = &config.groups[0];
            assert_eq!(group.ordering, OrderingMode::Strict);
            assert_eq!(group.dead_letter_stream.as_deref(), Some("dead-letters"));
            let http = &group.routes[1];
            assert_eq!(
                format!("{:?}", http.action),
                "call http POST http://127.0.0.1:8080/hooks/payments"
            );
            assert_eq!(http.timeout, Duration::from_millis(2500));
            assert_eq!(
                http.retry,
                crate::retry::RetryPolicy {
                    max_attempts: 4,
                    initial: Duration::from_millis(200),
                    max: Duration::from_secs(60),
                    multiplier: 3.0,
                }
            );
            Ok(())
        });
    }

    #[test]
    fn postgres_max_connections_defaults_to_10_reads_every_layer_and_has_a_floor() {
        Jail::expect_with(|jail| {
            jail.clear_env();
            jail.create_file(
                "outbox-relay.toml",
                "database_url = \"postgres://h/db\"\n[postgres]\nmax_connections = 4\n",
            )?;
            let file = Overrides {
                config_file: Some("outbox-relay.toml".into()),
                ..Overrides::default()
            };
            assert_eq!(load(&file).unwrap().postgres.max_connections, 4);
            jail.set_env("OUTBOX_POSTGRES__MAX_CONNECTIONS", "7");
            assert_eq!(load(&file).unwrap().postgres.max_connections, 7);
            Ok(())
        });
        let config = Config::from_toml("database_url = \"postgres://h/db\"").unwrap();
        assert_eq!(config.postgres.max_connections, 10);
        let checked = |toml: &str| {
            Config::from_toml(&format!("database_url = \"postgres://h/db\"\n{toml}"))
                .map(|config| config.postgres.max_connections)
                .map_err(|errors| errors.to_string())
        };
        assert_eq!(checked("[postgres]\nmax_connections = 1\n"), Ok(1));
        let zero = checked("[postgres]\nmax_connections = 0\n").unwrap_err();
        assert!(
            zero.contains("postgres.max_connections: must be at least 1"),
            "{zero}"
        );
        let notify =
            checked("[postgres]\nmax_connections = 1\n[relay]\nwakeup = \"notify\"\n").unwrap_err();
        assert!(
            notify
                .contains("postgres.max_connections: must be at least 2 with wakeup = \"notify\""),
            "{notify}"
        );
        assert_eq!(
            checked("[postgres]\nmax_connections = 2\n[relay]\nwakeup = \"notify\"\n"),
            Ok(2)
        );
    }

    #[test]
    fn max_in_flight_defaults_to_256_and_has_bounds() {
        let group = "[[groups]]\nname = \"g\"\n{}\n[[groups.routes]]\ntopics = [\"*\"]\nhandler = \"forward\"\nstream = \"s\"\n";
        let checked = |setting: &str| {
            let toml = format!(
                "database_url = \"postgres://h/db\"\n{}",
                group.replace("{}", setting)
            );
            Config::from_toml(&toml)
                .map(|config| config.groups[0].max_in_flight)
                .map_err(|errors| errors.to_string())
        };
        assert_eq!(checked(""), Ok(DEFAULT_MAX_IN_FLIGHT));
        assert_eq!(checked("max_in_flight = 1"), Ok(1));
        assert_eq!(checked("max_in_flight = 65536"), Ok(65_536));
        for bad in ["max_in_flight = 0", "max_in_flight = 65537"] {
            let error = checked(bad).unwrap_err();
            assert!(error.contains("groups[0].max_in_flight: "), "{error}");
            assert!(error.contains("between 1 and 65536"), "{error}");
        }
    }

    #[test]
    fn notify_wakeup_polls_slowly_as_a_fallback_unless_told_otherwise() {
        let relay = |wakeup: &str, idle_poll_ms: Option<u64>| {
            let raw = RawRelay {
                wakeup: Some(wakeup.into()),
                idle_poll_ms,
                ..RawRelay::default()
            };
            let mut errors = ConfigErrors::default();
            let relay = check_relay(&raw, &mut errors);
            assert!(errors.is_empty(), "{errors}");
            relay
        };
        assert_eq!(relay("poll", None).idle_poll, Duration::from_millis(5));
        assert_eq!(relay("notify", None).wakeup, Wakeup::Notify);
        assert_eq!(relay("notify", None).idle_poll, NOTIFY_FALLBACK_POLL);
        assert_eq!(
            relay("notify", Some(50)).idle_poll,
            Duration::from_millis(50)
        );
    }

    #[test]
    fn shutdown_grace_defaults_to_five_seconds_and_may_be_zero() {
        let grace = |ms: Option<u64>| {
            let raw = RawRelay {
                shutdown_grace_ms: ms,
                ..RawRelay::default()
            };
            let mut errors = ConfigErrors::default();
            let relay = check_relay(&raw, &mut errors);
            assert!(errors.is_empty(), "{errors}");
            relay.shutdown_grace
        };
        assert_eq!(grace(None), Duration::from_secs(5));
        assert_eq!(grace(Some(1500)), Duration::from_millis(1500));
        assert_eq!(grace(Some(0)), Duration::ZERO);
    }

    #[test]
    fn registry_unregistered_defaults_to_allow_and_reads_every_layer() {
        Jail::expect_with(|jail| {
            jail.clear_env();
            jail.create_file(
                "outbox-relay.toml",
                "database_url = \"postgres://h/db\"\n[registry]\nunregistered = \"reject\"\n",
            )?;
            let file = Overrides {
                config_file: Some("outbox-relay.toml".into()),
                ..Overrides::default()
            };
            assert_eq!(
                load(&file).unwrap().registry.unregistered,
                Unregistered::Reject
            );
            jail.set_env("OUTBOX_REGISTRY__UNREGISTERED", "allow");
            assert_eq!(
                load(&file).unwrap().registry.unregistered,
                Unregistered::Allow
            );
            Ok(())
        });
        let config = Config::from_toml("database_url = \"postgres://h/db\"").unwrap();
        assert_eq!(config.registry.unregistered, Unregistered::Allow);
    }

    const PEM_CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    const PEM_KEY: &str = "-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n";

    #[test]
    fn redis_tls_files_read_every_layer_and_must_hold_pem() {
        Jail::expect_with(|jail| {
            jail.clear_env();
            jail.create_file("ca.pem", PEM_CERT)?;
            jail.create_file("other-ca.pem", PEM_CERT)?;
            jail.create_file("client.pem", PEM_CERT)?;
            jail.create_file("client.key", PEM_KEY)?;
            jail.create_file(
                "outbox-relay.toml",
                "database_url = \"postgres://h/db\"\nredis_url = \"rediss://:pw@h:6380\"\n\
                 [redis]\ntls_ca_file = \"ca.pem\"\n",
            )?;
            let file = Overrides {
                config_file: Some("outbox-relay.toml".into()),
                ..Overrides::default()
            };
            let tls = load(&file).unwrap().redis.tls;
            assert_eq!(tls.ca_file, Some(PathBuf::from("ca.pem")));
            assert_eq!(tls.client, None);

            jail.set_env("OUTBOX_REDIS__TLS_CA_FILE", "other-ca.pem");
            jail.set_env("OUTBOX_REDIS__TLS_CLIENT_CERT_FILE", "client.pem");
            jail.set_env("OUTBOX_REDIS__TLS_CLIENT_KEY_FILE", "client.key");
            let tls = load(&file).unwrap().redis.tls;
            assert_eq!(tls.ca_file, Some(PathBuf::from("other-ca.pem")));
            assert_eq!(
                tls.client,
                Some(RedisClientCert {
                    cert_file: "client.pem".into(),
                    key_file: "client.key".into(),
                })
            );

            // A key where a certificate belongs, a missing file, half a client pair.
            jail.set_env("OUTBOX_REDIS__TLS_CA_FILE", "client.key");
            jail.set_env("OUTBOX_REDIS__TLS_CLIENT_CERT_FILE", "missing.pem");
            jail.set_env("OUTBOX_REDIS__TLS_CLIENT_KEY_FILE", "");
            let errors = load(&file).unwrap_err();
            let keys: Vec<&str> = errors.problems.iter().map(|p| p.key.as_str()).collect();
            assert_eq!(
                keys,
                [
                    "redis.tls_ca_file",
                    "redis.tls_client_cert_file",
                    "redis.tls_client_key_file"
                ],
                "{errors}"
            );
            assert!(
                errors
                    .to_string()
                    .contains("does not hold a PEM certificate")
            );
            assert!(errors.to_string().contains("missing.pem"));
            Ok(())
        });
    }

    #[test]
    fn tls_certificates_need_a_rediss_url_and_postgres_cert_files_must_exist() {
        Jail::expect_with(|jail| {
            jail.clear_env();
            jail.create_file("ca.pem", PEM_CERT)?;
            let text = Config::from_toml(
                "database_url = \"postgres://h/db?sslmode=verify-full&sslrootcert=missing.pem\"\n\
                 redis_url = \"redis://h:6379\"\n[redis]\ntls_ca_file = \"ca.pem\"\n",
            )
            .unwrap_err()
            .to_string();
            assert!(
                text.contains("database_url (sslrootcert): cannot read missing.pem"),
                "{text}"
            );
            assert!(
                text.contains("redis_url: [redis] tls_* certificates are set"),
                "{text}"
            );
            let config = Config::from_toml(
                "database_url = \"postgres://h/db?sslmode=verify-full&sslrootcert=ca.pem\"\n\
                 redis_url = \"rediss://h:6379\"\n[redis]\ntls_ca_file = \"ca.pem\"\n",
            );
            assert!(config.is_ok(), "{config:?}");
            Ok(())
        });
    }

    #[test]
    fn redis_cluster_seeds_need_cluster_and_the_urls_scheme() {
        Jail::expect_with(|jail| {
            jail.clear_env();
            let from_section = |redis: &str| {
                Config::from_toml(&format!(
                    "database_url = \"postgres://h/db\"\nredis_url = \"redis://a:7000\"\n[redis]\n{redis}\n"
                ))
            };
            let config =
                from_section("cluster = true\ncluster_nodes = [\"redis://b:7000\"]").unwrap();
            let seeds = config.redis.cluster.expect("a cluster");
            assert_eq!(seeds.nodes[0].expose(), "redis://b:7000");
            assert_eq!(from_section("").unwrap().redis.cluster, None);
            let text = from_section("cluster_nodes = [\"redis://b:7000\"]")
                .unwrap_err()
                .to_string();
            assert!(
                text.contains("redis.cluster_nodes: set, but `redis.cluster` is not true"),
                "{text}"
            );
            let text =
                from_section("cluster = true\ncluster_nodes = [\"rediss://b:7000\", \"http://c\"]")
                    .unwrap_err()
                    .to_string();
            assert!(text.contains("differ in TLS"), "{text}");
            assert!(text.contains("unsupported scheme `http`"), "{text}");
            jail.create_file(
                "outbox-relay.toml",
                "database_url = \"postgres://h/db\"\nredis_url = \"redis://a:7000\"\n",
            )?;
            jail.set_env("OUTBOX_REDIS__CLUSTER", "true");
            let file = Overrides {
                config_file: Some("outbox-relay.toml".into()),
                ..Overrides::default()
            };
            assert!(
                load(&file).unwrap().redis.cluster.is_some(),
                "OUTBOX_REDIS__CLUSTER"
            );
            Ok(())
        });
    }

    #[test]
    fn a_replica_wait_must_end_before_a_redis_reply_times_out() {
        let load = |redis: &str| {
            Config::from_toml(&format!(
                "database_url = \"postgres://h/db\"\n[redis]\nwait_replicas = 1\n{redis}\n"
            ))
        };
        assert!(load("").is_ok(), "defaults: 1000 ms below 5000 ms");
        let text = load("wait_timeout_ms = 5000").unwrap_err().to_string();
        assert!(
            text.contains(
                "redis.wait_timeout_ms: 5000 ms is not below redis.response_timeout_ms (5000 ms)"
            ),
            "{text}"
        );
        assert!(load("wait_timeout_ms = 5000\nresponse_timeout_ms = 8000").is_ok());
    }

    #[test]
    fn missing_database_url_says_how_to_set_it() {
        let text = Config::from_raw(RawConfig::default())
            .unwrap_err()
            .to_string();
        assert!(
            text.contains("--database-url") && text.contains("DATABASE_URL"),
            "{text}"
        );
    }

    #[test]
    fn missing_config_file_is_an_error() {
        let text = RawConfig::load(&Overrides {
            config_file: Some("/nonexistent/outbox-relay.toml".into()),
            ..Overrides::default()
        })
        .unwrap_err()
        .to_string();
        assert!(
            text.contains("--config") && text.contains("/nonexistent/outbox-relay.toml"),
            "{text}"
        );
    }
}

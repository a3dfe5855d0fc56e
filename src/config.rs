//! Configuration, layered: the TOML file (`--config` / `OUTBOX_CONFIG`) < `DATABASE_URL` and
//! `REDIS_URL` < `OUTBOX_*` variables (`OUTBOX_PUBLISH__MAX_PAYLOAD_BYTES` for
//! `[publish] max_payload_bytes`) < command-line flags.
//!
//! [`RawConfig`] is what the layers deserialize into (unknown keys are errors that name the
//! key); [`Config::from_raw`] checks it and reports every problem at once, each with its key.
//! Connection URLs are [`ConnectionUrl`]s: their `Display` and `Debug` never show a password.

use std::fmt;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::publish::PublishLimits;

/// The configuration file as written, before checks. Every field is optional here.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Postgres URL, e.g. `postgres://postgres@127.0.0.1/app` (the primary, not a standby).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_url: Option<String>,
    /// Redis URL, e.g. `redis://127.0.0.1:6379` or `rediss://…` for TLS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_url: Option<String>,
    /// `[publish]`: limits applied to messages published through outbox-relay.
    #[serde(default, skip_serializing_if = "RawPublish::is_empty")]
    pub publish: RawPublish,
}

/// `[publish]` section.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPublish {
    /// Largest payload accepted, in bytes of JSON text (default 1048576 = 1 MiB).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_payload_bytes: Option<u64>,
}

impl RawPublish {
    fn is_empty(&self) -> bool {
        self.max_payload_bytes.is_none()
    }
}

/// Values from the command line. They beat every other layer.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// The TOML file to read, if any.
    pub config_file: Option<PathBuf>,
    pub database_url: Option<String>,
    pub redis_url: Option<String>,
}

/// The checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub database_url: ConnectionUrl,
    pub redis_url: Option<ConnectionUrl>,
    pub publish: PublishLimits,
}

impl Config {
    /// Reads every layer and checks the result.
    pub fn load(overrides: &Overrides) -> Result<Config, ConfigErrors> {
        Config::from_raw(RawConfig::load(overrides)?)
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
        let mut publish = PublishLimits::default();
        match raw.publish.max_payload_bytes {
            Some(0) => errors.push("publish.max_payload_bytes", "must be at least 1"),
            Some(bytes) => match usize::try_from(bytes) {
                Ok(bytes) => publish.max_payload_bytes = bytes,
                Err(_) => errors.push("publish.max_payload_bytes", "too large for this platform"),
            },
            None => {}
        }
        match (database_url, errors.is_empty()) {
            (Some(database_url), true) => Ok(Config {
                database_url,
                redis_url,
                publish,
            }),
            _ => Err(errors),
        }
    }
}

impl RawConfig {
    /// Merges the layers, lowest first: file, `DATABASE_URL`/`REDIS_URL`, `OUTBOX_*`, flags.
    pub fn load(overrides: &Overrides) -> Result<RawConfig, ConfigErrors> {
        let mut figment = Figment::new();
        if let Some(path) = &overrides.config_file {
            check_readable(path)?;
            figment = figment.merge(Toml::file_exact(path));
        }
        let flags = RawConfig {
            database_url: overrides.database_url.clone(),
            redis_url: overrides.redis_url.clone(),
            publish: RawPublish::default(),
        };
        figment
            .merge(Env::raw().only(&["database_url", "redis_url"]))
            .merge(Env::prefixed("OUTBOX_").ignore(&["config"]).split("__"))
            .merge(Serialized::defaults(flags))
            .extract()
            .map_err(ConfigErrors::from_figment)
    }
}

fn check_readable(path: &Path) -> Result<(), ConfigErrors> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() => Ok(()),
        Ok(_) => Err(ConfigErrors::one(
            "--config",
            format!("{} is not a file", path.display()),
        )),
        Err(e) => Err(ConfigErrors::one(
            "--config",
            format!("cannot read {}: {e}", path.display()),
        )),
    }
}

/// Every problem found in a configuration, each with the key it concerns.
#[derive(Debug, Default, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors {
    pub problems: Vec<ConfigProblem>,
}

/// One configuration problem: the key (`publish.max_payload_bytes`, `--config`) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub key: String,
    pub message: String,
}

impl ConfigErrors {
    fn one(key: &str, message: impl Into<String>) -> Self {
        let mut errors = ConfigErrors::default();
        errors.push(key, message);
        errors
    }

    fn push(&mut self, key: &str, message: impl Into<String>) {
        self.problems.push(ConfigProblem {
            key: key.to_owned(),
            message: message.into(),
        });
    }

    fn is_empty(&self) -> bool {
        self.problems.is_empty()
    }

    fn from_figment(error: figment::Error) -> Self {
        let mut errors = ConfigErrors::default();
        for e in error {
            let key = if e.path.is_empty() {
                "(top level)".to_owned()
            } else {
                e.path.join(".")
            };
            let source = e
                .metadata
                .as_ref()
                .map(|m| match &m.source {
                    Some(source) => format!(" (from {source})"),
                    None => format!(" (from {})", m.name),
                })
                .unwrap_or_default();
            errors.push(&key, format!("{}{source}", e.kind));
        }
        errors
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid configuration")?;
        for (i, problem) in self.problems.iter().enumerate() {
            let sep = if i == 0 { ": " } else { "; " };
            write!(f, "{sep}{}: {}", problem.key, problem.message)?;
        }
        Ok(())
    }
}

/// A connection URL that may carry a password. `Display`/`Debug` redact it; only
/// [`ConnectionUrl::expose`] gives the real text, for handing to a driver.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnectionUrl(String);

impl ConnectionUrl {
    /// Parses `url` and checks its scheme is one of `schemes`. Errors never echo the URL.
    pub fn parse(url: &str, schemes: &[&str]) -> Result<Self, String> {
        let parsed = url::Url::parse(url).map_err(|e| format!("not a valid URL ({e})"))?;
        if !schemes.contains(&parsed.scheme()) {
            return Err(format!(
                "unsupported scheme `{}`; expected one of {}",
                parsed.scheme(),
                schemes.join(", ")
            ));
        }
        Ok(ConnectionUrl(url.to_owned()))
    }

    /// The URL with its password, for the driver only. Never log this.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with the userinfo password and any `password=` query parameter replaced.
    pub fn redacted(&self) -> String {
        redact_url(&self.0)
    }
}

impl fmt::Display for ConnectionUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Debug for ConnectionUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConnectionUrl({:?})", self.redacted())
    }
}

const REDACTED: &str = "REDACTED";

/// Redacts the password of any URL-shaped string; text that does not parse is not echoed.
pub fn redact_url(url: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(url) else {
        return "<unparseable URL>".to_owned();
    };
    if parsed.password().is_some() {
        // Only fails for URLs that cannot have a password, which have none to hide.
        let _ = parsed.set_password(Some(REDACTED));
    }
    let has_secret_param = parsed
        .query_pairs()
        .any(|(name, _)| name.eq_ignore_ascii_case("password"));
    if has_secret_param {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(name, value)| {
                let value = if name.eq_ignore_ascii_case("password") {
                    REDACTED.to_owned()
                } else {
                    value.into_owned()
                };
                (name.into_owned(), value)
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    parsed.to_string()
}

#[cfg(test)]
// figment::Jail's closures return figment's own (large) error type.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
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
                "database_url = \"postgres://h/db\"\n[publish]\nmax_payload = 1\n",
            )?;
            let errors = load(&Overrides {
                config_file: Some("c.toml".into()),
                ..Overrides::default()
            })
            .unwrap_err();
            let text = errors.to_string();
            assert!(text.contains("publish.max_payload"), "{text}");
            assert!(text.contains("c.toml"), "{text}");

            jail.set_env("OUTBOX_BATCH_SIZ", "5");
            let text = load(&Overrides::default()).unwrap_err().to_string();
            assert!(text.contains("batch_siz"), "{text}");
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
        };
        let errors = Config::from_raw(raw).unwrap_err();
        let keys: Vec<&str> = errors.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            ["database_url", "redis_url", "publish.max_payload_bytes"]
        );
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

    #[test]
    fn urls_never_show_their_password() {
        let url = ConnectionUrl::parse(
            "postgres://app:s3cret@db:5432/app?sslmode=require",
            &["postgres"],
        )
        .unwrap();
        assert_eq!(
            url.to_string(),
            "postgres://app:REDACTED@db:5432/app?sslmode=require"
        );
        assert!(!format!("{url:?}").contains("s3cret"));
        let url = ConnectionUrl::parse("postgres://db/app?user=u&password=s3cret", &["postgres"])
            .unwrap();
        assert!(!url.to_string().contains("s3cret"), "{url}");
        assert_eq!(redact_url("::not a url s3cret"), "<unparseable URL>");
        let error =
            ConnectionUrl::parse("postgres://u:s3cret@h:notaport/db", &["postgres"]).unwrap_err();
        assert!(!error.contains("s3cret"), "{error}");
    }
}

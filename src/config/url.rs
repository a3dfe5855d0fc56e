//! Connection URLs that may carry a password: [`ConnectionUrl`]'s `Display` and `Debug` never
//! show it; only [`ConnectionUrl::expose`] hands the real text to a driver.

use std::fmt;

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

    /// The same server and credentials, database `name` (the URL's path).
    pub fn with_database(&self, name: &str) -> ConnectionUrl {
        let mut url = url::Url::parse(&self.0).expect("checked when parsed");
        url.set_path(&format!("/{name}"));
        ConnectionUrl(url.to_string())
    }

    /// True for `rediss://` (Redis over TLS).
    pub fn is_tls(&self) -> bool {
        self.0.starts_with("rediss://")
    }

    /// The value of query parameter `name` (e.g. `sslrootcert`), if present.
    pub fn query_value(&self, name: &str) -> Option<String> {
        let url = url::Url::parse(&self.0).ok()?;
        url.query_pairs()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.into_owned())
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

/// What stands for a secret wherever one is shown.
pub const REDACTED: &str = "REDACTED";

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

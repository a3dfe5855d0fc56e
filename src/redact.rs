//! Secrets in URLs and headers, and the one place that redacts them.
//!
//! - Connection URLs may carry a password: [`ConnectionUrl`]'s `Display` and `Debug` never
//!   show it ([`redact_url`]); only [`ConnectionUrl::expose`] hands the real text to a driver.
//! - An http route's URL may carry credentials in its query (`?token=…`) as well as a
//!   password: [`WebhookUrl`] shows every query value as `REDACTED` (the names stay), and
//!   [`WebhookUrl::scrub`] takes them out of any text that quotes them (an error, a response
//!   body). Only the request itself is sent [`WebhookUrl::expose`].
//! - An http route's header values are never shown: [`redact_headers`].

use std::collections::BTreeMap;
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

    /// The URL's scheme (`redis`, `rediss`, `postgres`, …).
    pub fn scheme(&self) -> &str {
        self.0.split_once(':').map_or("", |(scheme, _)| scheme)
    }

    /// The same scheme, credentials, path and query, another host and port: a Redis Cluster
    /// node the seed told about. An IPv6 host is bracketed.
    /// Fails when `host` is not one a URL can carry.
    pub fn with_host_port(&self, host: &str, port: u16) -> Result<ConnectionUrl, String> {
        let mut url = url::Url::parse(&self.0).expect("checked when parsed");
        let bracketed = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]")
        } else {
            host.to_owned()
        };
        url.set_host(Some(&bracketed))
            .map_err(|e| format!("`{host}` is not a host a URL can name ({e})"))?;
        url.set_port(Some(port))
            .map_err(|()| format!("a {} URL cannot carry a port", url.scheme()))?;
        Ok(ConnectionUrl(url.to_string()))
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

/// What stands for a URL that could not be parsed (it is not echoed: it may hold a secret).
const UNPARSEABLE: &str = "<unparseable URL>";

/// Redacts the password of any URL-shaped string (userinfo and a `password=` query
/// parameter; the other parameters of a connection URL, such as `sslmode`, stay); text that
/// does not parse is not echoed.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(parsed) => redacted(parsed, |name| name.eq_ignore_ascii_case("password")).into(),
        Err(_) => UNPARSEABLE.to_owned(),
    }
}

/// `url` with its password and the values of the query parameters `secret` says are secret
/// replaced by [`REDACTED`].
fn redacted(mut url: url::Url, secret: impl Fn(&str) -> bool) -> url::Url {
    if url.password().is_some() {
        // Only fails for URLs that cannot have a password, which have none to hide.
        let _ = url.set_password(Some(REDACTED));
    }
    if url.query_pairs().any(|(name, _)| secret(&name)) {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(name, value)| {
                let value = if secret(&name) {
                    REDACTED.to_owned()
                } else {
                    value.into_owned()
                };
                (name.into_owned(), value)
            })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
    url
}

/// An http route's URL. `Display` and `Debug` show it with the password and every query
/// value redacted (`https://hooks.example/h?token=REDACTED`); only [`WebhookUrl::expose`]
/// gives the real one, for the request.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookUrl {
    url: url::Url,
    shown: url::Url,
}

impl WebhookUrl {
    /// Parses `url`; the error is the text as it may be shown (see [`redact_webhook_url`]).
    pub fn parse(url: &str) -> Result<WebhookUrl, String> {
        let parsed = url::Url::parse(url).map_err(|_| redact_webhook_url(url))?;
        Ok(WebhookUrl {
            shown: redacted(parsed.clone(), |_| true),
            url: parsed,
        })
    }

    /// The URL with its secrets, for the request only. Never log this.
    pub fn expose(&self) -> &url::Url {
        &self.url
    }

    /// The URL as it may be shown.
    pub fn redacted(&self) -> &str {
        self.shown.as_str()
    }

    /// `text` with this URL, and its query, redacted wherever it is quoted whole (an error
    /// naming the URL, an error page echoing the request's path and query).
    pub fn scrub(&self, text: &str) -> String {
        let text = text.replace(self.url.as_str(), self.shown.as_str());
        match (self.url.query(), self.shown.query()) {
            (Some(query), Some(shown)) if !query.is_empty() => text.replace(query, shown),
            _ => text,
        }
    }
}

impl fmt::Display for WebhookUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.shown.as_str())
    }
}

impl fmt::Debug for WebhookUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WebhookUrl({:?})", self.shown.as_str())
    }
}

/// An http route's URL as written, for an error about it: as it is when it has no password
/// and no query, else with those redacted; not echoed at all when it does not parse and
/// might hold one.
pub fn redact_webhook_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(parsed) if parsed.password().is_none() && parsed.query().is_none() => url.to_owned(),
        Ok(parsed) => redacted(parsed, |_| true).into(),
        Err(_) if !url.contains(['@', '?']) => url.to_owned(),
        Err(_) => UNPARSEABLE.to_owned(),
    }
}

/// An http route's headers as they may be shown: every name, no value.
pub fn redact_headers<'a>(
    headers: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> BTreeMap<&'a str, &'static str> {
    headers
        .into_iter()
        .map(|(name, _)| (name, REDACTED))
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_cluster_node_url_keeps_scheme_and_credentials() {
        let seed = ConnectionUrl::parse("rediss://u:p@10.0.0.1:7000/0", &["rediss"]).unwrap();
        let node = seed.with_host_port("10.0.0.2", 7001).unwrap();
        assert_eq!(node.expose(), "rediss://u:p@10.0.0.2:7001/0");
        let v6 = seed.with_host_port("fe80::1", 7002).unwrap();
        assert_eq!(v6.expose(), "rediss://u:p@[fe80::1]:7002/0");
        assert!(seed.with_host_port("bad host", 7003).is_err());
    }

    use super::*;

    #[test]
    fn webhook_urls_show_query_names_never_values() {
        let url =
            WebhookUrl::parse("https://u:pw-s3cret@hooks.example/h?token=s3cret&x=1").unwrap();
        let shown = "https://u:REDACTED@hooks.example/h?token=REDACTED&x=REDACTED";
        assert_eq!(url.to_string(), shown);
        assert_eq!(format!("{url:?}"), format!("WebhookUrl({shown:?})"));
        assert_eq!(
            url.expose().as_str(),
            "https://u:pw-s3cret@hooks.example/h?token=s3cret&x=1"
        );
        // Text quoting the URL, or echoing its query, loses the values.
        let text = url.scrub(
            "error for url (https://u:pw-s3cret@hooks.example/h?token=s3cret&x=1); \
             404: no route for /h?token=s3cret&x=1",
        );
        assert!(!text.contains("s3cret"), "{text}");
        assert!(
            text.ends_with("no route for /h?token=REDACTED&x=REDACTED"),
            "{text}"
        );
        assert_eq!(url.scrub("max=10"), "max=10");
        // As written when there is nothing to hide; never echoed when it does not parse.
        assert_eq!(redact_webhook_url("http://h/hook"), "http://h/hook");
        assert_eq!(
            redact_webhook_url("ftp://h/hook?token=s3cret"),
            "ftp://h/hook?token=REDACTED"
        );
        assert_eq!(
            redact_webhook_url("::bad?token=s3cret"),
            "<unparseable URL>"
        );
        assert_eq!(redact_webhook_url("::bad"), "::bad");
        let headers = redact_headers([("Authorization", "Bearer s3cret"), ("x-tenant", "acme")]);
        assert_eq!(
            headers.into_iter().collect::<Vec<_>>(),
            [("Authorization", "REDACTED"), ("x-tenant", "REDACTED")]
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

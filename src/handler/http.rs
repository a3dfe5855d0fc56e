//! The built-in `http` handler: POSTs the decoded message as JSON to a URL.
//!
//! - 2xx: done. A JSON body `{"outputs": [{"stream": "...", "payload": {...}}]}` becomes Redis
//!   entries; an empty body (or one without `outputs`) means no entries.
//! - 408, 429 and 5xx, a connection error or a timeout: retryable.
//! - any other 4xx (and a 2xx whose body is not the JSON above): permanent.
//!
//! The request body is [`DecodedMessage`] as JSON: `id`, `topic`, `key`, `payload`, `headers`,
//! `schema_version`, `position`, `created_at`, `attempt`. It also carries the header
//! `Idempotency-Key: <message id>`, so a receiver can ignore a repeated delivery.

use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use super::{DecodedMessage, Handler, HandlerError, Output};

/// A configured `http` route handler.
#[derive(Debug, Clone)]
pub struct HttpHandler {
    client: reqwest::Client,
    url: reqwest::Url,
}

/// `http` handler settings that are not valid.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HttpHandlerError {
    #[error("`{0}` is not an http:// or https:// URL")]
    Url(String),
    #[error("header `{0}`: not a valid header name")]
    HeaderName(String),
    #[error("header `{0}`: not a valid header value")]
    HeaderValue(String),
    #[error("could not build the HTTP client: {0}")]
    Client(String),
}

#[derive(serde::Deserialize)]
struct Reply {
    #[serde(default)]
    outputs: Vec<Output>,
}

/// The most of a response body quoted in an error.
const QUOTED_BODY_BYTES: usize = 300;

impl HttpHandler {
    /// A handler POSTing to `url` with extra `headers`; each request gives up after `timeout`.
    pub fn new<'a>(
        url: &str,
        headers: impl IntoIterator<Item = (&'a str, &'a str)>,
        timeout: Duration,
    ) -> Result<HttpHandler, HttpHandlerError> {
        let url = reqwest::Url::parse(url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .ok_or_else(|| HttpHandlerError::Url(shown_url(url)))?;
        let mut header_map = HeaderMap::new();
        for (name, value) in headers {
            let header_name = HeaderName::try_from(name)
                .map_err(|_| HttpHandlerError::HeaderName(name.to_owned()))?;
            let header_value = HeaderValue::try_from(value)
                .map_err(|_| HttpHandlerError::HeaderValue(name.to_owned()))?;
            header_map.insert(header_name, header_value);
        }
        // reqwest is built without a default TLS crypto provider (ring is the one the rest of
        // the binary uses already); install it once for the process.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .default_headers(header_map)
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent(concat!("outbox-relay/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| HttpHandlerError::Client(e.to_string()))?;
        Ok(HttpHandler { client, url })
    }

    pub fn url(&self) -> &str {
        self.url.as_str()
    }
}

#[async_trait::async_trait]
impl Handler for HttpHandler {
    async fn handle(&self, message: &DecodedMessage) -> Result<Vec<Output>, HandlerError> {
        let response = self
            .client
            .post(self.url.clone())
            .header("Idempotency-Key", message.id.to_string())
            .json(message)
            .send()
            .await
            .map_err(|e| HandlerError::retryable(describe_send_error(&e)))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| HandlerError::retryable(format!("reading the response failed: {e}")))?;
        if status.is_success() {
            return parse_outputs(&body).map_err(|e| {
                HandlerError::permanent(format!("{status}: {e}; body: {}", quote(&body)))
            });
        }
        let reason = format!("{status}; body: {}", quote(&body));
        let retryable = status.is_server_error()
            || status == reqwest::StatusCode::REQUEST_TIMEOUT
            || status == reqwest::StatusCode::TOO_MANY_REQUESTS;
        Err(if retryable {
            HandlerError::Retryable(reason)
        } else {
            HandlerError::Permanent(reason)
        })
    }
}

/// A 2xx body: empty, or JSON with an optional `outputs` list.
fn parse_outputs(body: &[u8]) -> Result<Vec<Output>, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Vec::new());
    }
    let reply: Reply = crate::json::from_slice(body).map_err(|e| {
        format!("the body is not {{\"outputs\": [{{\"stream\": …, \"payload\": …}}]}} ({e})")
    })?;
    if let Some(empty) = reply.outputs.iter().find(|o| o.stream.is_empty()) {
        return Err(format!("an output has an empty stream name: {empty:?}"));
    }
    Ok(reply.outputs)
}

/// `url` as an error may show it: as written unless it may hold a password.
fn shown_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(parsed) if parsed.password().is_none() => url.to_owned(),
        Err(_) if !url.contains('@') => url.to_owned(),
        _ => crate::config::redact_url(url),
    }
}

fn describe_send_error(error: &reqwest::Error) -> String {
    let what = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "could not connect"
    } else {
        "request failed"
    };
    let mut text = format!("{what}: {error}");
    // reqwest quotes the URL, password included; the text goes to logs and last_error.
    if let Some(url) = error.url().filter(|url| url.password().is_some()) {
        text = text.replace(url.as_str(), &crate::config::redact_url(url.as_str()));
    }
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn quote(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return "(empty)".to_owned();
    }
    let mut end = text.len().min(QUOTED_BODY_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    if end < text.len() {
        format!("{} …", &text[..end])
    } else {
        text.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_become_outputs() {
        assert_eq!(parse_outputs(b"").unwrap(), vec![]);
        assert_eq!(parse_outputs(b"{}").unwrap(), vec![]);
        assert_eq!(
            parse_outputs(br#"{"outputs": [{"stream": "s", "payload": {"a": 1}}]}"#).unwrap(),
            vec![Output::new("s", serde_json::json!({"a": 1}))]
        );
        assert!(parse_outputs(b"ok").is_err());
        assert!(parse_outputs(br#"{"outputs": [{"stream": "", "payload": {}}]}"#).is_err());
    }

    #[test]
    fn bad_settings_are_named() {
        let timeout = Duration::from_secs(1);
        assert_eq!(
            HttpHandler::new("ftp://x", [], timeout).unwrap_err(),
            HttpHandlerError::Url("ftp://x".into())
        );
        assert_eq!(
            HttpHandler::new("ftp://u:s3cret@x", [], timeout).unwrap_err(),
            HttpHandlerError::Url("ftp://u:REDACTED@x/".into())
        );
        assert_eq!(
            HttpHandler::new("http://x", [("bad name", "v")], timeout).unwrap_err(),
            HttpHandlerError::HeaderName("bad name".into())
        );
        assert!(HttpHandler::new("https://example.com/hook", [("x-token", "t")], timeout).is_ok());
    }

    #[test]
    fn quoted_bodies_are_short() {
        assert_eq!(quote(b"  "), "(empty)");
        assert!(quote("x".repeat(1000).as_bytes()).len() < 310);
    }
}

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
//!
//! The URL's query values and password and the header values are credentials: only the
//! request carries them. Every error (and so `last_error`, `dead list`, `stuck`, the
//! dead-letter stream and the logs) names the URL as [`WebhookUrl`] shows it
//! (`?token=REDACTED`), and never a header value.

use std::fmt;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use super::reply::{parse_outputs, quote};
use super::{DecodedMessage, Handler, HandlerError, Output};
use crate::redact::{WebhookUrl, redact_webhook_url};

/// A configured `http` route handler. `Debug` shows the URL redacted and no header.
#[derive(Clone)]
pub struct HttpHandler {
    client: reqwest::Client,
    url: WebhookUrl,
}

impl fmt::Debug for HttpHandler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpHandler")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// `http` handler settings that are not valid.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HttpHandlerError {
    /// The URL (shown redacted) does not parse, or is not http:// or https://.
    #[error("`{0}` is not an http:// or https:// URL")]
    Url(String),
    /// This header name is not a valid HTTP header name.
    #[error("header `{0}`: not a valid header name")]
    HeaderName(String),
    /// The header with this name has a value HTTP does not allow (the value, maybe a
    /// credential, is not shown).
    #[error("header `{0}`: not a valid header value")]
    HeaderValue(String),
    /// reqwest could not build the HTTP client; the text is its error.
    #[error("could not build the HTTP client: {0}")]
    Client(String),
}

impl HttpHandler {
    /// A handler POSTing to `url` with extra `headers`; each request gives up after `timeout`.
    pub fn new<'a>(
        url: &str,
        headers: impl IntoIterator<Item = (&'a str, &'a str)>,
        timeout: Duration,
    ) -> Result<HttpHandler, HttpHandlerError> {
        let url = WebhookUrl::parse(url)
            .ok()
            .filter(|u| matches!(u.expose().scheme(), "http" | "https"))
            .ok_or_else(|| HttpHandlerError::Url(redact_webhook_url(url)))?;
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

    /// The URL, shown redacted.
    pub fn url(&self) -> &WebhookUrl {
        &self.url
    }
}

#[async_trait::async_trait]
impl Handler for HttpHandler {
    /// A webhook's answer is not appended anywhere: nothing to re-derive after a Redis loss.
    fn has_outputs(&self) -> bool {
        false
    }

    async fn handle(&self, message: &DecodedMessage) -> Result<Vec<Output>, HandlerError> {
        let response = self
            .client
            .post(self.url.expose().clone())
            .header("Idempotency-Key", message.id.to_string())
            .json(message)
            .send()
            .await
            .map_err(|e| HandlerError::retryable(self.url.scrub(&describe_send_error(e))))?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| {
            HandlerError::retryable(self.url.scrub(&format!(
                "reading the response failed: {}",
                error_chain(e.without_url())
            )))
        })?;
        let quoted = self.url.scrub(&quote(&body));
        if status.is_success() {
            return parse_outputs(&body).map_err(|e| {
                HandlerError::permanent(format!("{status}: the body {e}; body: {quoted}"))
            });
        }
        let reason = format!("{status}; body: {quoted}");
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

/// What went wrong sending a request, without the URL: reqwest's `Display` quotes it whole,
/// query and password included, and the text goes to logs and `last_error`.
fn describe_send_error(error: reqwest::Error) -> String {
    let what = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "could not connect"
    } else {
        "request failed"
    };
    format!("{what}: {}", error_chain(error.without_url()))
}

/// The error and its causes, `: `-separated.
fn error_chain(error: reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(
            HttpHandler::new("ftp://x/h?token=s3cret", [], timeout).unwrap_err(),
            HttpHandlerError::Url("ftp://x/h?token=REDACTED".into())
        );
    }

    #[tokio::test]
    async fn errors_and_debug_never_show_the_query_or_headers() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let handler = HttpHandler::new(
            &format!("http://127.0.0.1:{port}/hook?token=s3cret"),
            [("authorization", "Bearer s3cret2")],
            Duration::from_secs(5),
        )
        .unwrap();
        assert!(!format!("{handler:?}").contains("s3cret"), "{handler:?}");
        let message = DecodedMessage {
            id: uuid::Uuid::nil(),
            topic: "t".into(),
            key: None,
            payload: serde_json::json!({}),
            headers: Default::default(),
            schema_version: None,
            position: "1:1".parse().unwrap(),
            created_at: chrono::Utc::now(),
            attempt: 1,
        };
        let error = handler.handle(&message).await.unwrap_err();
        assert!(error.is_retryable(), "{error}");
        assert!(error.reason().starts_with("could not connect: "), "{error}");
        assert!(!error.reason().contains("s3cret"), "{error}");
    }
}

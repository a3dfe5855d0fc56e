//! [`Message`]: what an application hands to `publish_in_tx`, and the checks it must pass.
//!
//! Building a message never fails; problems found while building (a payload that does not
//! serialize, headers that are not string → string) are kept and reported by the publish call,
//! before any I/O, like `reqwest` defers a bad body to `send()`. So a rejected message never
//! writes anything.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;
use serde_json::value::RawValue;

/// Topics are at most this many bytes (Postgres check `messages_topic_valid` agrees).
pub const MAX_TOPIC_BYTES: usize = 255;
/// Keys are at most this many bytes (Postgres check `messages_key_valid` agrees).
pub const MAX_KEY_BYTES: usize = 1024;

/// One message for the outbox: a topic, an optional ordering key, a JSON payload and
/// string → string headers.
///
/// ```
/// use outbox_relay::Message;
/// let message = Message::new("orders.created", serde_json::json!({"order_id": 42}))
///     .key("order-42")
///     .header("correlation_id", "c-7");
/// assert_eq!(message.topic(), "orders.created");
/// ```
#[derive(Clone)]
pub struct Message {
    topic: String,
    key: Option<String>,
    payload: Result<Box<RawValue>, InvalidMessage>,
    headers: BTreeMap<String, String>,
    headers_error: Option<InvalidMessage>,
}

impl Message {
    /// A message with `payload` serialized to JSON now. The payload must serialize to a JSON
    /// object or array; anything else is reported by the publish call.
    pub fn new(topic: impl Into<String>, payload: impl Serialize) -> Self {
        let payload = serde_json::value::to_raw_value(&payload).map_err(|e| {
            InvalidMessage::PayloadNotSerializable {
                reason: e.to_string(),
            }
        });
        Message {
            topic: topic.into(),
            key: None,
            payload,
            headers: BTreeMap::new(),
            headers_error: None,
        }
    }

    /// Sets the ordering key (e.g. an aggregate id): messages with the same key are delivered
    /// in position order, and a failing one holds back the later ones of its key only.
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Adds (or replaces) one header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }

    /// Adds every header of a JSON object whose values are all strings, e.g. headers that
    /// arrive as JSON from another system. Anything else is reported by the publish call.
    pub fn headers_json(mut self, headers: &serde_json::Value) -> Self {
        match headers {
            serde_json::Value::Object(map) => {
                for (name, value) in map {
                    match value {
                        serde_json::Value::String(value) => {
                            self.headers.insert(name.clone(), value.clone());
                        }
                        other => {
                            self.headers_error
                                .get_or_insert(InvalidMessage::HeaderNotString {
                                    name: name.clone(),
                                    found: json_type_name(other),
                                });
                        }
                    }
                }
            }
            other => {
                self.headers_error
                    .get_or_insert(InvalidMessage::HeadersNotObject {
                        found: json_type_name(other),
                    });
            }
        }
        self
    }

    /// The topic the message is published to.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The ordering key, if the message has one.
    pub fn key_str(&self) -> Option<&str> {
        self.key.as_deref()
    }

    /// The headers set so far.
    pub fn headers(&self) -> &BTreeMap<String, String> {
        &self.headers
    }

    /// The payload as JSON text, if it serialized.
    pub fn payload_json(&self) -> Option<&str> {
        self.payload.as_ref().ok().map(|raw| raw.get())
    }

    /// Every check a message must pass before it is written. Pure: no I/O.
    pub(crate) fn validate(
        &self,
        max_payload_bytes: usize,
    ) -> Result<ValidMessage<'_>, InvalidMessage> {
        validate_topic(&self.topic)?;
        if let Some(key) = &self.key {
            validate_key(key)?;
        }
        let payload = self.payload.as_ref().map_err(Clone::clone)?;
        validate_payload(payload.get(), max_payload_bytes)?;
        if let Some(error) = &self.headers_error {
            return Err(error.clone());
        }
        validate_headers(&self.headers)?;
        Ok(ValidMessage {
            topic: &self.topic,
            key: self.key.as_deref(),
            payload,
            headers: &self.headers,
        })
    }
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("topic", &self.topic)
            .field("key", &self.key)
            .field("payload", &self.payload.as_ref().map(|raw| raw.get()))
            .field("headers", &self.headers)
            .finish()
    }
}

/// A message that passed [`Message::validate`], borrowed for the insert.
#[derive(Debug, Clone, Copy)]
pub struct ValidMessage<'a> {
    pub topic: &'a str,
    pub key: Option<&'a str>,
    pub payload: &'a RawValue,
    pub headers: &'a BTreeMap<String, String>,
}

/// Why a message was refused. Nothing was written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidMessage {
    /// The topic is the empty string.
    #[error("topic must not be empty")]
    EmptyTopic,
    /// The topic is longer than [`MAX_TOPIC_BYTES`].
    #[error("topic `{topic}` is {len} bytes long; the limit is {MAX_TOPIC_BYTES}")]
    TopicTooLong {
        /// The topic's beginning.
        topic: Preview,
        /// Its length in bytes.
        len: usize,
    },
    /// The topic contains whitespace or a control character.
    #[error("topic {topic:?} contains whitespace or a control character")]
    TopicHasWhitespace {
        /// The topic's beginning.
        topic: Preview,
    },
    /// The key is the empty string (no key is `None`).
    #[error("key must be absent or non-empty")]
    EmptyKey,
    /// The key is longer than [`MAX_KEY_BYTES`].
    #[error("key is {len} bytes long; the limit is {MAX_KEY_BYTES}")]
    KeyTooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// The key contains a NUL character.
    #[error("key contains a NUL character, which Postgres text cannot store")]
    KeyHasNul,
    /// Serializing the payload to JSON failed.
    #[error("payload could not be serialized to JSON: {reason}")]
    PayloadNotSerializable {
        /// serde_json's error, as text.
        reason: String,
    },
    /// The payload is a JSON scalar (a string, number, boolean or null).
    #[error("payload must be a JSON object or array, not {found}")]
    PayloadNotDocument {
        /// What it is instead (`"a string"`, …).
        found: &'static str,
    },
    /// The payload's compact JSON is larger than [`PublishLimits::max_payload_bytes`].
    ///
    /// [`PublishLimits::max_payload_bytes`]: crate::PublishLimits::max_payload_bytes
    #[error(
        "payload is {size} bytes of JSON; the limit is {limit} bytes (publish.max_payload_bytes)"
    )]
    PayloadTooLarge {
        /// Its size in bytes.
        size: usize,
        /// The limit in bytes.
        limit: usize,
    },
    /// The payload contains a `\u0000` character.
    #[error("payload contains a \\u0000 character, which Postgres jsonb cannot store")]
    PayloadHasNul,
    /// The headers given as JSON are not an object.
    #[error("headers must be a JSON object of strings, not {found}")]
    HeadersNotObject {
        /// What they are instead (`"an array"`, …).
        found: &'static str,
    },
    /// A header given as JSON has a value that is not a string.
    #[error("header `{name}` must have a string value, not {found}")]
    HeaderNotString {
        /// The header's name.
        name: String,
        /// What its value is instead (`"a number"`, …).
        found: &'static str,
    },
    /// A header's name is the empty string.
    #[error("header names must not be empty")]
    EmptyHeaderName,
    /// A header's name or value contains a NUL character.
    #[error("header `{name}` contains a NUL character, which Postgres jsonb cannot store")]
    HeaderHasNul {
        /// The header's name.
        name: String,
    },
}

/// The first 64 characters of a user-supplied string, for error messages that must stay
/// one readable line even when the input is a megabyte.
#[derive(Clone, PartialEq, Eq)]
pub struct Preview(String);

impl Preview {
    const CHARS: usize = 64;

    fn of(s: &str) -> Self {
        match s.char_indices().nth(Self::CHARS) {
            Some((cut, _)) => Preview(format!("{}…", &s[..cut])),
            None => Preview(s.to_owned()),
        }
    }
}

impl fmt::Display for Preview {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Preview {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

pub(crate) fn validate_topic(topic: &str) -> Result<(), InvalidMessage> {
    if topic.is_empty() {
        return Err(InvalidMessage::EmptyTopic);
    }
    if topic.len() > MAX_TOPIC_BYTES {
        return Err(InvalidMessage::TopicTooLong {
            topic: Preview::of(topic),
            len: topic.len(),
        });
    }
    if topic.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(InvalidMessage::TopicHasWhitespace {
            topic: Preview::of(topic),
        });
    }
    Ok(())
}

fn validate_key(key: &str) -> Result<(), InvalidMessage> {
    if key.is_empty() {
        return Err(InvalidMessage::EmptyKey);
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(InvalidMessage::KeyTooLong { len: key.len() });
    }
    if key.contains('\0') {
        return Err(InvalidMessage::KeyHasNul);
    }
    Ok(())
}

/// `json` is serde_json output (or parsed by it), so it is valid JSON without leading space.
fn validate_payload(json: &str, max_payload_bytes: usize) -> Result<(), InvalidMessage> {
    match json.as_bytes().first() {
        Some(b'{') | Some(b'[') => {}
        _ => {
            return Err(InvalidMessage::PayloadNotDocument {
                found: json_text_type_name(json),
            });
        }
    }
    if json.len() > max_payload_bytes {
        return Err(InvalidMessage::PayloadTooLarge {
            size: json.len(),
            limit: max_payload_bytes,
        });
    }
    if contains_escaped_nul(json) {
        return Err(InvalidMessage::PayloadHasNul);
    }
    Ok(())
}

fn validate_headers(headers: &BTreeMap<String, String>) -> Result<(), InvalidMessage> {
    for (name, value) in headers {
        if name.is_empty() {
            return Err(InvalidMessage::EmptyHeaderName);
        }
        if name.contains('\0') || value.contains('\0') {
            return Err(InvalidMessage::HeaderHasNul {
                name: name.replace('\0', "\\u0000"),
            });
        }
    }
    Ok(())
}

/// True when JSON text holds the escape `\u0000` (a NUL inside a string), which Postgres
/// refuses in jsonb. An escape starts at a backslash preceded by an even number of
/// backslashes; `\\u0000` is an escaped backslash followed by the text "u0000".
fn contains_escaped_nul(json: &str) -> bool {
    json.match_indices("\\u0000").any(|(at, _)| {
        let preceding_backslashes = json.as_bytes()[..at]
            .iter()
            .rev()
            .take_while(|&&b| b == b'\\')
            .count();
        preceding_backslashes % 2 == 0
    })
}

fn json_type_name(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

fn json_text_type_name(json: &str) -> &'static str {
    match json.as_bytes().first() {
        Some(b'n') => "null",
        Some(b't') | Some(b'f') => "a boolean",
        Some(b'"') => "a string",
        Some(b'{') => "an object",
        Some(b'[') => "an array",
        _ => "a number",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const LIMIT: usize = 1 << 20;

    fn check(message: Message) -> Result<(), InvalidMessage> {
        message.validate(LIMIT).map(|_| ())
    }

    #[test]
    fn accepts_objects_and_arrays_with_key_and_headers() {
        check(
            Message::new("orders.created", json!({"id": 1}))
                .key("k")
                .header("a", "b"),
        )
        .unwrap();
        check(Message::new("orders.created", json!([1, 2]))).unwrap();
    }

    #[test]
    fn refuses_bad_topics() {
        assert_eq!(
            check(Message::new("", json!({}))),
            Err(InvalidMessage::EmptyTopic)
        );
        for topic in ["a b", "a\tb", "a\nb", "a\u{a0}b", "a\0b"] {
            assert!(
                matches!(
                    check(Message::new(topic, json!({}))),
                    Err(InvalidMessage::TopicHasWhitespace { .. })
                ),
                "{topic:?}"
            );
        }
        check(Message::new("x".repeat(255), json!({}))).unwrap();
        assert!(matches!(
            check(Message::new("x".repeat(256), json!({}))),
            Err(InvalidMessage::TopicTooLong { len: 256, .. })
        ));
        // 128 two-byte characters are 256 bytes: the limit is bytes, like Postgres octet_length.
        assert!(matches!(
            check(Message::new("é".repeat(128), json!({}))),
            Err(InvalidMessage::TopicTooLong { len: 256, .. })
        ));
    }

    #[test]
    fn refuses_bad_keys() {
        assert_eq!(
            check(Message::new("t", json!({})).key("")),
            Err(InvalidMessage::EmptyKey)
        );
        assert_eq!(
            check(Message::new("t", json!({})).key("a\0")),
            Err(InvalidMessage::KeyHasNul)
        );
        assert_eq!(
            check(Message::new("t", json!({})).key("k".repeat(1025))),
            Err(InvalidMessage::KeyTooLong { len: 1025 })
        );
    }

    #[test]
    fn refuses_payloads_that_are_not_documents() {
        for (payload, found) in [
            (json!(null), "null"),
            (json!(true), "a boolean"),
            (json!(3), "a number"),
            (json!(-3.5), "a number"),
            (json!("s"), "a string"),
        ] {
            assert_eq!(
                check(Message::new("t", payload)),
                Err(InvalidMessage::PayloadNotDocument { found })
            );
        }
    }

    #[test]
    fn refuses_payloads_that_do_not_serialize() {
        let mut map = std::collections::HashMap::new();
        map.insert((1, 2), "tuple keys are not JSON object keys");
        assert!(matches!(
            check(Message::new("t", map)),
            Err(InvalidMessage::PayloadNotSerializable { .. })
        ));
    }

    #[test]
    fn payload_limit_counts_json_bytes() {
        let payload = json!({"p": "x".repeat(100)}); // {"p":"xxx…"} = 108 bytes
        let message = Message::new("t", &payload);
        assert!(message.validate(108).is_ok());
        assert_eq!(
            message.validate(107).map(|_| ()),
            Err(InvalidMessage::PayloadTooLarge {
                size: 108,
                limit: 107
            })
        );
    }

    #[test]
    fn refuses_nul_inside_payload_strings_but_not_escaped_backslashes() {
        assert_eq!(
            check(Message::new("t", json!({"a": "x\0y"}))),
            Err(InvalidMessage::PayloadHasNul)
        );
        assert_eq!(
            check(Message::new("t", json!({"a\0": 1}))),
            Err(InvalidMessage::PayloadHasNul)
        );
        // The text \u0000 (backslash, u, zeros) is fine: it serializes as \\u0000.
        check(Message::new("t", json!({"a": "\\u0000"}))).unwrap();
        assert!(contains_escaped_nul(r#"{"a":"\\\u0000"}"#));
        assert!(!contains_escaped_nul(r#"{"a":"\\u0000"}"#));
    }

    #[test]
    fn refuses_headers_that_are_not_string_to_string() {
        assert_eq!(
            check(Message::new("t", json!({})).headers_json(&json!({"a": "b", "n": 1}))),
            Err(InvalidMessage::HeaderNotString {
                name: "n".into(),
                found: "a number"
            })
        );
        assert_eq!(
            check(Message::new("t", json!({})).headers_json(&json!(["a"]))),
            Err(InvalidMessage::HeadersNotObject { found: "an array" })
        );
        assert_eq!(
            check(Message::new("t", json!({})).header("", "v")),
            Err(InvalidMessage::EmptyHeaderName)
        );
        assert!(matches!(
            check(Message::new("t", json!({})).header("h", "a\0")),
            Err(InvalidMessage::HeaderHasNul { .. })
        ));
        let ok = Message::new("t", json!({})).headers_json(&json!({"a": "b"}));
        check(ok.clone()).unwrap();
        assert_eq!(ok.headers().get("a").map(String::as_str), Some("b"));
    }

    #[test]
    fn previews_keep_error_messages_short() {
        let long = "x".repeat(10_000);
        let error = check(Message::new(long, json!({})))
            .unwrap_err()
            .to_string();
        assert!(error.len() < 200, "{error}");
    }
}

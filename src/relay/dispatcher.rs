//! One message through one group: decode (schema registry) → route → handler → [`Outcome`].
//!
//! `forward` and `drop` need no call: the stored JSON text goes to Redis untouched. Other
//! handlers get a [`DecodedMessage`] and run under the route's timeout; a call that times out
//! or panics is a retryable failure of that message, never of the relay.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use opentelemetry::trace::TraceContextExt;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::entry_fields::{EntryFields, traceparent};
use super::ordering::OrderingMode;
use super::partition::Partition;
use super::route::{Action, Route, route_for};
use crate::handler::{DecodedMessage, Handler, HandlerError};
use crate::json;
use crate::registry::{Registry, RegistryError};
use crate::retry::{Decision, RetryPolicy};
use crate::sink::{Entry, Fields};
use crate::store::OutboxRow;
use crate::telemetry::trace;

/// What a group does with its messages: routes, ordering under failure, dead-letter stream.
pub struct Dispatcher {
    pub group: String,
    pub routes: Vec<Route>,
    pub ordering: OrderingMode,
    pub dead_letter_stream: Option<String>,
    /// Decodes every row through the schema version it names; `None` only in unit tests
    /// without a database.
    pub registry: Option<Registry>,
    /// Draws jitter for retry delays from `[0, 1)`; tests pass a fixed one.
    pub jitter: fn() -> f64,
    /// The fields its stream entries carry.
    pub entry_fields: EntryFields,
    /// How many handler calls may run at once (`[[groups]] max_in_flight`).
    pub max_in_flight: usize,
    /// The partition it handles, for a partitioned group: messages of the others are passed
    /// over.
    pub partition: Option<Partition>,
}

/// Why a message produced nothing without failing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// No route of the group takes its topic.
    Unrouted,
    /// Its route drops it.
    Dropped,
}

/// What handling one message came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Skipped(Skip),
    /// Done: these (stream, payload JSON text) outputs go to Redis.
    Delivered(Vec<(String, String)>),
    /// Failed, to be tried again after `delay`; `attempts` counts the failures so far.
    Retry {
        error: String,
        attempts: u32,
        delay: Duration,
    },
    /// Failed for good (permanent error, or attempts exhausted).
    Dead {
        error: String,
        attempts: u32,
    },
}

impl Dispatcher {
    /// A dispatcher drawing jitter from the thread-local RNG.
    pub fn new(
        group: impl Into<String>,
        routes: Vec<Route>,
        ordering: OrderingMode,
        dead_letter_stream: Option<String>,
    ) -> Dispatcher {
        Dispatcher {
            group: group.into(),
            routes,
            ordering,
            dead_letter_stream,
            registry: None,
            jitter: rand::random::<f64>,
            entry_fields: EntryFields::default(),
            max_in_flight: super::DEFAULT_MAX_IN_FLIGHT,
            partition: None,
        }
    }

    /// The same dispatcher handling only the messages of `partition`.
    pub fn with_partition(mut self, partition: Option<Partition>) -> Dispatcher {
        self.partition = partition;
        self
    }

    /// Whether `row` is this dispatcher's to handle (always, unless partitioned).
    pub fn owns(&self, row: &OutboxRow) -> bool {
        self.partition.is_none_or(|p| p.owns(row))
    }

    /// The same dispatcher decoding rows through `registry`.
    pub fn with_registry(mut self, registry: Registry) -> Dispatcher {
        self.registry = Some(registry);
        self
    }

    /// Checks a stored message against the schema version it names (see
    /// [`Registry::check_row`]): `Ok(Err(reason))` makes it a permanent failure; `Err(_)` means
    /// the registry could not be read (the pass fails and is retried).
    pub async fn decode(&self, row: &OutboxRow) -> Result<Result<(), String>, RegistryError> {
        let Some(registry) = &self.registry else {
            return Ok(Ok(()));
        };
        Ok(registry
            .check_row(&row.topic, row.schema_version, &row.payload)
            .await?
            .map_err(|rejection| rejection.to_string()))
    }

    /// Whether handling `row` again re-derives the entries it had (for re-appending what
    /// Redis lost): `forward` routes always, handlers that may return outputs.
    pub fn rederives(&self, row: &OutboxRow) -> bool {
        match self.route(row).map(|r| &r.action) {
            Some(Action::Forward { .. }) => true,
            Some(Action::Call { handler, .. }) => handler.has_outputs(),
            Some(Action::Drop) | None => false,
        }
    }

    /// The route that takes `row`, if any (first match).
    pub fn route(&self, row: &OutboxRow) -> Option<&Route> {
        route_for(&self.routes, &row.topic)
    }

    /// Handles `row` for its `attempt`-th time (1 = first), after `decode` said whether its
    /// payload fits its schema (`Err(reason)`: a permanent failure).
    pub async fn handle(
        &self,
        row: &OutboxRow,
        attempt: u32,
        decode: Result<(), String>,
    ) -> Outcome {
        self.handle_routed(row, self.route(row), attempt, decode)
            .await
    }

    /// [`Dispatcher::handle`] with the route already looked up.
    pub async fn handle_routed(
        &self,
        row: &OutboxRow,
        route: Option<&Route>,
        attempt: u32,
        decode: Result<(), String>,
    ) -> Outcome {
        if let Err(reason) = decode {
            return Outcome::Dead {
                error: reason,
                attempts: attempt,
            };
        }
        let Some(route) = route else {
            return Outcome::Skipped(Skip::Unrouted);
        };
        match &route.action {
            Action::Drop => Outcome::Skipped(Skip::Dropped),
            Action::Forward { stream } => Outcome::Delivered(vec![(
                stream.render(&row.topic, row.key.as_deref()),
                row.payload.clone(),
            )]),
            Action::Call { name, handler } => {
                let called = call(handler, row, attempt, route.timeout);
                let result = match handler_span(&self.group, row, attempt) {
                    Some(span) => called.instrument(span).await,
                    None => called.await,
                };
                match result {
                    Ok(outputs) => Outcome::Delivered(
                        outputs
                            .into_iter()
                            .map(|o| {
                                let text = json::to_string(&o.payload);
                                json::drop_value(o.payload);
                                (o.stream, text)
                            })
                            .collect(),
                    ),
                    Err(error) => self.failure(&route.retry, name, error, attempt),
                }
            }
        }
    }

    /// The outcome of `row`'s `attempt`-th try when its outputs could not be appended
    /// (`error`, e.g. a stream key of the wrong type): its route's retry policy decides, as
    /// for a retryable handler failure.
    pub fn append_failure(&self, row: &OutboxRow, attempt: u32, error: &str) -> Outcome {
        let retry = self.route(row).map(|r| r.retry).unwrap_or_default();
        self.failure(&retry, "append", HandlerError::retryable(error), attempt)
    }

    fn failure(
        &self,
        retry: &RetryPolicy,
        name: &str,
        error: HandlerError,
        attempt: u32,
    ) -> Outcome {
        let text = format!("{name}: {}", error.reason());
        if !error.is_retryable() {
            return Outcome::Dead {
                error: text,
                attempts: attempt,
            };
        }
        match retry.decide(attempt, (self.jitter)()) {
            Decision::RetryAfter(delay) => Outcome::Retry {
                error: text,
                attempts: attempt,
                delay,
            },
            Decision::Dead => Outcome::Dead {
                error: format!("{text} (gave up after {attempt} attempts)"),
                attempts: attempt,
            },
        }
    }

    /// The same dispatcher running at most `max_in_flight` handler calls at once.
    pub fn with_max_in_flight(mut self, max_in_flight: usize) -> Dispatcher {
        self.max_in_flight = max_in_flight.max(1);
        self
    }

    /// The same dispatcher writing only `entry_fields` into stream entries.
    pub fn with_entry_fields(mut self, entry_fields: EntryFields) -> Dispatcher {
        self.entry_fields = entry_fields;
        self
    }

    /// The fields of `row`'s stream entry carrying `payload` (see [`EntryFields::of`]).
    pub fn fields(&self, row: &OutboxRow, payload: String) -> Fields {
        self.entry_fields.of(&self.group, row, payload)
    }

    /// A stream entry for `row` carrying `payload`.
    pub fn entry(&self, row: &OutboxRow, payload: String, ordinal: u32) -> Entry {
        Entry {
            position: row.position,
            ordinal,
            fields: self.fields(row, payload),
        }
    }
}

/// The span a handler call runs in when the message carries a valid `traceparent`: its
/// parent is the publisher's (remote) context, so the call joins the publisher's trace.
/// Messages without one get no span (nothing allocated on the hot path).
fn handler_span(group: &str, row: &OutboxRow, attempt: u32) -> Option<tracing::Span> {
    let parent = trace::remote_context(&traceparent(&row.headers)?)?;
    let trace_id = parent.span().span_context().trace_id();
    let span = tracing::info_span!("outbox.handle", group, topic = %row.topic,
        message_id = %row.id, position = %row.position, attempt, trace_id = %trace_id);
    // Without an OpenTelemetry layer there is nothing to parent; the fields still say it.
    let _ = span.set_parent(parent);
    Some(span)
}

/// Calls `handler` with a timeout, turning a panic into a retryable failure.
async fn call(
    handler: &Arc<dyn Handler>,
    row: &OutboxRow,
    attempt: u32,
    timeout: Duration,
) -> Result<Vec<crate::handler::Output>, HandlerError> {
    let message = DecodedMessage::from_row(row, attempt).map_err(|e| {
        HandlerError::permanent(format!("the stored message is not valid JSON: {e}"))
    })?;
    let call = AssertUnwindSafe(handler.handle(&message)).catch_unwind();
    let result = tokio::time::timeout(timeout, call).await;
    // A payload may nest thousands deep: never drop it recursively on a worker's stack.
    json::drop_value(message.payload);
    match result {
        Err(_) => Err(HandlerError::retryable(format!(
            "timed out after {} ms",
            timeout.as_millis()
        ))),
        Ok(Err(panic)) => Err(HandlerError::retryable(format!(
            "handler panicked: {}",
            panic_message(panic.as_ref())
        ))),
        Ok(Ok(result)) => result,
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_owned())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::handler::Output;
    use crate::position::Position;
    use crate::relay::route::StreamTemplate;

    fn row(seq: i64, topic: &str, key: Option<&str>) -> OutboxRow {
        OutboxRow {
            position: Position::new(100, seq),
            id: uuid::Uuid::nil(),
            topic: topic.into(),
            key: key.map(Into::into),
            schema_version: None,
            payload: r#"{"n": 1}"#.into(),
            headers: "{}".into(),
            created_at: chrono::DateTime::from_timestamp(1_700_000_000, 123_000).unwrap(),
        }
    }

    struct Flaky;

    #[async_trait::async_trait]
    impl Handler for Flaky {
        async fn handle(&self, message: &DecodedMessage) -> Result<Vec<Output>, HandlerError> {
            match message.topic.as_str() {
                "ok" => Ok(vec![Output::new("out", message.payload.clone())]),
                "busy" => Err(HandlerError::retryable("busy")),
                "bad" => Err(HandlerError::permanent("bad")),
                "slow" => {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    Ok(vec![])
                }
                _ => panic!("boom"),
            }
        }
    }

    fn dispatcher() -> Dispatcher {
        let call = Action::Call {
            name: "flaky".into(),
            handler: Arc::new(Flaky),
        };
        let retry = RetryPolicy {
            max_attempts: 3,
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
            multiplier: 2.0,
        };
        Dispatcher {
            jitter: || 0.5,
            ..Dispatcher::new(
                "g",
                vec![
                    Route::new(
                        vec!["orders.*".into()],
                        Action::Forward {
                            stream: StreamTemplate::parse("events.{topic}").unwrap(),
                        },
                    )
                    .unwrap(),
                    Route::new(vec!["noise.*".into()], Action::Drop).unwrap(),
                    Route::new(vec!["*".into()], call)
                        .unwrap()
                        .with_retry(retry)
                        .with_timeout(Duration::from_millis(50)),
                ],
                OrderingMode::Key,
                None,
            )
        }
    }

    #[tokio::test]
    async fn outcomes_follow_the_route_and_the_handler() {
        let d = dispatcher();
        let handle = |topic: &'static str, attempt| {
            let d = &d;
            async move { d.handle(&row(1, topic, None), attempt, Ok(())).await }
        };
        assert_eq!(
            handle("orders.paid", 1).await,
            Outcome::Delivered(vec![("events.orders.paid".into(), r#"{"n": 1}"#.into())])
        );
        assert_eq!(handle("noise.x", 1).await, Outcome::Skipped(Skip::Dropped));
        assert_eq!(
            handle("ok", 1).await,
            Outcome::Delivered(vec![("out".into(), r#"{"n":1}"#.into())])
        );
        assert_eq!(
            handle("busy", 1).await,
            Outcome::Retry {
                error: "flaky: busy".into(),
                attempts: 1,
                delay: Duration::from_millis(100)
            }
        );
        assert_eq!(
            handle("busy", 3).await,
            Outcome::Dead {
                error: "flaky: busy (gave up after 3 attempts)".into(),
                attempts: 3
            }
        );
        assert_eq!(
            handle("bad", 1).await,
            Outcome::Dead {
                error: "flaky: bad".into(),
                attempts: 1
            }
        );
        let Outcome::Retry { error, .. } = handle("slow", 1).await else {
            panic!("a timeout is retryable")
        };
        assert_eq!(error, "flaky: timed out after 50 ms");
        let Outcome::Retry { error, .. } = handle("explode", 1).await else {
            panic!("a panic is retryable")
        };
        assert_eq!(error, "flaky: handler panicked: boom");
        assert_eq!(
            d.handle(
                &row(1, "orders.paid", None),
                1,
                Err("schema says no".into())
            )
            .await,
            Outcome::Dead {
                error: "schema says no".into(),
                attempts: 1
            }
        );
        let empty = Dispatcher::new("g", vec![], OrderingMode::Key, None);
        assert_eq!(
            empty.handle(&row(1, "x", None), 1, Ok(())).await,
            Outcome::Skipped(Skip::Unrouted)
        );
    }

    #[test]
    fn entries_carry_the_design_fields() {
        let mut r = row(7, "orders.created", Some("order-1"));
        r.schema_version = Some(3);
        r.headers = r#"{"traceparent": "00-abc-def-01", "x": "y"}"#.into();
        let names: Vec<&str> = EntryFields::default()
            .of("notifications", &r, r.payload.clone())
            .iter()
            .map(|(n, _)| *n)
            .collect();
        assert_eq!(
            names,
            [
                "id",
                "topic",
                "key",
                "payload",
                "headers",
                "position",
                "schema_version",
                "created_at",
                "group",
                "traceparent"
            ]
        );
        let values: HashMap<&str, String> = EntryFields::default()
            .of("notifications", &r, "{}".into())
            .into_iter()
            .collect();
        assert_eq!(values["position"], "100:7");
        assert_eq!(values["payload"], "{}");
        assert_eq!(values["created_at"], "2023-11-14T22:13:20.000123Z");
        assert_eq!(values["traceparent"], "00-abc-def-01");
        let plain = row(1, "t", None);
        let names: Vec<&str> = EntryFields::default()
            .of("g", &plain, plain.payload.clone())
            .iter()
            .map(|(n, _)| *n)
            .collect();
        assert_eq!(
            names,
            [
                "id",
                "topic",
                "payload",
                "headers",
                "position",
                "created_at",
                "group"
            ]
        );
    }
}

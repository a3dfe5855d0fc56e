//! Telemetry of a real `outbox-relay run --http`: `/metrics` after a known workload,
//! `/readyz` following Redis down and up, `--log-format json`, and W3C `traceparent` from a
//! publisher's span through the relay's handler span to the Redis entry.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use outbox_relay::Message;
use outbox_relay::handler::{DecodedMessage, Handler, HandlerError, Output};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;

use crate::harness::redis::TestRedis;
use crate::harness::relay::{
    InProcessRelay, RelayProcess, TempDir, forward_all, publish_messages, relay_toml,
    wait_for_lease_owner,
};
use crate::harness::servers::{PrivateRedis, free_port};
use crate::harness::{TestDb, eventually};

/// `GET path` on `addr`: the status code and body, or `None` if nothing answers.
async fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n")?.1.to_owned();
    Some((status, body))
}

/// The value of the sample `name` whose labels include all of `labels`.
fn sample(metrics: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    metrics
        .lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, series_labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let matches = series_name == name
                && labels
                    .iter()
                    .all(|(k, v)| series_labels.contains(&format!("{k}=\"{v}\"")));
            matches.then(|| value.parse().ok()).flatten()
        })
}

/// A webhook: `"mode": "bad"` answers 400; `"fail": n` answers 503 to the first n calls of
/// that message (by `n`); everything else 200 with one output to stream `hooked`.
#[derive(Clone, Default)]
struct Hook {
    calls: Arc<Mutex<HashMap<u64, u64>>>,
}

impl Hook {
    async fn start(&self) -> SocketAddr {
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(answer))
            .with_state(self.clone());
        crate::harness::serve_http(app).await
    }
}

async fn answer(State(hook): State<Hook>, Json(body): Json<Value>) -> impl IntoResponse {
    let payload = &body["payload"];
    let n = payload["n"].as_u64().unwrap_or(0);
    let previous = {
        let mut calls = hook.calls.lock().unwrap();
        let count = calls.entry(n).or_insert(0);
        *count += 1;
        *count - 1
    };
    if payload["mode"] == "bad" {
        return (StatusCode::BAD_REQUEST, "no such order").into_response();
    }
    if previous < payload["fail"].as_u64().unwrap_or(0) {
        return (StatusCode::SERVICE_UNAVAILABLE, "try later").into_response();
    }
    Json(json!({"outputs": [{"stream": "hooked", "payload": {"n": n}}]})).into_response()
}

fn http_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// Waits until `/readyz` answers `status`; returns the body.
async fn readyz_becomes(addr: SocketAddr, status: u16, deadline: Duration) -> String {
    eventually(deadline, &format!("/readyz answering {status}"), || async {
        http_get(addr, "/readyz")
            .await
            .filter(|(s, _)| *s == status)
            .map(|(_, body)| body)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_a_known_workload() {
    let (db, redis) = (TestDb::new().await, TestRedis::new());
    let hook = Hook::default().start().await;
    let dir = TempDir::new("telemetry-metrics");
    let groups = format!(
        "[[groups]]\nname = \"g\"\n\
         [[groups.routes]]\ntopics = [\"hook.*\"]\nhandler = \"http\"\nurl = \"http://{hook}/hook\"\n\
         timeout_ms = 2000\nmax_attempts = 3\nbackoff_initial_ms = 50\n\
         [[groups.routes]]\ntopics = [\"ok.*\"]\nhandler = \"forward\"\nstream = \"all\"\n"
    );
    let config = dir.write(
        "relay.toml",
        &relay_toml(&db, &redis, "idle_poll_ms = 5", &groups),
    );
    let mut messages: Vec<Message> = (0..10)
        .map(|n| Message::new("ok.a", json!({"n": n})))
        .collect();
    messages.push(Message::new("hook.bad", json!({"n": 100, "mode": "bad"})));
    messages.push(Message::new("hook.bad", json!({"n": 101, "mode": "bad"})));
    messages.push(Message::new("hook.flaky", json!({"n": 102, "fail": 1})));
    publish_messages(&db.pool, messages, true).await;

    let addr = http_addr();
    let relay = RelayProcess::start_with(&config, "metrics", &[], &["--http", &addr.to_string()]);
    let forwarded = |topic| [("group", "g"), ("topic", topic)];
    let metrics = eventually(Duration::from_secs(20), "the workload counted", || async {
        let (status, body) = http_get(addr, "/metrics").await?;
        assert_eq!(status, 200);
        let done = sample(
            &body,
            "outbox_messages_forwarded_total",
            &forwarded("hook.flaky"),
        ) == Some(1.0)
            && sample(&body, "outbox_lag_messages", &[("group", "g")]) == Some(0.0)
            // The lag gauges are read at scrape time; a scrape whose status query timed out
            // keeps the previous values (say, while the retried message was still retrying).
            && sample(&body, "outbox_lag_seconds", &[("group", "g")]) == Some(0.0);
        done.then_some(body)
    })
    .await;
    let value = |name, labels: &[(&str, &str)]| sample(&metrics, name, labels);
    assert_eq!(
        value("outbox_messages_forwarded_total", &forwarded("ok.a")),
        Some(10.0),
        "{metrics}"
    );
    assert_eq!(
        value("outbox_dead_letters_total", &forwarded("hook.bad")),
        Some(2.0)
    );
    assert_eq!(
        value("outbox_retries_total", &forwarded("hook.flaky")),
        Some(1.0)
    );
    assert_eq!(
        value("outbox_handler_failures_total", &forwarded("hook.bad")),
        Some(2.0)
    );
    assert_eq!(
        value("outbox_handler_failures_total", &forwarded("hook.flaky")),
        Some(1.0)
    );
    assert_eq!(value("outbox_dead_letters_total", &forwarded("ok.a")), None);
    assert_eq!(value("outbox_lease_active", &[("group", "g")]), Some(1.0));
    assert_eq!(value("outbox_lag_seconds", &[("group", "g")]), Some(0.0));
    assert_eq!(
        value("outbox_held_back_messages", &[("group", "g")]),
        Some(0.0)
    );
    assert!(
        value("outbox_xmin_holder_age_seconds", &[]).is_some(),
        "{metrics}"
    );
    let batches = [("group", "g"), ("pass", "new")];
    assert!(value("outbox_batch_duration_seconds_count", &batches) >= Some(1.0));
    assert!(value("outbox_batch_duration_seconds_bucket", &[("le", "+Inf")]) >= Some(1.0));
    let retries = [("group", "g"), ("pass", "retry")];
    assert!(value("outbox_batch_duration_seconds_count", &retries) >= Some(1.0));
    // 10 forwarded and the flaky one's output; the dead ones appended nothing.
    assert_eq!(
        value("outbox_delivery_latency_seconds_count", &[("group", "g")]),
        Some(11.0),
        "{metrics}"
    );
    assert_eq!(http_get(addr, "/healthz").await, Some((200, "ok\n".into())));
    assert_eq!(
        http_get(addr, "/readyz").await,
        Some((200, "ready\n".into()))
    );
    assert_eq!(redis.stream_len("all").await, 10);
    assert_eq!(
        relay.terminate(Duration::from_secs(10)).await,
        Some(0),
        "SIGTERM stops the relay and its HTTP server cleanly"
    );
    assert!(
        http_get(addr, "/healthz").await.is_none(),
        "the server is gone"
    );
}

#[tokio::test]
async fn a_partitioned_group_has_lag_gauges_per_partition() {
    let (db, redis) = (TestDb::new().await, TestRedis::new());
    let dir = TempDir::new("telemetry-partitions");
    let groups = "[[groups]]\nname = \"p\"\npartitions = 2\n\
         [[groups.routes]]\ntopics = [\"ok.*\"]\nhandler = \"forward\"\nstream = \"all\"\n";
    let config = dir.write(
        "relay.toml",
        &relay_toml(&db, &redis, "idle_poll_ms = 5", groups),
    );
    let messages: Vec<Message> = (0..20)
        .map(|n| Message::new("ok.a", json!({"n": n})).key(format!("k{n}")))
        .collect();
    publish_messages(&db.pool, messages, true).await;
    let addr = http_addr();
    let relay = RelayProcess::start_with(&config, "metrics", &[], &["--http", &addr.to_string()]);
    let metrics = eventually(
        Duration::from_secs(20),
        "both partitions' gauges",
        || async {
            let (_, body) = http_get(addr, "/metrics").await?;
            let caught_up = ["p/0", "p/1"].iter().all(|row| {
                sample(&body, "outbox_lag_messages", &[("group", row)]) == Some(0.0)
                    && sample(&body, "outbox_lag_seconds", &[("group", row)]) == Some(0.0)
                    && sample(&body, "outbox_held_back_messages", &[("group", row)]) == Some(0.0)
            });
            (caught_up && redis.stream_len("all").await == 20).then_some(body)
        },
    )
    .await;
    for row in ["p/0", "p/1"] {
        assert_eq!(
            sample(&metrics, "outbox_lease_active", &[("group", row)]),
            Some(1.0),
            "{metrics}"
        );
    }
    assert_eq!(relay.terminate(Duration::from_secs(10)).await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_goes_red_while_redis_is_down_and_green_after() {
    let db = TestDb::new().await;
    let mut server = PrivateRedis::start();
    let redis = TestRedis::at(&server.url());
    let dir = TempDir::new("telemetry-readyz");
    let config = dir.write(
        "relay.toml",
        &relay_toml(
            &db,
            &redis,
            "idle_poll_ms = 5\nmax_backoff_ms = 300",
            &forward_all("g", "all"),
        ),
    );
    let addr = http_addr();
    let relay = RelayProcess::start_with(&config, "readyz", &[], &["--http", &addr.to_string()]);
    readyz_becomes(addr, 200, Duration::from_secs(20)).await;

    tokio::task::block_in_place(|| server.stop());
    let reason = readyz_becomes(addr, 503, Duration::from_secs(10)).await;
    assert!(reason.starts_with("redis: "), "{reason}");
    assert_eq!(http_get(addr, "/healthz").await, Some((200, "ok\n".into())));

    tokio::task::block_in_place(|| server.start_again());
    readyz_becomes(addr, 200, Duration::from_secs(30)).await;
    assert_eq!(relay.terminate(Duration::from_secs(10)).await, Some(0));
}

#[tokio::test]
async fn log_format_json_writes_one_json_object_a_line() {
    let (db, redis) = (TestDb::new().await, TestRedis::new());
    let dir = TempDir::new("telemetry-json-logs");
    let config = dir.forward_all_config(&db, &redis, "idle_poll_ms = 5");
    let relay = RelayProcess::start_with(&config, "json", &["--log-format", "json"], &[]);
    wait_for_lease_owner(&db).await;
    let log = relay.log();
    assert_eq!(relay.terminate(Duration::from_secs(10)).await, Some(0));
    let lines: Vec<Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    assert!(
        lines
            .iter()
            .all(|l| l["level"].is_string() && l["timestamp"].is_string())
    );
    let acquired = lines
        .iter()
        .find(|l| l["message"] == "lease acquired; forwarding")
        .unwrap_or_else(|| panic!("no lease line in {log}"));
    assert_eq!(acquired["group"], "g");
    assert!(acquired["position"].is_string(), "{acquired}");
}

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_SPAN_ID: &str = "00f067aa0ba902b7";

/// A custom handler that records the trace id of the span it runs in.
#[derive(Clone, Default)]
struct TraceIds(Arc<Mutex<Vec<String>>>);

#[async_trait::async_trait]
impl Handler for TraceIds {
    async fn handle(&self, message: &DecodedMessage) -> Result<Vec<Output>, HandlerError> {
        let context = tracing::Span::current().context();
        let trace_id = context.span().span_context().trace_id().to_string();
        self.0.lock().unwrap().push(trace_id);
        Ok(vec![Output::new("called", message.payload.clone())])
    }
}

/// The `traceparent` header of every message, in position order.
async fn stored_traceparents(db: &TestDb) -> Vec<Option<String>> {
    sqlx::query_scalar(
        "SELECT m.headers->>'traceparent' FROM outbox.messages m ORDER BY m.tx_id, m.seq",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap()
}

// Current-thread runtime: the relay's tasks run on this thread, under its subscriber.
#[tokio::test]
async fn traceparent_goes_from_the_publishers_span_to_the_handler_and_the_entry() {
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    let _default = tracing::subscriber::set_default(subscriber);
    let (db, redis) = (TestDb::new().await, TestRedis::new());

    let remote = SpanContext::new(
        TraceId::from_hex(TRACE_ID).unwrap(),
        SpanId::from_hex(PARENT_SPAN_ID).unwrap(),
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    );
    let span = tracing::info_span!("checkout");
    span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote))
        .unwrap();
    let own = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    async {
        let mut tx = db.pool.begin().await.unwrap();
        outbox_relay::publish_in_tx(&mut tx, Message::new("traced.call", json!({"n": 0})))
            .await
            .unwrap();
        let batch = [
            Message::new("traced.fwd", json!({"n": 1})),
            Message::new("traced.fwd", json!({"n": 2})).header("traceparent", own),
        ];
        outbox_relay::publish_batch_in_tx(&mut tx, &batch)
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    .instrument(span)
    .await;
    publish_messages(&db.pool, vec![Message::new("plain", json!({"n": 3}))], true).await;

    let stored = stored_traceparents(&db).await;
    let prefix = format!("00-{TRACE_ID}-");
    for recorded in &stored[..2] {
        let recorded = recorded.as_deref().expect("recorded from the span");
        assert!(recorded.starts_with(&prefix), "{recorded}");
        assert!(
            !recorded.contains(PARENT_SPAN_ID),
            "the publisher's own span id"
        );
    }
    assert_eq!(stored[2].as_deref(), Some(own), "a caller's header is kept");
    assert_eq!(stored[3], None, "no span, no header");

    let seen = TraceIds::default();
    let toml = relay_toml(&db, &redis, "idle_poll_ms = 5", &forward_all("g", "fwd"));
    let handler = seen.clone();
    let relay = InProcessRelay::start_with(&toml, move |relay| {
        relay.handler("g", &["traced.call"], handler).unwrap()
    })
    .await;
    eventually(Duration::from_secs(10), "all four relayed", || async {
        (redis.stream_len("fwd").await == 3 && redis.stream_len("called").await == 1).then_some(())
    })
    .await;
    relay.stop().await;

    assert_eq!(
        *seen.0.lock().unwrap(),
        [TRACE_ID],
        "the handler span continues the trace"
    );
    let called = redis.entries("called").await;
    assert_eq!(called[0].fields.get("traceparent"), stored[0].as_ref());
    let forwarded: Vec<Option<String>> = redis
        .entries("fwd")
        .await
        .into_iter()
        .map(|mut e| e.fields.remove("traceparent"))
        .collect();
    assert_eq!(forwarded, stored[1..]);
}

//! The built-in `http` handler against a real local HTTP server (axum): 2xx outputs become
//! entries, 4xx is permanent, 5xx and timeouts are retried; and kill -9 of a real relay while
//! messages are retrying and blocked loses and duplicates nothing.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::harness::redis::TestRedis;
use crate::harness::relay::{
    InProcessRelay, RelayProcess, TempDir, keyed_message, publish_messages, relay_toml,
};
use crate::harness::{TestDb, eventually};

/// A webhook whose answer the payload chooses: `"mode"`: `ok` (200 with two outputs), `bad`
/// (400), `slow` (sleeps 2 s on the first call); `"fail": n` answers 503 to the first n calls
/// of that message. Records every request body and its Idempotency-Key.
#[derive(Clone, Default)]
struct Hook {
    requests: Arc<Mutex<Vec<(Value, String)>>>,
}

impl Hook {
    async fn start(&self) -> SocketAddr {
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(answer))
            .with_state(self.clone());
        crate::harness::serve_http(app).await
    }

    fn calls_of(&self, n: u64) -> usize {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|(body, _)| body["payload"]["n"] == json!(n))
            .count()
    }
}

async fn answer(
    State(hook): State<Hook>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> impl IntoResponse {
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let n = body["payload"]["n"].as_u64().unwrap_or(0);
    let previous = {
        let mut requests = hook.requests.lock().unwrap();
        let previous = requests
            .iter()
            .filter(|(b, _)| b["payload"]["n"] == json!(n))
            .count() as u64;
        requests.push((body.clone(), key));
        previous
    };
    let payload = &body["payload"];
    if previous < payload["fail"].as_u64().unwrap_or(0) {
        return (StatusCode::SERVICE_UNAVAILABLE, "try later".to_owned()).into_response();
    }
    match payload["mode"].as_str() {
        Some("bad") => (StatusCode::BAD_REQUEST, "no such order".to_owned()).into_response(),
        Some("slow") if previous == 0 => {
            tokio::time::sleep(Duration::from_secs(2)).await;
            StatusCode::OK.into_response()
        }
        _ => Json(json!({"outputs": [
            {"stream": "out", "payload": {"n": n, "key": payload["key"]}},
            {"stream": "audit", "payload": {"seen": n}},
        ]}))
        .into_response(),
    }
}

fn http_group(addr: SocketAddr, retry: &str) -> String {
    format!(
        "[[groups]]\nname = \"g\"\ndead_letter_stream = \"dead\"\n[[groups.routes]]\ntopics = [\"*\"]\n\
         handler = \"http\"\nurl = \"http://{addr}/hook\"\nheaders = {{ x-token = \"t0ken\" }}\n\
         timeout_ms = 300\n{retry}\n"
    )
}

/// Publishes each payload on `orders.paid` (keyed by its `key`, header `trace`), one
/// transaction each.
async fn publish(db: &TestDb, payloads: &[Value]) -> Vec<Uuid> {
    let messages = payloads
        .iter()
        .map(|p| keyed_message("orders.paid", p).header("trace", "abc"))
        .collect();
    publish_messages(&db.pool, messages, false).await
}

#[tokio::test]
async fn http_answers_decide_done_permanent_or_retry() {
    let (db, redis) = (TestDb::new().await, TestRedis::new());
    let hook = Hook::default();
    let addr = hook.start().await;
    let toml = relay_toml(
        &db,
        &redis,
        "idle_poll_ms = 5",
        &http_group(addr, "max_attempts = 5\nbackoff_initial_ms = 50"),
    );
    let relay = InProcessRelay::start(&toml).await;
    let ids = publish(
        &db,
        &[
            json!({"n": 1, "mode": "ok", "key": "k1"}),
            json!({"n": 2, "mode": "bad"}),
            json!({"n": 3, "mode": "ok", "fail": 2}),
            json!({"n": 4, "mode": "slow"}),
        ],
    )
    .await;
    let out = eventually(Duration::from_secs(20), "three outputs", || async {
        let out = redis.payloads("out").await;
        (out.len() == 3).then_some(out)
    })
    .await;
    assert_eq!(out[0], json!({"n": 1, "key": "k1"}));
    let mut late: Vec<u64> = out[1..].iter().map(|p| p["n"].as_u64().unwrap()).collect();
    late.sort();
    assert_eq!(late, [3, 4], "the 503 and the timed-out message, retried");
    assert_eq!(
        redis.payloads("audit").await.len(),
        3,
        "both outputs of each message"
    );
    // 400: dead at once, with the status and body in the row.
    let (status, attempts, error): (String, i32, String) = sqlx::query_as(
        "SELECT d.status, d.attempts, d.last_error FROM outbox.deliveries d WHERE d.message_id = $1",
    )
    .bind(ids[1])
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!((status.as_str(), attempts), ("dead", 1));
    assert!(
        error.contains("400 Bad Request; body: no such order"),
        "{error}"
    );
    assert_eq!(hook.calls_of(2), 1);
    // 503 twice, then done: three calls. The timeout (2 s sleep, 300 ms limit) was retried.
    assert_eq!(hook.calls_of(3), 3);
    eventually(
        Duration::from_secs(10),
        "the slow message retried",
        || async { (hook.calls_of(4) >= 2).then_some(()) },
    )
    .await;
    let requests = hook.requests.lock().unwrap().clone();
    // Message 1's request (handler calls of different ordering chains may run concurrently,
    // so it need not be the first one recorded).
    let (first, key) = requests
        .iter()
        .find(|(body, _)| body["payload"]["n"] == json!(1))
        .expect("a request for message 1");
    assert_eq!(
        key,
        &ids[0].to_string(),
        "Idempotency-Key is the message id"
    );
    for field in [
        "id",
        "topic",
        "key",
        "payload",
        "headers",
        "schema_version",
        "position",
        "created_at",
        "attempt",
    ] {
        assert!(
            first.get(field).is_some(),
            "request body lacks {field}: {first}"
        );
    }
    assert_eq!(first["headers"], json!({"trace": "abc"}));
    assert_eq!(first["attempt"], json!(1));
    let retried: Vec<u64> = requests
        .iter()
        .filter(|(b, _)| b["payload"]["n"] == json!(3))
        .map(|(b, _)| b["attempt"].as_u64().unwrap())
        .collect();
    assert_eq!(retried, [1, 2, 3]);
    relay.stop().await;
}

#[tokio::test]
async fn kill_9_while_messages_retry_and_block_loses_and_duplicates_nothing() {
    let (db, redis) = (TestDb::new().await, TestRedis::new());
    let hook = Hook::default();
    let addr = hook.start().await;
    let dir = TempDir::new("kill-while-retrying");
    let config = dir.write(
        "relay.toml",
        &relay_toml(
            &db,
            &redis,
            "idle_poll_ms = 5\nlease_ttl_ms = 500\nbatch_size = 7",
            &http_group(
                addr,
                "max_attempts = 50\nbackoff_initial_ms = 40\nbackoff_max_ms = 200",
            ),
        ),
    );
    // Four keys; every third message fails twice (503) before it goes through, so at any
    // moment some keys are parked with blocked messages behind them.
    let total = 60u64;
    let payloads_in: Vec<Value> = (0..total)
        .map(|n| {
            let fail = if n % 3 == 0 { 2 } else { 0 };
            json!({"n": n, "key": format!("k{}", n % 4), "mode": "ok", "fail": fail})
        })
        .collect();
    let mut relay = RelayProcess::start(&config, "relay-1");
    let mut published = 0;
    for (round, chunk) in payloads_in.chunks(15).enumerate() {
        publish(&db, chunk).await;
        published += chunk.len();
        tokio::time::sleep(Duration::from_millis(150 + 70 * round as u64)).await;
        relay.kill9();
        relay = RelayProcess::start(&config, &format!("relay-{}", round + 2));
    }
    let out = eventually(
        Duration::from_secs(60),
        "every message delivered",
        || async {
            let out = redis.payloads("out").await;
            (out.len() >= published).then_some(out)
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let out_now = redis.payloads("out").await;
    assert_eq!(out_now.len(), out.len(), "nothing more arrives later");
    let mut per_key: HashMap<String, Vec<u64>> = HashMap::new();
    for payload in &out_now {
        per_key
            .entry(payload["key"].as_str().unwrap().to_owned())
            .or_default()
            .push(payload["n"].as_u64().unwrap());
    }
    let mut all: Vec<u64> = per_key.values().flatten().copied().collect();
    all.sort();
    assert_eq!(
        all,
        (0..total).collect::<Vec<_>>(),
        "each message exactly once:\n{}",
        relay.log()
    );
    for (key, numbers) in &per_key {
        let mut sorted = numbers.clone();
        sorted.sort();
        assert_eq!(numbers, &sorted, "key {key} delivered in order");
    }
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox.deliveries")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(left, 0, "no delivery row left behind");
    assert_eq!(relay.terminate(Duration::from_secs(10)).await, Some(0));
}

#[tokio::test]
async fn a_late_retry_killed_between_its_append_and_its_row_update_lands_once() {
    let (db, redis) = (TestDb::new().await, TestRedis::new());
    let hook = Hook::default();
    let addr = hook.start().await;
    let dir = TempDir::new("kill-between-append-and-settle");
    let config = dir.write(
        "relay.toml",
        &relay_toml(
            &db,
            &redis,
            "idle_poll_ms = 5\nlease_ttl_ms = 500",
            &http_group(addr, "backoff_initial_ms = 500"),
        ),
    );
    let relay = RelayProcess::start(&config, "relay-1");
    // Message 1 fails once (503) and is retried later; message 2 goes through first, so the
    // stream's watermark is past message 1 when its retry appends.
    let ids = publish(
        &db,
        &[
            json!({"n": 1, "mode": "ok", "fail": 1}),
            json!({"n": 2, "mode": "ok"}),
        ],
    )
    .await;
    eventually(Duration::from_secs(10), "message 2 delivered", || async {
        (redis.payloads("out").await.len() == 1).then_some(())
    })
    .await;
    // Hold message 1's delivery row: the retry appends, then waits to settle the row.
    let mut holder = db.pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM outbox.deliveries d WHERE d.message_id = $1 FOR UPDATE")
        .bind(ids[0])
        .execute(&mut *holder)
        .await
        .unwrap();
    eventually(Duration::from_secs(10), "the retry appended", || async {
        (redis.payloads("out").await.len() == 2).then_some(())
    })
    .await;
    relay.kill9();
    holder.rollback().await.unwrap();
    let status: String =
        sqlx::query_scalar("SELECT d.status FROM outbox.deliveries d WHERE d.message_id = $1")
            .bind(ids[0])
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(status, "retrying", "the row update never happened");

    let relay = RelayProcess::start(&config, "relay-2");
    eventually(Duration::from_secs(10), "the row settled", || async {
        let left: i64 =
            sqlx::query_scalar("SELECT count(*) FROM outbox.deliveries d WHERE d.message_id = $1")
                .bind(ids[0])
                .fetch_one(&db.pool)
                .await
                .unwrap();
        (left == 0).then_some(())
    })
    .await;
    assert!(hook.calls_of(1) >= 3, "called again after the restart");
    let numbers: Vec<u64> = redis
        .payloads("out")
        .await
        .iter()
        .map(|p| p["n"].as_u64().unwrap())
        .collect();
    assert_eq!(
        numbers,
        [2, 1],
        "the late retry is neither dropped nor duplicated"
    );
    assert_eq!(relay.terminate(Duration::from_secs(10)).await, Some(0));
}

//! Handler calls in flight: `[[groups]] max_in_flight` bounds how many run at once (counted at
//! the endpoint), and messages of one key are called one after another, in position order,
//! however long each call takes, while different keys run concurrently; a slow call holds
//! back no other key's calls, across batch boundaries; kill -9 with hundreds of calls in
//! flight appends each message exactly once and moves the cursor past finished messages only;
//! a relay frozen past its lease with calls in flight neither appends nor moves the cursor
//! when it wakes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use crate::harness::redis::TestRedis;
use crate::harness::relay::{
    InProcessRelay, RelayProcess, TempDir, cursor_of_g, keyed_message, lease_owner,
    publish_messages, relay_toml, wait_for_cursor_at_the_end,
};
use crate::harness::{TestDb, eventually};

/// A webhook that takes `delay_ms` (or, for a payload with `"jitter": true`, a pseudo-random
/// 0–19 ms) per call, counts the calls running at once and records each key's calls in the
/// order they began; answers 200 with the payload as one output on stream `out`.
#[derive(Clone)]
struct Hook {
    delay_ms: u64,
    running: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
    calls: Arc<Mutex<HashMap<String, Vec<u64>>>>,
}

impl Hook {
    fn new(delay_ms: u64) -> Hook {
        Hook {
            delay_ms,
            running: Arc::default(),
            peak: Arc::default(),
            calls: Arc::default(),
        }
    }

    async fn start(&self) -> SocketAddr {
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(answer))
            .with_state(self.clone());
        crate::harness::serve_http(app).await
    }

    fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }
}

async fn answer(State(hook): State<Hook>, Json(body): Json<Value>) -> Json<Value> {
    let payload = &body["payload"];
    let n = payload["n"].as_u64().unwrap_or(0);
    let key = payload["key"].as_str().unwrap_or_default().to_owned();
    hook.calls.lock().unwrap().entry(key).or_default().push(n);
    let running = hook.running.fetch_add(1, Ordering::SeqCst) + 1;
    hook.peak.fetch_max(running, Ordering::SeqCst);
    let delay = if payload["jitter"] == json!(true) {
        n.wrapping_mul(7919) % 20
    } else if let Some(ms) = payload["hang_ms"].as_u64() {
        ms
    } else {
        hook.delay_ms
    };
    tokio::time::sleep(Duration::from_millis(delay)).await;
    hook.running.fetch_sub(1, Ordering::SeqCst);
    Json(json!({"outputs": [{"stream": "out", "payload": payload}]}))
}

fn http_group(addr: SocketAddr, extra: &str) -> String {
    format!(
        "[[groups]]\nname = \"g\"\n{extra}\n[[groups.routes]]\ntopics = [\"*\"]\n\
         handler = \"http\"\nurl = \"http://{addr}/hook\"\ntimeout_ms = 5000\n"
    )
}

/// `count` messages, `n` = 0.., keyed round-robin over `keys` keys, in one transaction.
async fn publish_keyed(db: &TestDb, count: u64, keys: u64, extra: Value) {
    let messages = (0..count)
        .map(|n| {
            let mut payload = json!({"n": n, "key": format!("k{}", n % keys)});
            if let (Some(payload), Some(extra)) = (payload.as_object_mut(), extra.as_object()) {
                payload.extend(extra.clone());
            }
            keyed_message("t", &payload)
        })
        .collect();
    publish_messages(&db.pool, messages, true).await;
}

/// The `n` of every entry in stream `out`, by the payload's `key`, in stream order.
async fn appended_per_key(redis: &TestRedis) -> HashMap<String, Vec<u64>> {
    let mut per_key: HashMap<String, Vec<u64>> = HashMap::new();
    for payload in redis.payloads("out").await {
        per_key
            .entry(payload["key"].as_str().unwrap().to_owned())
            .or_default()
            .push(payload["n"].as_u64().unwrap());
    }
    per_key
}

/// The numbers [`publish_keyed`] gave `key` (of `count` over `keys` keys), in order.
fn numbers_of(key: &str, count: u64, keys: u64) -> Vec<u64> {
    (0..count)
        .filter(|n| format!("k{}", n % keys) == key)
        .collect()
}

async fn drained(redis: &TestRedis, count: usize) {
    eventually(
        Duration::from_secs(60),
        "every message appended",
        || async { (redis.stream_len("out").await >= count).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn max_in_flight_bounds_the_handler_calls_at_once() {
    for (setting, bound) in [("max_in_flight = 8", 8), ("", 256)] {
        let db = TestDb::new().await;
        let redis = TestRedis::new();
        let hook = Hook::new(30);
        let addr = hook.start().await;
        publish_keyed(&db, 400, 400, json!({})).await;
        let relay = InProcessRelay::start(&relay_toml(
            &db,
            &redis,
            "batch_size = 500",
            &http_group(addr, setting),
        ))
        .await;
        drained(&redis, 400).await;
        relay.stop().await;
        let peak = hook.peak();
        assert!(peak <= bound, "{setting:?}: {peak} calls at once");
        if bound == 8 {
            assert_eq!(peak, 8, "400 independent keys keep all 8 busy");
        } else {
            // More than the 16 a group could run before max_in_flight existed.
            assert!(peak > 64, "default: only {peak} calls at once");
        }
        assert_eq!(redis.stream_len("out").await, 400);
    }
}

#[tokio::test]
async fn each_key_is_called_in_position_order_while_keys_run_concurrently() {
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    let hook = Hook::new(0);
    let addr = hook.start().await;
    // 20 keys × 30 messages, interleaved; every call takes its own 0–19 ms.
    publish_keyed(&db, 600, 20, json!({"jitter": true})).await;
    let relay = InProcessRelay::start(&relay_toml(
        &db,
        &redis,
        "batch_size = 100",
        &http_group(addr, "max_in_flight = 64"),
    ))
    .await;
    drained(&redis, 600).await;
    relay.stop().await;
    let calls = hook.calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 20);
    for (key, ns) in &calls {
        let mut sorted = ns.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(ns, &sorted, "key {key}: called out of order or twice");
        assert_eq!(ns.len(), 30, "key {key}");
    }
    assert!(hook.peak() > 1, "keys ran one at a time");
    // The stream holds each key's messages in position order, each once.
    let per_key = appended_per_key(&redis).await;
    for (key, ns) in per_key {
        assert_eq!(ns, numbers_of(&key, 600, 20), "key {key} in the stream");
    }
}

#[tokio::test]
async fn a_slow_call_holds_back_no_other_key_across_batches() {
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    let hook = Hook::new(5);
    let addr = hook.start().await;
    // The first message (key `slow`) takes 3 s; then 300 messages over 30 other keys, spread
    // over three batches of 100 after the first.
    let mut messages = vec![keyed_message(
        "t",
        &json!({"n": 0, "key": "slow", "hang_ms": 3000}),
    )];
    messages.extend(
        (1..=300).map(|n| keyed_message("t", &json!({"n": n, "key": format!("k{}", n % 30)}))),
    );
    publish_messages(&db.pool, messages, true).await;
    let relay = InProcessRelay::start(&relay_toml(
        &db,
        &redis,
        "batch_size = 100",
        &http_group(addr, ""),
    ))
    .await;
    let started = std::time::Instant::now();
    eventually(
        Duration::from_secs(10),
        "every other key called",
        || async {
            let calls = hook.calls.lock().unwrap();
            let others: usize = calls
                .iter()
                .filter(|(k, _)| *k != "slow")
                .map(|(_, ns)| ns.len())
                .sum();
            (others == 300).then_some(())
        },
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "the other keys waited for the slow call: {:?}",
        started.elapsed()
    );
    drained(&redis, 301).await;
    relay.stop().await;
    let numbers: Vec<u64> = redis
        .payloads("out")
        .await
        .iter()
        .map(|p| p["n"].as_u64().unwrap())
        .collect();
    let mut sorted = numbers.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..=300).collect::<Vec<_>>(), "each once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_with_hundreds_of_calls_in_flight_appends_each_message_once() {
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    let hook = Hook::new(0);
    let addr = hook.start().await;
    let dir = TempDir::new(&format!("{}-in-flight", db.name));
    let config = dir.write(
        "relay.toml",
        &relay_toml(
            &db,
            &redis,
            "batch_size = 200\nidle_poll_ms = 2\nlease_ttl_ms = 300",
            &http_group(addr, "max_in_flight = 256"),
        ),
    );
    // 3,000 messages over 300 keys; every call takes its own 0–19 ms.
    publish_keyed(&db, 3000, 300, json!({"jitter": true})).await;
    for round in 0..5 {
        let relay = RelayProcess::start(&config, "relay");
        // Killed mid-drain: some batches appended, hundreds of calls running.
        let progress = 400 * (round + 1);
        eventually(Duration::from_secs(30), "appends under way", || async {
            (redis.stream_len("out").await >= progress).then_some(())
        })
        .await;
        tokio::time::sleep(Duration::from_millis(7 * round as u64)).await;
        let in_flight = hook.running.load(Ordering::SeqCst);
        relay.kill9();
        // The cursor never passes a message whose entry is not in the stream.
        let cursor: (i64, i64) = sqlx::query_as(
            "SELECT g.cursor_tx_id::text::bigint, g.cursor_seq FROM outbox.consumer_groups g WHERE g.name = 'g'",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        let passed: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM outbox.messages m WHERE (m.tx_id::text::bigint, m.seq) <= ($1, $2)",
        )
        .bind(cursor.0)
        .bind(cursor.1)
        .fetch_one(&db.pool)
        .await
        .unwrap();
        let appended = redis.stream_len("out").await as i64;
        eprintln!(
            "round {round}: killed with {in_flight} calls in flight, cursor past {passed}, {appended} appended"
        );
        assert!(
            passed <= appended,
            "the cursor passed {passed} messages, {appended} appended"
        );
        if appended >= 3000 {
            break;
        }
    }
    let relay = RelayProcess::start(&config, "relay");
    drained(&redis, 3000).await;
    drop(relay);
    let per_key = appended_per_key(&redis).await;
    let total: usize = per_key.values().map(Vec::len).sum();
    assert_eq!(total, 3000, "each message appended once");
    for (key, ns) in per_key {
        assert_eq!(
            ns,
            numbers_of(&key, 3000, 300),
            "key {key}: in position order, each once"
        );
    }
    // Every message was called at least once (some twice: their calls were cut by a kill).
    let calls = hook.calls.lock().unwrap();
    let called: usize = calls
        .values()
        .map(|ns| {
            let mut unique = ns.clone();
            unique.sort_unstable();
            unique.dedup();
            unique.len()
        })
        .sum();
    assert_eq!(called, 3000);
}

async fn owned_by(db: &TestDb, relay: &RelayProcess) -> Option<()> {
    let owner = lease_owner(db).await?;
    owner.contains(&format!(":{}:", relay.pid())).then_some(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_frozen_past_its_lease_with_calls_in_flight_appends_nothing_when_it_wakes() {
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    let hook = Hook::new(0);
    let addr = hook.start().await;
    let dir = TempDir::new(&format!("{}-frozen", db.name));
    let config = dir.write(
        "relay.toml",
        &relay_toml(
            &db,
            &redis,
            "batch_size = 100\nidle_poll_ms = 2\nlease_ttl_ms = 400",
            &http_group(addr, ""),
        ),
    );
    publish_keyed(&db, 2000, 200, json!({"jitter": true})).await;
    let stale = RelayProcess::start(&config, "stale");
    eventually(Duration::from_secs(20), "appends under way", || async {
        (redis.stream_len("out").await >= 300).then_some(())
    })
    .await;
    stale.signal("STOP");
    let fresh = RelayProcess::start(&config, "fresh");
    eventually(
        Duration::from_secs(10),
        "the fresh relay holding the lease",
        || async { owned_by(&db, &fresh).await },
    )
    .await;
    drained(&redis, 2000).await;
    wait_for_cursor_at_the_end(&db).await;
    let cursor_before = cursor_of_g(&db).await;

    // Awake, its calls answer and its window commits: every write must be refused.
    stale.signal("CONT");
    eventually(
        Duration::from_secs(10),
        "the stale relay noticing",
        || async { stale.log().contains("lease lost").then_some(()) },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        owned_by(&db, &fresh).await.is_some(),
        "the fresh relay keeps the lease"
    );
    assert_eq!(
        cursor_of_g(&db).await,
        cursor_before,
        "the stale relay moved the cursor"
    );
    assert_eq!(
        redis.stream_len("out").await,
        2000,
        "the stale relay appended"
    );
    drop((stale, fresh));
    let mut numbers: Vec<u64> = redis
        .payloads("out")
        .await
        .iter()
        .map(|p| p["n"].as_u64().unwrap())
        .collect();
    numbers.sort_unstable();
    assert_eq!(numbers, (0..2000).collect::<Vec<_>>(), "each once");
}

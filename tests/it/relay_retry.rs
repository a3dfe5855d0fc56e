//! Handlers that fail: retries stored in rows, backoff, dead letters, ordering under failure
//! (`key`, `strict`, `none`), late retries next to the watermark, and a panicking handler.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use outbox_relay::handler::{DecodedMessage, Handler, HandlerError, Output};
use outbox_relay::relay::{Relay, Route};
use outbox_relay::retry::RetryPolicy;
use serde_json::json;
use uuid::Uuid;

use crate::harness::cli::{outbox_relay, run};
use crate::harness::redis::TestRedis;
use crate::harness::relay::{InProcessRelay, keyed_message, publish_messages, relay_toml};
use crate::harness::{TestDb, eventually};

/// Fails each message whose payload has `"fail": n` its first n calls (retryable), refuses
/// `"reject": true` (permanent), panics on `"panic": true` the first time; otherwise outputs the
/// payload to stream `out`. Records every call: (message n, attempt, when).
#[derive(Clone, Default)]
struct Scripted {
    calls: Arc<Mutex<Vec<(u64, u32, Instant)>>>,
}

impl Scripted {
    fn calls_of(&self, n: u64) -> Vec<(u32, Instant)> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|(m, _, _)| *m == n)
            .map(|(_, attempt, at)| (*attempt, *at))
            .collect()
    }
}

#[async_trait::async_trait]
impl Handler for Scripted {
    async fn handle(&self, message: &DecodedMessage) -> Result<Vec<Output>, HandlerError> {
        let n = message.payload["n"].as_u64().unwrap();
        let previous = {
            let mut calls = self.calls.lock().unwrap();
            let previous = calls.iter().filter(|(m, _, _)| *m == n).count() as u64;
            calls.push((n, message.attempt, Instant::now()));
            previous
        };
        if message.payload["reject"] == json!(true) {
            return Err(HandlerError::permanent(format!(
                "message {n} is not acceptable"
            )));
        }
        if message.payload["panic"] == json!(true) && previous == 0 {
            panic!("handler bug on message {n}");
        }
        if previous < message.payload["fail"].as_u64().unwrap_or(0) {
            return Err(HandlerError::retryable(format!("downstream busy ({n})")));
        }
        Ok(vec![Output::new("out", message.payload.clone())])
    }
}

fn policy(max_attempts: u32, initial_ms: u64) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        initial: Duration::from_millis(initial_ms),
        max: Duration::from_secs(5),
        multiplier: 2.0,
    }
}

/// A relay whose group `g` (ordering `ordering`, dead letters to `dead`) sends every topic to
/// `handler`.
async fn start(
    db: &TestDb,
    redis: &TestRedis,
    ordering: &str,
    handler: &Scripted,
    retry: RetryPolicy,
) -> InProcessRelay {
    // The configured route only makes the group; the custom route in front takes everything.
    let groups = format!(
        "[[groups]]\nname = \"g\"\nordering = \"{ordering}\"\ndead_letter_stream = \"dead\"\n\
         [[groups.routes]]\ntopics = [\"unused\"]\nhandler = \"drop\"\n"
    );
    let toml = relay_toml(db, redis, "idle_poll_ms = 5", &groups);
    let handler = handler.clone();
    InProcessRelay::start_with(&toml, move |relay: Relay| {
        relay.route(
            "g",
            Route::call(&["*"], "scripted", handler)
                .unwrap()
                .with_retry(retry),
        )
    })
    .await
}

/// Publishes each payload on topic `t` (keyed by its `key`), one transaction each, or all in
/// ONE transaction (so the relay reads them in one batch) when `together`.
async fn publish(db: &TestDb, payloads: &[serde_json::Value]) -> Vec<Uuid> {
    let messages = payloads.iter().map(|p| keyed_message("t", p)).collect();
    publish_messages(&db.pool, messages, false).await
}

async fn publish_together(db: &TestDb, payloads: &[serde_json::Value]) -> Vec<Uuid> {
    let messages = payloads.iter().map(|p| keyed_message("t", p)).collect();
    publish_messages(&db.pool, messages, true).await
}

async fn wait_for_numbers(redis: &TestRedis, stream: &str, count: usize) -> Vec<u64> {
    eventually(Duration::from_secs(20), "entries in the stream", || async {
        let numbers = redis.numbers(stream).await;
        (numbers.len() >= count).then_some(numbers)
    })
    .await
}

async fn delivery(db: &TestDb, id: Uuid) -> Option<(String, i32, Option<String>, bool)> {
    sqlx::query_as(
        "SELECT d.status, d.attempts, d.last_error, d.next_attempt_at IS NOT NULL
           FROM outbox.deliveries d WHERE d.group_name = 'g' AND d.message_id = $1",
    )
    .bind(id)
    .fetch_optional(&db.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_failing_handler_is_retried_with_backoff_from_its_row_and_lands_once() {
    let (db, redis) = (TestDb::new().await, TestRedis::new());
    let handler = Scripted::default();
    let relay = start(&db, &redis, "key", &handler, policy(10, 200)).await;
    let ids = publish(&db, &[json!({"n": 1, "fail": 3})]).await;

    // Watch the row while the handler fails: its attempts go 1, 2, 3, then it is gone.
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match delivery(&db, ids[0]).await {
            Some((status, attempts, error, scheduled)) => {
                assert_eq!(status, "retrying");
                assert!(scheduled, "a retrying row has its next attempt time");
                assert_eq!(error.as_deref(), Some("scripted: downstream busy (1)"));
                if seen.last() != Some(&attempts) {
                    seen.push(attempts);
                }
            }
            None if !seen.is_empty() => break,
            None => {}
        }
        assert!(
            Instant::now() < deadline,
            "the message never settled: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(seen, [1, 2, 3]);
    assert_eq!(wait_for_numbers(&redis, "out", 1).await, [1]);

    // Four calls, attempts 1..4, spaced by the backoff (200, 400, 800 ms, ±20 % jitter).
    let calls = handler.calls_of(1);
    let attempts: Vec<u32> = calls.iter().map(|(a, _)| *a).collect();
    assert_eq!(attempts, [1, 2, 3, 4]);
    for (i, pair) in calls.windows(2).enumerate() {
        let gap = pair[1].1 - pair[0].1;
        let expected = Duration::from_millis(200 << i);
        assert!(
            gap >= expected.mul_f64(0.8) - Duration::from_millis(5)
                && gap <= expected.mul_f64(1.2) + Duration::from_millis(400),
            "retry {} came after {gap:?}, expected {expected:?} ± 20 %",
            i + 1
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(redis.numbers("out").await, [1], "landed exactly once");
    relay.stop().await;
}

#[tokio::test]
async fn an_always_failing_message_is_dead_after_max_attempts_and_operators_can_act_on_it() {
    let (db, redis) = (TestDb::new().await, TestRedis::new());
    let handler = Scripted::default();
    let relay = start(&db, &redis, "key", &handler, policy(3, 30)).await;
    let ids = publish(
        &db,
        &[
            json!({"n": 1, "fail": 1000}),
            json!({"n": 2, "reject": true}),
            json!({"n": 3}),
        ],
    )
    .await;
    let dead = eventually(Duration::from_secs(20), "message 1 dead", || async {
        delivery(&db, ids[0]).await.filter(|d| d.0 == "dead")
    })
    .await;
    assert_eq!(dead.1, 3, "dead after max_attempts = 3");
    assert_eq!(
        dead.2.as_deref(),
        Some("scripted: downstream busy (1) (gave up after 3 attempts)")
    );
    assert!(!dead.3, "a dead row has no next attempt");
    assert_eq!(
        delivery(&db, ids[1]).await.unwrap(),
        (
            "dead".into(),
            1,
            Some("scripted: message 2 is not acceptable".into()),
            false
        ),
        "a permanent error is dead at once"
    );
    assert_eq!(handler.calls_of(2).len(), 1);
    assert_eq!(wait_for_numbers(&redis, "out", 1).await, [3]);
    // Each dead letter is copied to the dead-letter stream with its reason.
    let copies = eventually(
        Duration::from_secs(10),
        "two dead-letter copies",
        || async {
            let entries = redis.entries("dead").await;
            (entries.len() == 2).then_some(entries)
        },
    )
    .await;
    let reasons: HashMap<String, String> = copies
        .iter()
        .map(|e| (e.fields["id"].clone(), e.fields["error"].clone()))
        .collect();
    assert_eq!(
        reasons[&ids[1].to_string()],
        "scripted: message 2 is not acceptable"
    );

    // `dead list` shows both; `dead retry --message` gives message 1 one more attempt;
    // `dead discard --group` removes what is left.
    let cli = |args: &[&str]| {
        let mut command = outbox_relay();
        command.args(["--database-url", &db.url]).args(args);
        run(&mut command)
    };
    let list = cli(&["dead", "list", "--group", "g", "--json"]);
    assert_eq!(list.code, Some(0), "{}", list.stderr);
    let listed: Vec<serde_json::Value> = serde_json::from_str(&list.stdout).unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0]["message_id"], json!(ids[0].to_string()));
    assert_eq!(listed[0]["attempts"], json!(3));
    let table = cli(&["dead", "list", "--since", "1h"]);
    assert!(table.stdout.contains("dead letters: 2"), "{}", table.stdout);

    let retried = cli(&["dead", "retry", "--message", &ids[0].to_string()]);
    assert_eq!(retried.code, Some(0), "{}", retried.stderr);
    assert!(
        retried.stdout.contains("dead → retrying, due now: 1"),
        "{}",
        retried.stdout
    );
    eventually(
        Duration::from_secs(10),
        "one more attempt, then dead again",
        || async {
            (handler.calls_of(1).len() == 4
                && delivery(&db, ids[0]).await.is_some_and(|d| d.0 == "dead"))
            .then_some(())
        },
    )
    .await;
    assert_eq!(
        delivery(&db, ids[0]).await.unwrap().1,
        4,
        "attempts kept, plus one"
    );

    let refused = cli(&["dead", "discard"]);
    assert_eq!(refused.code, Some(2), "{}", refused.stdout);
    assert!(refused.stderr.contains("--all"), "{}", refused.stderr);
    let discarded = cli(&["dead", "discard", "--group", "g", "--topic", "t"]);
    assert_eq!(discarded.code, Some(0), "{}", discarded.stderr);
    assert!(
        discarded.stdout.contains("discarded: 2"),
        "{}",
        discarded.stdout
    );
    assert!(delivery(&db, ids[0]).await.is_none());
    relay.stop().await;
}

#[tokio::test]
async fn key_ordering_parks_only_the_failing_key_and_releases_it_in_order() {
    let (db, redis) = (TestDb::new().await, TestRedis::new());
    let handler = Scripted::default();
    let relay = start(&db, &redis, "key", &handler, policy(10, 400)).await;
    let ids = publish_together(
        &db,
        &[
            json!({"n": 1, "key": "a", "fail": 2}),
            json!({"n": 2, "key": "b"}),
            json!({"n": 3, "key": "a"}),
            json!({"n": 4, "key": "b"}),
            json!({"n": 5, "key": "a"}),
            json!({"n": 6}),
        ],
    )
    .await;
    // One batch: while key a is parked, its later messages are blocked rows; b and the unkeyed
    // one flow.
    let flowing = wait_for_numbers(&redis, "out", 3).await;
    assert_eq!(flowing, [2, 4, 6]);
    let blocked = eventually(Duration::from_secs(5), "blocked rows", || async {
        let b3 = delivery(&db, ids[2]).await?;
        let b5 = delivery(&db, ids[4]).await?;
        Some((b3, b5))
    })
    .await;
    assert_eq!((blocked.0.0.as_str(), blocked.0.1), ("blocked", 0));
    assert_eq!((blocked.1.0.as_str(), blocked.1.1), ("blocked", 0));
    // Then key a completes, in order, each once.
    let all = wait_for_numbers(&redis, "out", 6).await;
    assert_eq!(all, [2, 4, 6, 1, 3, 5]);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(redis.numbers("out").await.len(), 6, "nothing twice");
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox.deliveries")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(left, 0);
    relay.stop().await;
}

#[tokio::test]
async fn strict_ordering_stops_the_group_at_the_failing_message() {
    let (db, redis) = (TestDb::new().await, TestRedis::new());
    let handler = Scripted::default();
    let relay = start(&db, &redis, "strict", &handler, policy(10, 300)).await;
    publish(
        &db,
        &[
            json!({"n": 1}),
            json!({"n": 2, "key": "a", "fail": 2}),
            json!({"n": 3, "key": "b"}),
            json!({"n": 4}),
        ],
    )
    .await;
    assert_eq!(wait_for_numbers(&redis, "out", 1).await, [1]);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        redis.numbers("out").await,
        [1],
        "nothing passes the failing message"
    );
    assert!(
        handler.calls_of(3).is_empty(),
        "later messages are not even handled"
    );
    assert_eq!(wait_for_numbers(&redis, "out", 4).await, [1, 2, 3, 4]);
    relay.stop().await;
}

#[tokio::test]
async fn no_ordering_lets_later_messages_pass_and_the_late_retry_still_lands() {
    let (db, redis) = (TestDb::new().await, TestRedis::new());
    let handler = Scripted::default();
    let relay = start(&db, &redis, "none", &handler, policy(10, 300)).await;
    publish(
        &db,
        &[
            json!({"n": 1, "key": "a", "fail": 1}),
            json!({"n": 2, "key": "a"}),
            json!({"n": 3, "key": "a", "panic": true}),
        ],
    )
    .await;
    // 1 and 3 (whose handler panicked: a retryable failure, the relay lives on) come back
    // after 2, older than the stream's watermark: the late path appends them anyway, once.
    let all = wait_for_numbers(&redis, "out", 3).await;
    assert_eq!(all[0], 2);
    let mut sorted = all.clone();
    sorted.sort();
    assert_eq!(sorted, [1, 2, 3]);
    assert_eq!(handler.calls_of(3).len(), 2, "the panic was retried");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(redis.numbers("out").await.len(), 3);
    relay.stop().await;
}

#[tokio::test]
async fn a_retry_after_a_crash_between_append_and_row_update_adds_nothing() {
    // The late append of a retried output, done twice (the relay died before settling the
    // row, and the next attempt appends again): one entry.
    use outbox_relay::sink::{LateAppend, LateEntry, Sink, Writer};
    let writer = |epoch| Writer {
        group: "g",
        epoch,
        replay_generation: 0,
    };
    let redis = TestRedis::new();
    let settings = outbox_relay::config::RedisSettings {
        key_prefix: redis.prefix.clone(),
        ..Default::default()
    };
    let url = outbox_relay::config::ConnectionUrl::parse(&redis.url, &["redis"]).unwrap();
    let sink = Sink::connect(&url, &settings).await.unwrap();
    let late = [LateAppend {
        stream: "out".into(),
        entries: vec![LateEntry {
            message_id: uuid::Uuid::nil(),
            token: "m-1:0".into(),
            fields: vec![("payload", r#"{"n": 1}"#.into())],
        }],
    }];
    let first = sink.append(writer(1), &[], &late).await.unwrap();
    let again = sink.append(writer(1), &[], &late).await.unwrap();
    assert_eq!((first.appended, again.appended, again.skipped), (1, 0, 1));
    assert_eq!(redis.numbers("out").await, [1]);
    // A relay that lost its lease cannot append late entries either.
    let fenced_late = [LateAppend {
        stream: "out".into(),
        entries: vec![LateEntry {
            message_id: uuid::Uuid::nil(),
            token: "m-2:0".into(),
            fields: vec![("payload", r#"{"n": 2}"#.into())],
        }],
    }];
    sink.append(writer(2), &[], &late).await.unwrap();
    assert!(
        sink.append(writer(1), &[], &fenced_late)
            .await
            .unwrap_err()
            .is_fenced()
    );
    assert_eq!(redis.numbers("out").await, [1]);
    // After a replay (a new generation) the same late entry is sent again, once.
    let replayed = Writer {
        replay_generation: 1,
        ..writer(3)
    };
    let first = sink.append(replayed, &[], &late).await.unwrap();
    let again = sink.append(replayed, &[], &late).await.unwrap();
    assert_eq!((first.appended, again.appended), (1, 0));
    assert_eq!(redis.numbers("out").await, [1, 1]);
}

#[tokio::test]
async fn retry_makes_a_scheduled_retry_due_now_and_leaves_blocked_messages_alone() {
    let (db, redis) = (TestDb::new().await, TestRedis::new());
    let handler = Scripted::default();
    // The first retry would come after a minute.
    let relay = start(&db, &redis, "key", &handler, policy(10, 60_000)).await;
    let ids = publish_together(
        &db,
        &[
            json!({"n": 1, "key": "a", "fail": 1}),
            json!({"n": 2, "key": "a"}),
        ],
    )
    .await;
    eventually(Duration::from_secs(10), "1 retrying, 2 blocked", || async {
        let first = delivery(&db, ids[0]).await?;
        let second = delivery(&db, ids[1]).await?;
        (first.0 == "retrying" && second.0 == "blocked").then_some(())
    })
    .await;
    let cli = |args: &[&str]| {
        let mut command = outbox_relay();
        command.args(["--database-url", &db.url]).args(args);
        run(&mut command)
    };
    let blocked = cli(&["retry", &ids[1].to_string()]);
    assert_eq!(blocked.code, Some(1), "{}", blocked.stdout);
    assert!(
        blocked
            .stdout
            .contains("blocked behind an earlier message of its key"),
        "{}",
        blocked.stdout
    );

    let retried = cli(&["retry", &ids[0].to_string(), "--group", "g"]);
    assert_eq!(retried.code, Some(0), "{}", retried.stderr);
    assert_eq!(
        retried.stdout,
        format!("{} in group g: retrying, due now (attempts kept)\n", ids[0])
    );
    // Picked up within the relay's rescan (1 s), not the minute; then 2 is released.
    let started = Instant::now();
    assert_eq!(wait_for_numbers(&redis, "out", 2).await, [1, 2]);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let unknown = cli(&["retry", &Uuid::now_v7().to_string()]);
    assert_eq!(unknown.code, Some(1));
    assert!(
        unknown.stderr.contains("has no retrying or dead delivery"),
        "{}",
        unknown.stderr
    );
    relay.stop().await;
}

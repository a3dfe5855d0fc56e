//! SIGTERM of a real `outbox-relay run` while an http call hangs: the relay stops reading, lets
//! the call run for `[relay] shutdown_grace_ms`, then abandons it (marking nothing done),
//! releases the lease and exits 0; a standby takes over at once and delivers the message once
//! the webhook answers again. A call that answers within the grace is delivered before exit.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::harness::redis::TestRedis;
use crate::harness::relay::{
    RelayProcess, TempDir, lease_owner, publish_numbered, relay_toml, wait_for_lease_owner,
};
use crate::harness::{TestDb, eventually};

/// A webhook that holds every request until it is told to answer (then 200 with one output
/// on stream `out`), after an optional delay.
#[derive(Clone)]
struct Hook {
    answering: Arc<watch::Sender<bool>>,
    delay: Duration,
    calls: Arc<AtomicUsize>,
}

impl Hook {
    /// A webhook that hangs until [`Hook::answer`].
    fn hanging() -> Hook {
        Hook {
            answering: Arc::new(watch::Sender::new(false)),
            delay: Duration::ZERO,
            calls: Arc::default(),
        }
    }

    /// A webhook that answers every request after `delay`.
    fn slow(delay: Duration) -> Hook {
        let hook = Hook::hanging();
        hook.answer();
        Hook { delay, ..hook }
    }

    async fn start(&self) -> SocketAddr {
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(answer))
            .with_state(self.clone());
        crate::harness::serve_http(app).await
    }

    fn answer(&self) {
        self.answering.send_replace(true);
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

async fn answer(State(hook): State<Hook>, Json(body): Json<Value>) -> Json<Value> {
    hook.calls.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(hook.delay).await;
    let mut answering = hook.answering.subscribe();
    let _ = answering.wait_for(|answering| *answering).await;
    Json(json!({"outputs": [{"stream": "out", "payload": body["payload"]}]}))
}

/// Group `g`: every topic to the webhook, with a 60 s timeout (longer than Kubernetes' 30 s
/// termination grace period).
fn http_group(addr: SocketAddr) -> String {
    format!(
        "[[groups]]\nname = \"g\"\n[[groups.routes]]\ntopics = [\"*\"]\nhandler = \"http\"\n\
         url = \"http://{addr}/hook\"\ntimeout_ms = 60000\n"
    )
}

/// Group `g`'s cursor has passed the message with `{"n": 0}`.
async fn cursor_passed_message(db: &TestDb) -> bool {
    sqlx::query_scalar(
        "SELECT (g.cursor_tx_id, g.cursor_seq) >= (m.tx_id, m.seq)
           FROM outbox.consumer_groups g, outbox.messages m
          WHERE g.name = 'g' AND m.payload = '{\"n\": 0}'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

async fn delivery_rows(db: &TestDb) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM outbox.deliveries")
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

/// Starts a relay on `config`, waits for its lease, publishes `{"n": 0}` and waits for the
/// webhook to receive it.
async fn relay_calling_hook(
    db: &TestDb,
    config: &std::path::Path,
    hook: &Hook,
) -> (RelayProcess, String) {
    let relay = RelayProcess::start(config, "a");
    let owner = wait_for_lease_owner(db).await;
    publish_numbered(&db.pool, 0, 1).await;
    eventually(Duration::from_secs(10), "the webhook called", || async {
        (hook.calls() >= 1).then_some(())
    })
    .await;
    (relay, owner)
}

/// SIGTERM; the exit code and how long the relay took to exit.
async fn terminate_timed(relay: RelayProcess) -> (Option<i32>, Duration) {
    let started = Instant::now();
    let code = relay.terminate(Duration::from_secs(90)).await;
    let took = started.elapsed();
    eprintln!("SIGTERM -> exit {code:?} after {took:?}");
    (code, took)
}

#[tokio::test]
async fn sigterm_abandons_a_hanging_http_call_after_the_grace_and_a_standby_delivers_it() {
    let (db, redis) = (TestDb::new().await, TestRedis::new());
    let hook = Hook::hanging();
    let addr = hook.start().await;
    let dir = TempDir::new("shutdown-grace");
    // A lease of a minute: a takeover within seconds can only come from the release.
    let config = dir.write(
        "relay.toml",
        &relay_toml(
            &db,
            &redis,
            "idle_poll_ms = 5\nlease_ttl_ms = 60000\nshutdown_grace_ms = 1500",
            &http_group(addr),
        ),
    );
    let (relay, first_owner) = relay_calling_hook(&db, &config, &hook).await;
    let standby = RelayProcess::start(&config, "b");
    // Let the standby connect and find the lease taken.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let (code, took) = terminate_timed(relay).await;
    assert_eq!(code, Some(0), "exit code after SIGTERM");
    assert!(
        took <= Duration::from_millis(2500),
        "SIGTERM took {took:?} with a 1.5 s grace (at most grace + 1 s)"
    );
    assert!(
        took >= Duration::from_millis(1400),
        "the in-flight call was not given its grace: exited after {took:?}"
    );
    // Nothing marked done: no entry, no delivery row, the cursor still before the message.
    assert!(
        !cursor_passed_message(&db).await,
        "cursor moved past the abandoned message"
    );
    assert_eq!(delivery_rows(&db).await, 0);
    assert!(redis.payloads("out").await.is_empty());

    // The lease was released: the standby holds it long before the minute's expiry.
    let second_owner = eventually(
        Duration::from_secs(3),
        "the standby taking over",
        || async { lease_owner(&db).await.filter(|owner| *owner != first_owner) },
    )
    .await;
    assert_ne!(second_owner, first_owner);

    hook.answer();
    eventually(Duration::from_secs(20), "the message delivered", || async {
        cursor_passed_message(&db).await.then_some(())
    })
    .await;
    assert_eq!(
        redis.payloads("out").await,
        [json!({"n": 0})],
        "delivered exactly once"
    );
    assert_eq!(delivery_rows(&db).await, 0);
    drop(standby);
}

#[tokio::test]
async fn sigterm_with_the_default_grace_exits_within_six_seconds() {
    let (db, redis) = (TestDb::new().await, TestRedis::new());
    let hook = Hook::hanging();
    let addr = hook.start().await;
    let dir = TempDir::new("shutdown-default-grace");
    let config = dir.write(
        "relay.toml",
        &relay_toml(&db, &redis, "idle_poll_ms = 5", &http_group(addr)),
    );
    let (relay, _) = relay_calling_hook(&db, &config, &hook).await;
    let (code, took) = terminate_timed(relay).await;
    assert_eq!(code, Some(0));
    assert!(
        took <= Duration::from_secs(6) && took >= Duration::from_millis(4900),
        "SIGTERM took {took:?} with the default grace of 5 s"
    );
    assert_eq!(lease_owner(&db).await, None, "lease released");
    assert!(!cursor_passed_message(&db).await);
    assert!(redis.payloads("out").await.is_empty());
}

#[tokio::test]
async fn an_http_call_that_answers_within_the_grace_is_delivered_before_exit() {
    let (db, redis) = (TestDb::new().await, TestRedis::new());
    let hook = Hook::slow(Duration::from_millis(800));
    let addr = hook.start().await;
    let dir = TempDir::new("shutdown-within-grace");
    let config = dir.write(
        "relay.toml",
        &relay_toml(
            &db,
            &redis,
            "idle_poll_ms = 5\nshutdown_grace_ms = 3000",
            &http_group(addr),
        ),
    );
    let (relay, _) = relay_calling_hook(&db, &config, &hook).await;
    let (code, took) = terminate_timed(relay).await;
    assert_eq!(code, Some(0));
    assert!(took < Duration::from_secs(3), "SIGTERM took {took:?}");
    assert_eq!(redis.payloads("out").await, [json!({"n": 0})]);
    // The cursor update of the finished batch landed before the lease was released.
    assert!(
        cursor_passed_message(&db).await,
        "the delivered message is not marked done"
    );
    assert_eq!(lease_owner(&db).await, None, "lease released");
}

#[tokio::test]
async fn a_step_that_outlives_the_grace_is_abandoned_and_the_lease_still_released() {
    let (db, redis) = (TestDb::new().await, TestRedis::new());
    let hook = Hook::hanging();
    let addr = hook.start().await;
    let dir = TempDir::new("shutdown-abandoned-step");
    // A lease of a minute: only a release frees it within the test.
    let config = dir.write(
        "relay.toml",
        &relay_toml(
            &db,
            &redis,
            "idle_poll_ms = 5\nlease_ttl_ms = 60000\nshutdown_grace_ms = 1000",
            &http_group(addr),
        ),
    );
    let relay = RelayProcess::start(&config, "a");
    let owner = wait_for_lease_owner(&db).await;
    // The relay's next read of the outbox waits behind this lock: the step in flight at
    // SIGTERM cannot finish within the grace, whatever it was doing.
    let mut lock = db.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE outbox.messages IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (code, took) = terminate_timed(relay).await;
    let after_exit = lease_owner(&db).await;
    lock.rollback().await.unwrap();
    assert_eq!(code, Some(0), "exit code after SIGTERM");
    assert!(
        took <= Duration::from_millis(2500),
        "SIGTERM took {took:?} with a 1 s grace"
    );
    assert_eq!(
        after_exit, None,
        "the lease of {owner} was left to expire after the abandoned step"
    );
}

//! The opt-in `wakeup = "notify"`: `outbox-relay notify on|off` installs and drops the trigger,
//! and a notification wakes an idle relay at once, long before its fallback poll.

use std::time::{Duration, Instant};

use outbox_relay::{Message, publish_in_tx};
use serde_json::json;

use crate::harness::cli::{outbox_relay, run};
use crate::harness::redis::TestRedis;
use crate::harness::relay::{InProcessRelay, forward_all, relay_toml, wait_for_lease_owner};
use crate::harness::{TestDb, eventually};

async fn trigger_installed(db: &TestDb) -> bool {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_trigger t
          WHERE t.tgrelid = 'outbox.messages'::regclass AND t.tgname = 'messages_notify')",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

fn notify(db: &TestDb, state: &str) -> String {
    let out = run(outbox_relay().args(["--database-url", &db.url, "notify", state]));
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    out.stdout.trim().to_owned()
}

async fn publish(db: &TestDb, n: u32) {
    let mut tx = db.pool.begin().await.unwrap();
    publish_in_tx(&mut tx, Message::new("t", json!({ "n": n })))
        .await
        .unwrap();
    tx.commit().await.unwrap();
}

#[tokio::test]
async fn notify_on_and_off_are_idempotent_and_say_what_they_did() {
    let db = TestDb::new().await;
    assert!(!trigger_installed(&db).await, "no trigger by default");
    assert!(notify(&db, "on").starts_with("NOTIFY trigger installed"));
    assert!(trigger_installed(&db).await);
    assert_eq!(notify(&db, "on"), "NOTIFY trigger was already installed");
    assert!(trigger_installed(&db).await);
    assert!(notify(&db, "off").starts_with("NOTIFY trigger dropped"));
    assert!(!trigger_installed(&db).await);
    assert_eq!(notify(&db, "off"), "NOTIFY trigger was not installed");

    let out = run(outbox_relay().args(["--database-url", &db.url, "notify", "maybe"]));
    assert_eq!(out.code, Some(2), "a bad argument is a usage error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_wakes_an_idle_relay_long_before_its_fallback_poll() {
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    notify(&db, "on");
    // The fallback poll and the lease renewal are a minute away: only a notification can
    // make this relay read within the test.
    let relay = InProcessRelay::start(&relay_toml(
        &db,
        &redis,
        "wakeup = \"notify\"\nidle_poll_ms = 60000\nlease_ttl_ms = 180000",
        &forward_all("g", "all"),
    ))
    .await;
    eventually(Duration::from_secs(10), "the relay LISTENing", || async {
        let listening: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_stat_activity a
              WHERE a.datname = current_database() AND a.query LIKE 'LISTEN%')",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        listening.then_some(())
    })
    .await;
    wait_for_lease_owner(&db).await;
    // Let the relay reach its (minute-long) idle wait, so only a notification can end it.
    // A fixed wait: being idle is not observable from outside (no query, no log line).
    tokio::time::sleep(Duration::from_millis(300)).await;

    // (Other tests' transactions on the same server can hold the xmin back for seconds; the
    // relay's fallback poll is a minute away.)
    let published = Instant::now();
    publish(&db, 1).await;
    eventually(Duration::from_secs(30), "the notified message", || async {
        (redis.stream_len("all").await == 1).then_some(())
    })
    .await;
    eprintln!(
        "woken and forwarded {:?} after the commit",
        published.elapsed()
    );

    // A notified transaction held back by an older open one (which publishes nothing, so it
    // never notifies): the relay keeps polling briskly until it has read the notified messages.
    let mut older = db.pool.begin().await.unwrap();
    sqlx::query("SELECT pg_current_xact_id()")
        .execute(&mut *older)
        .await
        .unwrap();
    publish(&db, 2).await;
    // Absence cannot be waited for with a deadline: give the relay time to (wrongly) read it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        redis.stream_len("all").await,
        1,
        "held back by the older transaction"
    );
    older.commit().await.unwrap();
    eventually(Duration::from_secs(30), "the held-back message", || async {
        (redis.stream_len("all").await == 2).then_some(())
    })
    .await;

    // Without the trigger nothing wakes it: the next message waits for the fallback poll.
    notify(&db, "off");
    publish(&db, 3).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        redis.stream_len("all").await,
        2,
        "without the trigger, the relay waits for its poll"
    );
    relay.stop().await;
}

//! Redis doing what it should not: a stream key of the wrong type, a server that comes back
//! with less than it acknowledged, no replica to acknowledge an append, and dead-letter copies
//! left behind. Nothing is lost, nothing is written twice, and the log says what happened.

use std::time::Duration;

use redis::AsyncCommands;

use crate::harness::redis::TestRedis;
use crate::harness::relay::{
    InProcessRelay, RelayProcess, TempDir, assert_numbered_exactly_once, forward_all,
    insert_delivery, publish_numbered, relay_toml,
};
use crate::harness::servers::PrivateRedis;
use crate::harness::{TestDb, eventually};

const FAST: &str = "idle_poll_ms = 5\nbatch_size = 100\nmax_backoff_ms = 200";

/// One group routing `w.*` to `ev.{topic}`, retrying after 100 ms up to `max_attempts`, with
/// a dead-letter stream `dead`.
fn wrongtype_groups(max_attempts: u32) -> String {
    format!(
        "[[groups]]\nname = \"g\"\ndead_letter_stream = \"dead\"\n[[groups.routes]]\ntopics = [\"w.*\"]\nhandler = \"forward\"\nstream = \"ev.{{topic}}\"\nmax_attempts = {max_attempts}\nbackoff_initial_ms = 100\nbackoff_max_ms = 200\n"
    )
}

/// Publishes `{"n": n}` for each of `numbers` on `topic`, keyed by the topic (so in order).
async fn publish(db: &TestDb, topic: &str, numbers: std::ops::Range<u64>) {
    let mut tx = db.pool.begin().await.unwrap();
    for n in numbers {
        outbox_relay::publish_in_tx(
            &mut tx,
            outbox_relay::Message::new(topic, serde_json::json!({ "n": n })).key(topic),
        )
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();
}

async fn deliveries(db: &TestDb) -> Vec<(String, i32, String)> {
    sqlx::query_as(
        "SELECT status, attempts, coalesce(last_error, '') FROM outbox.deliveries ORDER BY message_seq",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_key_of_the_wrong_type_fails_its_messages_until_it_is_fixed() {
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    let mut connection = redis.connection().await;
    let bad_key = format!("{}ev.w.bad", redis.prefix);
    let _: () = connection.set(&bad_key, "x").await.unwrap();
    publish(&db, "w.bad", 0..3).await;
    publish(&db, "w.good", 0..3).await;
    let relay =
        InProcessRelay::start(&relay_toml(&db, &redis, FAST, &wrongtype_groups(1000))).await;

    // The other stream flows; the bad one's messages retry, the error naming the key.
    eventually(Duration::from_secs(20), "w.good forwarded", || async {
        (redis.stream_len("ev.w.good").await == 3).then_some(())
    })
    .await;
    let rows = eventually(Duration::from_secs(20), "retries counted", || async {
        let rows = deliveries(&db).await;
        (rows.len() == 3 && rows[0].1 >= 2).then_some(rows)
    })
    .await;
    // The first retries; the later ones of its key wait behind it.
    assert_eq!(rows[0].0, "retrying");
    assert!(
        rows[0].2.contains(&format!(
            "WRONGTYPE: {bad_key} holds a string, not a stream"
        )),
        "{}",
        rows[0].2
    );
    assert_eq!(
        (rows[1].0.as_str(), rows[2].0.as_str()),
        ("blocked", "blocked")
    );
    let value: String = connection.get(&bad_key).await.unwrap();
    assert_eq!(value, "x", "the key is left alone");

    // Fixed: every message arrives exactly once, in order.
    let _: () = connection.del(&bad_key).await.unwrap();
    eventually(Duration::from_secs(20), "w.bad forwarded", || async {
        (deliveries(&db).await.is_empty() && redis.stream_len("ev.w.bad").await == 3).then_some(())
    })
    .await;
    publish(&db, "w.bad", 3..5).await;
    eventually(
        Duration::from_secs(20),
        "later messages forwarded",
        || async { (redis.stream_len("ev.w.bad").await == 5).then_some(()) },
    )
    .await;
    relay.stop().await;
    assert_eq!(redis.numbers("ev.w.bad").await, [0, 1, 2, 3, 4]);
    assert_eq!(redis.numbers("ev.w.good").await, [0, 1, 2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_key_of_the_wrong_type_sends_its_messages_dead_then_dead_retry_delivers_once() {
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    let mut connection = redis.connection().await;
    let bad_key = format!("{}ev.w.bad", redis.prefix);
    let _: () = connection.hset(&bad_key, "f", "v").await.unwrap();
    publish(&db, "w.bad", 0..2).await;
    let relay = InProcessRelay::start(&relay_toml(&db, &redis, FAST, &wrongtype_groups(2))).await;
    let rows = eventually(Duration::from_secs(20), "both dead", || async {
        let rows = deliveries(&db).await;
        (rows.len() == 2 && rows.iter().all(|(status, _, _)| status == "dead")).then_some(rows)
    })
    .await;
    assert!(
        rows[0].2.contains("holds a hash, not a stream"),
        "{}",
        rows[0].2
    );
    // Their dead-letter copies are in the dead-letter stream, once each.
    eventually(Duration::from_secs(10), "dead-letter copies", || async {
        (redis.stream_len("dead").await == 2).then_some(())
    })
    .await;

    let _: () = connection.del(&bad_key).await.unwrap();
    let retried: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox.retry_dead('g')")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(retried, 2);
    eventually(
        Duration::from_secs(20),
        "delivered after dead retry",
        || async {
            (deliveries(&db).await.is_empty() && redis.stream_len("ev.w.bad").await == 2)
                .then_some(())
        },
    )
    .await;
    relay.stop().await;
    assert_eq!(redis.numbers("ev.w.bad").await, [0, 1]);
    assert_eq!(redis.stream_len("dead").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_copy_left_pending_by_a_crash_or_a_bad_key_is_appended_later() {
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    let mut connection = redis.connection().await;
    // What a crash between recording the dead row and appending its copy leaves behind.
    publish(&db, "w.crashed", 0..1).await;
    let id: uuid::Uuid = sqlx::query_scalar("SELECT id FROM outbox.messages")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO outbox.consumer_groups (name, cursor_tx_id, cursor_seq) SELECT 'g', tx_id, seq FROM outbox.messages")
        .execute(&db.pool)
        .await
        .unwrap();
    insert_delivery(&db.pool, "g", id, "dead", 3).await;
    sqlx::query("UPDATE outbox.deliveries SET dead_letter_pending = true")
        .execute(&db.pool)
        .await
        .unwrap();
    // And a dead-letter stream key that cannot take the copy yet.
    let dead_key = format!("{}dead", redis.prefix);
    let _: () = connection.set(&dead_key, "x").await.unwrap();
    let relay = InProcessRelay::start(&relay_toml(&db, &redis, FAST, &wrongtype_groups(1))).await;
    publish(&db, "w.other", 1..2).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let pending: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbox.deliveries WHERE dead_letter_pending")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(pending, 1, "the copy waits while the key is wrong");

    let _: () = connection.del(&dead_key).await.unwrap();
    eventually(
        Duration::from_secs(20),
        "the pending copy appended",
        || async {
            let pending: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM outbox.deliveries WHERE dead_letter_pending",
            )
            .fetch_one(&db.pool)
            .await
            .unwrap();
            (pending == 0 && redis.stream_len("dead").await == 1).then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    relay.stop().await;
    let entries = redis.entries("dead").await;
    assert_eq!(entries.len(), 1, "once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_restarts_empty_mid_drain_is_healed_exactly_once() {
    let db = TestDb::new().await;
    let mut server = PrivateRedis::start();
    let redis = TestRedis::at(&server.url());
    let dir = TempDir::new("redis-loss");
    let config = dir.write(
        "relay.toml",
        &relay_toml(
            &db,
            &redis,
            "idle_poll_ms = 5\nbatch_size = 200\nmax_backoff_ms = 200",
            &forward_all("g", "all"),
        ),
    );
    let published = 12_000;
    for from in (0..published).step_by(2000) {
        publish_numbered(&db.pool, from, 2000).await;
    }
    let relay = RelayProcess::start(&config, "relay");
    eventually(Duration::from_secs(30), "a third appended", || async {
        (redis.stream_len("all").await >= published / 3).then_some(())
    })
    .await;
    tokio::task::block_in_place(|| server.restart_empty());
    eprintln!("Redis restarted empty");
    eventually(
        Duration::from_secs(60),
        "everything in the stream",
        || async { (redis.stream_len("all").await >= published).then_some(()) },
    )
    .await;
    // Messages published after the loss go after the repaired ones.
    publish_numbered(&db.pool, published, 500).await;
    eventually(Duration::from_secs(30), "the new ones too", || async {
        (redis.stream_len("all").await >= published + 500).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let log = relay.log();
    relay.terminate(Duration::from_secs(10)).await;
    assert_numbered_exactly_once(&redis, published + 500).await;
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("ERROR") && l.contains("Redis lost entries"))
        .collect();
    assert!(
        !errors.is_empty(),
        "an ERROR says what was repaired:\n{log}"
    );
    assert!(errors[0].contains("stream=all"), "{}", errors[0]);
    assert!(errors[0].contains("reappended="), "{}", errors[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_lost_everything_while_the_relay_was_down_is_healed_at_start() {
    let db = TestDb::new().await;
    let mut server = PrivateRedis::start();
    let redis = TestRedis::at(&server.url());
    let toml = relay_toml(&db, &redis, FAST, &forward_all("g", "all"));
    publish_numbered(&db.pool, 0, 300).await;
    let relay = InProcessRelay::start(&toml).await;
    eventually(Duration::from_secs(20), "drained", || async {
        (redis.stream_len("all").await == 300).then_some(())
    })
    .await;
    // The cursor (and the marks beside it) committed before the relay stops.
    tokio::time::sleep(Duration::from_millis(300)).await;
    relay.stop().await;
    tokio::task::block_in_place(|| server.restart_empty());
    assert_eq!(redis.stream_len("all").await, 0);
    let relay = InProcessRelay::start(&toml).await;
    eventually(
        Duration::from_secs(20),
        "healed without new messages",
        || async { (redis.stream_len("all").await == 300).then_some(()) },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    relay.stop().await;
    assert_numbered_exactly_once(&redis, 300).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_replicas_holds_the_cursor_until_a_replica_acknowledges() {
    let db = TestDb::new().await;
    let server = PrivateRedis::start();
    let redis = TestRedis::at(&server.url());
    let toml = relay_toml(&db, &redis, FAST, &forward_all("g", "all")).replace(
        "[redis]\n",
        "[redis]\nwait_replicas = 1\nwait_timeout_ms = 100\n",
    );
    publish_numbered(&db.pool, 0, 50).await;
    let relay = InProcessRelay::start(&toml).await;
    eventually(
        Duration::from_secs(20),
        "appended to the master",
        || async { (redis.stream_len("all").await == 50).then_some(()) },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let cursor = || async {
        sqlx::query_scalar::<_, i64>("SELECT cursor_seq FROM outbox.consumer_groups")
            .fetch_one(&db.pool)
            .await
            .unwrap()
    };
    assert_eq!(
        cursor().await,
        0,
        "no replica acknowledged: the cursor waits"
    );

    // A replica comes: the same batch is acknowledged, nothing is appended twice. The master
    // starts its transfer at once (Redis waits 5 s for more replicas by default), and the
    // deadline allows for a machine loaded by the other tests.
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("repl-diskless-sync-delay")
        .arg(0)
        .query_async(&mut redis.connection().await)
        .await
        .unwrap();
    let replica = PrivateRedis::start_replica_of(server.port);
    eventually(Duration::from_secs(60), "the cursor moves", || async {
        (cursor().await > 0).then_some(())
    })
    .await;
    relay.stop().await;
    drop(replica);
    assert_numbered_exactly_once(&redis, 50).await;
}

#[tokio::test]
async fn too_few_replicas_for_wait_replicas_is_a_warning_at_connect() {
    let db = TestDb::new().await;
    let server = PrivateRedis::start();
    let dir = TempDir::new("few-replicas");
    let config = dir.write(
        "relay.toml",
        &format!(
            "database_url = \"{}\"\nredis_url = \"{}\"\n[redis]\nwait_replicas = 1\n",
            db.url,
            server.url()
        ),
    );
    let out = crate::harness::cli::run(crate::harness::cli::outbox_relay().args([
        "config",
        "check",
        "--config",
        config.to_str().unwrap(),
        "--connect",
    ]));
    assert!(
        out.stderr
            .contains("fewer replicas connected than [redis] wait_replicas"),
        "{}{}",
        out.stdout,
        out.stderr
    );
    assert!(out.stderr.contains("connected=0"), "{}", out.stderr);
}

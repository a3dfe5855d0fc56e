//! kill -9 of a real `outbox-relay run` process at random moments, many times, while it drains
//! a backlog and new messages keep arriving: at the end every message is in the stream exactly
//! once, in position order.

use std::time::Duration;

use outbox_relay::Message;
use rand::Rng;
use serde_json::json;

use crate::harness::redis::TestRedis;
use crate::harness::relay::{
    RelayProcess, TempDir, assert_numbered_exactly_once, publish_messages,
};
use crate::harness::{TestDb, eventually};

async fn publish_batch(db: &TestDb, from: usize, count: usize) {
    let messages: Vec<Message> = (from..from + count)
        .map(|n| {
            Message::new("orders.created", json!({"n": n, "pad": "x".repeat(200)}))
                .key(format!("k{}", n % 7))
        })
        .collect();
    publish_messages(&db.pool, messages, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_moments_loses_and_duplicates_nothing() {
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    let dir = TempDir::new(&db.name);
    let config = dir.forward_all_config(
        &db,
        &redis,
        "batch_size = 50\nidle_poll_ms = 2\nlease_ttl_ms = 300",
    );
    let mut published = 0;
    for _ in 0..20 {
        publish_batch(&db, published, 200).await;
        published += 200;
    }

    for round in 0..10 {
        let relay = RelayProcess::start(&config, "relay");
        let alive_ms = rand::rng().random_range(150..600u64);
        // Messages keep arriving while the relay lives and dies.
        let deadline = std::time::Instant::now() + Duration::from_millis(alive_ms);
        while std::time::Instant::now() < deadline {
            publish_batch(&db, published, 25).await;
            published += 25;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        relay.kill9();
        let so_far = redis.stream_len("all").await;
        eprintln!(
            "round {round}: killed after {alive_ms} ms with {so_far}/{published} in the stream"
        );
    }

    let relay = RelayProcess::start(&config, "relay");
    eventually(
        Duration::from_secs(10),
        "the last relay holding the lease",
        || async {
            let owner: Option<String> = sqlx::query_scalar(
                "SELECT g.lease_owner FROM outbox.consumer_groups g WHERE g.name = 'g'",
            )
            .fetch_one(&db.pool)
            .await
            .unwrap();
            owner.filter(|o| o.contains(&format!(":{}:", relay.pid())))
        },
    )
    .await;
    eventually(
        Duration::from_secs(60),
        "every message in the stream",
        || async { (redis.stream_len("all").await >= published).then_some(()) },
    )
    .await;
    assert_eq!(
        relay.terminate(Duration::from_secs(5)).await,
        Some(0),
        "SIGTERM exits 0"
    );

    assert_numbered_exactly_once(&redis, published).await;
}

//! Transactions commit out of order; the relay never skips a late commit, never forwards a
//! rolled-back message, and delivers in position order (DESIGN §3).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use outbox_relay::{Message, publish_in_tx};
use rand::Rng;
use serde_json::json;

use crate::harness::redis::TestRedis;
use crate::harness::relay::{InProcessRelay, forward_all, relay_toml};
use crate::harness::{TestDb, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn never_skips_a_message_committed_out_of_order() {
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    let relay = InProcessRelay::start(&relay_toml(
        &db,
        &redis,
        "idle_poll_ms = 1\nbatch_size = 7",
        &forward_all("g", "all"),
    ))
    .await;

    // Writers take their transaction id first, then wait a random while before writing and
    // committing (or rolling back): ids are handed out in one order, commits land in another.
    let mut writers = tokio::task::JoinSet::new();
    for writer in 0..12 {
        let pool = db.pool.clone();
        writers.spawn(async move {
            let mut committed = Vec::new();
            let mut rolled_back = Vec::new();
            for round in 0..15 {
                let (delay_ms, count, commit) = {
                    let mut rng = rand::rng();
                    (
                        rng.random_range(0..25u64),
                        rng.random_range(1..=3),
                        rng.random_bool(0.8),
                    )
                };
                let mut tx = pool.begin().await.unwrap();
                sqlx::query("SELECT pg_current_xact_id()")
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                let mut ids = Vec::new();
                for i in 0..count {
                    let message = Message::new(
                        "orders.created",
                        json!({"writer": writer, "round": round, "i": i}),
                    )
                    .key(format!("key-{}", writer % 4));
                    ids.push(publish_in_tx(&mut tx, message).await.unwrap());
                }
                tokio::time::sleep(Duration::from_millis(delay_ms / 2)).await;
                if commit {
                    tx.commit().await.unwrap();
                    committed.extend(ids);
                } else {
                    tx.rollback().await.unwrap();
                    rolled_back.extend(ids);
                }
            }
            (committed, rolled_back)
        });
    }
    let mut committed = HashSet::new();
    let mut rolled_back = HashSet::new();
    while let Some(result) = writers.join_next().await {
        let (c, r) = result.unwrap();
        committed.extend(c.into_iter().map(|id| id.to_string()));
        rolled_back.extend(r.into_iter().map(|id| id.to_string()));
    }
    assert!(
        !rolled_back.is_empty() && committed.len() > 100,
        "{} / {}",
        committed.len(),
        rolled_back.len()
    );

    eventually(
        Duration::from_secs(30),
        "every committed message in the stream",
        || async { (redis.stream_len("all").await >= committed.len()).then_some(()) },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await; // anything extra would show now
    relay.stop().await;

    let entries = redis.entries("all").await;
    let ids: Vec<&str> = entries.iter().map(|e| e.fields["id"].as_str()).collect();
    let unique: HashSet<&str> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "duplicates in the stream");
    assert_eq!(ids.len(), committed.len(), "exactly the committed messages");
    assert!(
        ids.iter().all(|id| committed.contains(*id)),
        "a rolled-back or unknown message was forwarded"
    );

    // The stream is in position order, so every key's messages are in transaction-id order.
    let positions: Vec<outbox_relay::Position> = entries
        .iter()
        .map(|e| e.fields["position"].parse().unwrap())
        .collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "stream not in position order"
    );
    let mut per_key: HashMap<&str, Vec<outbox_relay::Position>> = HashMap::new();
    for (entry, position) in entries.iter().zip(&positions) {
        per_key
            .entry(entry.fields["key"].as_str())
            .or_default()
            .push(*position);
    }
    assert_eq!(per_key.len(), 4);
}

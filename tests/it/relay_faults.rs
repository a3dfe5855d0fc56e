//! Postgres restarting or Redis going down while the relay drains: it backs off, reconnects,
//! continues from the last safe point, and loses or duplicates nothing. Private servers only.

use std::time::Duration;

use sqlx::PgPool;

use crate::harness::eventually;
use crate::harness::redis::TestRedis;
use crate::harness::relay::{
    InProcessRelay, assert_numbered_exactly_once, forward_all, publish_numbered,
};
use crate::harness::servers::{PrivatePostgres, PrivateRedis};

const RELAY: &str = "[relay]\nidle_poll_ms = 2\nbatch_size = 50\nmax_backoff_ms = 300\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovers_from_a_postgres_restart_without_loss_or_duplicates() {
    let postgres = PrivatePostgres::start();
    let admin = PgPool::connect(&postgres.url("postgres")).await.unwrap();
    sqlx::query("CREATE DATABASE app")
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    let url = postgres.url("app");
    let pool = PgPool::connect(&url).await.unwrap();
    outbox_relay::migrate(&pool).await.unwrap();
    let redis = TestRedis::new();
    let toml = format!(
        "database_url = \"{url}\"\nredis_url = \"{}\"\n[redis]\nkey_prefix = \"{}\"\n{RELAY}{}",
        redis.url,
        redis.prefix,
        forward_all("g", "all")
    );
    let mut published = 0;
    for _ in 0..10 {
        publish_numbered(&pool, published, 300).await;
        published += 300;
    }
    let relay = InProcessRelay::start(&toml).await;
    eventually(Duration::from_secs(20), "the drain under way", || async {
        (redis.stream_len("all").await > 0).then_some(())
    })
    .await;

    tokio::task::block_in_place(|| postgres.restart());
    let during = redis.stream_len("all").await;
    eprintln!("restarted Postgres with {during}/{published} in the stream");
    let pool = PgPool::connect(&url).await.unwrap();
    publish_numbered(&pool, published, 300).await;
    published += 300;

    eventually(
        Duration::from_secs(30),
        "everything forwarded after the restart",
        || async { (redis.stream_len("all").await >= published).then_some(()) },
    )
    .await;
    relay.stop().await;
    assert_numbered_exactly_once(&redis, published).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovers_from_a_redis_restart_without_loss_or_duplicates() {
    let db = crate::harness::TestDb::new().await;
    let mut server = PrivateRedis::start();
    // The same helpers and prefix isolation, on the private server.
    let redis = TestRedis::at(&server.url());
    let toml = format!(
        "database_url = \"{}\"\nredis_url = \"{}\"\n[redis]\nkey_prefix = \"{}\"\nresponse_timeout_ms = 500\n{RELAY}{}",
        db.url,
        server.url(),
        redis.prefix,
        forward_all("g", "all")
    );
    let mut published = 0;
    for _ in 0..10 {
        publish_numbered(&db.pool, published, 300).await;
        published += 300;
    }
    let relay = InProcessRelay::start(&toml).await;
    eventually(Duration::from_secs(20), "the drain under way", || async {
        (redis.stream_len("all").await > 0).then_some(())
    })
    .await;

    tokio::task::block_in_place(|| server.restart(Duration::from_millis(700)));
    eprintln!(
        "restarted Redis with {}/{published} in the stream",
        redis.stream_len("all").await
    );
    publish_numbered(&db.pool, published, 300).await;
    published += 300;

    eventually(
        Duration::from_secs(30),
        "everything forwarded after the restart",
        || async { (redis.stream_len("all").await >= published).then_some(()) },
    )
    .await;
    relay.stop().await;
    assert_numbered_exactly_once(&redis, published).await;
}

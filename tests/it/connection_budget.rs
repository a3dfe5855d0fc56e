//! The relay's Postgres connections come from one pool capped by `[postgres] max_connections`,
//! whatever the number of groups, so it never locks the application out of its own database
//! (DESIGN §8); and nothing deadlocks when that pool is small. Private Postgres servers only
//! (a small `max_connections`).

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

use crate::harness::redis::TestRedis;
use crate::harness::relay::{RelayProcess, TempDir, publish_numbered};
use crate::harness::servers::PrivatePostgres;
use crate::harness::servers::free_port;
use crate::harness::{eventually, http_get};

/// A private server with `max_connections = 30` and a migrated database `app`.
async fn small_server() -> (PrivatePostgres, String) {
    let postgres = PrivatePostgres::start_with(&[("max_connections", "30")]);
    let admin = PgPool::connect(&postgres.url("postgres")).await.unwrap();
    sqlx::query("CREATE DATABASE app")
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    let url = postgres.url("app");
    let pool = PgPool::connect(&url).await.unwrap();
    outbox_relay::migrate(&pool).await.unwrap();
    pool.close().await;
    (postgres, url)
}

/// `groups` groups `g0`, `g1`, … each forwarding every topic to a stream of its own (`s0`, …).
fn groups_toml(groups: usize) -> String {
    (0..groups)
        .map(|i| {
            format!(
                "[[groups]]\nname = \"g{i}\"\n[[groups.routes]]\ntopics = [\"*\"]\nhandler = \"forward\"\nstream = \"s{i}\"\n"
            )
        })
        .collect()
}

/// Samples how many backends the relay has open (`application_name = 'outbox-relay'`) every
/// 10 ms, keeping the highest count seen, until the returned guard is dropped.
struct BackendSampler {
    highest: Arc<AtomicI64>,
    task: tokio::task::JoinHandle<()>,
}

impl BackendSampler {
    fn start(pool: PgPool) -> BackendSampler {
        let highest = Arc::new(AtomicI64::new(0));
        let seen = Arc::clone(&highest);
        let task = tokio::spawn(async move {
            loop {
                let count: Result<i64, _> = sqlx::query_scalar(
                    "SELECT count(*) FROM pg_stat_activity a WHERE a.application_name = 'outbox-relay'",
                )
                .fetch_one(&pool)
                .await;
                if let Ok(count) = count {
                    seen.fetch_max(count, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        BackendSampler { highest, task }
    }

    fn highest(&self) -> i64 {
        self.highest.load(Ordering::Relaxed)
    }
}

impl Drop for BackendSampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Every stream `s0`..`s{groups}` holds the payloads numbered 0..published, each once, in order.
async fn assert_each_group_delivered_exactly_once(
    redis: &TestRedis,
    groups: usize,
    published: usize,
) {
    let expected: Vec<u64> = (0..published as u64).collect();
    for i in 0..groups {
        let numbers = redis.numbers(&format!("s{i}")).await;
        let unique: HashSet<u64> = numbers.iter().copied().collect();
        assert_eq!(unique.len(), numbers.len(), "duplicates in s{i}");
        assert_eq!(numbers, expected, "group g{i}: lost or reordered messages");
    }
}

/// The total number of entries in streams `s0`..`s{groups}`.
async fn entries(redis: &TestRedis, groups: usize) -> usize {
    let mut total = 0;
    for i in 0..groups {
        total += redis.stream_len(&format!("s{i}")).await;
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_groups_under_the_default_cap_leave_room_for_the_application() {
    const GROUPS: usize = 50;
    const PUBLISHED: usize = 20;
    let (_postgres, url) = small_server().await;
    let redis = TestRedis::new();
    let pool = PgPool::connect(&url).await.unwrap();
    publish_numbered(&pool, 0, PUBLISHED / 2).await;
    let sampler = BackendSampler::start(pool.clone());

    let dir = TempDir::new("connection-budget-50");
    let config = dir.write(
        "relay.toml",
        &format!(
            "database_url = \"{url}\"\nredis_url = \"{}\"\n[redis]\nkey_prefix = \"{}\"\n\
             [relay]\nbatch_size = 4\nmax_backoff_ms = 200\n{}",
            redis.url,
            redis.prefix,
            groups_toml(GROUPS)
        ),
    );
    let relay = RelayProcess::start(&config, "relay");
    // The application opens 15 connections of its own while the relay starts all its groups
    // (30 in all on this server, 2 of them the test's own; the relay's cap is 10).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let app = PgPoolOptions::new()
        .max_connections(15)
        .min_connections(15)
        .acquire_timeout(Duration::from_secs(5))
        .connect(&url)
        .await
        .unwrap_or_else(|e| panic!("the application could not connect: {e}\n{}", relay.log()));
    let mut held = Vec::new();
    for _ in 0..15 {
        held.push(app.acquire().await.unwrap_or_else(|e| {
            panic!(
                "the application could not open 15 connections: {e}\n{}",
                relay.log()
            )
        }));
    }
    publish_numbered(&pool, PUBLISHED / 2, PUBLISHED / 2).await;
    eventually(
        Duration::from_secs(60),
        "every group forwarded every message",
        || async { (entries(&redis, GROUPS).await >= GROUPS * PUBLISHED).then_some(()) },
    )
    .await;
    drop(held);
    app.close().await;
    let log = relay.log();
    assert_eq!(
        relay.terminate(Duration::from_secs(20)).await,
        Some(0),
        "{log}"
    );
    assert_each_group_delivered_exactly_once(&redis, GROUPS, PUBLISHED).await;
    let highest = sampler.highest();
    eprintln!("the relay held at most {highest} connections at once");
    assert!(
        (1..=10).contains(&highest),
        "the relay held {highest} connections at once (cap 10)"
    );
    assert!(!log.contains("too many clients"), "{log}");
}

/// `groups` groups drain a backlog in batches of 10 (so reads are prefetched and cursor updates
/// run in the background) plus messages published while they run, through a pool of `cap`
/// connections, while `/readyz` and `/metrics` are scraped through the same pool.
async fn drains_through_a_pool_of(cap: u32, wakeup: &str, groups: usize) {
    const BACKLOG: usize = 300;
    const LATER: usize = 30;
    let (_postgres, url) = small_server().await;
    let redis = TestRedis::new();
    let pool = PgPool::connect(&url).await.unwrap();
    if wakeup == "notify" {
        outbox_relay::store::notify_trigger_install(&pool)
            .await
            .unwrap();
    }
    publish_numbered(&pool, 0, BACKLOG).await;
    let sampler = BackendSampler::start(pool.clone());
    let dir = TempDir::new(&format!("connection-budget-{cap}-{wakeup}"));
    let config = dir.write(
        "relay.toml",
        &format!(
            "database_url = \"{url}\"\nredis_url = \"{}\"\n[redis]\nkey_prefix = \"{}\"\n\
             [postgres]\nmax_connections = {cap}\n\
             [relay]\nbatch_size = 10\nwakeup = \"{wakeup}\"\nidle_poll_ms = 5\nmax_backoff_ms = 200\n{}",
            redis.url,
            redis.prefix,
            groups_toml(groups)
        ),
    );
    let http = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let relay = RelayProcess::start_with(&config, "relay", &[], &["--http", &http.to_string()]);
    eventually(Duration::from_secs(20), "/readyz answers 200", || async {
        let ready = http_get(http, "/readyz").await;
        ready.is_some_and(|(status, _)| status == 200).then_some(())
    })
    .await;
    for i in 0..LATER {
        publish_numbered(&pool, BACKLOG + i, 1).await;
    }
    let published = BACKLOG + LATER;
    eventually(
        Duration::from_secs(60),
        "every group forwarded every message",
        || async {
            let (status, _) = http_get(http, "/metrics").await.unwrap_or_default();
            assert!(status == 200 || status == 0, "/metrics answered {status}");
            (entries(&redis, groups).await >= groups * published).then_some(())
        },
    )
    .await;
    let ready = http_get(http, "/readyz").await;
    assert_eq!(ready.as_ref().map(|r| r.0), Some(200), "{ready:?}");
    let log = relay.log();
    assert_eq!(
        relay.terminate(Duration::from_secs(20)).await,
        Some(0),
        "{log}"
    );
    assert_each_group_delivered_exactly_once(&redis, groups, published).await;
    let highest = sampler.highest();
    eprintln!("cap {cap}, wakeup {wakeup}: the relay held at most {highest} connections");
    assert!(
        (1..=i64::from(cap)).contains(&highest),
        "the relay held {highest} connections at once (cap {cap})"
    );
    assert!(!log.contains("relay step failed"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_connection_serves_six_polling_groups_without_deadlock() {
    drains_through_a_pool_of(1, "poll", 6).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_connections_serve_six_notified_groups_and_the_listener_without_deadlock() {
    drains_through_a_pool_of(2, "notify", 6).await;
}

#[test]
fn config_check_shows_the_cap_from_every_layer_and_refuses_one_too_small() {
    use crate::harness::cli::{outbox_relay, run};
    let check = |env: &[(&str, &str)]| {
        let mut command = outbox_relay();
        command.args([
            "--database-url",
            "postgres://postgres@127.0.0.1/app",
            "config",
            "check",
            "--json",
        ]);
        for (name, value) in env {
            command.env(name, value);
        }
        run(&mut command)
    };
    let out = check(&[]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let report: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(report["config"]["postgres"]["max_connections"], 10);

    let out = check(&[("OUTBOX_POSTGRES__MAX_CONNECTIONS", "3")]);
    let report: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(report["config"]["postgres"]["max_connections"], 3);

    let out = check(&[
        ("OUTBOX_POSTGRES__MAX_CONNECTIONS", "1"),
        ("OUTBOX_RELAY__WAKEUP", "notify"),
    ]);
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(
        out.stdout.contains("postgres.max_connections")
            && out.stdout.contains("must be at least 2"),
        "{}",
        out.stdout
    );
}

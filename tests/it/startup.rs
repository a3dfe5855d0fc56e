//! `outbox-relay run` started before its servers: it waits for Postgres and Redis (a WARN per
//! attempt, /readyz 503 saying what it waits for), then delivers; a signal while it waits is a
//! clean stop. What waiting cannot fix ends it at once: a database that does not
//! exist (exit 1), an outbox schema `migrate` has not brought up to date (exit 2; `config check
//! --connect` reports that too).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sqlx::PgPool;

use crate::harness::cli::{outbox_relay, run};
use crate::harness::redis::TestRedis;
use crate::harness::relay::{
    RelayProcess, TempDir, assert_numbered_exactly_once, forward_all, publish_numbered, relay_toml,
};
use crate::harness::servers::{PrivatePostgres, PrivateRedis, free_port};
use crate::harness::{TestDb, eventually, http_get};

/// `/readyz` once it answers with `status`: its body.
async fn readyz(addr: SocketAddr, status: u16, what: &str) -> String {
    eventually(Duration::from_secs(30), what, || async {
        http_get(addr, "/readyz")
            .await
            .filter(|(code, _)| *code == status)
            .map(|(_, body)| body)
    })
    .await
}

/// `/readyz` once its body says `needle` (whatever the status).
async fn readyz_saying(addr: SocketAddr, needle: &str) -> (u16, String) {
    eventually(Duration::from_secs(30), needle, || async {
        http_get(addr, "/readyz")
            .await
            .filter(|(_, body)| body.contains(needle))
    })
    .await
}

async fn log_saying(relay: &RelayProcess, needle: &str) {
    eventually(Duration::from_secs(30), needle, || async {
        relay.log().contains(needle).then_some(())
    })
    .await
}

#[tokio::test]
async fn run_waits_for_postgres_and_redis_that_start_after_it() {
    // A migrated private cluster holding 5 messages, then stopped; a Redis not started yet.
    let postgres = PrivatePostgres::initialized(&[]);
    postgres.start_server();
    let url = postgres.url("postgres");
    let pool = PgPool::connect(&url).await.unwrap();
    outbox_relay::store::migrate(&pool).await.unwrap();
    publish_numbered(&pool, 0, 5).await;
    pool.close().await;
    postgres.stop_server();
    let mut redis = PrivateRedis::reserved();
    let streams = TestRedis::at(&redis.url());

    let dir = TempDir::new("startup-wait");
    let config = dir.write(
        "relay.toml",
        &format!(
            "database_url = \"{url}\"\nredis_url = \"{}\"\n[redis]\nkey_prefix = \"{}\"\n\
             [relay]\nmax_backoff_ms = 300\n{}",
            redis.url(),
            streams.prefix,
            forward_all("g", "all")
        ),
    );
    let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let relay = RelayProcess::start_with(&config, "relay", &[], &["--http", &http.to_string()]);

    // Both refused: a WARN per attempt naming the server (URL without secrets), not ready.
    log_saying(&relay, "waiting for Postgres").await;
    log_saying(&relay, "waiting for Redis").await;
    let (status, body) = readyz_saying(http, "postgres: waiting").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("redis: waiting"), "{body}");
    assert!(
        body.contains(&format!("127.0.0.1:{}", postgres.port)),
        "{body}"
    );
    assert_eq!(http_get(http, "/healthz").await.map(|(c, _)| c), Some(200));

    // Postgres first: still not ready while Redis is down, and nothing exits.
    postgres.start_server();
    let (status, body) = eventually(Duration::from_secs(30), "postgres connected", || async {
        http_get(http, "/readyz")
            .await
            .filter(|(_, body)| !body.contains("postgres"))
    })
    .await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("redis: waiting"), "{body}");
    let mut child = relay;
    assert!(child.child.try_wait().unwrap().is_none(), "{}", child.log());

    // Then Redis: the backlog is delivered once, and the relay is ready.
    redis.start_again();
    eventually(Duration::from_secs(30), "5 entries", || async {
        (streams.stream_len("all").await == 5).then_some(())
    })
    .await;
    assert_numbered_exactly_once(&streams, 5).await;
    readyz(http, 200, "ready").await;
    let log = child.log();
    assert!(!log.contains("panicked"), "{log}");
    child.signal("TERM");
    let code = wait_exit(&mut child, Duration::from_secs(10)).await;
    assert_eq!(code, Some(0), "{}", child.log());
}

#[tokio::test]
async fn a_signal_while_waiting_for_the_servers_is_a_clean_stop() {
    let redis = PrivateRedis::reserved();
    let db = TestDb::new().await;
    let streams = TestRedis::at(&redis.url());
    let dir = TempDir::new("startup-signal");
    let config = dir.write(
        "relay.toml",
        &relay_toml(
            &db,
            &streams,
            "max_backoff_ms = 300",
            &forward_all("g", "all"),
        ),
    );
    let mut relay = RelayProcess::start(&config, "relay");
    log_saying(&relay, "waiting for Redis").await;
    let started = Instant::now();
    relay.signal("TERM");
    let code = wait_exit(&mut relay, Duration::from_secs(5)).await;
    assert_eq!(code, Some(0), "{}", relay.log());
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(
        relay.log().contains("stopped before connecting"),
        "{}",
        relay.log()
    );
}

#[tokio::test]
async fn run_against_an_unmigrated_database_says_to_migrate_first() {
    let db = TestDb::empty().await;
    let redis = TestRedis::new();
    let dir = TempDir::new("startup-unmigrated");
    let config = dir.write(
        "relay.toml",
        &relay_toml(&db, &redis, "", &forward_all("g", "all")),
    );
    let config = config.to_str().unwrap();

    let started = Instant::now();
    let out = run(outbox_relay().args(["--config", config, "run"]));
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(started.elapsed() < Duration::from_secs(15));
    assert!(
        out.stderr
            .contains("has no outbox schema: run `outbox-relay migrate` first"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("does not exist"), "{}", out.stderr);

    let check = run(outbox_relay().args(["--config", config, "config", "check", "--connect"]));
    assert_eq!(check.code, Some(1), "{}", check.stderr);
    let line = |key: &str| {
        let line = check.stdout.lines().find(|l| l.starts_with(key));
        line.map(|l| l.split_once(" = ").unwrap().1.to_owned())
    };
    assert_eq!(
        line("connect.postgres").as_deref(),
        Some("ok"),
        "{}",
        check.stdout
    );
    let schema = line("connect.schema").unwrap_or_default();
    assert!(
        schema.ends_with("has no outbox schema: run `outbox-relay migrate` first"),
        "{schema}"
    );

    // Migrated: the check passes; one migration missing: `run` says how many are there.
    let migrate = run(outbox_relay().args(["--config", config, "migrate"]));
    assert_eq!(migrate.code, Some(0), "{}", migrate.stderr);
    let check =
        run(outbox_relay().args(["--config", config, "config", "check", "--connect", "--json"]));
    assert_eq!(check.code, Some(0), "{}", check.stderr);
    let report: serde_json::Value = serde_json::from_str(&check.stdout).unwrap();
    assert_eq!(report["connect"]["schema"]["ok"], true, "{report}");

    let last: i64 = sqlx::query_scalar(
        "DELETE FROM outbox._sqlx_migrations WHERE version = (SELECT max(version) FROM outbox._sqlx_migrations) RETURNING version",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(last > 0);
    let out = run(outbox_relay().args(["--config", config, "run"]));
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("migrations this outbox-relay needs: run `outbox-relay migrate` first"),
        "{}",
        out.stderr
    );
}

#[tokio::test]
async fn run_ends_at_once_on_what_waiting_cannot_fix() {
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    let dir = TempDir::new("startup-refused");
    // A database that does not exist on a server that answers.
    let mut url = url::Url::parse(&db.url).unwrap();
    url.set_path("/no_such_database_for_outbox_relay");
    let config = dir.write(
        "missing-db.toml",
        &format!(
            "database_url = \"{url}\"\nredis_url = \"{}\"\n{}",
            redis.url,
            forward_all("g", "all")
        ),
    );
    let started = Instant::now();
    let out = run(outbox_relay().args(["--config", config.to_str().unwrap(), "run"]));
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(started.elapsed() < Duration::from_secs(15));
    assert!(
        out.stderr.contains("no_such_database_for_outbox_relay"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
}

/// Waits for the process to exit: its exit code.
async fn wait_exit(relay: &mut RelayProcess, deadline: Duration) -> Option<i32> {
    let until = Instant::now() + deadline;
    loop {
        if let Some(status) = relay.child.try_wait().unwrap() {
            return status.code();
        }
        assert!(
            Instant::now() < until,
            "no exit within {deadline:?}:\n{}",
            relay.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

//! `bench drain` and `bench latency` in miniature: the harness works end to end (scratch
//! database and key prefix created and removed, a real relay process, every entry accounted
//! for). No timing is asserted; the figures come from full-size runs (BENCHMARKS.md).

use redis::AsyncCommands;

use crate::harness::TestDb;
use crate::harness::cli::{Run, outbox_relay, run};
use crate::harness::redis::TestRedis;

fn bench(db: &TestDb, redis: &TestRedis, args: &[&str]) -> Run {
    let out = run(outbox_relay()
        .args([
            "--database-url",
            &db.url,
            "--redis-url",
            &redis.url,
            "bench",
        ])
        .args(args));
    assert_eq!(
        out.code,
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        out.stdout,
        out.stderr
    );
    out
}

/// The scratch database (named in stderr) is gone, and so are the Redis keys of that run.
async fn assert_cleaned_up(db: &TestDb, redis: &TestRedis, out: &Run) {
    let scratch = out
        .stderr
        .split_whitespace()
        .find(|w| w.starts_with("outbox_bench_"))
        .unwrap_or_else(|| panic!("{}", out.stderr))
        .trim_end_matches(',');
    let left: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(scratch)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(!left, "scratch database {scratch} was not dropped");
    let pid = scratch.trim_start_matches("outbox_bench_");
    let keys: Vec<String> = redis
        .connection()
        .await
        .keys(format!("outbox-bench:{pid}:*"))
        .await
        .unwrap();
    assert!(keys.is_empty(), "left in Redis: {keys:?}");
}

fn line<'a>(out: &'a Run, prefix: &str) -> &'a str {
    out.stdout
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line `{prefix}` in:\n{}", out.stdout))
}

#[tokio::test]
async fn bench_drain_forwards_the_whole_backlog_and_cleans_up() {
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    // With --schema every row is validated by the relay; a row it refused would be missing
    // from the stream, which the bench checks.
    for extra in [None, Some("--schema")] {
        let mut args = vec!["drain", "--messages", "3000", "--batch-size", "200"];
        args.extend(extra);
        let out = bench(&db, &redis, &args);
        assert!(line(&out, "relay vs lower ceiling").contains("ratio"));
        assert!(line(&out, "ceiling (a) plain SELECT").contains("msg/s"));
        assert!(line(&out, "ceiling (b) XADD pipes").contains("msg/s"));
        assert!(line(&out, "relay peak RSS").contains("MiB"));
        let validation = if extra.is_some() { "on" } else { "off" };
        assert!(
            out.stderr
                .contains(&format!("schema validation {validation}")),
            "{}",
            out.stderr
        );
        assert_cleaned_up(&db, &redis, &out).await;
    }
}

#[tokio::test]
async fn bench_latency_accounts_for_every_message_with_either_wakeup() {
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    for wakeup in ["poll", "notify"] {
        let out = bench(
            &db,
            &redis,
            &[
                "latency",
                "--rate",
                "200",
                "--seconds",
                "1",
                "--wakeup",
                wakeup,
            ],
        );
        assert!(line(&out, "published 200 messages").contains("msg/s"));
        assert!(line(&out, "commit → entry: p50").contains("p99"));
        assert_cleaned_up(&db, &redis, &out).await;
    }
}

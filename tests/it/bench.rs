//! Every `bench` scenario in miniature: the harness works end to end (scratch database and
//! key prefix created and removed, a real relay process, every entry accounted for) and the
//! `--json` file has every figure. No timing is asserted; the figures come from full-size
//! runs (BENCHMARKS.md).

use redis::AsyncCommands;
use serde_json::Value;

use crate::harness::TestDb;
use crate::harness::cli::{Run, outbox_relay, run};
use crate::harness::redis::TestRedis;

/// `bench <args>` with `env` set for it (and the relay it starts).
fn bench(db: &TestDb, redis: &TestRedis, args: &[&str], env: &[(&str, &str)]) -> Run {
    let out = run(outbox_relay()
        .envs(env.iter().copied())
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

/// `bench <args> --json FILE`, and the file parsed.
fn bench_json(db: &TestDb, redis: &TestRedis, args: &[&str]) -> (Run, Value) {
    bench_json_with_env(db, redis, args, &[])
}

fn bench_json_with_env(
    db: &TestDb,
    redis: &TestRedis,
    args: &[&str],
    env: &[(&str, &str)],
) -> (Run, Value) {
    let file = std::env::temp_dir().join(format!(
        "outbox-bench-test-{}-{}.json",
        std::process::id(),
        uuid::Uuid::now_v7()
    ));
    let mut args = args.to_vec();
    let path = file.to_string_lossy().into_owned();
    args.extend(["--json", &path]);
    let out = bench(db, redis, &args, env);
    let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{path}: {e}"));
    let _ = std::fs::remove_file(&file);
    let json: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    (out, json)
}

/// The shape every scenario's JSON has: parameters, the machine, and lines whose throughputs
/// are positive with `ratio = value / ceiling`; every line is in the printed table too.
fn assert_summary(out: &Run, json: &Value, scenario: &str) {
    assert_eq!(json["scenario"], scenario, "{json}");
    assert!(json["parameters"].is_object(), "{json}");
    assert!(json["machine"]["cores"].as_u64().unwrap() > 0, "{json}");
    assert!(
        json["machine"]["memory_bytes"].as_u64().unwrap() > 0,
        "{json}"
    );
    let lines = json["lines"].as_array().unwrap();
    assert!(!lines.is_empty(), "{json}");
    for line in lines {
        assert_eq!(line["scenario"], scenario, "{line}");
        let what = line["what"].as_str().unwrap();
        assert!(
            out.stdout.lines().any(|l| l.contains(what)),
            "`{what}` not in the table:\n{}",
            out.stdout
        );
        let value = line["value"].as_f64().unwrap();
        assert!(value.is_finite(), "{line}");
        if let Some(ceiling) = line["ceiling"].as_f64() {
            assert_eq!(line["unit"], "msg/s", "{line}");
            assert!(value > 0.0 && ceiling > 0.0, "{line}");
            let ratio = line["ratio"].as_f64().unwrap();
            assert!(
                (ratio - value / ceiling).abs() < 1e-9 * ratio.max(1.0),
                "{line}"
            );
            assert!(line["messages"].as_u64().unwrap() > 0, "{line}");
            assert!(line["seconds"].as_f64().unwrap() > 0.0, "{line}");
        } else {
            assert!(line["ratio"].is_null(), "{line}");
        }
    }
}

/// The line of the JSON whose `what` is `what`.
fn json_line<'a>(json: &'a Value, what: &str) -> &'a Value {
    json["lines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["what"] == what)
        .unwrap_or_else(|| panic!("no line `{what}` in {json}"))
}

/// Whether `tool` is a file in one of PATH's directories.
fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
}

/// The C-tool ceilings: (tool, the report's line, the summary's line).
const C_TOOLS: [(&str, &str, &str); 2] = [
    ("psql", "ceiling (c) psql COPY", "relay vs (c) psql COPY"),
    (
        "redis-benchmark",
        "ceiling (d) redis-bench",
        "relay vs (d) redis-benchmark XADD",
    ),
];

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
        let (out, json) = bench_json(&db, &redis, &args);
        assert_summary(&out, &json, "drain");
        assert_eq!(json["parameters"]["messages"], 3000);
        assert!(json["details"]["relay_peak_rss_bytes"].as_u64().unwrap() > 0);
        // The relay's /metrics answered; the stage counters may not exist (yet).
        assert_eq!(json["details"]["metrics_scraped"], true, "{json}");
        assert!(line(&out, "where the time went").len() > 20);
        assert!(line(&out, "relay vs lower ceiling").contains("ratio"));
        assert!(line(&out, "ceiling (a) plain SELECT").contains("msg/s"));
        assert!(line(&out, "ceiling (b) XADD pipes").contains("msg/s"));
        assert!(line(&out, "relay peak RSS").contains("MiB"));
        // The C tools run where they are installed (they are next to Postgres and Redis here);
        // where one is missing, its ceiling says so.
        for (tool, report, summary) in C_TOOLS {
            let shown = line(&out, report);
            if on_path(tool) {
                assert!(shown.contains("msg/s"), "{shown}");
                assert!(json_line(&json, summary)["ceiling"].as_f64().unwrap() > 0.0);
            } else {
                assert!(shown.contains(&format!("skipped: `{tool}` is not on PATH")));
            }
        }
        if C_TOOLS.iter().all(|(tool, _, _)| on_path(tool)) {
            assert!(line(&out, "relay vs lower C-tool").contains("ratio"));
            let lower = json_line(&json, "relay vs lower C-tool ceiling")["ceiling"].as_f64();
            let copy = json_line(&json, C_TOOLS[0].2)["ceiling"].as_f64().unwrap();
            let xadd = json_line(&json, C_TOOLS[1].2)["ceiling"].as_f64().unwrap();
            assert_eq!(lower, Some(copy.min(xadd)), "{json}");
        }
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
async fn bench_drain_skips_a_c_tool_ceiling_it_cannot_run_and_goes_on() {
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    // No psql and no redis-benchmark on this PATH (the relay is started by its full path).
    let (out, json) = bench_json_with_env(
        &db,
        &redis,
        &["drain", "--messages", "500"],
        &[("PATH", "/nonexistent")],
    );
    assert_summary(&out, &json, "drain");
    for (tool, report, summary) in C_TOOLS {
        let shown = line(&out, report);
        assert!(
            shown.contains(&format!("skipped: `{tool}` is not on PATH")),
            "{shown}"
        );
        let lines = json["lines"].as_array().unwrap();
        assert!(!lines.iter().any(|l| l["what"] == summary), "{json}");
    }
    let details = &json["details"]["c_tools"];
    assert_eq!(details["psql_copy"]["skipped"], "`psql` is not on PATH");
    assert_eq!(
        details["redis_benchmark_xadd"]["skipped"],
        "`redis-benchmark` is not on PATH"
    );
    assert!(line(&out, "relay vs lower C-tool").contains("unavailable"));
    assert!(line(&out, "relay vs lower ceiling").contains("ratio"));
    assert_cleaned_up(&db, &redis, &out).await;
}

#[tokio::test]
async fn bench_latency_accounts_for_every_message_with_either_wakeup() {
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    // poll without warm-up: exactly the 200 messages published are measured; notify with half
    // a second of warm-up first: those committed after it, all delivered — about 200, up to
    // all 300 when a loaded machine (the suite in parallel) makes the warm-up's commits late.
    for (wakeup, warmup, shown) in [("poll", "0", "0.0"), ("notify", "0.5", "0.5")] {
        let (out, json) = bench_json(
            &db,
            &redis,
            &[
                "latency",
                "--rate",
                "200",
                "--seconds",
                "1",
                "--warmup-seconds",
                warmup,
                "--wakeup",
                wakeup,
                "--idle-seconds",
                "1",
            ],
        );
        let published = json["details"]["published"].as_u64().unwrap();
        if warmup == "0" {
            assert_eq!(published, 200);
        } else {
            assert!((180..=300).contains(&published), "{published}");
        }
        let summary = line(&out, &format!("published {published} messages"));
        assert!(
            summary.contains(&format!("after {shown} s of warm-up")),
            "{summary}"
        );
        assert!(line(&out, "commit → entry: p50").contains("p99"));
        assert_summary(&out, &json, "latency");
        let idle = &json["details"]["idle"];
        assert!(idle["backends"].as_u64().unwrap() > 0, "{json}");
        assert!(idle["transactions_per_second"].as_f64().unwrap() >= 0.0);
        assert!(idle["backend_cpu_per_second"].as_f64().unwrap() >= 0.0);
        json_line(&json, "idle: Postgres transactions/s");
        assert_cleaned_up(&db, &redis, &out).await;
    }
}

#[tokio::test]
async fn bench_publish_reports_library_and_ceiling_as_json() {
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    let (out, json) = bench_json(
        &db,
        &redis,
        &[
            "publish",
            "--messages",
            "50",
            "--batches",
            "5",
            "--batch-size",
            "10",
            "--rounds",
            "1",
        ],
    );
    assert_summary(&out, &json, "publish");
    assert_eq!(json["lines"].as_array().unwrap().len(), 2);
    assert_cleaned_up(&db, &redis, &out).await;
}

#[tokio::test]
async fn bench_fanout_counts_the_rows_each_group_count_reads() {
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    let (out, json) = bench_json(
        &db,
        &redis,
        &["fanout", "--messages", "200", "--groups", "1,3"],
    );
    assert_summary(&out, &json, "fanout");
    let runs = json["details"]["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2, "{json}");
    for run in runs {
        let groups = run["groups"].as_u64().unwrap();
        assert_eq!(run["deliveries"].as_u64().unwrap(), 200 * groups, "{run}");
        // Every message is read at least once by some group.
        assert!(run["rows_read"].as_i64().unwrap() >= 200, "{run}");
        let per_message = run["rows_per_message"].as_f64().unwrap();
        let per_delivery = run["rows_per_delivery"].as_f64().unwrap();
        assert!(
            (per_message / groups as f64 - per_delivery).abs() < 1e-9,
            "{run}"
        );
    }
    assert!(json["details"]["growth"].is_string(), "{json}");
    assert!(line(&out, "read cost").len() > 10);
    assert_cleaned_up(&db, &redis, &out).await;
}

#[tokio::test]
async fn bench_retry_retries_exactly_the_marked_messages_once() {
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    let (out, json) = bench_json(
        &db,
        &redis,
        &[
            "retry",
            "--messages",
            "200",
            "--fail-every",
            "10",
            "--backoff-ms",
            "10",
        ],
    );
    assert_summary(&out, &json, "retry");
    let details = &json["details"];
    assert_eq!(details["retried"], 20, "{json}");
    assert_eq!(details["requests"], 220, "{json}");
    // At least a row written and removed per retried message.
    assert!(
        details["delivery_rows_written"].as_i64().unwrap() >= 40,
        "{json}"
    );
    assert_cleaned_up(&db, &redis, &out).await;
}

#[tokio::test]
async fn bench_handler_calls_every_message_once_within_max_in_flight() {
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    // The group default (256) with 50 keys, then --max-in-flight 4: the endpoint and the Rust
    // handler never see more calls at once than that.
    for (extra, max_in_flight) in [(None, 256_u64), (Some("4"), 4)] {
        let mut args = vec![
            "handler",
            "--messages",
            "300",
            "--keys",
            "50",
            "--latency-ms",
            "5",
        ];
        if let Some(n) = extra {
            args.extend(["--max-in-flight", n]);
        }
        let (out, json) = bench_json(&db, &redis, &args);
        assert_summary(&out, &json, "handler");
        let parameters = &json["parameters"];
        assert_eq!(parameters["messages"], 300, "{json}");
        assert_eq!(parameters["keys"], 50, "{json}");
        let details = &json["details"];
        assert_eq!(details["max_in_flight"], max_in_flight, "{json}");
        // min(keys 50, max_in_flight) calls of 5 ms at once.
        let concurrency = 50.min(max_in_flight);
        assert_eq!(details["ideal_concurrency"], concurrency, "{json}");
        let ideal = details["ideal_per_second"].as_f64().unwrap();
        assert!((ideal - concurrency as f64 * 200.0).abs() < 1e-6, "{json}");
        for (phase, what) in [
            ("http", "http route vs ideal"),
            ("rust", "custom Rust handler vs ideal"),
        ] {
            let run = &details[phase];
            assert_eq!(run["messages"], 300, "{json}");
            assert_eq!(run["calls"], 300, "every message called once: {json}");
            let peak = run["peak_in_flight"].as_u64().unwrap();
            assert!(
                (1..=concurrency).contains(&peak),
                "{phase}: peak {peak}: {json}"
            );
            let first_call = run["first_call_seconds"].as_f64().unwrap();
            assert!(first_call > 0.0, "{json}");
            let steady = run["per_second_from_first_call"].as_f64().unwrap();
            assert!(steady >= run["per_second"].as_f64().unwrap(), "{json}");
            // The relay process's memory (the in-process relay shares the bench's).
            let rss = run["relay_peak_rss_bytes"].as_u64();
            assert_eq!(rss.is_some(), phase == "http", "{json}");
            let figures = json_line(&json, what);
            assert_eq!(figures["ceiling"].as_f64().unwrap(), ideal, "{json}");
            assert_eq!(figures["ratio"], run["ratio"], "{json}");
            let printed = line(&out, &format!("{phase}: "));
            assert!(
                printed.contains(&format!(
                    "(min(keys 50, max_in_flight {max_in_flight}) / 5 ms), ratio "
                )),
                "{printed}"
            );
            assert!(
                printed.contains(&format!("peak {peak} calls at once")),
                "{printed}"
            );
            assert!(printed.contains("300 calls for 300 messages"), "{printed}");
            assert!(
                printed.contains(&format!("first call after {first_call:.3} s, from it ")),
                "{printed}"
            );
        }
        assert_cleaned_up(&db, &redis, &out).await;
    }
}

#[tokio::test]
async fn bench_scale_runs_one_partitioned_group_on_several_relays() {
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    let (out, json) = bench_json(
        &db,
        &redis,
        &[
            "scale",
            "--messages",
            "400",
            "--partitions",
            "4",
            "--relays",
            "2,1",
            "--keys",
            "40",
            "--latency-ms",
            "2",
            "--max-in-flight",
            "3",
        ],
    );
    assert_summary(&out, &json, "scale");
    let details = &json["details"];
    // 40 keys, 4 partitions × 3 calls: at most 12 at once.
    assert_eq!(details["webhook_concurrency"], 12, "{json}");
    let runs = details["runs"].as_array().unwrap();
    let shape: Vec<(String, u64)> = runs
        .iter()
        .map(|r| {
            (
                r["handler"].as_str().unwrap().to_owned(),
                r["relays"].as_u64().unwrap(),
            )
        })
        .collect();
    let expected = [
        ("forward", 1),
        ("forward", 2),
        ("webhook", 1),
        ("webhook", 2),
    ];
    assert_eq!(
        shape,
        expected.map(|(h, r)| (h.to_owned(), r)).to_vec(),
        "{json}"
    );
    for run in runs {
        let relays = run["relays"].as_u64().unwrap();
        assert_eq!(run["deliveries"], 400, "{run}");
        // Every message is read at least once; each relay reads the shared tail.
        assert!(run["rows_read"].as_i64().unwrap() >= 400, "{run}");
        let holding = run["relays_holding_partitions"].as_u64().unwrap();
        assert!((1..=relays).contains(&holding), "{run}");
        assert!(run["relay_cpu_seconds"].as_f64().unwrap() > 0.0, "{run}");
        if run["handler"] == "webhook" {
            assert_eq!(
                run["webhook_calls"], 400,
                "every message called once: {run}"
            );
            let peak = run["peak_in_flight"].as_u64().unwrap();
            assert!((1..=12).contains(&peak), "{run}");
        } else {
            assert!(run["webhook_calls"].is_null(), "{run}");
        }
    }
    // The fewest relays are the base of linear scaling.
    let base = json_line(&json, "forward, 1 relay(s): deliveries vs linear");
    assert!(
        (base["ratio"].as_f64().unwrap() - 1.0).abs() < 1e-6,
        "{base}"
    );
    assert!(line(&out, "webhook latency bound").contains("12 calls at once"));
    assert_cleaned_up(&db, &redis, &out).await;

    // One partition is an unpartitioned group (its row is the group's own): one relay holds
    // it, the other stands by.
    let (out, json) = bench_json(
        &db,
        &redis,
        &[
            "scale",
            "--messages",
            "200",
            "--partitions",
            "1",
            "--relays",
            "2",
            "--handlers",
            "forward",
        ],
    );
    assert_summary(&out, &json, "scale");
    let run = &json["details"]["runs"][0];
    assert_eq!(run["deliveries"], 200, "{json}");
    assert_eq!(run["relays_holding_partitions"], 1, "{json}");
    assert_cleaned_up(&db, &redis, &out).await;
}

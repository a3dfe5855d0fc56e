//! The `outbox-relay` binary: migrate, publish, configuration layers, exit codes, secrets.

use serde_json::{Value, json};
use sqlx::Row;

use crate::harness::cli::{outbox_relay, run};
use crate::harness::{TestDb, database_url};

/// The test database's URL with a password added (trust auth ignores it), to prove it never
/// shows up in output.
fn with_password(url: &str, password: &str) -> String {
    let mut url = url::Url::parse(url).unwrap();
    url.set_password(Some(password)).unwrap();
    url.to_string()
}

#[tokio::test]
async fn migrate_creates_the_objects_then_is_a_noop() {
    let db = TestDb::empty().await;
    let first = run(outbox_relay().args(["migrate", "--database-url", &db.url]));
    assert_eq!(first.code, Some(0), "{}", first.stderr);
    assert!(
        first.stdout.contains("applied 0001 messages"),
        "{}",
        first.stdout
    );
    assert!(first.stdout.contains("12 applied"), "{}", first.stdout);
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('outbox.messages') IS NOT NULL")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(exists);

    let second = run(outbox_relay().args(["migrate", "--database-url", &db.url]));
    assert_eq!(second.code, Some(0), "{}", second.stderr);
    assert_eq!(
        second.stdout.trim(),
        "outbox schema is up to date (12 migrations)"
    );
}

#[test]
fn unreachable_database_exits_1_with_one_line_that_hides_the_password() {
    let password = "Sup3r-s3cret-pw";
    let unreachable = [
        format!("postgres://postgres:{password}@127.0.0.1:1/somedb"),
        with_password(&database_url("outbox_no_such_database"), password),
        format!("postgres://no_such_role:{password}@127.0.0.1:5432/postgres"),
    ];
    for url in unreachable {
        let out = run(outbox_relay().args(["migrate", "--database-url", &url]));
        assert_eq!(out.code, Some(1), "{url}: {}", out.stderr);
        assert_eq!(
            out.stderr.trim_end().lines().count(),
            1,
            "one line: {}",
            out.stderr
        );
        assert!(
            out.stderr
                .starts_with("error: could not connect to Postgres"),
            "{}",
            out.stderr
        );
        assert!(out.stderr.contains("REDACTED"), "{}", out.stderr);
        assert!(
            !out.stderr.contains(password) && !out.stdout.contains(password),
            "{}",
            out.stderr
        );
    }
}

#[test]
fn malformed_or_missing_url_is_a_configuration_error_exit_2() {
    let out = run(outbox_relay().args([
        "migrate",
        "--database-url",
        "postgres://u:Sup3r-s3cret@h:port/db",
    ]));
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("database_url"), "{}", out.stderr);
    assert!(!out.stderr.contains("Sup3r-s3cret"), "{}", out.stderr);

    let out = run(outbox_relay().args(["migrate"]));
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("--database-url"), "{}", out.stderr);

    let out = run(outbox_relay().args(["publish", "--no-such-flag"]));
    assert_eq!(
        out.code,
        Some(2),
        "clap usage errors exit 2: {}",
        out.stderr
    );
}

#[tokio::test]
async fn publish_writes_the_message_and_prints_its_id() {
    let db = TestDb::new().await;
    let out = run(outbox_relay().args([
        "publish",
        "--database-url",
        &db.url,
        "--topic",
        "orders.created",
        "--key",
        "order-42",
        "--header",
        "correlation_id=c-7",
        "--header",
        "note=a=b",
        r#"{"order_id": 42}"#,
    ]));
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let id: uuid::Uuid = out.stdout.trim().parse().expect("stdout is the id");

    let row = sqlx::query(
        "SELECT m.topic, m.key, m.payload, m.headers FROM outbox.messages m WHERE m.id = $1",
    )
    .bind(id)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(row.get::<String, _>("topic"), "orders.created");
    assert_eq!(
        row.get::<Option<String>, _>("key").as_deref(),
        Some("order-42")
    );
    assert_eq!(row.get::<Value, _>("payload"), json!({"order_id": 42}));
    assert_eq!(
        row.get::<Value, _>("headers"),
        json!({"correlation_id": "c-7", "note": "a=b"})
    );

    let out = run(outbox_relay().args([
        "publish",
        "--database-url",
        &db.url,
        "--topic",
        "t",
        "--json",
        "[1]",
    ]));
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let printed: Value = serde_json::from_str(&out.stdout).expect("--json prints JSON");
    let position: String = sqlx::query_scalar(
        "SELECT m.tx_id::text || ':' || m.seq FROM outbox.messages m WHERE m.id = $1::text::uuid",
    )
    .bind(printed["id"].as_str().unwrap())
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(printed["position"], json!(position));
    assert_eq!(printed["topic"], json!("t"));
}

#[tokio::test]
async fn publish_refuses_bad_input_with_exit_1_and_writes_nothing() {
    let db = TestDb::new().await;
    let cases: [&[&str]; 5] = [
        &["--topic", "bad topic", "{}"],
        &["--topic", "t", "42"],
        &["--topic", "t", "{not json"],
        &["--topic", "", "{}"],
        &["--topic", "t", "--key", "", "{}"],
    ];
    for args in cases {
        let out = run(outbox_relay()
            .args(["publish", "--database-url", &db.url])
            .args(args));
        assert_eq!(out.code, Some(1), "{args:?}: {}", out.stderr);
        assert!(out.stderr.starts_with("error: "), "{}", out.stderr);
    }
    let out = run(outbox_relay().args([
        "publish",
        "--database-url",
        &db.url,
        "--topic",
        "t",
        "--header",
        "novalue",
        "{}",
    ]));
    assert_eq!(
        out.code,
        Some(2),
        "a malformed --header is a usage error: {}",
        out.stderr
    );

    // The size limit comes from configuration.
    let out = run(outbox_relay()
        .args([
            "publish",
            "--database-url",
            &db.url,
            "--topic",
            "t",
            r#"{"p": "xxxxxxxxxxxxxxxxxxxx"}"#,
        ])
        .env("OUTBOX_PUBLISH__MAX_PAYLOAD_BYTES", "16"));
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains("the limit is 16 bytes"),
        "{}",
        out.stderr
    );
    assert_eq!(db.message_count().await, 0);
}

#[tokio::test]
async fn flags_beat_environment_beat_the_config_file() {
    let db = TestDb::new().await;
    let wrong = database_url("outbox_no_such_database");
    let dir = std::env::temp_dir().join(format!("outbox-cli-{}-{}", std::process::id(), db.name));
    std::fs::create_dir_all(&dir).unwrap();
    let right_file = dir.join("right.toml");
    let wrong_file = dir.join("wrong.toml");
    std::fs::write(&right_file, format!("database_url = \"{}\"\n", db.url)).unwrap();
    std::fs::write(&wrong_file, format!("database_url = \"{wrong}\"\n")).unwrap();
    let publish = |config: &std::path::Path| {
        let mut command = outbox_relay();
        command.args([
            "--config",
            config.to_str().unwrap(),
            "publish",
            "--topic",
            "t",
            "{}",
        ]);
        command
    };

    // The file alone, given by flag and by OUTBOX_CONFIG.
    assert_eq!(run(&mut publish(&right_file)).code, Some(0));
    let out = run(outbox_relay()
        .env("OUTBOX_CONFIG", &right_file)
        .args(["publish", "--topic", "t", "{}"]));
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    // DATABASE_URL beats the file, OUTBOX_DATABASE_URL beats DATABASE_URL.
    assert_eq!(
        run(publish(&right_file).env("DATABASE_URL", &wrong)).code,
        Some(1)
    );
    assert_eq!(
        run(publish(&wrong_file).env("DATABASE_URL", &db.url)).code,
        Some(0)
    );
    assert_eq!(
        run(publish(&wrong_file)
            .env("DATABASE_URL", &wrong)
            .env("OUTBOX_DATABASE_URL", &db.url))
        .code,
        Some(0)
    );
    // The flag beats them all.
    let out = run(publish(&wrong_file)
        .env("DATABASE_URL", &wrong)
        .env("OUTBOX_DATABASE_URL", &wrong)
        .args(["--database-url", &db.url]));
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(db.message_count().await, 5);

    // Unknown keys name themselves; a missing file is a configuration error.
    let typo = dir.join("typo.toml");
    std::fs::write(
        &typo,
        format!("database_url = \"{}\"\nbatch_sise = 5\n", db.url),
    )
    .unwrap();
    let out = run(&mut publish(&typo));
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("batch_sise"), "{}", out.stderr);
    let out = run(&mut publish(&dir.join("missing.toml")));
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn bench_publish_runs_in_a_scratch_database_and_drops_it() {
    let db = TestDb::new().await;
    let out = run(outbox_relay().args([
        "bench",
        "publish",
        "--database-url",
        &db.url,
        "--messages",
        "40",
        "--concurrency",
        "2",
        "--batches",
        "4",
        "--batch-size",
        "10",
        "--rounds",
        "1",
        "--notify-trigger",
    ]));
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        out.stdout.contains("with the NOTIFY trigger"),
        "{}",
        out.stdout
    );
    for line in ["publish_in_tx", "publish_batch_in_tx"] {
        let found = out
            .stdout
            .lines()
            .find(|l| l.starts_with(line))
            .unwrap_or_else(|| panic!("{}", out.stdout));
        assert!(
            found.contains("ceiling") && found.contains("ratio"),
            "{found}"
        );
    }
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
    assert_eq!(
        db.message_count().await,
        0,
        "the bench never writes into the configured database"
    );
}

#[test]
fn each_commands_help_lists_the_global_flags_apart_from_its_own() {
    for command in [
        &["stuck"][..],
        &["dead", "list"],
        &["groups", "reset"],
        &["run"],
    ] {
        let out = run(outbox_relay().args(command).arg("--help"));
        assert_eq!(out.code, Some(0), "{}", out.stderr);
        let (before, global) = out
            .stdout
            .split_once("Global options:")
            .unwrap_or_else(|| panic!("{command:?}: no Global options heading:\n{}", out.stdout));
        // The command's own options (its description above may show a flag in an example).
        let own = before.split_once("Options:").map_or(before, |(_, own)| own);
        for flag in ["--config", "--database-url", "--redis-url", "--log-format"] {
            assert!(
                !own.contains(flag),
                "{command:?}: {flag} among its own options"
            );
            assert!(global.contains(flag), "{command:?}: {flag} missing");
        }
    }
}

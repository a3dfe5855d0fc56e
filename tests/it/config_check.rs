//! `outbox-relay config check`: the effective configuration of every layer (file < env <
//! flags) with secrets redacted, every problem named with exit 2, `--connect` with exit 1.

use serde_json::Value;

use crate::harness::TestDb;
use crate::harness::cli::{outbox_relay, run};
use crate::harness::redis::redis_url;
use crate::harness::relay::TempDir;

const CONFIG: &str = r#"
database_url = "postgres://app:Db-s3cret@db.example:5432/app?sslmode=require"
redis_url = "redis://:Rd-s3cret@file-redis:6379"
[relay]
batch_size = 100
[[groups]]
name = "notifications"
[[groups.routes]]
topics = ["orders.*"]
handler = "forward"
stream = "events.{topic}"
[[groups.routes]]
topics = ["payments.*"]
handler = "http"
url = "https://hooks:Url-s3cret@hooks.example/payments"
headers = { Authorization = "Bearer Tk-s3cret", x-tenant = "acme" }
max_attempts = 4
[[groups.routes]]
topics = ["audit.*"]
handler = "exec"
command = ["sh", "-c", "exit 0 # --token=Cmd-s3cret"]
"#;

const SECRETS: [&str; 5] = [
    "Db-s3cret",
    "Rd-s3cret",
    "Url-s3cret",
    "Tk-s3cret",
    "Cmd-s3cret",
];

#[test]
fn prints_the_effective_config_of_every_layer_with_secrets_redacted() {
    let dir = TempDir::new("config-check");
    let file = dir.write("outbox-relay.toml", CONFIG);
    let mut command = outbox_relay();
    command
        .env("OUTBOX_RELAY__BATCH_SIZE", "7")
        .args(["--config", file.to_str().unwrap()])
        .args(["--redis-url", "rediss://:Rd-s3cret@flag-redis:6380"])
        .args(["config", "check"]);
    let text = run(&mut command);
    assert_eq!(text.code, Some(0), "{}", text.stderr);
    assert!(
        text.stdout.starts_with("configuration is valid\n"),
        "{}",
        text.stdout
    );
    for line in [
        "database_url",
        "= \"postgres://app:REDACTED@db.example:5432/app?sslmode=require\"",
        "relay.batch_size",
        "= 7",
        "groups[0].routes[1].headers.Authorization",
        "= \"REDACTED\"",
        "groups[0].routes[1].headers.x-tenant",
        "groups[0].routes[2].command",
        "\"REDACTED\",\"REDACTED\"]",
        "relay.idle_poll_ms",
        "relay.shutdown_grace_ms",
        "= 5000",
    ] {
        assert!(text.stdout.contains(line), "{line}: {}", text.stdout);
    }

    let json = run(command.arg("--json"));
    assert_eq!(json.code, Some(0), "{}", json.stderr);
    let report: Value = serde_json::from_str(&json.stdout).unwrap();
    let config = &report["config"];
    assert_eq!(report["valid"], true);
    assert_eq!(config["relay"]["batch_size"], 7, "env beats the file");
    assert_eq!(
        config["redis_url"], "rediss://:REDACTED@flag-redis:6380",
        "flags beat all"
    );
    assert_eq!(config["relay"]["idle_poll_ms"], 5, "defaults filled in");
    let http = &config["groups"][0]["routes"][1];
    assert_eq!(http["url"], "https://hooks:REDACTED@hooks.example/payments");
    assert_eq!(http["headers"]["Authorization"], "REDACTED");
    assert_eq!(
        http["headers"]["x-tenant"], "REDACTED",
        "every header value of an http route is redacted"
    );
    assert_eq!(http["max_attempts"], 4);
    let exec = &config["groups"][0]["routes"][2];
    let program = exec["command"][0].as_str().unwrap();
    assert!(
        program.starts_with('/') && program.ends_with("/sh"),
        "the program found on PATH: {exec}"
    );
    assert_eq!(
        exec["command"],
        serde_json::json!([program, "REDACTED", "REDACTED"]),
        "the program shown, no argument"
    );
    for secret in SECRETS {
        for out in [&text, &json] {
            assert!(!out.stdout.contains(secret) && !out.stderr.contains(secret));
        }
    }
}

#[test]
fn names_every_problem_and_exits_2() {
    let dir = TempDir::new("config-check-invalid");
    let file = dir.write(
        "outbox-relay.toml",
        &format!(
            "{}\n[redis]\ntls_client_cert_file = \"/nonexistent/client.pem\"\n",
            CONFIG.replace("batch_size = 100", "batch_size = 0")
        ),
    );
    let mut command = outbox_relay();
    command
        .env("OUTBOX_REDIS__TLS_CA_FILE", "/nonexistent/ca.pem")
        .args(["--config", file.to_str().unwrap(), "config", "check"]);
    let out = run(&mut command);
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    for key in [
        "relay.batch_size",
        "redis.tls_ca_file",
        "redis.tls_client_key_file",
        "redis_url",
    ] {
        assert!(out.stderr.contains(key), "{key}: {}", out.stderr);
    }
    assert!(out.stderr.contains("/nonexistent/ca.pem"), "{}", out.stderr);

    let json = run(command.arg("--json"));
    assert_eq!(json.code, Some(2), "{}", json.stderr);
    let report: Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(report["valid"], false);
    let keys: Vec<&str> = report["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"].as_str().unwrap())
        .collect();
    assert_eq!(
        keys,
        [
            "redis.tls_ca_file",
            "redis.tls_client_key_file",
            "redis_url",
            "relay.batch_size",
        ]
    );
    for secret in SECRETS {
        assert!(!json.stdout.contains(secret) && !json.stderr.contains(secret));
        assert!(!out.stdout.contains(secret) && !out.stderr.contains(secret));
    }

    let unknown = dir.write(
        "unknown.toml",
        "database_url = \"postgres://h/db\"\n[redis]\ntls_ca = \"x\"\n",
    );
    let out = run(outbox_relay().args(["--config", unknown.to_str().unwrap(), "config", "check"]));
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("redis.tls_ca"), "{}", out.stderr);
}

#[tokio::test]
async fn connect_says_whether_postgres_and_redis_answer() {
    let db = TestDb::new().await;
    let out = run(outbox_relay().args([
        "--database-url",
        &db.url,
        "--redis-url",
        &redis_url(),
        "config",
        "check",
        "--connect",
    ]));
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(out.stdout.contains("connect.postgres"), "{}", out.stdout);
    assert!(out.stdout.contains("connect.redis"), "{}", out.stdout);
    assert!(out.stdout.contains("connect.schema"), "{}", out.stdout);
    assert!(!out.stdout.contains("unreachable"), "{}", out.stdout);

    let out = run(outbox_relay().args([
        "--database-url",
        "postgres://postgres:Db-s3cret@127.0.0.1:1/app",
        "config",
        "check",
        "--connect",
        "--json",
    ]));
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    let report: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(report["connect"]["postgres"]["ok"], false);
    assert!(
        out.stderr.contains("could not connect to postgres"),
        "{}",
        out.stderr
    );
    assert!(!out.stdout.contains("Db-s3cret") && !out.stderr.contains("Db-s3cret"));
}

#[test]
fn unknown_keys_bad_values_and_globs_come_in_one_report_and_a_syntax_error_keeps_its_diagram() {
    let dir = TempDir::new("config-check-all-at-once");
    let file = dir.write(
        "outbox-relay.toml",
        "database_url = \"postgres://h/app\"\n[relay]\nbatch_siz = 5\n[[groups]]\nname = \"g\"\n\
         [[groups.routes]]\ntopics = [\"orders.*\", \"payments.[x\"]\nhandler = \"fowrard\"\n\
         straem = \"events.{topic}\"\n",
    );
    let out = run(outbox_relay().args(["--config", file.to_str().unwrap(), "config", "check"]));
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(
        lines[0], "error: invalid configuration (4 problems):",
        "{}",
        out.stderr
    );
    for expected in [
        "  groups[0].routes[0].straem: unknown key (from ",
        "  relay.batch_siz: unknown key (from ",
        "  groups[0].routes[0].topics[1]: not a valid glob: ",
        "  groups[0].routes[0].handler: unknown handler `fowrard`; did you mean `forward`?",
    ] {
        assert!(
            lines.iter().any(|line| line.starts_with(expected)),
            "{expected}\n{}",
            out.stderr
        );
    }
    assert!(
        out.stderr.contains("did you mean `stream`?"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("did you mean `batch_size`?"),
        "{}",
        out.stderr
    );

    let broken = dir.write(
        "broken.toml",
        "database_url = \"postgres://h/app\"\n[relay]\nbatch_size = \n",
    );
    let out = run(outbox_relay().args(["--config", broken.to_str().unwrap(), "status"]));
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    let lines: Vec<&str> = out.stderr.lines().collect();
    let code = lines
        .iter()
        .position(|line| line.contains("3 | batch_size ="));
    let caret = lines.iter().position(|line| line.trim_end().ends_with('^'));
    assert!(
        matches!((code, caret), (Some(c), Some(k)) if k == c + 1),
        "the caret on the line under the code:\n{}",
        out.stderr
    );
}

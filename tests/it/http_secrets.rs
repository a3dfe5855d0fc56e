//! Secrets of `http` routes — the URL's query values (`?token=…`) and the header values — reach
//! the webhook and nothing else: not `config check`, the relay's log (text and JSON, every
//! crate at debug), `outbox.deliveries.last_error`, `stuck`, `dead list` or the dead-letter
//! stream, whatever the failure (a 500, a refused connection, a timeout).

use std::net::SocketAddr;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};

use crate::harness::cli::{outbox_relay, run};
use crate::harness::redis::TestRedis;
use crate::harness::relay::{
    TempDir, keyed_message, publish_messages, relay_toml, wait_for_lease_owner,
};
use crate::harness::{TestDb, eventually};

/// Both secrets start with this, so one search finds either.
const SECRET: &str = "s3cret";

/// A webhook recording each request's query and `Authorization` header: `/fail` answers 500,
/// `/slow` answers after 5 s (past the route's timeout).
#[derive(Clone, Default)]
struct Hook {
    seen: Arc<Mutex<Vec<Seen>>>,
}

/// What one request carried: its query and its `Authorization` header.
type Seen = (Option<String>, Option<String>);

impl Hook {
    async fn start(&self) -> SocketAddr {
        let app = axum::Router::new()
            .route("/fail", axum::routing::post(fail))
            .route("/slow", axum::routing::post(slow))
            .with_state(self.clone());
        crate::harness::serve_http(app).await
    }

    fn record(&self, query: Option<String>, headers: &HeaderMap) {
        let authorization = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        self.seen.lock().unwrap().push((query, authorization));
    }
}

async fn fail(
    State(hook): State<Hook>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> StatusCode {
    hook.record(query, &headers);
    StatusCode::INTERNAL_SERVER_ERROR
}

async fn slow(
    State(hook): State<Hook>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> StatusCode {
    hook.record(query, &headers);
    tokio::time::sleep(Duration::from_secs(5)).await;
    StatusCode::OK
}

/// A local port nothing listens on.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Group `g`: topic `fail.500` to `/fail`, `fail.refused` to a closed port, `fail.timeout` to
/// `/slow` with a 300 ms timeout; each URL with `?token=s3cret&x=1` and the header
/// `Authorization: Bearer s3cret2`; two attempts, then dead, with a copy on stream `dead`.
fn secret_routes(hook: SocketAddr) -> String {
    let route = |topic: &str, url: String, timeout_ms: u64| {
        format!(
            "[[groups.routes]]\ntopics = [\"{topic}\"]\nhandler = \"http\"\n\
             url = \"{url}?token={SECRET}&x=1\"\n\
             headers = {{ Authorization = \"Bearer {SECRET}2\" }}\n\
             timeout_ms = {timeout_ms}\nmax_attempts = 2\nbackoff_initial_ms = 50\n"
        )
    };
    format!(
        "[[groups]]\nname = \"g\"\ndead_letter_stream = \"dead\"\n{}{}{}",
        route("fail.500", format!("http://{hook}/fail"), 5000),
        route(
            "fail.refused",
            format!("http://127.0.0.1:{}/hook", closed_port()),
            5000
        ),
        route("fail.timeout", format!("http://{hook}/slow"), 300),
    )
}

/// Kills the relay when the test ends, passed or not.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs the three failing routes to their dead letters with the relay logging every crate at
/// debug in `log_format`; then checks every output for the secrets.
async fn secrets_stay_in_the_requests(log_format: &str) {
    let (db, redis) = (TestDb::new().await, TestRedis::new());
    let hook = Hook::default();
    let addr = hook.start().await;
    let dir = TempDir::new(&format!("http-secrets-{log_format}"));
    let config = dir.write(
        "relay.toml",
        &relay_toml(&db, &redis, "idle_poll_ms = 5", &secret_routes(addr)),
    );
    let with_config = || {
        let mut command = outbox_relay();
        command.args(["--config", config.to_str().unwrap()]);
        command
    };
    let mut outputs: Vec<(String, String)> = Vec::new();

    for args in [&["config", "check"][..], &["config", "check", "--json"]] {
        let out = run(with_config().args(args));
        assert_eq!(out.code, Some(0), "{}", out.stderr);
        outputs.push((args.join(" "), format!("{}{}", out.stdout, out.stderr)));
    }

    let log = dir.0.join("run.log");
    let relay = Running(
        with_config()
            .env("RUST_LOG", "debug")
            .args(["--log-format", log_format, "run"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_for_lease_owner(&db).await;
    let messages = ["fail.500", "fail.refused", "fail.timeout"]
        .iter()
        .map(|topic| keyed_message(topic, &serde_json::json!({"n": 0})))
        .collect();
    publish_messages(&db.pool, messages, false).await;
    let errors: Vec<(String, String)> =
        eventually(Duration::from_secs(30), "three dead letters", || async {
            let rows: Vec<(String, String)> = sqlx::query_as(
                "SELECT m.topic, d.last_error FROM outbox.deliveries d
                   JOIN outbox.messages m ON m.id = d.message_id
                  WHERE d.status = 'dead' ORDER BY m.topic",
            )
            .fetch_all(&db.pool)
            .await
            .unwrap();
            (rows.len() == 3).then_some(rows)
        })
        .await;
    for (topic, error) in &errors {
        outputs.push((format!("last_error of {topic}"), error.clone()));
    }
    // The dead-letter stream's copies, every field.
    let dead = eventually(
        Duration::from_secs(10),
        "three dead-letter entries",
        || async {
            let entries = redis.entries("dead").await;
            (entries.len() == 3).then_some(entries)
        },
    )
    .await;
    for entry in dead {
        outputs.push((
            "dead-letter entry".to_owned(),
            format!("{:?}", entry.fields),
        ));
    }
    for args in [
        &["stuck"][..],
        &["stuck", "--json"],
        &["dead", "list"],
        &["dead", "list", "--json"],
        &["status", "--json"],
    ] {
        let out = run(with_config().args(args));
        assert_eq!(out.code, Some(0), "{}", out.stderr);
        outputs.push((args.join(" "), format!("{}{}", out.stdout, out.stderr)));
    }
    drop(relay);
    let run_log = std::fs::read_to_string(&log).unwrap();
    assert!(run_log.contains("DEBUG"), "debug logs: {run_log}");
    outputs.push((format!("run --log-format {log_format}"), run_log));

    let leaks: Vec<String> = outputs
        .iter()
        .filter(|(_, text)| text.contains(SECRET))
        .map(|(what, text)| format!("--- {what} shows a secret:\n{text}"))
        .collect();
    assert!(leaks.is_empty(), "{}", leaks.join("\n"));
    // Names are kept, values redacted; each failure says what it was.
    let check = &outputs[0].1;
    assert!(
        check.contains("/fail?token=REDACTED&x=REDACTED\""),
        "{check}"
    );
    assert!(
        check.contains("headers.Authorization = \"REDACTED\""),
        "{check}"
    );
    for (topic, error) in &errors {
        assert!(
            error.contains("?token=REDACTED&x=REDACTED: "),
            "{topic}: {error}"
        );
    }
    assert!(
        errors[0].1.contains("500 Internal Server Error"),
        "{errors:?}"
    );
    assert!(errors[1].1.contains("could not connect"), "{errors:?}");
    assert!(errors[2].1.contains("timed out"), "{errors:?}");
    // Only the requests carried them.
    let seen = hook.seen.lock().unwrap().clone();
    assert!(
        seen.len() >= 4,
        "two attempts each of /fail and /slow: {seen:?}"
    );
    for (query, authorization) in seen {
        assert_eq!(query.as_deref(), Some("token=s3cret&x=1"));
        assert_eq!(authorization.as_deref(), Some("Bearer s3cret2"));
    }
}

#[tokio::test]
async fn http_route_secrets_reach_the_webhook_and_no_text_log_or_output() {
    secrets_stay_in_the_requests("text").await;
}

#[tokio::test]
async fn http_route_secrets_reach_the_webhook_and_no_json_log_or_output() {
    secrets_stay_in_the_requests("json").await;
}

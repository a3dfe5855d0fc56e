//! The deployment files (`deploy/`) name only metrics a relay exports: every metric in the
//! Prometheus rules (`expr:` in `deploy/**/*.yml`) and in the Grafana dashboards (panel `expr`s
//! and query variables in `deploy/**/*.json`) is a series of a live `outbox-relay run --http`'s
//! `/metrics`, after a workload that makes each of them appear (forwards, a retry, a dead
//! letter, a relay step failing while Redis is down). A misspelled or renamed metric fails here
//! instead of leaving a panel empty or an alert silent.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use outbox_relay::Message;
use serde_json::{Value, json};

use crate::harness::redis::TestRedis;
use crate::harness::relay::{RelayProcess, TempDir, publish_messages, relay_toml};
use crate::harness::servers::{PrivateRedis, free_port};
use crate::harness::{TestDb, eventually, http_get};

/// Series the deployment files may use that no relay exports, and who does.
const FROM_ELSEWHERE: &[(&str, &str)] = &[
    ("up", "Prometheus, for every scrape target"),
    ("kube_pod_status_ready", "kube-state-metrics"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_deploy_files_query_is_exported() {
    let queries = deploy_queries();
    for file in [
        "deploy/prometheus/alerts.yml",
        "deploy/grafana/outbox-relay.json",
    ] {
        assert!(
            queries.iter().any(|q| q.file == file),
            "no query found in {file}"
        );
    }
    let metrics = metrics_after_every_kind_of_event().await;
    let exported = Exported::parse(&metrics);

    let mut missing = Vec::new();
    let mut checked = BTreeSet::new();
    for query in &queries {
        let names = metric_names(&query.text);
        assert!(
            !names.is_empty(),
            "{}: no metric in `{}`",
            query.file,
            query.text
        );
        for name in names {
            if FROM_ELSEWHERE.iter().any(|(n, _)| *n == name) {
                continue;
            }
            if !exported.samples.contains(&name) {
                missing.push(format!(
                    "{}: `{name}` in `{}`{}",
                    query.file,
                    query.text,
                    exported.hint(&name)
                ));
            }
            checked.insert(name);
        }
    }
    assert!(
        missing.is_empty(),
        "metrics the relay does not export:\n{}\n\n/metrics was:\n{metrics}",
        missing.join("\n")
    );
    assert!(checked.len() >= 10, "only {checked:?}");
}

/// `/metrics` of a real relay that forwarded, retried, dead-lettered and failed a step.
async fn metrics_after_every_kind_of_event() -> String {
    let db = TestDb::new().await;
    let mut server = PrivateRedis::start();
    let redis = TestRedis::at(&server.url());
    let dir = TempDir::new("deploy-metrics");
    // Nothing listens on the hook's port: each call fails at once (retryable), and the second
    // attempt makes the message dead.
    let groups = format!(
        "[[groups]]\nname = \"g\"\n\
         [[groups.routes]]\ntopics = [\"hook.*\"]\nhandler = \"http\"\nurl = \"http://127.0.0.1:{}/hook\"\n\
         timeout_ms = 1000\nmax_attempts = 2\nbackoff_initial_ms = 20\n\
         [[groups.routes]]\ntopics = [\"ok.*\"]\nhandler = \"forward\"\nstream = \"all\"\n",
        free_port()
    );
    let config = dir.write(
        "relay.toml",
        &relay_toml(
            &db,
            &redis,
            "idle_poll_ms = 5\nmax_backoff_ms = 300",
            &groups,
        ),
    );
    let mut messages: Vec<Message> = (0..5)
        .map(|n| Message::new("ok.a", json!({"n": n})))
        .collect();
    messages.push(Message::new("hook.down", json!({"n": 5})));
    publish_messages(&db.pool, messages, true).await;

    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let relay = RelayProcess::start_with(&config, "deploy", &[], &["--http", &addr.to_string()]);
    let has = |body: &str, series: &str| body.lines().any(|line| line.starts_with(series));
    scrape_until(addr, "forwards and a dead letter", |body| {
        has(body, "outbox_messages_forwarded_total{")
            && has(body, "outbox_dead_letters_total{")
            && has(body, "outbox_retries_total{")
    })
    .await;

    // A step that fails: Redis is gone while a message waits to be appended.
    tokio::task::block_in_place(|| server.stop());
    publish_messages(&db.pool, vec![Message::new("ok.a", json!({"n": 6}))], true).await;
    scrape_until(addr, "a failed relay step", |body| {
        has(body, "outbox_relay_errors_total{")
    })
    .await;
    tokio::task::block_in_place(|| server.start_again());
    let metrics = scrape_until(addr, "the relay caught up after Redis came back", |body| {
        has(
            body,
            r#"outbox_messages_forwarded_total{group="g",topic="ok.a"} 6"#,
        )
    })
    .await;
    assert_eq!(relay.terminate(Duration::from_secs(10)).await, Some(0));
    metrics
}

/// Scrapes `/metrics` until `done` accepts it (20 s at most); returns that scrape.
async fn scrape_until(addr: SocketAddr, what: &str, done: impl Fn(&str) -> bool) -> String {
    eventually(Duration::from_secs(20), what, || async {
        let (status, body) = http_get(addr, "/metrics").await?;
        (status == 200 && done(&body)).then_some(body)
    })
    .await
}

/// What a `/metrics` page holds: the name of every sample (histograms as `_bucket`, `_sum`
/// and `_count`; counters with their `_total`), and each family's type from `# TYPE`.
struct Exported {
    samples: BTreeSet<String>,
    families: BTreeMap<String, String>,
}

impl Exported {
    fn parse(metrics: &str) -> Exported {
        let mut samples = BTreeSet::new();
        let mut families = BTreeMap::new();
        for line in metrics.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                if let Some((name, kind)) = rest.split_once(' ') {
                    families.insert(name.to_owned(), kind.trim().to_owned());
                }
            } else if !line.starts_with('#') && !line.trim().is_empty() {
                let end = line.find(['{', ' ']).unwrap_or(line.len());
                samples.insert(line[..end].to_owned());
            }
        }
        Exported { samples, families }
    }

    /// Why `name` is not a series, when its family is known: a histogram named without its
    /// `_bucket` / `_sum` / `_count`, a counter without its `_total`, a suffix its type lacks.
    fn hint(&self, name: &str) -> String {
        let family = ["_bucket", "_sum", "_count", "_total"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .filter(|family| self.families.contains_key(*family))
            .unwrap_or(name);
        let Some(kind) = self.families.get(family) else {
            return String::new();
        };
        let series: Vec<&String> = self
            .samples
            .iter()
            .filter(|s| {
                s.strip_prefix(family)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('_'))
            })
            .collect();
        format!(" (the family `{family}` is a {kind}; its series: {series:?})")
    }
}

/// One query found in a deployment file.
struct Query {
    file: String,
    text: String,
}

/// Every PromQL query in `deploy/`: `expr:` values of YAML files and the panel `expr`s and
/// query variables of Grafana dashboards (JSON).
fn deploy_queries() -> Vec<Query> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    walk(&root.join("deploy"), &mut files);
    let mut queries = Vec::new();
    for path in files {
        let file = path
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let text = std::fs::read_to_string(&path).unwrap();
        let found = match path.extension().and_then(|e| e.to_str()) {
            Some("yml" | "yaml") => yaml_exprs(&text),
            Some("json") => {
                let dashboard: Value =
                    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
                dashboard_queries(&dashboard)
            }
            _ => Vec::new(),
        };
        queries.extend(found.into_iter().map(|text| Query {
            file: file.clone(),
            text,
        }));
    }
    queries
}

fn walk(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            walk(&path, files);
        } else {
            files.push(path);
        }
    }
}

/// The values of `expr:` keys: plain or quoted on one line, or a block scalar (`|`, `>-`)
/// on the lines indented below it.
fn yaml_exprs(text: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut exprs = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start().trim_start_matches("- ");
        let Some(value) = trimmed.strip_prefix("expr:") else {
            continue;
        };
        let value = value.trim();
        if value.starts_with('|') || value.starts_with('>') {
            let indent = line.len() - line.trim_start().len();
            let block: Vec<&str> = lines[i + 1..]
                .iter()
                .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > indent)
                .map(|l| l.trim())
                .collect();
            exprs.push(block.join(" ").trim().to_owned());
        } else {
            let unquoted = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(value);
            exprs.push(unquoted.to_owned());
        }
    }
    exprs
}

/// A dashboard's queries: every `expr` under `panels` (rows nest panels), and the query of
/// each variable of type `query` (a string, or an object with `query`).
fn dashboard_queries(dashboard: &Value) -> Vec<String> {
    fn exprs(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                for (key, value) in map {
                    match (key.as_str(), value) {
                        ("expr", Value::String(expr)) => out.push(expr.clone()),
                        _ => exprs(value, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|item| exprs(item, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    exprs(&dashboard["panels"], &mut out);
    let variables = dashboard["templating"]["list"].as_array();
    for variable in variables.into_iter().flatten() {
        if variable["type"] != "query" {
            continue;
        }
        let query = &variable["query"];
        if let Some(text) = query.as_str().or_else(|| query["query"].as_str()) {
            out.push(text.to_owned());
        }
    }
    out
}

/// PromQL words that are not metric names: operators and modifiers. `by`, `without`, `on`,
/// `ignoring`, `group_left` and `group_right` are followed by a list of label names.
const KEYWORDS: &[&str] = &["and", "or", "unless", "bool", "offset", "inf", "nan"];
const LABEL_LISTS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// The metric names a PromQL query selects (Grafana's `label_values(selector, label)` too):
/// identifiers that are not functions (followed by `(`), aggregations (`sum by (…)`),
/// keywords, label lists, label matchers (`{…}`), ranges (`[…]`), strings, numbers or Grafana variables (`$group`).
fn metric_names(query: &str) -> Vec<String> {
    let query = query.trim();
    let query = match query
        .strip_prefix("label_values(")
        .and_then(|q| q.strip_suffix(')'))
    {
        // label_values(label) selects no metric; label_values(selector, label) the selector's.
        Some(args) => match args.rsplit_once(',') {
            Some((selector, _label)) => selector,
            None => return Vec::new(),
        },
        None => query,
    };
    let chars: Vec<char> = query.chars().collect();
    let word_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut names = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i = past_string(&chars, i);
        } else if c == '{' {
            i = past_group(&chars, i, '{', '}');
        } else if c == '[' {
            i = past_group(&chars, i, '[', ']');
        } else if c == '$' {
            i += 1;
            if chars.get(i) == Some(&'{') {
                i = past_group(&chars, i, '{', '}');
            } else {
                while i < chars.len() && word_char(chars[i]) {
                    i += 1;
                }
            }
        } else if c.is_ascii_digit() || c == '.' {
            // A number or a duration (`0.99`, `1e3`, `5m`).
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && word_char(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let next = chars[i..].iter().position(|c| !c.is_whitespace());
            let opens = next.is_some_and(|n| chars[i + n] == '(');
            // `sum by (group) (…)`: an aggregation whose label list comes first.
            let rest: String = chars[i..].iter().collect();
            let next_word = rest.trim_start().split(|c: char| !word_char(c)).next();
            let aggregates = next_word.is_some_and(|w| w == "by" || w == "without");
            if LABEL_LISTS.contains(&word.as_str()) {
                if opens {
                    i = past_group(&chars, i + next.unwrap(), '(', ')');
                }
            } else if !opens && !aggregates && !KEYWORDS.contains(&word.to_lowercase().as_str()) {
                names.push(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

/// The index just past the string starting at `start` (its quote), escapes skipped.
fn past_string(chars: &[char], start: usize) -> usize {
    let quote = chars[start];
    let mut i = start + 1;
    while i < chars.len() && chars[i] != quote {
        i += if chars[i] == '\\' { 2 } else { 1 };
    }
    i + 1
}

/// The index just past the `close` matching the `open` at `start`, strings skipped.
fn past_group(chars: &[char], start: usize, open: char, close: char) -> usize {
    let mut depth = 0;
    let mut i = start;
    while i < chars.len() {
        match chars[i] {
            '"' | '\'' | '`' => {
                i = past_string(chars, i);
                continue;
            }
            c if c == open => depth += 1,
            c if c == close => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    i
}

#[test]
fn metric_names_leave_out_functions_labels_ranges_and_variables() {
    let names = |q| metric_names(q);
    assert_eq!(
        names(
            r#"histogram_quantile(0.99, sum by (le, group) (rate(outbox_delivery_latency_seconds_bucket{job=~"$job", group=~"a}b"}[$__rate_interval])))"#
        ),
        ["outbox_delivery_latency_seconds_bucket"]
    );
    assert_eq!(
        names(
            "sum without(instance) (a_total) / on (group) group_left(topic) b offset 5m > bool 0"
        ),
        ["a_total", "b"]
    );
    assert_eq!(
        names(r#"absent(up{job="outbox-relay"} == 1) or sum(x) by (group)"#),
        ["up", "x"]
    );
    assert_eq!(
        names(r#"label_values(outbox_lag_seconds{job=~"$job"}, group)"#),
        ["outbox_lag_seconds"]
    );
    assert!(names("label_values(group)").is_empty());
    assert_eq!(
        yaml_exprs(
            "  - alert: A\n    expr: max(a) > 1\n  - alert: B\n    expr: |\n      sum(\n        b)\n    for: 1m\n    expr: 'c'\n"
        ),
        ["max(a) > 1", "sum( b)", "c"]
    );
}

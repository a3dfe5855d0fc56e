//! `bench drain`'s C-tool ceilings: the same work done by the servers' own C clients, each run
//! as a child process in the same run as the relay:
//! (c) `psql` `\copy` of the rows the relay will drain (its columns, in cursor order) to
//!     /dev/null, timed as the wall clock of the process (start, connect, copy, exit);
//! (d) `redis-benchmark` XADD of the entry the relay appends for the backlog's last row (its
//!     fields, values of the same bytes), one client, [`XADD_PIPELINE`] deep, at the rate
//!     redis-benchmark reports; its key is deleted afterwards.
//!
//! A tool that is missing, fails, runs past its deadline or cannot be handed the URL safely
//! skips its ceiling with the reason ([`Skipped`]); it never fails the bench. A password never
//! goes on a command line, where `ps` shows it to every local user: psql gets it in
//! `PGPASSWORD`; redis-benchmark (7.x) reads one only from its arguments (not from
//! `REDISCLI_AUTH`, unlike redis-cli), so a Redis URL with a password skips (d).

use std::process::Stdio;
use std::time::{Duration, Instant};

use percent_encoding::percent_decode_str;
use tokio::process::Command;

use super::Measurement;
use super::relay_process::ScratchRedis;
use outbox_relay::config::ConnectionUrl;
use outbox_relay::sink::Fields;

/// Commands redis-benchmark keeps on the wire (`-P`) for its one client (`-c 1`).
pub const XADD_PIPELINE: u64 = 500;

/// The columns the relay reads (`store/sql/messages_fetch_visible.sql`, the same casts), for
/// every row after the start of the outbox, in cursor order: the rows the relay will drain.
/// `\copy` runs `COPY … TO STDOUT` and psql writes what it receives to the file.
const COPY_ROWS: &str = "\\copy (SELECT m.tx_id::text, m.seq, m.id, m.topic, m.key, \
     m.schema_version, m.payload::text, m.headers::text, m.created_at \
     FROM outbox.messages m WHERE (m.tx_id, m.seq) > ('0'::xid8, 0) \
     ORDER BY m.tx_id, m.seq) TO '/dev/null'";

/// Why a C-tool ceiling has no figure (the bench goes on without it).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Skipped {
    #[error("`{0}` is not on PATH")]
    NotOnPath(&'static str),
    #[error("could not start `{tool}`: {error}")]
    Start { tool: &'static str, error: String },
    #[error("`{tool}` was stopped after {} s", after.as_secs())]
    TimedOut { tool: &'static str, after: Duration },
    #[error("`{tool}` exited with {status}: {stderr}")]
    Failed {
        tool: &'static str,
        status: String,
        stderr: String,
    },
    #[error("no {wanted} in `{tool}`'s output: {output}")]
    Unreadable {
        tool: &'static str,
        wanted: &'static str,
        output: String,
    },
    #[error("`{tool}` handled {got} messages, expected {expected}")]
    Count {
        tool: &'static str,
        got: u64,
        expected: u64,
    },
    #[error("the {0} URL could not be parsed again to hand it to a C tool")]
    UnparsableUrl(&'static str),
    #[error(
        "the Redis URL uses TLS (`rediss://`); this bench hands redis-benchmark no TLS settings"
    )]
    RedisTls,
    #[error(
        "the Redis URL carries a password, which redis-benchmark takes only on its command line \
         (`-a`), where `ps` shows it to every local user"
    )]
    RedisPassword,
    #[error("could not count or delete redis-benchmark's entries: {0}")]
    Redis(String),
}

/// The two C-tool ceilings of one run, each a figure or why there is none.
#[derive(Debug, Clone)]
pub struct CToolCeilings {
    /// (c) `psql` `\copy` of the same rows.
    pub copy: Result<Measurement, Skipped>,
    /// (d) `redis-benchmark` XADD of entries of the same fields and sizes.
    pub xadd: Result<Measurement, Skipped>,
}

impl CToolCeilings {
    /// The lower of the two; `None` unless both were measured.
    pub fn lower(&self) -> Option<Measurement> {
        let (copy, xadd) = (self.copy.as_ref().ok()?, self.xadd.as_ref().ok()?);
        Some(if copy.per_second() <= xadd.per_second() {
            *copy
        } else {
            *xadd
        })
    }
}

/// (c) `psql` copies the `messages` rows of the database at `database_url` to /dev/null.
pub async fn copy_ceiling(
    database_url: &ConnectionUrl,
    messages: u64,
) -> Result<Measurement, Skipped> {
    let target = psql_target(database_url)?;
    let mut command = Command::new("psql");
    command
        .args(["-X", "-w", "-v", "ON_ERROR_STOP=1"])
        .arg(format!("--dbname={}", target.url))
        .args(["-c", COPY_ROWS]);
    if let Some(password) = &target.password {
        command.env("PGPASSWORD", password);
    }
    let (stdout, elapsed) = run_tool("psql", command, deadline(messages)).await?;
    let copied = copied_rows(&stdout).ok_or_else(|| Skipped::Unreadable {
        tool: "psql",
        wanted: "`COPY <rows>`",
        output: excerpt(&stdout),
    })?;
    if copied != messages {
        return Err(Skipped::Count {
            tool: "psql",
            got: copied,
            expected: messages,
        });
    }
    Ok(Measurement {
        messages: copied,
        elapsed,
    })
}

/// (d) `redis-benchmark` appends `entry` about `messages` times (whole pipelines) to a key
/// under `redis`'s prefix, checks they all landed, and deletes the key.
pub async fn xadd_ceiling(
    redis_url: &ConnectionUrl,
    redis: &mut ScratchRedis,
    entry: &Fields,
    messages: u64,
) -> Result<Measurement, Skipped> {
    let mut target = redis_benchmark_target(redis_url)?;
    let (pipeline, requests) = xadd_requests(messages);
    let key = format!("{}ceiling-redis-benchmark", redis.prefix);
    // On a cluster, straight to the master of the key's slot (redis-benchmark --cluster does
    // not route a command given on its command line by its key).
    if let Some((host, port)) = redis.master_of(&key) {
        target = vec!["-h".to_owned(), host, "-p".to_owned(), port.to_string()];
    }
    let mut command = Command::new("redis-benchmark");
    command
        .args(&target)
        .args(["-c", "1", "-q"])
        .args(["-P", &pipeline.to_string(), "-n", &requests.to_string()])
        .args(["XADD", &key, "*"]);
    for (field, value) in entry {
        command.arg(field).arg(value);
    }
    let measured = async {
        let (stdout, _) = run_tool("redis-benchmark", command, deadline(requests)).await?;
        let rate = requests_per_second(&stdout).ok_or_else(|| Skipped::Unreadable {
            tool: "redis-benchmark",
            wanted: "`<n> requests per second`",
            output: excerpt(&stdout),
        })?;
        let appended: u64 = redis::cmd("XLEN")
            .arg(&key)
            .query_async(&mut redis.connection)
            .await
            .map_err(|e| Skipped::Redis(e.to_string()))?;
        if appended != requests {
            return Err(Skipped::Count {
                tool: "redis-benchmark",
                got: appended,
                expected: requests,
            });
        }
        Ok(Measurement {
            messages: requests,
            elapsed: Duration::from_secs_f64(requests as f64 / rate),
        })
    }
    .await;
    let deleted: Result<u64, _> = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut redis.connection)
        .await;
    if let Err(error) = deleted {
        tracing::warn!(%key, %error, "could not delete redis-benchmark's stream");
    }
    measured
}

/// `-P` and `-n` for about `messages` XADDs: redis-benchmark sends whole pipelines, so the
/// count is rounded up to one.
fn xadd_requests(messages: u64) -> (u64, u64) {
    let pipeline = XADD_PIPELINE.min(messages.max(1));
    (pipeline, messages.max(1).div_ceil(pipeline) * pipeline)
}

/// How long a tool may take for `messages`: 30 s, and 100 µs a message (a tool at a tenth of
/// the rates measured here). redis-benchmark that cannot connect retries forever, busy.
fn deadline(messages: u64) -> Duration {
    Duration::from_secs(30) + Duration::from_micros(messages.saturating_mul(100))
}

/// A Postgres URL for psql's command line (no password) and the password for its environment.
#[derive(Debug, PartialEq)]
struct PsqlTarget {
    url: String,
    password: Option<String>,
}

/// `url` without its password (userinfo or `password=`), and that password, decoded.
fn psql_target(url: &ConnectionUrl) -> Result<PsqlTarget, Skipped> {
    let mut url = url::Url::parse(url.expose()).map_err(|_| Skipped::UnparsableUrl("database"))?;
    let mut password = url
        .password()
        .map(|p| percent_decode_str(p).decode_utf8_lossy().into_owned());
    // Only fails for URLs that cannot have a password, which have none to take out.
    let _ = url.set_password(None);
    let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
    if let Some((_, value)) = pairs.iter().find(|(name, _)| name == "password") {
        password = Some(value.clone());
        let kept: Vec<_> = pairs
            .iter()
            .filter(|(name, _)| name != "password")
            .collect();
        url.set_query(None);
        if !kept.is_empty() {
            url.query_pairs_mut().extend_pairs(kept);
        }
    }
    Ok(PsqlTarget {
        url: url.into(),
        password,
    })
}

/// redis-benchmark's connection arguments for `url` (`-h/-p` or `-s`, `--dbnum`), or why it
/// cannot be given them.
fn redis_benchmark_target(url: &ConnectionUrl) -> Result<Vec<String>, Skipped> {
    let url = url::Url::parse(url.expose()).map_err(|_| Skipped::UnparsableUrl("Redis"))?;
    let query = |name: &str| {
        url.query_pairs()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.into_owned())
    };
    if url.password().is_some() || query("pass").is_some() || query("password").is_some() {
        return Err(Skipped::RedisPassword);
    }
    let (mut args, db) = match url.scheme() {
        "redis" => {
            let host = url.host_str().unwrap_or("127.0.0.1");
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let port = url.port().unwrap_or(6379).to_string();
            let db = url.path().trim_start_matches('/');
            let args = vec!["-h".to_owned(), host.to_owned(), "-p".to_owned(), port];
            (args, (!db.is_empty()).then(|| db.to_owned()))
        }
        "redis+unix" | "unix" => (vec!["-s".to_owned(), url.path().to_owned()], query("db")),
        "rediss" => return Err(Skipped::RedisTls),
        _ => return Err(Skipped::UnparsableUrl("Redis")),
    };
    if let Some(db) = db.filter(|db| db != "0") {
        args.extend(["--dbnum".to_owned(), db]);
    }
    Ok(args)
}

/// Runs `command` (stdin closed; killed if it outlives `deadline`) and returns its stdout and
/// how long it ran, from start to exit.
async fn run_tool(
    tool: &'static str,
    mut command: Command,
    deadline: Duration,
) -> Result<(String, Duration), Skipped> {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let started = Instant::now();
    let child = command.spawn().map_err(|error| match error.kind() {
        std::io::ErrorKind::NotFound => Skipped::NotOnPath(tool),
        _ => Skipped::Start {
            tool,
            error: error.to_string(),
        },
    })?;
    let output = tokio::time::timeout(deadline, child.wait_with_output())
        .await
        .map_err(|_| Skipped::TimedOut {
            tool,
            after: deadline,
        })?
        .map_err(|error| Skipped::Start {
            tool,
            error: error.to_string(),
        })?;
    let elapsed = started.elapsed();
    if !output.status.success() {
        return Err(Skipped::Failed {
            tool,
            status: output.status.to_string(),
            stderr: excerpt(&String::from_utf8_lossy(&output.stderr)),
        });
    }
    Ok((
        String::from_utf8_lossy(&output.stdout).into_owned(),
        elapsed,
    ))
}

/// `COPY 300000` (psql's tag for `\copy`) → 300000.
fn copied_rows(stdout: &str) -> Option<u64> {
    stdout
        .lines()
        .rev()
        .find_map(|line| line.trim().strip_prefix("COPY ")?.parse().ok())
}

/// `XADD …: 287356.31 requests per second, p50=1.623 msec` (`-q`, after `\r`-separated
/// progress) → 287356.31.
fn requests_per_second(stdout: &str) -> Option<f64> {
    let (before, _) = stdout.rsplit_once(" requests per second")?;
    let rate: f64 = before.rsplit(char::is_whitespace).next()?.parse().ok()?;
    (rate.is_finite() && rate > 0.0).then_some(rate)
}

/// The last lines of a tool's output, short enough for one line of a report.
fn excerpt(text: &str) -> String {
    let lines: Vec<&str> = text
        .split(['\r', '\n'])
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect();
    let tail = lines[lines.len().saturating_sub(2)..].join(" / ");
    match tail.char_indices().nth(300) {
        Some((cut, _)) => format!("{}…", &tail[..cut]),
        None if tail.is_empty() => "(nothing)".to_owned(),
        None => tail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(text: &str) -> ConnectionUrl {
        ConnectionUrl::parse(text, &["postgres", "redis", "rediss", "redis+unix", "unix"]).unwrap()
    }

    #[test]
    fn psql_gets_the_password_out_of_its_arguments() {
        let target = psql_target(&url(
            "postgres://app:p%40ss+w@db:5433/outbox?sslmode=require",
        ))
        .unwrap();
        assert_eq!(target.url, "postgres://app@db:5433/outbox?sslmode=require");
        assert_eq!(target.password.as_deref(), Some("p@ss+w"));
        let target = psql_target(&url(
            "postgres://app@db/outbox?password=s%26cret&sslmode=disable",
        ))
        .unwrap();
        assert_eq!(target.url, "postgres://app@db/outbox?sslmode=disable");
        assert_eq!(target.password.as_deref(), Some("s&cret"));
        let target = psql_target(&url("postgres://postgres@127.0.0.1/bench")).unwrap();
        assert_eq!(target.url, "postgres://postgres@127.0.0.1/bench");
        assert_eq!(target.password, None);
    }

    #[test]
    fn redis_benchmark_is_given_host_port_socket_and_db_but_no_password() {
        let args = |text| redis_benchmark_target(&url(text));
        assert_eq!(
            args("redis://127.0.0.1:6380/2").unwrap(),
            ["-h", "127.0.0.1", "-p", "6380", "--dbnum", "2"]
        );
        assert_eq!(args("redis://[::1]").unwrap(), ["-h", "::1", "-p", "6379"]);
        assert_eq!(
            args("redis+unix:///run/redis.sock?db=3").unwrap(),
            ["-s", "/run/redis.sock", "--dbnum", "3"]
        );
        assert_eq!(args("redis://:pw@host"), Err(Skipped::RedisPassword));
        assert_eq!(args("redis://user:pw@host/1"), Err(Skipped::RedisPassword));
        assert_eq!(
            args("unix:///run/redis.sock?pass=pw"),
            Err(Skipped::RedisPassword)
        );
        assert_eq!(args("rediss://host:6380"), Err(Skipped::RedisTls));
    }

    #[test]
    fn figures_are_read_from_the_tools_output() {
        assert_eq!(copied_rows("COPY 300000\n"), Some(300_000));
        assert_eq!(copied_rows("ERROR: nope\n"), None);
        let quiet = "\rXADD k * payload {\"a\": \"x y\"}: rps=0.0 (overall: -nan) avg_msec=-nan \
                     (overall: -nan)\r   \rXADD k * payload {\"a\": \"x y\"}: 287356.31 requests \
                     per second, p50=1.623 msec\n";
        assert_eq!(requests_per_second(quiet), Some(287_356.31));
        assert_eq!(
            requests_per_second("XADD k: -nan requests per second"),
            None
        );
        assert_eq!(requests_per_second(""), None);
    }

    #[test]
    fn redis_benchmark_sends_whole_pipelines() {
        assert_eq!(xadd_requests(300_000), (500, 300_000));
        assert_eq!(xadd_requests(1_234), (500, 1_500));
        assert_eq!(xadd_requests(200), (200, 200));
        assert_eq!(xadd_requests(0), (1, 1));
    }

    #[test]
    fn the_lower_c_tool_ceiling_needs_both() {
        let rate = |messages| {
            Ok(Measurement {
                messages,
                elapsed: Duration::from_secs(1),
            })
        };
        let both = CToolCeilings {
            copy: rate(200),
            xadd: rate(300),
        };
        assert_eq!(both.lower().unwrap().messages, 200);
        let one = CToolCeilings {
            copy: Err(Skipped::NotOnPath("psql")),
            xadd: rate(300),
        };
        assert_eq!(one.lower(), None);
    }

    #[test]
    fn excerpts_are_the_last_lines_bounded() {
        assert_eq!(excerpt("a\nb\r\nc\n\n"), "b / c");
        assert_eq!(excerpt(""), "(nothing)");
        assert_eq!(excerpt(&"x".repeat(400)).chars().count(), 301);
    }
}

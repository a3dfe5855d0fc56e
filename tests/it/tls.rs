//! Transport security and secrets: the relay reaches Postgres (`sslmode=verify-full`) and Redis
//! (`rediss://` + `[redis] tls_ca_file`) through a private CA; a server certificate from another
//! CA is refused with a clear error; and no password ever shows up in any command's output.
//!
//! Each test starts its own Postgres and Redis (TLS only, passwords required) with certificates
//! made by openssl into a temporary directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use outbox_relay::config::ConnectionUrl;
use outbox_relay::{Message, publish_in_tx};
use serde_json::{Value, json};
use sqlx::{AssertSqlSafe, Connection, PgConnection};

use crate::harness::cli::{Run, outbox_relay, run};
use crate::harness::eventually;
use crate::harness::relay::{RelayProcess, TempDir, forward_all};
use crate::harness::servers::{PrivatePostgres, PrivateRedis, is_root};

const PG_PASSWORD: &str = "Pg-s3cret-4d1f9";
const REDIS_PASSWORD: &str = "Rd-s3cret-8a2c7";
const WRONG_PASSWORD: &str = "Wr0ng-s3cret-51e0";
const HOOK_PASSWORD: &str = "Hk-s3cret-77b3";
const HOOK_TOKEN: &str = "Tk-s3cret-0c9e";
const SECRETS: [&str; 5] = [
    PG_PASSWORD,
    REDIS_PASSWORD,
    WRONG_PASSWORD,
    HOOK_PASSWORD,
    HOOK_TOKEN,
];

/// Runs `openssl <args>` (split on whitespace) in `dir`, panicking with its output on failure.
fn openssl(dir: &Path, args: &str) {
    let out = Command::new("openssl")
        .args(args.split_whitespace())
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

const P256: &str = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";

/// A CA `name`.pem / `name`.key (P-256, valid two days).
fn make_ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &format!(
            "req -x509 {P256} -keyout {name}.key -out {name}.pem -days 2 -subj /CN=outbox-relay-test-{name} \
             -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign"
        ),
    );
}

/// server.pem / server.key for 127.0.0.1 and localhost, signed by `ca`.
fn make_server_cert(dir: &Path, ca: &str) {
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
         keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &format!("req {P256} -keyout server.key -out server.csr -subj /CN=localhost"),
    );
    openssl(
        dir,
        &format!(
            "x509 -req -in server.csr -CA {ca}.pem -CAkey {ca}.key -CAcreateserial \
             -out server.pem -days 2 -extfile server.ext"
        ),
    );
    // Postgres wants its key private and its own.
    let key = dir.join("server.key");
    let status = Command::new("chmod").arg("600").arg(&key).status().unwrap();
    assert!(status.success());
    if is_root() {
        let status = Command::new("chown")
            .args(["postgres:postgres"])
            .arg(&key)
            .status()
            .unwrap();
        assert!(status.success(), "chown the server key");
    }
}

/// client.pem / client.key, a client certificate signed by `ca`.
fn make_client_cert(dir: &Path, ca: &str) {
    std::fs::write(
        dir.join("client.ext"),
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &format!("req {P256} -keyout client.key -out client.csr -subj /CN=outbox-relay"),
    );
    openssl(
        dir,
        &format!(
            "x509 -req -in client.csr -CA {ca}.pem -CAkey {ca}.key -CAcreateserial \
             -out client.pem -days 2 -extfile client.ext"
        ),
    );
}

/// A private Postgres and Redis, both TLS only with a certificate of the CA `ca.pem`, both
/// requiring a password; `other-ca.pem` is a CA that signed nothing of theirs.
struct TlsServers {
    dir: TempDir,
    postgres: PrivatePostgres,
    redis: PrivateRedis,
}

impl TlsServers {
    async fn start(name: &str) -> TlsServers {
        TlsServers::start_with(name, false).await
    }

    /// With `client_auth`, Redis accepts only clients with a certificate of `ca.pem`
    /// (`client.pem` / `client.key`).
    async fn start_with(name: &str, client_auth: bool) -> TlsServers {
        let dir = TempDir::new(&format!("tls-{name}"));
        make_ca(&dir.0, "ca");
        make_ca(&dir.0, "other-ca");
        make_server_cert(&dir.0, "ca");
        make_client_cert(&dir.0, "ca");
        // The superuser over TLS without a password (the test's admin); everyone else over
        // TLS with a SCRAM password; nothing without TLS.
        let hba = dir.write(
            "pg_hba.conf",
            "local all all trust\nhostssl all postgres 127.0.0.1/32 trust\n\
             hostssl all all 127.0.0.1/32 scram-sha-256\n",
        );
        let file = |name: &str| dir.0.join(name).display().to_string();
        let postgres = PrivatePostgres::start_with(&[
            ("ssl", "on"),
            ("ssl_cert_file", &file("server.pem")),
            ("ssl_key_file", &file("server.key")),
            ("hba_file", &hba.display().to_string()),
        ]);
        let redis = PrivateRedis::start_tls(&[
            "--tls-cert-file",
            &file("server.pem"),
            "--tls-key-file",
            &file("server.key"),
            "--tls-ca-cert-file",
            &file("ca.pem"),
            "--tls-auth-clients",
            if client_auth { "yes" } else { "no" },
            "--requirepass",
            REDIS_PASSWORD,
        ]);
        let admin_url = format!(
            "postgres://postgres@127.0.0.1:{}/postgres?sslmode=require",
            postgres.port
        );
        let mut admin = PgConnection::connect(&admin_url)
            .await
            .expect("connect to the private Postgres as postgres over TLS");
        for statement in [
            format!("CREATE ROLE app_user LOGIN PASSWORD '{PG_PASSWORD}'"),
            "CREATE DATABASE app OWNER app_user".to_owned(),
        ] {
            sqlx::query(AssertSqlSafe(statement))
                .execute(&mut admin)
                .await
                .expect("create the role and database");
        }
        admin.close().await.ok();
        TlsServers {
            dir,
            postgres,
            redis,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.0.join(name)
    }

    /// `app_user` with `password`, verifying the server against `ca` (a file name in the dir).
    fn database_url(&self, password: &str, ca: &str) -> String {
        format!(
            "postgres://app_user:{password}@127.0.0.1:{}/app?sslmode=verify-full&sslrootcert={}",
            self.postgres.port,
            self.path(ca).display()
        )
    }

    fn redis_url(&self, password: &str) -> String {
        format!("rediss://:{password}@127.0.0.1:{}", self.redis.port)
    }

    /// A config file: group `g` forwards every topic but `hooks.*` to stream `all`; group
    /// `h` POSTs `hooks.*` to a URL with a password and a bearer token (nothing listens there).
    fn config(&self, name: &str, pg: (&str, &str), redis: (&str, &str)) -> PathBuf {
        let groups = format!(
            "{}[[groups]]\nname = \"h\"\n[[groups.routes]]\ntopics = [\"hooks.*\"]\nhandler = \"http\"\n\
             url = \"http://hook:{HOOK_PASSWORD}@127.0.0.1:1/hook\"\n\
             headers = {{ authorization = \"Bearer {HOOK_TOKEN}\", x-tenant = \"t1\" }}\n\
             max_attempts = 2\nbackoff_initial_ms = 10\n",
            forward_all("g", "all").replace("topics = [\"*\"]", "topics = [\"[!h]*\"]")
        );
        self.dir.write(
            &format!("{name}.toml"),
            &format!(
                "database_url = \"{}\"\nredis_url = \"{}\"\n[redis]\ntls_ca_file = \"{}\"\n[relay]\nidle_poll_ms = 5\n{groups}",
                self.database_url(pg.0, pg.1),
                self.redis_url(redis.0),
                self.path(redis.1).display(),
            ),
        )
    }

    fn good_config(&self) -> PathBuf {
        self.config("good", (PG_PASSWORD, "ca.pem"), (REDIS_PASSWORD, "ca.pem"))
    }

    /// A Redis client trusting `ca.pem`, with the password.
    fn redis_client(&self) -> redis::Client {
        let root_cert = std::fs::read(self.path("ca.pem")).unwrap();
        redis::Client::build_with_tls(
            self.redis_url(REDIS_PASSWORD).as_str(),
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(root_cert),
            },
        )
        .expect("TLS client")
    }

    async fn stream_len(&self, stream: &str) -> u64 {
        let mut connection = self
            .redis_client()
            .get_multiplexed_async_connection()
            .await
            .expect("connect to the private Redis over TLS");
        redis::cmd("XLEN")
            .arg(stream)
            .query_async(&mut connection)
            .await
            .expect("XLEN")
    }

    /// Publishes `n` messages on topic `t` as `app_user`, over verified TLS, through the library.
    async fn publish(&self, topic: &str, n: usize) {
        let url =
            ConnectionUrl::parse(&self.database_url(PG_PASSWORD, "ca.pem"), &["postgres"]).unwrap();
        let pool = outbox_relay::store::connect(&url, 1)
            .await
            .expect("connect");
        let mut tx = pool.begin().await.unwrap();
        for i in 0..n {
            publish_in_tx(&mut tx, Message::new(topic, json!({ "n": i })))
                .await
                .unwrap();
        }
        tx.commit().await.unwrap();
        pool.close().await;
    }
}

/// The whole HTTP/1.1 response (status line, headers, body) to `GET path`.
fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to run --http");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

/// Keeps a copy of `out`'s stdout and stderr under `what`.
fn record(outputs: &mut Vec<(String, String)>, what: &str, out: Run) -> Run {
    outputs.push((what.to_owned(), format!("{}\n{}", out.stdout, out.stderr)));
    out
}

fn with_config(config: &Path) -> Command {
    let mut command = outbox_relay();
    command.args(["--config", config.to_str().unwrap()]);
    command
}

#[tokio::test]
async fn relay_forwards_over_verified_tls_to_postgres_and_redis() {
    let servers = TlsServers::start("forward").await;
    let config = servers.good_config();

    let migrated = run(with_config(&config).arg("migrate"));
    assert_eq!(migrated.code, Some(0), "{}", migrated.stderr);
    servers.publish("orders.created", 3).await;

    let relay = RelayProcess::start(&config, "relay");
    eventually(
        Duration::from_secs(20),
        "3 entries in stream all",
        || async { (servers.stream_len("all").await == 3).then_some(()) },
    )
    .await;
    assert_eq!(
        relay.terminate(Duration::from_secs(10)).await,
        Some(0),
        "clean stop"
    );

    let status = run(with_config(&config).args(["status", "--json"]));
    assert_eq!(status.code, Some(0), "{}", status.stderr);
    let status: Value = serde_json::from_str(&status.stdout).unwrap();
    let groups = status["groups"].as_array().unwrap();
    assert!(groups.iter().any(|g| g["name"] == "g"), "{status}");

    let checked = run(with_config(&config).args(["config", "check", "--connect"]));
    assert_eq!(checked.code, Some(0), "{}", checked.stderr);
    assert!(
        checked.stdout.contains("connect.postgres"),
        "{}",
        checked.stdout
    );
    assert!(
        checked.stdout.contains("connect.redis"),
        "{}",
        checked.stdout
    );
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused_with_a_clear_error() {
    let servers = TlsServers::start("wrong-ca").await;

    let wrong_pg = servers.config(
        "wrong-pg",
        (PG_PASSWORD, "other-ca.pem"),
        (REDIS_PASSWORD, "ca.pem"),
    );
    let out = run(with_config(&wrong_pg).arg("migrate"));
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert_refused(
        &out,
        &format!(
            "could not connect to Postgres at postgres://app_user:REDACTED@127.0.0.1:{}/app",
            servers.postgres.port
        ),
    );

    let migrated = run(with_config(&servers.good_config()).arg("migrate"));
    assert_eq!(migrated.code, Some(0), "{}", migrated.stderr);
    let wrong_redis = servers.config(
        "wrong-redis",
        (PG_PASSWORD, "ca.pem"),
        (REDIS_PASSWORD, "other-ca.pem"),
    );
    let out = run(with_config(&wrong_redis).arg("run"));
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert_refused(
        &out,
        &format!(
            "could not connect to Redis at rediss://:REDACTED@127.0.0.1:{}",
            servers.redis.port
        ),
    );
}

#[tokio::test]
async fn redis_mutual_tls_presents_the_configured_client_certificate() {
    let servers = TlsServers::start_with("mtls", true).await;
    let without = servers.good_config();
    // Postgres needs no client certificate: the schema `config check --connect` checks.
    let migrated = run(with_config(&without).arg("migrate"));
    assert_eq!(migrated.code, Some(0), "{}", migrated.stderr);
    let out = run(with_config(&without).args(["config", "check", "--connect"]));
    assert_eq!(out.code, Some(1), "{}", out.stdout);
    assert!(
        out.stdout.contains("connect.redis") && out.stdout.contains("tls_client_cert_file"),
        "says to configure a client certificate: {}",
        out.stdout
    );

    let with = servers.dir.write(
        "mtls.toml",
        &std::fs::read_to_string(&without).unwrap().replace(
            "[redis]\n",
            &format!(
                "[redis]\ntls_client_cert_file = \"{}\"\ntls_client_key_file = \"{}\"\n",
                servers.path("client.pem").display(),
                servers.path("client.key").display()
            ),
        ),
    );
    let out = run(with_config(&with).args(["config", "check", "--connect", "--json"]));
    assert_eq!(out.code, Some(0), "{}\n{}", out.stdout, out.stderr);
    let report: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(report["connect"]["redis"]["ok"], true, "{report}");
    assert_eq!(report["connect"]["postgres"]["ok"], true, "{report}");
}

/// Exit 1 with one `error:` line naming the server (password redacted) and the certificate.
fn assert_refused(out: &Run, server: &str) {
    let error = out
        .stderr
        .lines()
        .find(|line| line.starts_with("error: "))
        .unwrap_or_else(|| panic!("no error line: {}", out.stderr));
    let (_, after_server) = error
        .split_once(server)
        .unwrap_or_else(|| panic!("names {server}: {error}"));
    // The cause follows the URL (whose query may name a path with anything in it, "tls" too).
    let (_, cause) = after_server.split_once(": ").unwrap_or_default();
    let lower = cause.to_ascii_lowercase();
    assert!(
        lower.contains("certificate") && lower.contains("tls"),
        "names the certificate and TLS: {error}"
    );
    for secret in SECRETS {
        assert!(!out.stderr.contains(secret) && !out.stdout.contains(secret));
    }
}

#[tokio::test]
async fn passwords_never_appear_in_any_output_of_any_command() {
    let servers = TlsServers::start("secrets").await;
    let good = servers.good_config();
    let mut outputs: Vec<(String, String)> = Vec::new();

    let out = record(
        &mut outputs,
        "migrate",
        run(with_config(&good).arg("migrate")),
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let out = record(
        &mut outputs,
        "publish",
        run(with_config(&good).args(["publish", "--topic", "orders.created", r#"{"n": 0}"#])),
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let out = record(
        &mut outputs,
        "publish hook",
        run(with_config(&good).args(["publish", "--topic", "hooks.x", r#"{"n": 1}"#])),
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);

    // The relay with every crate's debug logs, as JSON, serving /metrics, until the forward is
    // done and the hook is dead.
    let log = servers.path("run.log");
    let http = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut child = with_config(&good)
        .env("RUST_LOG", "debug")
        .args(["--log-format", "json", "run", "--http", &http.to_string()])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    eventually(Duration::from_secs(20), "the forward in Redis", || async {
        (servers.stream_len("all").await == 1).then_some(())
    })
    .await;
    let dead = eventually(Duration::from_secs(20), "the hook dead", || async {
        let out = run(with_config(&good).args(["dead", "list", "--json"]));
        (out.code == Some(0) && out.stdout.contains("hooks.x")).then_some(out)
    })
    .await;
    record(&mut outputs, "dead list --json", dead);
    for path in ["/metrics", "/readyz"] {
        let body = http_get(http, path);
        assert!(body.starts_with("HTTP/1.1 200"), "{path}: {body}");
        outputs.push((format!("GET {path}"), body));
    }
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(child.wait().unwrap().code(), Some(0));
    let run_log = std::fs::read_to_string(&log).unwrap();
    assert!(run_log.contains("DEBUG"), "debug logs: {run_log}");
    outputs.push(("run RUST_LOG=debug".to_owned(), run_log));

    for args in [
        &["status"][..],
        &["status", "--json"],
        &["dead", "list"],
        &["stuck"],
        &["stuck", "--json"],
        &["groups", "list", "--json"],
        &["config", "check"],
        &["config", "check", "--json"],
        &["config", "check", "--connect"],
    ] {
        let out = record(
            &mut outputs,
            &args.join(" "),
            run(with_config(&good).args(args)),
        );
        assert_eq!(out.code, Some(0), "{args:?}: {}", out.stderr);
    }
    // URLs given as flags, too.
    let out = record(
        &mut outputs,
        "status with flags",
        run(outbox_relay().args([
            "status",
            "--database-url",
            &servers.database_url(PG_PASSWORD, "ca.pem"),
            "--redis-url",
            &servers.redis_url(REDIS_PASSWORD),
        ])),
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);

    let wrong_pg = servers.config(
        "wrong-pg-password",
        (WRONG_PASSWORD, "ca.pem"),
        (REDIS_PASSWORD, "ca.pem"),
    );
    let wrong_redis = servers.config(
        "wrong-redis-password",
        (PG_PASSWORD, "ca.pem"),
        (WRONG_PASSWORD, "ca.pem"),
    );
    let wrong_ca = servers.config(
        "wrong-ca",
        (PG_PASSWORD, "other-ca.pem"),
        (REDIS_PASSWORD, "other-ca.pem"),
    );
    for (what, config, args) in [
        ("wrong Postgres password", &wrong_pg, &["status"][..]),
        ("wrong Postgres password, run", &wrong_pg, &["run"]),
        ("wrong Redis password", &wrong_redis, &["run"]),
        (
            "wrong passwords, config check --connect",
            &wrong_redis,
            &["config", "check", "--connect", "--json"],
        ),
        ("wrong CA, migrate", &wrong_ca, &["migrate"]),
        (
            "wrong CA, config check --connect",
            &wrong_ca,
            &["config", "check", "--connect"],
        ),
    ] {
        let out = record(
            &mut outputs,
            what,
            run(with_config(config).env("RUST_LOG", "debug").args(args)),
        );
        assert_eq!(out.code, Some(1), "{what}: {}", out.stderr);
    }
    let invalid = servers.dir.write(
        "invalid.toml",
        &std::fs::read_to_string(&good)
            .unwrap()
            .replace("idle_poll_ms = 5", "idle_poll_ms = 0"),
    );
    let out = record(
        &mut outputs,
        "invalid config check",
        run(with_config(&invalid).args(["config", "check", "--json"])),
    );
    assert_eq!(out.code, Some(2), "{}", out.stderr);

    for (what, text) in &outputs {
        for secret in SECRETS {
            assert!(
                !text.contains(secret),
                "{what} shows a secret ({secret}):\n{text}"
            );
        }
    }
    let all: String = outputs.iter().map(|(_, text)| text.as_str()).collect();
    assert!(all.contains("REDACTED"), "redacted URLs were printed");
}

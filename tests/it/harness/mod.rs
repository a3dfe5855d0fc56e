//! What every integration test stands on: a fresh database per test, cloned from a migrated
//! template, dropped when the test ends (also when it panics), so tests run in parallel.
//!
//! The server is `TEST_DATABASE_ADMIN_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`),
//! a superuser connection used to create and drop databases.

pub mod cli;
pub mod cluster;
pub mod redis;
pub mod relay;
pub mod servers;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sqlx::{AssertSqlSafe, Connection, PgConnection, PgPool};
use tokio::sync::OnceCell;

const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// Serialises template builds across test processes (nextest runs one process per test).
const TEMPLATE_LOCK: i64 = 0x6f75_7462_6f78; // "outbox"

pub fn admin_url() -> String {
    std::env::var("TEST_DATABASE_ADMIN_URL").unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_owned())
}

/// The URL of database `name` on the test server.
pub fn database_url(name: &str) -> String {
    let mut url = url::Url::parse(&admin_url()).expect("TEST_DATABASE_ADMIN_URL is a URL");
    url.set_path(&format!("/{name}"));
    url.to_string()
}

/// A database of the test's own. Dropped (WITH FORCE) when this value is dropped.
pub struct TestDb {
    pub name: String,
    pub url: String,
    pub pool: PgPool,
}

impl TestDb {
    /// A fresh database with the outbox schema already migrated.
    pub async fn new() -> TestDb {
        let template = TEMPLATE.get_or_init(build_template).await;
        TestDb::create(Some(template)).await
    }

    /// A fresh database with nothing in it (for migration tests).
    pub async fn empty() -> TestDb {
        TestDb::create(None).await
    }

    async fn create(template: Option<&str>) -> TestDb {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "outbox_test_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let statement = match template {
            Some(template) => format!("CREATE DATABASE {name} TEMPLATE {template}"),
            None => format!("CREATE DATABASE {name}"),
        };
        let mut admin = admin().await;
        // Concurrent clones of one template can meet "source database is being accessed by
        // other users" (55006) for a moment: retry within a deadline.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match sqlx::query(AssertSqlSafe(statement.clone()))
                .execute(&mut admin)
                .await
            {
                Ok(_) => break,
                Err(sqlx::Error::Database(e))
                    if e.code().as_deref() == Some("55006") && Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("{statement}: {e}"),
            }
        }
        admin.close().await.ok();
        let url = database_url(&name);
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(8)
            .connect(&url)
            .await
            .expect("connect to the test database");
        TestDb { name, url, pool }
    }

    /// Rows in outbox.messages.
    pub async fn message_count(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM outbox.messages")
            .fetch_one(&self.pool)
            .await
            .expect("count messages")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs inside the test's runtime, which cannot be blocked on: use a thread.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let mut admin = PgConnection::connect(&admin_url()).await?;
                sqlx::query(AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
                .execute(&mut admin)
                .await?;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
            })
        })
        .join();
        if let Ok(Err(e)) = dropped {
            eprintln!("could not drop test database {}: {e}", self.name);
        }
    }
}

static TEMPLATE: OnceCell<String> = OnceCell::const_new();

async fn admin() -> PgConnection {
    PgConnection::connect(&admin_url())
        .await
        .unwrap_or_else(|e| panic!("connect to {} (TEST_DATABASE_ADMIN_URL): {e}", admin_url()))
}

/// The migrated template's name carries a hash of `migrations/`, so a changed migration gets a
/// new template instead of a stale one. Built once per machine, under an advisory lock, under
/// a temporary name that is renamed when complete.
async fn build_template() -> String {
    let name = format!("outbox_tpl_{:016x}", migrations_hash());
    let mut admin = admin().await;
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(TEMPLATE_LOCK)
        .execute(&mut admin)
        .await
        .expect("template lock");
    drop_databases_of_dead_test_processes(&mut admin).await;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut admin)
            .await
            .expect("look up template");
    if !exists {
        let building = format!("{name}_tmp");
        for statement in [
            format!("DROP DATABASE IF EXISTS {building} WITH (FORCE)"),
            format!("CREATE DATABASE {building}"),
        ] {
            sqlx::query(AssertSqlSafe(statement))
                .execute(&mut admin)
                .await
                .expect("create template");
        }
        let pool = PgPool::connect(&database_url(&building))
            .await
            .expect("connect template");
        outbox_relay::migrate(&pool)
            .await
            .expect("migrate template");
        pool.close().await;
        sqlx::query(AssertSqlSafe(format!(
            "ALTER DATABASE {building} RENAME TO {name}"
        )))
        .execute(&mut admin)
        .await
        .expect("rename template");
    }
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(TEMPLATE_LOCK)
        .execute(&mut admin)
        .await
        .expect("template unlock");
    admin.close().await.ok();
    name
}

/// Databases named outbox_test_<pid>_<n> whose process is gone were left by a killed run.
async fn drop_databases_of_dead_test_processes(admin: &mut PgConnection) {
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT datname FROM pg_database WHERE datname LIKE 'outbox\\_test\\_%'",
    )
    .fetch_all(&mut *admin)
    .await
    .expect("list test databases");
    for name in names {
        let pid = name.split('_').nth(2).unwrap_or_default();
        if !pid.is_empty() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = sqlx::query(AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
            )))
            .execute(&mut *admin)
            .await;
        }
    }
}

/// FNV-1a over the migration files, in name order: stable across runs and toolchains.
fn migrations_hash() -> u64 {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("read migrations/")
        .map(|entry| entry.expect("migration entry").path())
        .collect();
    files.sort();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for file in files {
        let bytes = std::fs::read(&file).expect("read migration");
        for byte in file
            .file_name()
            .unwrap()
            .as_encoded_bytes()
            .iter()
            .chain(&bytes)
        {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

/// Polls `check` until it returns `Some`, or panics after `deadline` naming `what`.
#[allow(dead_code)]
pub async fn eventually<T, F, Fut>(deadline: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let until = Instant::now() + deadline;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < until,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Ends the whole test run (abort, naming the test) if the test that holds it is still
/// running after `limit`: a test that hangs (a server that never answers, a loop that never
/// ends) then fails CI at once, saying which, instead of running until CI's own timeout.
/// Dropping it (the test ended, passed or panicked) disarms it.
#[must_use = "the watchdog is disarmed when dropped"]
pub struct Watchdog {
    _disarm: std::sync::mpsc::Sender<()>,
}

pub fn watchdog(limit: Duration) -> Watchdog {
    let test = std::thread::current()
        .name()
        .unwrap_or("an unnamed test")
        .to_owned();
    let (disarm, disarmed) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = disarmed.recv_timeout(limit) {
            eprintln!("WATCHDOG: {test} is still running after {limit:?}: aborting the test run");
            std::process::abort();
        }
    });
    Watchdog { _disarm: disarm }
}

/// Serves `app` on a free local port in the background (a webhook for `http` routes); returns
/// its address.
pub async fn serve_http(app: axum::Router) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// `GET path` on `addr`: the status code and body, or `None` if nothing answers.
#[allow(dead_code)]
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n")?.1.to_owned();
    Some((status, body))
}

//! Private PostgreSQL and Redis servers, each on a free port in a temporary directory, for
//! tests that stop or restart a server. The shared servers are never touched.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind a free port")
        .local_addr()
        .unwrap()
        .port()
}

fn temp_dir(kind: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "outbox-{kind}-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir).expect("create server dir");
    dir
}

/// Root runs the PostgreSQL tools as user `postgres` (they refuse root); files a private server
/// must own (a TLS key) are given to that user then.
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

/// A PostgreSQL cluster of the test's own (initdb into a temp dir), trust auth, fsync off.
pub struct PrivatePostgres {
    pub port: u16,
    dir: PathBuf,
    bin: PathBuf,
    /// Extra `-c name=value` server settings (TLS, hba_file).
    settings: Vec<(String, String)>,
}

impl PrivatePostgres {
    pub fn start() -> PrivatePostgres {
        PrivatePostgres::start_with(&[])
    }

    /// Started with extra server settings, e.g. `("ssl", "on")`, `("hba_file", "/…/pg_hba.conf")`.
    pub fn start_with(settings: &[(&str, &str)]) -> PrivatePostgres {
        let server = PrivatePostgres::initialized(settings);
        server.start_server();
        server
    }

    /// Created (initdb) on a port of its own, not running yet: [`PrivatePostgres::start_server`].
    pub fn initialized(settings: &[(&str, &str)]) -> PrivatePostgres {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL server binaries in /usr/lib/postgresql")
            .filter_map(|entry| entry.ok().map(|e| e.path().join("bin")))
            .find(|bin| bin.join("initdb").exists())
            .expect("initdb");
        let dir = temp_dir("postgres");
        let port = free_port();
        let settings = settings
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
            .collect();
        let server = PrivatePostgres {
            port,
            dir,
            bin,
            settings,
        };
        if is_root() {
            // initdb and postgres refuse to run as root.
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&server.dir)
                .status()
                .unwrap();
            assert!(status.success(), "chown the private cluster's directory");
        }
        server.run_tool(
            "initdb",
            &[
                "-D",
                &server.data(),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        server
    }

    /// Starts the server; it accepts connections when this returns.
    pub fn start_server(&self) {
        self.pg_ctl(&["start"]);
    }

    /// Stops the server (fast: connections are cut).
    pub fn stop_server(&self) {
        self.pg_ctl(&["-m", "fast", "stop"]);
    }

    fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    fn run_tool(&self, tool: &str, args: &[&str]) {
        let program = self.bin.join(tool);
        let mut command = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&program);
            c
        } else {
            Command::new(&program)
        };
        let out = command
            .args(args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .output()
            .expect("run a PostgreSQL tool");
        assert!(
            out.status.success(),
            "{tool} {args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn pg_ctl(&self, action: &[&str]) {
        let mut options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=off -c max_connections=50",
            self.port,
            self.dir.display()
        );
        for (name, value) in &self.settings {
            options.push_str(&format!(" -c {name}={value}"));
        }
        let log = self.dir.join("server.log").display().to_string();
        let data = self.data();
        let mut args = vec!["-D", &data, "-l", &log, "-o", &options, "-w", "-t", "60"];
        args.extend_from_slice(action);
        self.run_tool("pg_ctl", &args);
    }

    /// Fast restart: every connection is cut, the server is back when this returns.
    pub fn restart(&self) {
        self.pg_ctl(&["-m", "fast", "restart"]);
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let data = self.data();
        let program = self.bin.join("pg_ctl");
        let mut command = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&program);
            c
        } else {
            Command::new(&program)
        };
        let _ = command
            .args(["-D", &data, "-m", "immediate", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A redis-server of the test's own, with an append-only file fsynced on every write, so a
/// restart keeps the streams and watermarks (as a production Redis with persistence would).
pub struct PrivateRedis {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
    /// Extra server arguments; with `tls`, `port` is the TLS port and plain TCP is off.
    extra: Vec<String>,
    tls: bool,
}

impl PrivateRedis {
    pub fn start() -> PrivateRedis {
        PrivateRedis::start_with(false, &[])
    }

    /// TLS only (`--port 0 --tls-port <port>`), with `extra` arguments such as
    /// `--tls-cert-file`, `--tls-key-file`, `--tls-ca-cert-file`, `--requirepass`.
    pub fn start_tls(extra: &[&str]) -> PrivateRedis {
        PrivateRedis::start_with(true, extra)
    }

    /// Started on a free port; should another process take the port between the pick and
    /// the server's bind (free ports are only free for a moment), again on another one.
    fn start_with(tls: bool, extra: &[&str]) -> PrivateRedis {
        for _ in 0..5 {
            let mut redis = PrivateRedis::not_started(tls, extra);
            if redis.try_spawn() {
                return redis;
            }
            eprintln!(
                "redis-server could not start on {}; another port",
                redis.port
            );
        }
        panic!("redis-server did not start on any of 5 free ports");
    }

    /// A port of its own and no server on it yet: [`PrivateRedis::start_again`] starts it.
    pub fn reserved() -> PrivateRedis {
        PrivateRedis::not_started(false, &[])
    }

    fn not_started(tls: bool, extra: &[&str]) -> PrivateRedis {
        PrivateRedis {
            port: free_port(),
            dir: temp_dir("redis"),
            child: None,
            extra: extra.iter().map(|a| (*a).to_owned()).collect(),
            tls,
        }
    }

    /// A replica of the server on `master_port` (the master may come first or later).
    pub fn start_replica_of(master_port: u16) -> PrivateRedis {
        PrivateRedis::start_with(
            false,
            &["--replicaof", "127.0.0.1", &master_port.to_string()],
        )
    }

    /// A node for a Redis Cluster (not yet part of one): `--cluster-enabled yes`, its node
    /// table in its own directory, a 1 s node timeout so a failover takes seconds.
    /// The cluster bus gets a free port of its own (by default it is the port + 10000, which
    /// may be taken, or past 65535). Both ports must be listening before the next node picks
    /// its own (a free port is only free until someone binds it); else again on other ports.
    pub fn start_cluster_node() -> PrivateRedis {
        for _ in 0..5 {
            let bus = free_port();
            let bus_text = bus.to_string();
            let mut redis = PrivateRedis::not_started(
                false,
                &[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-port",
                    &bus_text,
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "1000",
                    // A replica's first sync starts at once (by default the master waits 5 s).
                    "--repl-diskless-sync-delay",
                    "0",
                ],
            );
            if redis.try_spawn() && redis.listens_on(bus) {
                return redis;
            }
            eprintln!(
                "cluster node could not start on {} / {bus}; other ports",
                redis.port
            );
            redis.kill9();
        }
        panic!("a cluster node did not start on any of 5 pairs of free ports");
    }

    /// Whether the server, still running, listens on `port` within 10 s.
    fn listens_on(&mut self, port: u16) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let Some(child) = self.child.as_mut() else {
                return false;
            };
            if matches!(child.try_wait(), Ok(Some(_))) {
                self.child = None;
                return false;
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Whether the server process is running (not killed or stopped).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Sends `signal` (`STOP`, `CONT`, …) to the server process.
    pub fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("the server runs");
        let _ = Command::new("kill")
            .args([&format!("-{signal}"), &child.id().to_string()])
            .status();
    }

    /// SIGKILL, and nothing more: the server is gone until [`PrivateRedis::start_again`].
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server on its port and waits until it listens; false when it exited first
    /// (the port was taken).
    fn try_spawn(&mut self) -> bool {
        let port = self.port.to_string();
        let ports: &[&str] = if self.tls {
            &["--port", "0", "--tls-port", &port]
        } else {
            &["--port", &port]
        };
        let child = Command::new("redis-server")
            .args(ports)
            .args(["--bind", "127.0.0.1", "--save", ""])
            .args(&self.extra)
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            let child = self.child.as_mut().expect("just spawned");
            if matches!(child.try_wait(), Ok(Some(_))) {
                self.child = None;
                return false;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not listen on {} within 30 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    /// Starts the server on its (fixed) port and waits until it listens.
    fn spawn(&mut self) {
        assert!(
            self.try_spawn(),
            "redis-server exited at start on {}",
            self.port
        );
    }

    /// SIGTERM (Redis flushes its append-only file), wait `down`, start again on the same port.
    pub fn restart(&mut self, down: Duration) {
        self.stop();
        std::thread::sleep(down);
        self.spawn();
    }

    /// Starts it (again) on its port, after [`PrivateRedis::stop`] or [`PrivateRedis::reserved`].
    pub fn start_again(&mut self) {
        self.spawn();
    }

    /// SIGKILL, forget everything it stored (its append-only file), and start again empty on
    /// the same port: a Redis that lost acknowledged writes.
    pub fn restart_empty(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        std::fs::create_dir_all(&self.dir).expect("recreate server dir");
        self.spawn();
    }

    /// SIGTERM, and wait for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

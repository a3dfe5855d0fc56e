//! What Postgres saw the relay do, from its cumulative statistics and from /proc:
//! rows read from and written to an `outbox` table (`pg_stat_user_tables`), transactions in
//! the scratch database (`pg_stat_database`), and the CPU time of the relay's backends.
//!
//! Postgres 15 keeps these counters in shared memory; a backend folds its own counts in at
//! most about once a second while busy, and always when it exits. So table counters are read
//! after the relay has stopped (its backends exited), once they stop moving; the transaction
//! rate of a running relay is taken between two flushes seen while sampling (see
//! [`IdleCost`]).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde::Serialize;
use sqlx::PgPool;

use super::BenchError;
use super::cpu::process_cpu_seconds;
use super::relay_process::phase;
use outbox_relay::store::APPLICATION_NAME;

/// Cumulative row counters of one table in schema `outbox`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TableCounters {
    /// Heap rows read: by sequential scans (`seq_tup_read`) and fetched by index scans
    /// (`idx_tup_fetch`).
    pub rows_read: i64,
    /// Rows inserted, updated and deleted.
    pub rows_written: i64,
}

impl TableCounters {
    pub fn since(self, earlier: TableCounters) -> TableCounters {
        TableCounters {
            rows_read: self.rows_read - earlier.rows_read,
            rows_written: self.rows_written - earlier.rows_written,
        }
    }
}

/// The counters of `outbox.<table>` as Postgres has them now (fresh, not a cached snapshot).
pub async fn table_counters(pool: &PgPool, table: &str) -> Result<TableCounters, BenchError> {
    let fail = |e| phase("read pg_stat_user_tables", e);
    let mut conn = pool.acquire().await.map_err(fail)?;
    sqlx::query("SELECT pg_stat_clear_snapshot()")
        .execute(&mut *conn)
        .await
        .map_err(fail)?;
    let (rows_read, rows_written): (i64, i64) = sqlx::query_as(
        "SELECT (coalesce(t.seq_tup_read, 0) + coalesce(t.idx_tup_fetch, 0))::int8, \
                (t.n_tup_ins + t.n_tup_upd + t.n_tup_del)::int8 \
           FROM pg_stat_user_tables t WHERE t.schemaname = 'outbox' AND t.relname = $1",
    )
    .bind(table)
    .fetch_one(&mut *conn)
    .await
    .map_err(fail)?;
    Ok(TableCounters {
        rows_read,
        rows_written,
    })
}

/// The counters once they have stopped moving (the exited relay's backends have flushed):
/// two reads 200 ms apart that agree, or the last read after 5 s.
pub async fn settled_table_counters(
    pool: &PgPool,
    table: &str,
) -> Result<TableCounters, BenchError> {
    let until = Instant::now() + Duration::from_secs(5);
    let mut last = table_counters(pool, table).await?;
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = table_counters(pool, table).await?;
        if now == last || Instant::now() > until {
            return Ok(now);
        }
        last = now;
    }
}

/// What a caught-up relay costs Postgres while nothing is published.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct IdleCost {
    pub seconds: f64,
    /// Transactions (each poll is one statement, so ≈ queries) per second in the scratch
    /// database, from `pg_stat_database.xact_commit + xact_rollback`.
    pub transactions_per_second: f64,
    /// CPU seconds per second (utime + stime) of the relay's backends.
    pub backend_cpu_per_second: f64,
    /// Backends counted as the relay's.
    pub backends: usize,
}

/// Watches the scratch database `database` for `window` while the relay `relay_pid` idles.
/// `admin` must be connected to another database, so that watching adds nothing.
pub async fn idle_cost(
    admin: &PgPool,
    database: &str,
    relay_pid: Option<u32>,
    window: Duration,
) -> Result<IdleCost, BenchError> {
    let backends = relay_backends(admin, database, relay_pid).await?;
    let cpu_before = process_cpu_seconds(&backends);
    let started = Instant::now();
    let mut samples = vec![(
        Duration::ZERO,
        database_transactions(admin, database).await?,
    )];
    while started.elapsed() < window {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let count = database_transactions(admin, database).await?;
        samples.push((started.elapsed(), count));
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = process_cpu_seconds(&backends) - cpu_before;
    Ok(IdleCost {
        seconds: elapsed,
        transactions_per_second: rate_between_flushes(&samples, elapsed),
        backend_cpu_per_second: cpu / elapsed.max(f64::EPSILON),
        backends: backends.len(),
    })
}

/// The counter's rate between the first and the last time it moved (backends flush about
/// once a second, so the ends of the window would otherwise be off by up to a second's
/// worth); the plain difference over the window when it moved less than twice.
fn rate_between_flushes(samples: &[(Duration, i64)], window: f64) -> f64 {
    let changes: Vec<(Duration, i64)> = samples
        .windows(2)
        .filter(|pair| pair[1].1 != pair[0].1)
        .map(|pair| pair[1])
        .collect();
    match (changes.first(), changes.last()) {
        (Some(first), Some(last)) if last.0 > first.0 => {
            (last.1 - first.1) as f64 / (last.0 - first.0).as_secs_f64()
        }
        _ => {
            let (first, last) = (samples[0].1, samples[samples.len() - 1].1);
            (last - first) as f64 / window.max(f64::EPSILON)
        }
    }
}

async fn database_transactions(admin: &PgPool, database: &str) -> Result<i64, BenchError> {
    let fail = |e| phase("read pg_stat_database", e);
    let mut conn = admin.acquire().await.map_err(fail)?;
    sqlx::query("SELECT pg_stat_clear_snapshot()")
        .execute(&mut *conn)
        .await
        .map_err(fail)?;
    sqlx::query_scalar(
        "SELECT (d.xact_commit + d.xact_rollback)::int8 FROM pg_stat_database d WHERE d.datname = $1",
    )
    .bind(database)
    .fetch_one(&mut *conn)
    .await
    .map_err(fail)
}

/// The pids of the relay's backends: sessions in `database` named like our connections whose
/// client port is a socket of the relay process (all such sessions when that cannot be told,
/// e.g. over a Unix socket; the bench's own are idle then and add next to nothing).
async fn relay_backends(
    admin: &PgPool,
    database: &str,
    relay_pid: Option<u32>,
) -> Result<Vec<u32>, BenchError> {
    let sessions: Vec<(i32, Option<i32>)> = sqlx::query_as(
        "SELECT a.pid, a.client_port FROM pg_stat_activity a \
          WHERE a.datname = $1 AND a.application_name = $2",
    )
    .bind(database)
    .bind(APPLICATION_NAME)
    .fetch_all(admin)
    .await
    .map_err(|e| phase("read pg_stat_activity", e))?;
    let ports = relay_pid.map(local_tcp_ports).unwrap_or_default();
    let theirs: Vec<u32> = sessions
        .iter()
        .filter(|(_, port)| port.is_some_and(|p| ports.contains(&(p as u16))))
        .map(|(pid, _)| *pid as u32)
        .collect();
    if theirs.is_empty() {
        return Ok(sessions.iter().map(|(pid, _)| *pid as u32).collect());
    }
    Ok(theirs)
}

/// Local TCP ports of the sockets process `pid` holds (from /proc; empty elsewhere).
fn local_tcp_ports(pid: u32) -> HashSet<u16> {
    let inodes: HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy().into_owned();
            Some(
                target
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .to_owned(),
            )
        })
        .collect();
    ["tcp", "tcp6"]
        .iter()
        .filter_map(|file| std::fs::read_to_string(format!("/proc/{pid}/net/{file}")).ok())
        .flat_map(|table| tcp_ports_of(&table, &inodes))
        .collect()
}

/// From a /proc/net/tcp table: the local ports of the sockets whose inode is in `inodes`.
fn tcp_ports_of(table: &str, inodes: &HashSet<String>) -> Vec<u16> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let inode = fields.get(9)?;
            if !inodes.contains(*inode) {
                return None;
            }
            let (_, port) = fields.get(1)?.rsplit_once(':')?;
            u16::from_str_radix(port, 16).ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_table_ports_by_inode() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
           0: 0100007F:D431 0100007F:1538 01 00000000:00000000 00:00000000 00000000  1000        0 4242 1\n\
           1: 0100007F:D432 0100007F:1538 01 00000000:00000000 00:00000000 00000000  1000        0 4243 1\n";
        let inodes = HashSet::from(["4243".to_owned()]);
        assert_eq!(tcp_ports_of(table, &inodes), vec![0xD432]);
    }

    #[test]
    fn the_rate_is_taken_between_the_first_and_last_flush() {
        let s = |ms, n| (Duration::from_millis(ms), n);
        // Flushes at 0.3 s (+100) and 1.3 s (+200): 200 per second between them.
        let samples = [
            s(0, 0),
            s(300, 100),
            s(800, 100),
            s(1300, 300),
            s(1500, 300),
        ];
        assert!((rate_between_flushes(&samples, 1.5) - 200.0).abs() < 1e-9);
        // One flush only: the plain rate over the window.
        let samples = [s(0, 0), s(500, 10), s(1000, 10)];
        assert!((rate_between_flushes(&samples, 1.0) - 10.0).abs() < 1e-9);
    }
}

//! `bench drain`: a backlog of N messages forwarded to one stream by one group (a real
//! `outbox-relay run` process), next to two ceilings for the same work in the same run:
//! (a) reading the same rows with a plain sqlx SELECT in cursor order, batch by batch;
//! (b) XADD of entries of the same shape with redis-rs pipelines of the same batch size.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use sqlx::PgPool;
use uuid::Uuid;

use super::publish::{payload_of_size, register_schema};
use super::relay_process::{RelayProcess, RelayScratch, ScratchRedis, phase};
use super::{BenchError, Comparison, Measurement};
use crate::store;

const GROUP: &str = "bench-drain";
const STREAM: &str = "drain";
const TOPIC: &str = "bench.drain";
/// Rows per backlog-filling transaction.
const FILL_CHUNK: u64 = 20_000;

/// What the read ceiling decodes: the columns the relay reads, as the relay reads them.
#[derive(sqlx::FromRow)]
#[allow(dead_code)] // decoded to be measured, never looked at
struct CeilingRow {
    tx_id_text: String,
    seq: i64,
    id: Uuid,
    topic: String,
    key: Option<String>,
    schema_version: Option<i32>,
    payload_text: String,
    headers_text: Option<String>,
    created_at: chrono::DateTime<chrono::Utc>,
}

/// Defaults: 1,000,000 messages of ~1 KiB, batches of 500.
#[derive(Debug, Clone)]
pub struct DrainBench {
    pub messages: u64,
    pub payload_bytes: usize,
    pub batch_size: usize,
    /// Register a schema for the backlog's topic and stamp every row with it, so the relay
    /// validates each payload (the ceilings read and append the same rows without validating).
    pub schema: bool,
    /// The `outbox-relay` binary to run as the relay.
    pub relay_exe: PathBuf,
}

#[derive(Debug, Clone)]
pub struct DrainBenchReport {
    pub settings: DrainBench,
    /// How long filling the backlog took (not part of any figure).
    pub fill: Measurement,
    /// The relay, from its start to its cursor at the last message.
    pub relay: Measurement,
    /// (a) plain SELECT in cursor order.
    pub read_ceiling: Measurement,
    /// (b) pipelined XADD.
    pub append_ceiling: Measurement,
    /// The relay's peak resident set, bytes.
    pub relay_peak_rss: Option<u64>,
}

impl DrainBenchReport {
    /// The relay next to the lower of the two ceilings.
    pub fn against_lower_ceiling(&self) -> Comparison {
        let ceiling = if self.read_ceiling.per_second() <= self.append_ceiling.per_second() {
            self.read_ceiling
        } else {
            self.append_ceiling
        };
        Comparison {
            ours: self.relay,
            ceiling,
        }
    }
}

impl DrainBench {
    /// Runs in `scratch`: its database, its key prefix, a relay process pointed at both.
    pub async fn run(&self, scratch: &mut RelayScratch) -> Result<DrainBenchReport, BenchError> {
        let RelayScratch {
            database,
            database_url,
            redis_url,
            redis,
        } = scratch;
        let pool = &database.pool;
        let fill = self.fill(pool).await?;
        let last = store::messages_last_position(pool)
            .await
            .map_err(|e| phase("find the end of the backlog", e))?
            .ok_or_else(|| phase("fill", "the backlog is empty"))?;
        // The ceilings first, so the relay does not find its rows warmer in the cache than they did.
        let read_ceiling = self.read_ceiling(pool).await?;
        let append_ceiling = self.append_ceiling(redis).await?;

        let toml = format!(
            "[redis]\nkey_prefix = \"{}\"\n[relay]\nbatch_size = {}\n\
             [[groups]]\nname = \"{GROUP}\"\n[[groups.routes]]\ntopics = [\"*\"]\nhandler = \"forward\"\nstream = \"{STREAM}\"\n",
            redis.prefix, self.batch_size
        );
        let started = Instant::now();
        let mut relay = RelayProcess::start(&self.relay_exe, database_url, redis_url, &toml)?;
        loop {
            let cursor = store::consumer_groups_cursor(pool, GROUP)
                .await
                .map_err(|e| phase("read the group's cursor", e))?;
            if cursor.is_some_and(|c| c.cursor >= last) {
                break;
            }
            relay.check_alive()?;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let relay_measurement = Measurement {
            messages: self.messages,
            elapsed: started.elapsed(),
        };
        let relay_peak_rss = relay.peak_rss_bytes();
        relay.stop().await?;
        let appended: u64 = redis::cmd("XLEN")
            .arg(format!("{}{STREAM}", redis.prefix))
            .query_async(&mut redis.connection)
            .await
            .map_err(|e| phase("count the stream", e))?;
        if appended != self.messages {
            return Err(phase(
                "check",
                format!(
                    "the stream holds {appended} entries, expected {}",
                    self.messages
                ),
            ));
        }
        Ok(DrainBenchReport {
            settings: self.clone(),
            fill,
            relay: relay_measurement,
            read_ceiling,
            append_ceiling,
            relay_peak_rss,
        })
    }

    /// The backlog: `messages` rows in transactions of [`FILL_CHUNK`], generated by Postgres.
    async fn fill(&self, pool: &PgPool) -> Result<Measurement, BenchError> {
        let payload = payload_of_size(self.payload_bytes);
        let version: Option<i32> = if self.schema {
            register_schema(pool, TOPIC).await?;
            Some(1)
        } else {
            None
        };
        let started = Instant::now();
        let mut left = self.messages;
        while left > 0 {
            let chunk = left.min(FILL_CHUNK);
            sqlx::query(
                "INSERT INTO outbox.messages (id, topic, key, payload, schema_version) \
                 SELECT outbox.uuid_v7(), $1, 'customer-' || (g % 100), $2, $4 \
                   FROM generate_series(1, $3) AS g",
            )
            .bind(TOPIC)
            .bind(&payload)
            .bind(chunk as i64)
            .bind(version)
            .execute(pool)
            .await
            .map_err(|e| phase("fill the backlog", e))?;
            left -= chunk;
        }
        sqlx::query("VACUUM ANALYZE outbox.messages")
            .execute(pool)
            .await
            .map_err(|e| phase("vacuum the backlog", e))?;
        Ok(Measurement {
            messages: self.messages,
            elapsed: started.elapsed(),
        })
    }

    /// (a) The same rows, the same columns as text, batch by batch in cursor order.
    async fn read_ceiling(&self, pool: &PgPool) -> Result<Measurement, BenchError> {
        let started = Instant::now();
        let (mut tx_id, mut seq) = ("0".to_owned(), 0_i64);
        let mut read = 0_u64;
        loop {
            let rows: Vec<CeilingRow> = sqlx::query_as(
                "SELECT m.tx_id::text AS tx_id_text, m.seq, m.id, m.topic, m.key, m.schema_version, \
                        m.payload::text AS payload_text, m.headers::text AS headers_text, m.created_at \
                   FROM outbox.messages m \
                  WHERE (m.tx_id, m.seq) > ($1::text::xid8, $2) \
                  ORDER BY m.tx_id, m.seq LIMIT $3",
            )
            .bind(&tx_id)
            .bind(seq)
            .bind(self.batch_size as i64)
            .fetch_all(pool)
            .await
            .map_err(|e| phase("ceiling: plain SELECT", e))?;
            let Some(last) = rows.last() else { break };
            tx_id.clone_from(&last.tx_id_text);
            seq = last.seq;
            read += rows.len() as u64;
        }
        Ok(Measurement {
            messages: read,
            elapsed: started.elapsed(),
        })
    }

    /// (b) XADD of entries with the relay's fields and sizes, one pipeline per batch.
    async fn append_ceiling(&self, redis: &mut ScratchRedis) -> Result<Measurement, BenchError> {
        let payload = payload_of_size(self.payload_bytes).to_string();
        let key = format!("{}ceiling", redis.prefix);
        let created_at = chrono::Utc::now().to_rfc3339();
        let started = Instant::now();
        let mut sent = 0_u64;
        while sent < self.messages {
            let batch = (self.messages - sent).min(self.batch_size as u64);
            let mut pipe = redis::pipe();
            for n in sent..sent + batch {
                let position = format!("{}:{}", 1000 + n / FILL_CHUNK, n % FILL_CHUNK);
                let customer = format!("customer-{}", n % 100);
                pipe.cmd("XADD")
                    .arg(&key)
                    .arg("*")
                    .arg("id")
                    .arg(Uuid::now_v7().to_string())
                    .arg("topic")
                    .arg(TOPIC)
                    .arg("key")
                    .arg(customer)
                    .arg("payload")
                    .arg(&payload)
                    .arg("headers")
                    .arg("{}")
                    .arg("position")
                    .arg(position)
                    .arg("created_at")
                    .arg(&created_at)
                    .arg("group")
                    .arg(GROUP)
                    .ignore();
            }
            pipe.query_async::<()>(&mut redis.connection)
                .await
                .map_err(|e| phase("ceiling: pipelined XADD", e))?;
            sent += batch;
        }
        Ok(Measurement {
            messages: sent,
            elapsed: started.elapsed(),
        })
    }
}

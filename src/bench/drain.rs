//! `bench drain`: a backlog of N messages forwarded to one stream by one group (a real
//! `outbox-relay run` process), next to four ceilings for the same work in the same run:
//! (a) reading the same rows with a plain sqlx SELECT in cursor order, batch by batch;
//! (b) XADD of entries of the same shape with redis-rs pipelines of the same batch size;
//! and the C-tool ceilings ([`super::c_tools`]): (c) `psql` `\copy` of the same rows and
//! (d) `redis-benchmark` XADD of the relay's entry, 1 client, 500 deep.

use std::path::PathBuf;
use std::time::Instant;

use sqlx::PgPool;
use uuid::Uuid;

use serde_json::json;

use super::backlog::{Backlog, FILL_CHUNK, wait_until_passed};
use super::c_tools::{self, CToolCeilings};
use super::publish::{payload_of_size, register_schema};
use super::relay_process::{RelayProcess, RelayScratch, ScratchRedis, phase};
use super::stages::StageBreakdown;
use super::summary::{Line, Machine, Summary};
use super::{BenchError, Comparison, Measurement, Progress};
use outbox_relay::position::Position;
use outbox_relay::relay::EntryFields;
use outbox_relay::sink::Fields;
use outbox_relay::store;

const GROUP: &str = "bench-drain";
const STREAM: &str = "drain";
const TOPIC: &str = "bench.drain";

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
    /// Streams the backlog is spread over (one topic each, routed `stream = "{topic}"`); 1:
    /// everything into one stream.
    pub streams: u64,
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
    /// (c) psql COPY and (d) redis-benchmark XADD, or why each was skipped.
    pub c_tools: CToolCeilings,
    /// The relay's peak resident set, bytes.
    pub relay_peak_rss: Option<u64>,
    /// Whether Redis was a cluster (`[redis] cluster = true`).
    pub redis_cluster: bool,
    /// Whether the relay's `/metrics` answered at the end of the drain.
    pub metrics_scraped: bool,
    /// Where the relay's time went, from its `/metrics` (`None`: not scraped, or a relay
    /// without the metric).
    pub stages: Option<StageBreakdown>,
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

    /// The relay next to the lower of the two C-tool ceilings, when both were measured.
    pub fn against_lower_c_tool_ceiling(&self) -> Option<Comparison> {
        self.c_tools.lower().map(|ceiling| Comparison {
            ours: self.relay,
            ceiling,
        })
    }

    /// The summary's lines: the relay against the lower in-run ceiling, each of them, then
    /// against the lower C-tool ceiling and each C-tool ceiling that was measured.
    fn lines(&self) -> Vec<Line> {
        let read = Comparison {
            ours: self.relay,
            ceiling: self.read_ceiling,
        };
        let append = Comparison {
            ours: self.relay,
            ceiling: self.append_ceiling,
        };
        let mut lines = vec![
            Line::comparison(
                "drain",
                "relay vs lower ceiling",
                &self.against_lower_ceiling(),
            ),
            Line::comparison("drain", "relay vs (a) plain SELECT", &read),
            Line::comparison("drain", "relay vs (b) pipelined XADD", &append),
        ];
        if let Some(lower) = self.against_lower_c_tool_ceiling() {
            lines.push(Line::comparison(
                "drain",
                "relay vs lower C-tool ceiling",
                &lower,
            ));
        }
        let tools = [
            ("relay vs (c) psql COPY", &self.c_tools.copy),
            ("relay vs (d) redis-benchmark XADD", &self.c_tools.xadd),
        ];
        for (what, ceiling) in tools {
            if let Ok(ceiling) = ceiling {
                let c = Comparison {
                    ours: self.relay,
                    ceiling: *ceiling,
                };
                lines.push(Line::comparison("drain", what, &c));
            }
        }
        lines
    }

    /// The figures for the summary table and `--json`.
    pub fn summary(&self) -> Summary {
        let s = &self.settings;
        let wall = self.relay.elapsed.as_secs_f64();
        let stages = self.stages.as_ref().map(|stages| {
            stages
                .seconds
                .iter()
                .zip(stages.shares(wall))
                .map(|((name, seconds), (_, share))| {
                    (
                        name.clone(),
                        json!({"seconds": seconds, "share_of_wall": share}),
                    )
                })
                .collect::<serde_json::Map<_, _>>()
        });
        Summary {
            scenario: "drain",
            parameters: json!({
                "messages": s.messages,
                "payload_bytes": s.payload_bytes,
                "batch_size": s.batch_size,
                "schema": s.schema,
                "streams": s.streams,
                "redis_cluster": self.redis_cluster,
            }),
            machine: Machine::this_one(),
            lines: self.lines(),
            details: json!({
                "fill_seconds": self.fill.elapsed.as_secs_f64(),
                "relay_peak_rss_bytes": self.relay_peak_rss,
                "relay_wall_seconds": wall,
                "metrics_scraped": self.metrics_scraped,
                "stages": stages,
                "c_tools": {
                    "psql_copy": c_tool_detail(&self.c_tools.copy),
                    "redis_benchmark_xadd": c_tool_detail(&self.c_tools.xadd),
                    "xadd_pipeline": c_tools::XADD_PIPELINE,
                },
            }),
        }
    }
}

impl DrainBench {
    /// Runs in `scratch`: its database, its key prefix, a relay process pointed at both.
    pub async fn run(
        &self,
        scratch: &mut RelayScratch,
        progress: &dyn Progress,
    ) -> Result<DrainBenchReport, BenchError> {
        let RelayScratch {
            database,
            database_url,
            redis_url,
            redis,
        } = scratch;
        let pool = &database.pool;
        let mut backlog = Backlog {
            topic: TOPIC,
            messages: self.messages,
            payload_bytes: self.payload_bytes,
            schema_version: None,
            keys: 100,
            fail_once_every: None,
            topics: self.streams.max(1),
        };
        let topics = backlog.topic_names();
        if self.schema {
            for topic in &topics {
                register_schema(pool, topic).await?;
            }
            backlog.schema_version = Some(1);
        }
        // One stream per topic; a single one keeps its old name.
        let (route, streams): (&str, Vec<String>) = match topics.len() {
            1 => (STREAM, vec![STREAM.to_owned()]),
            _ => ("{topic}", topics.clone()),
        };
        let (fill, last) = backlog.fill(pool, progress).await?;
        // The ceilings first, so the relay does not find its rows warmer in the cache than they did.
        progress.phase("ceiling (a): plain SELECT", Some(self.messages));
        let read_ceiling = self.read_ceiling(pool, progress).await?;
        progress.phase("ceiling (b): pipelined XADD", Some(self.messages));
        let append_ceiling = self.append_ceiling(redis, progress).await?;
        progress.phase("ceiling (c): psql COPY", None);
        let copy = c_tools::copy_ceiling(database_url, self.messages).await;
        progress.phase("ceiling (d): redis-benchmark XADD", None);
        let entry = relay_entry(pool, last).await?;
        let xadd = c_tools::xadd_ceiling(redis_url, redis, &entry, self.messages).await;
        let c_tools = CToolCeilings { copy, xadd };

        let toml = format!(
            "{}[relay]\nbatch_size = {}\n\
             [[groups]]\nname = \"{GROUP}\"\n[[groups.routes]]\ntopics = [\"*\"]\nhandler = \"forward\"\nstream = \"{route}\"\n",
            redis.relay_section(),
            self.batch_size
        );
        progress.phase("the relay drains the backlog", Some(self.messages));
        let started = Instant::now();
        let mut relay =
            RelayProcess::start_with_http(&self.relay_exe, database_url, redis_url, &toml)?;
        wait_until_passed(
            pool,
            &[GROUP.to_owned()],
            last,
            || relay.check_alive(),
            progress,
        )
        .await?;
        let relay_measurement = Measurement {
            messages: self.messages,
            elapsed: started.elapsed(),
        };
        let relay_peak_rss = relay.peak_rss_bytes();
        let metrics = relay.scrape_metrics().await;
        let metrics_scraped = metrics.is_some();
        let stages = metrics.and_then(|text| StageBreakdown::parse(&text));
        relay.stop().await?;
        let appended: u64 = redis.stream_lengths(&streams).await?.iter().sum();
        if appended != self.messages {
            return Err(phase(
                "check",
                format!(
                    "the stream(s) hold {appended} entries, expected {}",
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
            c_tools,
            relay_peak_rss,
            redis_cluster: redis.cluster,
            metrics_scraped,
            stages,
        })
    }

    /// (a) The same rows, the same columns as text, batch by batch in cursor order.
    pub(super) async fn read_ceiling(
        &self,
        pool: &PgPool,
        progress: &dyn Progress,
    ) -> Result<Measurement, BenchError> {
        // One connection of its own, closed at the end: a backend's statistics are flushed when
        // it exits, so `bench fanout` can count the relay's reads alone afterwards.
        let mut conn = pool
            .acquire()
            .await
            .map_err(|e| phase("ceiling: plain SELECT", e))?
            .detach();
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
            .fetch_all(&mut conn)
            .await
            .map_err(|e| phase("ceiling: plain SELECT", e))?;
            let Some(last) = rows.last() else { break };
            tx_id.clone_from(&last.tx_id_text);
            seq = last.seq;
            read += rows.len() as u64;
            progress.advance_to(read);
        }
        let elapsed = started.elapsed();
        let _ = sqlx::Connection::close(conn).await;
        Ok(Measurement {
            messages: read,
            elapsed,
        })
    }

    /// (b) XADD of entries with the relay's fields and sizes, one pipeline per batch.
    pub(super) async fn append_ceiling(
        &self,
        redis: &mut ScratchRedis,
        progress: &dyn Progress,
    ) -> Result<Measurement, BenchError> {
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
            progress.advance_to(sent);
        }
        Ok(Measurement {
            messages: sent,
            elapsed: started.elapsed(),
        })
    }
}

/// The entry the relay appends for the row at `last` (every field: the bench's group keeps
/// the default `entry_fields`), for redis-benchmark to repeat.
async fn relay_entry(pool: &PgPool, last: Position) -> Result<Fields, BenchError> {
    let before = Position::new(last.tx_id, last.seq - 1);
    let row = store::messages_between(pool, before, last, 1)
        .await
        .map_err(|e| phase("read the backlog's last row", e))?
        .pop()
        .ok_or_else(|| phase("read the backlog's last row", "it is gone"))?;
    Ok(EntryFields::default().of(GROUP, &row, row.payload.clone()))
}

/// A C-tool ceiling in `--json`: its rate, or why it was skipped.
fn c_tool_detail(ceiling: &Result<Measurement, c_tools::Skipped>) -> serde_json::Value {
    match ceiling {
        Ok(m) => json!({
            "per_second": m.per_second(),
            "messages": m.messages,
            "seconds": m.elapsed.as_secs_f64(),
        }),
        Err(skipped) => json!({ "skipped": skipped.to_string() }),
    }
}

//! `bench fanout`: the same backlog forwarded by 1, 4 and 16 groups (one real
//! `outbox-relay run` process with that many `[[groups]]`, each forwarding every topic to
//! its own stream). Per group count: deliveries per second, and the Postgres rows read from
//! `outbox.messages` per message and per delivery (`pg_stat_user_tables`, read after the
//! relay stopped so its backends have flushed their counts).
//!
//! Ceiling for the same work done by hand with one shared read: a plain SELECT of the
//! backlog in cursor order, plus pipelined XADD of every entry to every group's stream
//! (measured once for N entries, counted once per group).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;

use super::backlog::{Backlog, wait_until_passed};
use super::drain::DrainBench;
use super::pg_activity::settled_table_counters;
use super::relay_process::{RelayScratch, phase};
use super::summary::{Line, Machine, Summary};
use super::{BenchError, Comparison, Measurement, Progress};

const TOPIC: &str = "bench.fanout";

#[derive(Debug, Clone)]
pub struct FanoutBench {
    pub messages: u64,
    pub payload_bytes: usize,
    pub batch_size: usize,
    /// Group counts to run, one relay run each (default 1, 4, 16).
    pub group_counts: Vec<u32>,
    pub relay_exe: PathBuf,
}

/// One group count's run.
#[derive(Debug, Clone, Serialize)]
pub struct FanoutRun {
    pub groups: u32,
    /// Deliveries (messages × groups) from the relay's start to the last group's cursor at
    /// the end of the backlog.
    #[serde(skip)]
    pub relay: Measurement,
    /// One shared read plus `groups` × the append ceiling.
    #[serde(skip)]
    pub ceiling: Measurement,
    /// Rows read from `outbox.messages` during the run.
    pub rows_read: i64,
}

impl FanoutRun {
    pub fn comparison(&self) -> Comparison {
        Comparison {
            ours: self.relay,
            ceiling: self.ceiling,
        }
    }

    /// Rows read per message of the backlog.
    pub fn rows_per_message(&self, messages: u64) -> f64 {
        self.rows_read as f64 / messages.max(1) as f64
    }

    /// Rows read per delivery (message × group).
    pub fn rows_per_delivery(&self, messages: u64) -> f64 {
        self.rows_per_message(messages) / f64::from(self.groups.max(1))
    }
}

/// How the read cost grows with the number of groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Growth {
    /// Each group reads the outbox for itself: cost ∝ groups.
    Linear,
    /// Better than linear, worse than flat.
    Sublinear,
    /// Groups share the reads: cost per message hardly grows.
    Flat,
}

impl Growth {
    /// From the rows read per message with the fewest and the most groups.
    pub fn judge(fewest: (u32, f64), most: (u32, f64)) -> Growth {
        let groups_factor = f64::from(most.0) / f64::from(fewest.0.max(1));
        let cost_factor = most.1 / fewest.1.max(f64::EPSILON);
        if cost_factor >= 0.75 * groups_factor {
            Growth::Linear
        } else if cost_factor <= 1.5 {
            Growth::Flat
        } else {
            Growth::Sublinear
        }
    }
}

#[derive(Debug, Clone)]
pub struct FanoutBenchReport {
    pub settings: FanoutBench,
    pub read_ceiling: Measurement,
    pub append_ceiling: Measurement,
    pub runs: Vec<FanoutRun>,
}

impl FanoutBenchReport {
    /// `None` with fewer than two group counts.
    pub fn growth(&self) -> Option<Growth> {
        let n = self.settings.messages;
        let fewest = self.runs.iter().min_by_key(|r| r.groups)?;
        let most = self.runs.iter().max_by_key(|r| r.groups)?;
        (most.groups > fewest.groups).then(|| {
            Growth::judge(
                (fewest.groups, fewest.rows_per_message(n)),
                (most.groups, most.rows_per_message(n)),
            )
        })
    }

    pub fn summary(&self) -> Summary {
        let s = &self.settings;
        let n = s.messages;
        let mut lines = Vec::new();
        for run in &self.runs {
            let g = run.groups;
            lines.push(Line::comparison(
                "fanout",
                format!("{g} group(s): deliveries"),
                &run.comparison(),
            ));
            lines.push(Line::figure(
                "fanout",
                format!("{g} group(s): rows read per message"),
                run.rows_per_message(n),
                "rows/msg",
            ));
            lines.push(Line::figure(
                "fanout",
                format!("{g} group(s): rows read per delivery"),
                run.rows_per_delivery(n),
                "rows/delivery",
            ));
        }
        Summary {
            scenario: "fanout",
            parameters: json!({
                "messages": n,
                "payload_bytes": s.payload_bytes,
                "batch_size": s.batch_size,
                "group_counts": s.group_counts,
            }),
            machine: Machine::this_one(),
            lines,
            details: json!({
                "read_ceiling_seconds": self.read_ceiling.elapsed.as_secs_f64(),
                "append_ceiling_seconds": self.append_ceiling.elapsed.as_secs_f64(),
                "runs": self.runs.iter().map(|r| json!({
                    "groups": r.groups,
                    "rows_read": r.rows_read,
                    "rows_per_message": r.rows_per_message(n),
                    "rows_per_delivery": r.rows_per_delivery(n),
                    "deliveries": r.relay.messages,
                    "seconds": r.relay.elapsed.as_secs_f64(),
                })).collect::<Vec<_>>(),
                "growth": self.growth(),
            }),
        }
    }
}

impl FanoutBench {
    pub async fn run(
        &self,
        scratch: &mut RelayScratch,
        progress: &dyn Progress,
    ) -> Result<FanoutBenchReport, BenchError> {
        let backlog = Backlog {
            topic: TOPIC,
            messages: self.messages,
            payload_bytes: self.payload_bytes,
            schema_version: None,
            keys: 100,
            fail_once_every: None,
            topics: 1,
        };
        let pool = scratch.database.pool.clone();
        let (_, last) = backlog.fill(&pool, progress).await?;
        let drain = DrainBench {
            messages: self.messages,
            payload_bytes: self.payload_bytes,
            batch_size: self.batch_size,
            schema: false,
            streams: 1,
            relay_exe: self.relay_exe.clone(),
        };
        progress.phase("ceiling: plain SELECT", Some(self.messages));
        let read_ceiling = drain.read_ceiling(&pool, progress).await?;
        progress.phase("ceiling: pipelined XADD", Some(self.messages));
        let append_ceiling = drain.append_ceiling(&mut scratch.redis, progress).await?;
        let mut runs = Vec::new();
        for &groups in &self.group_counts {
            let mut run = self.run_groups(scratch, groups, last, progress).await?;
            run.ceiling = Measurement {
                messages: self.messages * u64::from(groups),
                elapsed: read_ceiling.elapsed + append_ceiling.elapsed * groups,
            };
            runs.push(run);
        }
        Ok(FanoutBenchReport {
            settings: self.clone(),
            read_ceiling,
            append_ceiling,
            runs,
        })
    }

    /// One relay with `groups` groups, from start to every cursor at `last`.
    async fn run_groups(
        &self,
        scratch: &mut RelayScratch,
        groups: u32,
        last: outbox_relay::Position,
        progress: &dyn Progress,
    ) -> Result<FanoutRun, BenchError> {
        let pool = scratch.database.pool.clone();
        let names: Vec<String> = (0..groups)
            .map(|i| format!("fanout-{groups}-{i}"))
            .collect();
        let mut toml = format!(
            "{}[relay]\nbatch_size = {}\n",
            scratch.redis.relay_section(),
            self.batch_size
        );
        for name in &names {
            toml.push_str(&format!(
                "[[groups]]\nname = \"{name}\"\n[[groups.routes]]\ntopics = [\"*\"]\nhandler = \"forward\"\nstream = \"{name}\"\n"
            ));
        }
        let before = settled_table_counters(&pool, "messages").await?;
        progress.phase(
            &format!("{groups} group(s) forward the backlog"),
            Some(self.messages),
        );
        let started = Instant::now();
        let mut relay = scratch.start_relay(&self.relay_exe, &toml)?;
        wait_until_passed(&pool, &names, last, || relay.check_alive(), progress).await?;
        let elapsed = started.elapsed();
        relay.stop().await?;
        progress.phase("waiting for Postgres' statistics", None);
        let after = settled_table_counters(&pool, "messages").await?;
        self.check_and_delete_streams(scratch, &names).await?;
        Ok(FanoutRun {
            groups,
            relay: Measurement {
                messages: self.messages * u64::from(groups),
                elapsed,
            },
            ceiling: Measurement {
                messages: 0,
                elapsed: Duration::ZERO,
            },
            rows_read: after.since(before).rows_read,
        })
    }

    /// Every group's stream holds the whole backlog; then the streams go (memory).
    async fn check_and_delete_streams(
        &self,
        scratch: &mut RelayScratch,
        names: &[String],
    ) -> Result<(), BenchError> {
        let lengths = scratch.redis.stream_lengths(names).await?;
        for (name, len) in names.iter().zip(lengths) {
            if len != self.messages {
                return Err(phase(
                    "check",
                    format!(
                        "stream {name} holds {len} entries, expected {}",
                        self.messages
                    ),
                ));
            }
        }
        scratch.redis.delete_streams(names).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growth_is_judged_against_the_group_factor() {
        assert_eq!(Growth::judge((1, 1.0), (16, 16.2)), Growth::Linear);
        assert_eq!(Growth::judge((1, 1.0), (16, 1.3)), Growth::Flat);
        assert_eq!(Growth::judge((1, 1.0), (16, 5.0)), Growth::Sublinear);
    }
}

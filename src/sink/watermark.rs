//! The watermarked append: a batch's entries for its streams, each skipped when the group's
//! watermark for that stream has already passed it, refused when a newer lease epoch has
//! written there; as one optimistic Redis transaction.
//!
//! 1. `WATCH` the group's watermark hashes of the batch's streams and read them (`HMGET`).
//!    A newer epoch than this relay's there: refused (the lease is gone). An older one: the
//!    relay first claims the watermark (a tiny script raises its epoch, never lowers it) and
//!    goes back to 1. From then on a relay that lost its lease is refused at its step 1, and
//!    any transaction of its already past step 1 fails at `EXEC`: a new lease holder cannot
//!    be starved by the old one.
//! 2. Decide here which entries are new, then `MULTI`, their `XADD`s, the new watermarks
//!    (`HSET`), `EXEC`. Redis runs it only when no watched hash changed since the `WATCH`:
//!    every writer of a watermark (another relay of the group, the late script) changes it, so
//!    an `EXEC` that runs saw the marks it was planned on.
//!
//! Step 1 for the next append is sent right behind each `EXEC`, in the same round trip: a
//! refused `EXEC` comes back with the marks to plan again on, and a group's next batch to the
//! same streams starts at step 2. So an append is one round trip, two the first time.
//!
//! Step 1 also reads each stream key's `TYPE`. Redis does not roll back an `EXEC` whose
//! commands fail when they run, so a key that is not a stream would take the new watermark
//! past entries never written: such a key refuses the append before `MULTI`
//! ([`SinkError::WrongType`]). Every reply of the `EXEC` is read all the same; should an
//! `XADD` fail there (the key changed type after step 1), the watermark is set back to the
//! last entry that was written ([`RESTORE_MARK`]) and the append is refused the same way.
//! A watermark behind what the caller says the group appended ([`SinkError::Lost`]) refuses
//! the append too, so the caller re-appends the gap first.
//!
//! No entry passes through a script: a pipelined `XADD` costs Redis about half the CPU of the
//! same entry handed to Lua (measured in BENCHMARKS.md). `WATCH` belongs to a connection, so
//! each append takes a connection of its own from [`WatchConnections`], preferably the one
//! already watching its streams.

use std::sync::Mutex;

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ErrorKind, RedisError, Script, Value};

use super::{DedupeMark, Entry, LostAppends, SinkError, StreamAppend, Writer, WrongType};

/// How often an append goes back to step 1 (after a claim, or when its watched watermarks
/// changed) before it gives up with an error; the relay then retries the batch.
const WATCH_ATTEMPTS: usize = 8;

/// Raises the `epoch` of the watermark hash `KEYS[1]` to `ARGV[1]`; never lowers it.
const CLAIM: &str = "local epoch = tonumber(ARGV[1])
if tonumber(redis.call('HGET', KEYS[1], 'epoch') or '0') < epoch then
  redis.call('HSET', KEYS[1], 'epoch', epoch)
end
return 0";

/// Sets the `position` of the watermark hash `KEYS[1]` back to `ARGV[2]` (removes it when
/// empty) if it still holds `ARGV[1]`, what a transaction whose `XADD`s failed wrote there.
const RESTORE_MARK: &str = "if redis.call('HGET', KEYS[1], 'position') == ARGV[1] then
  if ARGV[2] == '' then redis.call('HDEL', KEYS[1], 'position')
  else redis.call('HSET', KEYS[1], 'position', ARGV[2]) end
  return 1
end
return 0";

/// `[redis] wait_replicas`: how many replicas must acknowledge an append, within how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ReplicaWait {
    pub replicas: u32,
    pub timeout: Duration,
}

impl ReplicaWait {
    /// The `WAIT` reply: enough replicas, or [`SinkError::NotReplicated`].
    pub(super) fn check(self, reply: Value) -> Result<(), SinkError> {
        let acked: i64 = redis::from_redis_value(reply).map_err(|e| SinkError::Redis(e.into()))?;
        if acked < i64::from(self.replicas) {
            return Err(SinkError::NotReplicated {
                acked,
                wanted: self.replicas,
                timeout_ms: self.timeout.as_millis() as u64,
            });
        }
        Ok(())
    }
}

/// Connections for appends under `WATCH`: each one serves a single append at a time. One that
/// failed is dropped, never reused, so a reconnect can never lose a `WATCH` silently.
pub(super) struct WatchConnections {
    client: redis::Client,
    config: AsyncConnectionConfig,
    idle: Mutex<Vec<WatchConnection>>,
    claim: Script,
    restore_mark: Script,
}

/// A connection of [`WatchConnections`] and what it watches now.
struct WatchConnection {
    connection: MultiplexedConnection,
    /// Set by the `WATCH` that follows every `EXEC`: the next append to the same streams
    /// starts at step 2, one round trip instead of two.
    watching: Option<Watching>,
}

/// Watermark keys under `WATCH`, and what they held when the `WATCH` began.
struct Watching {
    keys: Vec<String>,
    marks: Vec<Watermark>,
}

impl Watching {
    fn covers(&self, keys: &[StreamKeys]) -> bool {
        self.keys.len() == keys.len() && self.keys.iter().zip(keys).all(|(a, b)| *a == b.watermark)
    }
}

impl WatchConnections {
    pub(super) fn new(client: redis::Client, config: AsyncConnectionConfig) -> WatchConnections {
        WatchConnections {
            client,
            config,
            idle: Mutex::new(Vec::new()),
            claim: Script::new(CLAIM),
            restore_mark: Script::new(RESTORE_MARK),
        }
    }

    /// An idle connection, preferably one already watching `keys`; a new one if none is idle.
    async fn take(&self, keys: &[StreamKeys]) -> Result<WatchConnection, RedisError> {
        let idle = {
            let mut idle = self.idle.lock().expect("watch connection pool poisoned");
            let watching = idle
                .iter()
                .position(|c| c.watching.as_ref().is_some_and(|w| w.covers(keys)));
            match watching {
                Some(index) => Some(idle.swap_remove(index)),
                None => idle.pop(),
            }
        };
        match idle {
            Some(connection) => Ok(connection),
            None => Ok(WatchConnection {
                connection: self
                    .client
                    .get_multiplexed_async_connection_with_config(&self.config)
                    .await?,
                watching: None,
            }),
        }
    }

    /// Forgets the idle connections (their server restarted, failed over or closed them).
    pub(super) fn drop_idle(&self) {
        self.idle
            .lock()
            .expect("watch connection pool poisoned")
            .clear();
    }

    fn give_back(&self, connection: WatchConnection) {
        self.idle
            .lock()
            .expect("watch connection pool poisoned")
            .push(connection);
    }

    /// Appends `appends` (see the module doc); the number of entries added.
    pub(super) async fn append(
        &self,
        writer: Writer<'_>,
        keys: &[StreamKeys],
        appends: &[StreamAppend],
        max_len: u64,
        wait: Option<ReplicaWait>,
    ) -> Result<u64, SinkError> {
        let mut connection = self.take(keys).await.map_err(SinkError::Redis)?;
        let result = self
            .append_watched(&mut connection, writer, keys, appends, max_len, wait)
            .await;
        // A connection that failed may be closed or mid-reply: dropped. The others watch what
        // `watching` says (nothing after a refusal, which sent UNWATCH).
        if !matches!(result, Err(SinkError::Redis(_))) {
            self.give_back(connection);
        }
        result
    }
}

/// A stream's key and the group's watermark key beside it.
pub(super) struct StreamKeys {
    pub stream: String,
    pub watermark: String,
}

/// What the group's watermark hash for one stream holds.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Watermark {
    /// The highest [`DedupeMark`] appended (absent: nothing yet).
    position: Option<DedupeMark>,
    /// The highest lease epoch that wrote here (0: none).
    epoch: i64,
    /// What the stream key holds when that is not a stream (`None`: a stream, or nothing).
    wrong_type: Option<String>,
}

impl WatchConnections {
    async fn append_watched(
        &self,
        watch_connection: &mut WatchConnection,
        writer: Writer<'_>,
        keys: &[StreamKeys],
        appends: &[StreamAppend],
        max_len: u64,
        wait: Option<ReplicaWait>,
    ) -> Result<u64, SinkError> {
        let connection = &mut watch_connection.connection;
        // Marks kept from the WATCH behind the last EXEC save a round trip when there is
        // something to write: the EXEC fails if they changed. Nothing to write proves nothing
        // about them (the server may have restarted, failed over or lost the keys since), so
        // that answer is only given on marks read now.
        let (mut marks, mut from_cache) = match watch_connection.watching.take() {
            Some(watching) if watching.covers(keys) => (watching.marks, true),
            _ => (watch(connection, keys).await?, false),
        };
        for _ in 0..WATCH_ATTEMPTS {
            if let Some((append, mark)) = appends
                .iter()
                .zip(&marks)
                .find(|(_, mark)| mark.epoch > writer.epoch)
            {
                unwatch(connection).await?;
                return Err(SinkError::Fenced {
                    stream: append.stream.clone(),
                    detail: format!(
                        "lease epoch {} is older than epoch {}",
                        writer.epoch, mark.epoch
                    ),
                });
            }
            if marks.iter().any(|mark| mark.epoch < writer.epoch) {
                self.claim(connection, writer, keys, &marks).await?;
                marks = watch(connection, keys).await?;
                from_cache = false;
                continue;
            }
            if let Some(refusal) = refusal(keys, appends, &marks) {
                // Kept marks may be behind what another connection wrote since (a repair):
                // a refusal, like "nothing new", is only given on marks read now.
                if from_cache {
                    marks = watch(connection, keys).await?;
                    from_cache = false;
                    continue;
                }
                unwatch(connection).await?;
                return Err(refusal);
            }
            let Some(planned) = transaction(writer, keys, appends, &marks, max_len, wait) else {
                if from_cache {
                    marks = watch(connection, keys).await?;
                    from_cache = false;
                    continue;
                }
                // Nothing new: the WATCH (and what it read) stays good for the next append.
                watch_connection.watching = Some(watching(keys, marks));
                return Ok(0);
            };
            let mut replies: Vec<Value> = planned
                .pipe
                .query_async(&mut *connection)
                .await
                .map_err(SinkError::Redis)?;
            if replies.len() != 1 + usize::from(wait.is_some()) + 2 * keys.len() {
                return Err(unexpected_reply("the append transaction", &replies));
            }
            let mut replies = replies.drain(..);
            let exec = replies.next().expect("counted");
            let waited = wait.map(|w| (w, replies.next().expect("counted")));
            // Read behind the EXEC; looked at only once the EXEC's own outcome is dealt with,
            // so a failure here (a slot moving right after the EXEC) cannot skip a repair.
            let read_again = read_marks(replies, keys);
            let results = match exec {
                // A watched watermark changed since the WATCH: plan again on what was read.
                Value::Nil => {
                    tracing::debug!(
                        group = writer.group,
                        "a watched watermark changed; reading it again"
                    );
                    marks = read_again?;
                    from_cache = false;
                    continue;
                }
                Value::Array(results) => results,
                // EXECABORT and the like: nothing ran.
                Value::ServerError(error) => return Err(SinkError::Redis(error.into())),
                other => return Err(unexpected_reply("EXEC", &[other])),
            };
            let failed = planned.failed_streams(&results)?;
            if !failed.is_empty() {
                // Our own repair writes a watched key: watch afresh next time.
                self.restore_marks(connection, keys, &failed).await?;
                let kinds = read_again.ok();
                return Err(SinkError::WrongType(
                    failed
                        .iter()
                        .map(|f| WrongType {
                            stream: appends[f.index].stream.clone(),
                            key: keys[f.index].stream.clone(),
                            kind: kinds
                                .as_ref()
                                .and_then(|marks| marks[f.index].wrong_type.clone())
                                .unwrap_or_else(|| f.error.clone()),
                        })
                        .collect(),
                ));
            }
            // Without what the WATCH read, the next append starts at step 1.
            watch_connection.watching = read_again.ok().map(|marks| watching(keys, marks));
            if let Some((wait, reply)) = waited {
                wait.check(reply)?;
            }
            return Ok(planned.appended);
        }
        unwatch(connection).await?;
        Err(SinkError::Contended {
            attempts: WATCH_ATTEMPTS,
        })
    }

    /// Sets each failed stream's watermark back to the last entry the transaction did write
    /// there (or to what it was before), unless someone wrote it since.
    async fn restore_marks(
        &self,
        connection: &mut MultiplexedConnection,
        keys: &[StreamKeys],
        failed: &[FailedStream],
    ) -> Result<(), SinkError> {
        for stream in failed {
            let restored: i64 = self
                .restore_mark
                .key(&keys[stream.index].watermark)
                .arg(stream.wrote.to_string())
                .arg(
                    stream
                        .written_through
                        .map(|m| m.to_string())
                        .unwrap_or_default(),
                )
                .invoke_async(connection)
                .await
                .map_err(SinkError::Redis)?;
            tracing::warn!(stream = %keys[stream.index].stream, error = %stream.error, restored = restored == 1,
                "an XADD of the append transaction failed; its watermark was set back");
        }
        Ok(())
    }

    /// Raises the epoch of the watermarks older than `writer`'s to it (once per stream and
    /// lease), which fences every relay with an older lease out of them.
    async fn claim(
        &self,
        connection: &mut MultiplexedConnection,
        writer: Writer<'_>,
        keys: &[StreamKeys],
        marks: &[Watermark],
    ) -> Result<(), SinkError> {
        for (key, _) in keys
            .iter()
            .zip(marks)
            .filter(|(_, mark)| mark.epoch < writer.epoch)
        {
            self.claim
                .key(&key.watermark)
                .arg(writer.epoch)
                .invoke_async::<()>(connection)
                .await
                .map_err(SinkError::Redis)?;
        }
        Ok(())
    }
}

fn watching(keys: &[StreamKeys], marks: Vec<Watermark>) -> Watching {
    Watching {
        keys: keys.iter().map(|k| k.watermark.clone()).collect(),
        marks,
    }
}

/// `WATCH` the watermark keys and read them, and the stream keys' types (appended to `pipe`:
/// two replies per key, the `HMGET`s then the `TYPE`s).
fn watch_and_read(pipe: &mut redis::Pipeline, keys: &[StreamKeys]) {
    pipe.cmd("WATCH").ignore();
    for key in keys {
        pipe.arg(&key.watermark);
    }
    for key in keys {
        pipe.cmd("HMGET")
            .arg(&key.watermark)
            .arg("position")
            .arg("epoch");
    }
    for key in keys {
        pipe.cmd("TYPE").arg(&key.stream);
    }
}

/// Step 1: forget what the connection watched, `WATCH` the watermarks and read them.
async fn watch(
    connection: &mut MultiplexedConnection,
    keys: &[StreamKeys],
) -> Result<Vec<Watermark>, SinkError> {
    let mut pipe = redis::pipe();
    pipe.cmd("UNWATCH").ignore();
    watch_and_read(&mut pipe, keys);
    let replies: Vec<redis::Value> = pipe
        .query_async(connection)
        .await
        .map_err(SinkError::Redis)?;
    read_marks(replies, keys)
}

/// The watermarks from the replies of [`watch_and_read`].
fn read_marks(
    replies: impl IntoIterator<Item = Value>,
    keys: &[StreamKeys],
) -> Result<Vec<Watermark>, SinkError> {
    let replies: Vec<Value> = replies.into_iter().collect();
    if replies.len() != 2 * keys.len() {
        return Err(unexpected_reply("the watermark read", &replies));
    }
    let (hashes, types) = replies.split_at(keys.len());
    hashes
        .iter()
        .zip(types)
        .zip(keys)
        .map(|((hash, kind), key)| {
            let (position, epoch): (Option<String>, Option<i64>) =
                redis::from_redis_value_ref(hash).map_err(|e| SinkError::Redis(e.into()))?;
            let kind: String =
                redis::from_redis_value_ref(kind).map_err(|e| SinkError::Redis(e.into()))?;
            let position = position
                .map(|text| parse_watermark(&key.watermark, text))
                .transpose()?;
            Ok(Watermark {
                position,
                epoch: epoch.unwrap_or(0),
                wrong_type: (kind != "stream" && kind != "none").then_some(kind),
            })
        })
        .collect()
}

/// The position stored in watermark `key`, or [`SinkError::CorruptWatermark`].
pub(super) fn parse_watermark(key: &str, text: String) -> Result<DedupeMark, SinkError> {
    DedupeMark::parse(&text).ok_or_else(|| SinkError::CorruptWatermark {
        key: key.to_owned(),
        value: text,
    })
}

/// A reply of a shape this module never asks for (an error reply where a value belongs,
/// a count that does not match).
fn unexpected_reply(what: &str, replies: &[Value]) -> SinkError {
    SinkError::Redis(RedisError::from((
        ErrorKind::Parse,
        "unexpected reply",
        format!("{what}: {replies:?}"),
    )))
}

/// Why the append must not run on these marks: stream keys that are not streams, or
/// watermarks behind what the group appended (Redis lost entries).
fn refusal(
    keys: &[StreamKeys],
    appends: &[StreamAppend],
    marks: &[Watermark],
) -> Option<SinkError> {
    let wrong: Vec<WrongType> = appends
        .iter()
        .zip(keys)
        .zip(marks)
        .filter_map(|((append, key), mark)| {
            Some(WrongType {
                stream: append.stream.clone(),
                key: key.stream.clone(),
                kind: mark.wrong_type.clone()?,
            })
        })
        .collect();
    if !wrong.is_empty() {
        return Some(SinkError::WrongType(wrong));
    }
    let lost: Vec<LostAppends> = appends
        .iter()
        .zip(marks)
        .filter_map(|(append, mark)| {
            let through = append.appended_through?;
            mark.position
                .is_none_or(|m| m < through)
                .then(|| LostAppends {
                    stream: append.stream.clone(),
                    redis_mark: mark.position,
                    appended_through: through,
                })
        })
        .collect();
    (!lost.is_empty()).then_some(SinkError::Lost(lost))
}

async fn unwatch(connection: &mut MultiplexedConnection) -> Result<(), SinkError> {
    redis::cmd("UNWATCH")
        .exec_async(connection)
        .await
        .map_err(SinkError::Redis)
}

/// A planned step 2, and what each command queued in it stands for.
struct Planned {
    pipe: redis::Pipeline,
    /// How many entries it adds.
    appended: u64,
    /// Per queued command, in order: the index of its stream and, for an `XADD`, its
    /// entry's mark (`None` for a watermark `HSET`).
    queued: Vec<(usize, Option<DedupeMark>)>,
    /// Per stream: the watermark before, and what the transaction writes there.
    marks: Vec<Option<(Option<DedupeMark>, DedupeMark)>>,
}

/// A stream whose `XADD`s failed inside an `EXEC` that ran.
struct FailedStream {
    index: usize,
    /// The watermark the transaction wrote there.
    wrote: DedupeMark,
    /// The last entry that was written (or the watermark before the transaction).
    written_through: Option<DedupeMark>,
    error: String,
}

impl Planned {
    /// The streams with a failed `XADD` among `results` (the `EXEC` reply, one per queued
    /// command).
    fn failed_streams(&self, results: &[Value]) -> Result<Vec<FailedStream>, SinkError> {
        if results.len() != self.queued.len() {
            return Err(unexpected_reply("EXEC", results));
        }
        let mut failed: Vec<FailedStream> = Vec::new();
        let mut written: Vec<Option<DedupeMark>> = self
            .marks
            .iter()
            .map(|m| m.and_then(|(before, _)| before))
            .collect();
        for (&(index, entry), result) in self.queued.iter().zip(results) {
            let error = match result {
                Value::ServerError(error) => error.to_string(),
                _ => {
                    if let Some(mark) = entry
                        && failed.iter().all(|f| f.index != index)
                    {
                        written[index] = Some(mark);
                    }
                    continue;
                }
            };
            if failed.iter().any(|f| f.index == index) {
                continue;
            }
            // Only the replicated write of a WAIT without new entries has no mark: it failed.
            let Some((_, wrote)) = self.marks[index] else {
                return Err(unexpected_reply("EXEC", results));
            };
            failed.push(FailedStream {
                index,
                wrote,
                written_through: None,
                error,
            });
        }
        for stream in &mut failed {
            stream.written_through = written[stream.index];
        }
        Ok(failed)
    }
}

/// Step 2: `MULTI`, the `XADD`s of the entries past each watermark, the new watermarks (their
/// epochs already are `writer`'s: step 1 claimed them), `EXEC`, then `WAIT` for replicas
/// (`wait`); then step 1 for the next append (`WATCH` and read again). Replies: `EXEC`'s (nil
/// when refused), `WAIT`'s, then two per key. `None` when there is nothing to write and
/// nothing to wait for.
fn transaction(
    writer: Writer<'_>,
    keys: &[StreamKeys],
    appends: &[StreamAppend],
    marks: &[Watermark],
    max_len: u64,
    wait: Option<ReplicaWait>,
) -> Option<Planned> {
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    pipe.cmd("MULTI").ignore();
    let mut planned_marks = vec![None; appends.len()];
    let mut queued = Vec::new();
    let mut appended = 0;
    for (index, ((append, key), mark)) in appends.iter().zip(keys).zip(marks).enumerate() {
        let mut last = None;
        for entry in &append.entries {
            let position = DedupeMark::of(writer.replay_generation, entry);
            if mark.position.is_some_and(|m| position <= m) {
                continue;
            }
            debug_assert!(last.is_none_or(|l| l < position), "entries must ascend");
            pipe.add_command(xadd(&key.stream, max_len, entry)).ignore();
            queued.push((index, Some(position)));
            appended += 1;
            last = Some(position);
        }
        if let Some(last) = last {
            pipe.cmd("HSET")
                .arg(&key.watermark)
                .arg("position")
                .arg(last.to_string())
                .ignore();
            queued.push((index, None));
            planned_marks[index] = Some((mark.position, last));
        }
    }
    if appended == 0 {
        let (Some(_), Some(key)) = (wait, keys.first()) else {
            return None;
        };
        // Entries already there may not have reached the replicas yet (an earlier WAIT fell
        // short): one replicated write whose acknowledgement covers everything before it.
        pipe.cmd("HSET")
            .arg(&key.watermark)
            .arg("epoch")
            .arg(writer.epoch)
            .ignore();
        queued.push((0, None));
    }
    pipe.cmd("EXEC");
    if let Some(wait) = wait {
        pipe.cmd("WAIT")
            .arg(wait.replicas)
            .arg(wait.timeout.as_millis() as u64);
    }
    watch_and_read(&mut pipe, keys);
    Some(Planned {
        pipe,
        appended,
        queued,
        marks: planned_marks,
    })
}

/// `XADD stream [MAXLEN ~ n] * field value …`, its buffers sized once (growing them arg by
/// arg was ~10 % of the relay's CPU in a drain: realloc and the copies it makes).
fn xadd(stream: &str, max_len: u64, entry: &Entry) -> redis::Cmd {
    // "MAXLEN" "~" and up to 20 digits.
    const TRIM_BYTES: usize = 6 + 1 + 20;
    let field_bytes: usize = entry
        .fields
        .iter()
        .map(|(name, value)| name.len() + value.len())
        .sum();
    let mut cmd = redis::Cmd::with_capacity(
        5 + 2 * entry.fields.len(),
        "XADD".len() + stream.len() + TRIM_BYTES + 1 + field_bytes,
    );
    cmd.arg("XADD").arg(stream);
    if max_len > 0 {
        cmd.arg("MAXLEN").arg("~").arg(max_len);
    }
    cmd.arg("*");
    for (name, value) in &entry.fields {
        cmd.arg(*name).arg(value.as_str());
    }
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::position::Position;

    /// Step 2 of a relay whose lease was taken between its steps 1 and 2 must not run: the
    /// interleaving the race in tests/it/sink.rs only sometimes hits, made to happen here.
    #[tokio::test]
    async fn a_transaction_planned_before_a_takeover_does_not_run() {
        let url =
            std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
        let client = redis::Client::open(url).unwrap();
        let pool = WatchConnections::new(client.clone(), AsyncConnectionConfig::new());
        let prefix = format!("unit-watermark-{}:", uuid::Uuid::now_v7());
        let keys = [StreamKeys {
            stream: format!("{prefix}out"),
            watermark: format!("{prefix}{{{prefix}out}}:outbox-watermark:g"),
        }];
        let batch = |seqs: std::ops::Range<i64>| {
            vec![StreamAppend {
                stream: "out".into(),
                entries: seqs
                    .map(|seq| Entry {
                        position: Position::new(7, seq),
                        ordinal: 0,
                        fields: vec![("n", seq.to_string())],
                    })
                    .collect(),
                appended_through: None,
            }]
        };
        let writer = |epoch| Writer {
            group: "g",
            epoch,
            replay_generation: 0,
        };
        pool.append(writer(1), &keys, &batch(0..2), 0, None)
            .await
            .unwrap();

        // The old relay (epoch 1) reads its marks under WATCH and plans 2..4 …
        let mut old = client.get_multiplexed_async_connection().await.unwrap();
        let marks = watch(&mut old, &keys).await.unwrap();
        let planned = transaction(writer(1), &keys, &batch(2..4), &marks, 0, None).unwrap();
        assert_eq!(planned.appended, 2);
        // … the new one (epoch 2) claims the stream and appends 2..4 …
        pool.append(writer(2), &keys, &batch(2..4), 0, None)
            .await
            .unwrap();
        // … and the old plan is refused at EXEC.
        let replies: Vec<redis::Value> = planned.pipe.query_async(&mut old).await.unwrap();
        assert_eq!(replies[0], redis::Value::Nil);
        // What it read again behind the refused EXEC names the new epoch.
        let again = read_marks(replies.into_iter().skip(1), &keys).unwrap();
        assert_eq!(again[0].epoch, 2);
        let mut connection = client.get_multiplexed_async_connection().await.unwrap();
        let stream: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(&keys[0].stream)
            .arg("-")
            .arg("+")
            .query_async(&mut connection)
            .await
            .unwrap();
        assert_eq!(stream.ids.len(), 4);
        let fenced = pool.append(writer(1), &keys, &batch(4..5), 0, None).await;
        assert!(fenced.is_err_and(|e| e.is_fenced()));
        redis::cmd("DEL")
            .arg(&keys[0].stream)
            .arg(&keys[0].watermark)
            .exec_async(&mut connection)
            .await
            .unwrap();
    }

    /// A connection keeps the marks its last WATCH read; when a batch has nothing new on
    /// them, they are read again before saying so: the keys may be gone since (a failover, a
    /// restart, a flush), and an append that trusted them would add nothing forever.
    #[tokio::test]
    async fn nothing_new_is_only_answered_on_marks_read_now() {
        let url =
            std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
        let client = redis::Client::open(url).unwrap();
        let pool = WatchConnections::new(client.clone(), AsyncConnectionConfig::new());
        let prefix = format!("unit-watermark-{}:", uuid::Uuid::now_v7());
        let keys = [StreamKeys {
            stream: format!("{prefix}out"),
            watermark: format!("{prefix}{{{prefix}out}}:outbox-watermark:g"),
        }];
        let batch = vec![StreamAppend {
            stream: "out".into(),
            entries: (0..3)
                .map(|seq| Entry {
                    position: Position::new(7, seq),
                    ordinal: 0,
                    fields: vec![("n", seq.to_string())],
                })
                .collect(),
            appended_through: None,
        }];
        let writer = Writer {
            group: "g",
            epoch: 1,
            replay_generation: 0,
        };
        assert_eq!(
            pool.append(writer, &keys, &batch, 0, None).await.unwrap(),
            3
        );
        assert_eq!(
            pool.append(writer, &keys, &batch, 0, None).await.unwrap(),
            0,
            "a replay"
        );
        // Redis loses the stream and its watermark (as a failover to a lagging replica would).
        let mut connection = client.get_multiplexed_async_connection().await.unwrap();
        redis::cmd("DEL")
            .arg(&keys[0].stream)
            .arg(&keys[0].watermark)
            .exec_async(&mut connection)
            .await
            .unwrap();
        assert_eq!(
            pool.append(writer, &keys, &batch, 0, None).await.unwrap(),
            3,
            "appended again, not skipped on the marks of before the loss"
        );
        redis::cmd("DEL")
            .arg(&keys[0].stream)
            .arg(&keys[0].watermark)
            .exec_async(&mut connection)
            .await
            .unwrap();
    }
}

//! `outbox-relay demo`: the whole path in one command, checked.
//!
//! ```text
//!  writers (concurrent transactions, some rolled back, some committing late)
//!      └─ publish_in_tx ─▶ outbox.messages ─▶ Relay (group demo-<run>) ─▶ <prefix>orders, <prefix>users
//!                                                                      └─ then: every committed message once,
//!                                                                         nothing rolled back, in order
//! ```

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use outbox_relay::config::{Config, GroupConfig, Overrides, RawConfig};
use outbox_relay::relay::Relay;
use outbox_relay::relay::route::{Action, Route, StreamTemplate};
use outbox_relay::sink::Sink;
use outbox_relay::{Message, store};
use rand::Rng;
use redis::AsyncCommands;
use redis::streams::StreamRangeReply;
use serde_json::json;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Where `docker compose up -d` puts Postgres and Redis (README quick start).
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/app";
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";

/// (topic, stream it lands in; None = no route, the group passes it over)
const TOPICS: [(&str, Option<&str>); 5] = [
    ("demo.orders.placed", Some("orders")),
    ("demo.orders.paid", Some("orders")),
    ("demo.orders.shipped", Some("orders")),
    ("demo.users.signed_up", Some("users")),
    ("demo.audit.viewed", None),
];
const CUSTOMERS: u32 = 50;
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

/// Publishes messages from concurrent transactions (some rolled back, some committing late)
/// while a relay forwards them to Redis Streams, then checks what landed where.
///
/// Uses the configured Postgres and Redis, or the ones `docker compose up -d` starts
/// (postgres://postgres@127.0.0.1:5432/app, redis://127.0.0.1:6379). The demo migrates the
/// database, runs a consumer group of its own (demo-<run>) from the current end of the outbox,
/// and writes under the key prefix <redis.key_prefix>outbox-demo:<run>:. At the end it removes
/// the messages it published (topics demo.*), its streams and its group, unless --keep.
///
/// Example: cargo run --release -- demo --messages 5000 --writers 8
#[derive(Debug, clap::Args)]
pub struct Args {
    /// About how many messages to publish (whole transactions of 1-5 messages).
    #[arg(long, default_value_t = 5_000)]
    messages: usize,
    /// Concurrent writers, each running one transaction at a time.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=64))]
    writers: u32,
    /// Percentage of transactions rolled back after publishing.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u8).range(0..=100))]
    rollback_percent: u8,
    /// Keep what the demo made afterwards: the messages it published into the outbox, its
    /// streams and its consumer group (default: all removed at the end, so no group of the
    /// application ever forwards the demo's messages).
    #[arg(long)]
    keep: bool,
}

/// The configuration layers, with the docker-compose URLs where none is configured.
pub fn load_config(overrides: &Overrides) -> Result<Config, outbox_relay::config::ConfigErrors> {
    let (mut raw, unknown) = RawConfig::load_with_unknown_keys(overrides)?;
    raw.database_url
        .get_or_insert_with(|| DEFAULT_DATABASE_URL.to_owned());
    raw.redis_url
        .get_or_insert_with(|| DEFAULT_REDIS_URL.to_owned());
    Config::from_raw_and_unknown_keys(raw, unknown)
}

pub async fn run(config: &Config, args: Args) -> anyhow::Result<()> {
    let redis_url = config.require_redis_url()?;
    outln!(
        "outbox-relay demo: Postgres {}, Redis {}",
        config.database_url,
        redis_url
    );
    let pool = store::connect(&config.database_url, args.writers + 6).await?;
    let migrated = outbox_relay::migrate(&pool)
        .await
        .with_context(|| format!("migrating {}", config.database_url))?;
    outln!(
        "migrate: {} of {} migrations applied now",
        migrated.applied.len(),
        migrated.known
    );

    let run_id = format!("{:x}", chrono::Utc::now().timestamp_millis());
    let group = format!("demo-{run_id}");
    let mut redis = config.redis.clone();
    redis.key_prefix = format!("{}outbox-demo:{run_id}:", redis.key_prefix);
    let sink = Sink::connect(redis_url, &redis).await?;
    // Created before anything is published, at the current end of the outbox: the group sees
    // exactly this run's messages.
    store::consumer_groups_ensure(&pool, &group, true).await?;
    start_after_every_message(&pool, &group).await?;
    let shutdown = CancellationToken::new();
    let relay = Relay::new(
        pool.clone(),
        sink.clone(),
        config.relay.clone(),
        vec![demo_group(&group)],
    )
    .run(shutdown.clone());
    let relay = tokio::spawn(relay);
    outln!(
        "relay: consumer group {group} forwarding demo.orders.* → {0}orders, demo.users.* → {0}users (demo.audit.* has no route)",
        redis.key_prefix
    );

    // Every message id this run committed, kept outside `outcome` so a failed run cleans up too.
    let committed = CommittedIds::default();
    let outcome = async {
        let published = publish(&pool, &args, &committed).await?;
        published.print();
        let landed = wait_until_drained(&sink, &published).await?;
        check(&sink, &group, &published, &landed).await
    }
    .await;
    shutdown.cancel();
    relay
        .await
        .context("relay task")?
        .context("relay stopped")?;
    if !args.keep {
        let ids = std::mem::take(&mut *committed.lock().expect("not poisoned"));
        clean_up(&pool, &sink, &group, &ids).await?;
    }
    pool.close().await;
    outcome
}

/// Moves the new `group` past every message already in the outbox (an earlier run's, kept
/// with `--keep`): "from now" starts below the oldest transaction running anywhere on the
/// server, which may be older than them. This run's messages come after: their transactions
/// start later.
async fn start_after_every_message(pool: &PgPool, group: &str) -> anyhow::Result<()> {
    let last = store::messages_last_position(pool).await?;
    let current = store::consumer_groups_cursor(pool, group).await?;
    if let (Some(last), Some(current)) = (last, current)
        && last > current.cursor
    {
        let mut tx = pool.begin().await?;
        store::consumer_groups_move_cursor(&mut tx, group, last, false).await?;
        tx.commit().await?;
    }
    Ok(())
}

fn demo_group(name: &str) -> GroupConfig {
    let forward = |pattern: &str, stream: &str| {
        let stream = StreamTemplate::parse(stream).expect("a valid stream template");
        Route::new(vec![pattern.to_owned()], Action::Forward { stream }).expect("a valid pattern")
    };
    GroupConfig::new(
        name,
        vec![
            forward("demo.orders.*", "orders"),
            forward("demo.users.*", "users"),
        ],
    )
}

/// What the writers did.
#[derive(Default)]
struct Published {
    /// Committed message ids, by the stream they must land in.
    committed: HashMap<&'static str, HashSet<String>>,
    committed_unrouted: usize,
    rolled_back: HashSet<String>,
    transactions: usize,
    rolled_back_transactions: usize,
    elapsed: Duration,
    last_commit: Option<Instant>,
}

impl Published {
    fn routed(&self) -> usize {
        self.committed.values().map(HashSet::len).sum()
    }

    fn merge(&mut self, other: Published) {
        for (stream, ids) in other.committed {
            self.committed.entry(stream).or_default().extend(ids);
        }
        self.committed_unrouted += other.committed_unrouted;
        self.rolled_back.extend(other.rolled_back);
        self.transactions += other.transactions;
        self.rolled_back_transactions += other.rolled_back_transactions;
        self.last_commit = self.last_commit.max(other.last_commit);
    }

    fn print(&self) {
        let committed = self.routed() + self.committed_unrouted;
        outln!(
            "published: {committed} messages committed in {} transactions, {} rolled back with {} transactions, in {:.2} s ({:.0} msg/s)",
            self.transactions - self.rolled_back_transactions,
            self.rolled_back.len(),
            self.rolled_back_transactions,
            self.elapsed.as_secs_f64(),
            committed as f64 / self.elapsed.as_secs_f64().max(f64::EPSILON),
        );
    }
}

/// The ids of the messages this run committed (rolled-back ones never existed).
type CommittedIds = Arc<Mutex<Vec<Uuid>>>;

async fn publish(
    pool: &PgPool,
    args: &Args,
    committed: &CommittedIds,
) -> anyhow::Result<Published> {
    let started = Instant::now();
    let per_writer = args.messages.div_ceil(args.writers as usize);
    let mut writers = tokio::task::JoinSet::new();
    for _ in 0..args.writers {
        writers.spawn(writer(
            pool.clone(),
            per_writer,
            args.rollback_percent,
            committed.clone(),
        ));
    }
    let mut published = Published::default();
    while let Some(result) = writers.join_next().await {
        published.merge(result.context("writer task")??);
    }
    published.elapsed = started.elapsed();
    Ok(published)
}

/// Transactions of 1-5 messages for random customers; one in five holds its transaction id
/// open for a few milliseconds before committing, so commits land out of id order.
async fn writer(
    pool: PgPool,
    messages: usize,
    rollback_percent: u8,
    committed: CommittedIds,
) -> anyhow::Result<Published> {
    let mut published = Published::default();
    let mut sent = 0;
    while sent < messages {
        let (plan, commit_late, roll_back) = {
            let mut rng = rand::rng();
            let plan: Vec<(usize, u32)> = (0..rng.random_range(1..=5usize).min(messages - sent))
                .map(|_| {
                    (
                        rng.random_range(0..TOPICS.len()),
                        rng.random_range(0..CUSTOMERS),
                    )
                })
                .collect();
            let late = rng.random_bool(0.2).then(|| rng.random_range(1..20u64));
            (plan, late, rng.random_range(0..100u8) < rollback_percent)
        };
        let mut tx = pool.begin().await?;
        let mut ids = Vec::with_capacity(plan.len());
        for (index, &(topic, customer)) in plan.iter().enumerate() {
            let message = Message::new(
                TOPICS[topic].0,
                json!({ "customer": customer, "amount_cents": 100 * (index as u64 + 1) }),
            )
            .key(format!("customer-{customer}"));
            let id = outbox_relay::publish_in_tx(&mut tx, message).await?;
            ids.push((TOPICS[topic].1, id));
            if index == 0
                && let Some(ms) = commit_late
            {
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
        }
        sent += ids.len();
        published.transactions += 1;
        if roll_back {
            tx.rollback().await?;
            published.rolled_back_transactions += 1;
            published
                .rolled_back
                .extend(ids.into_iter().map(|(_, id)| id.to_string()));
            continue;
        }
        tx.commit().await?;
        published.last_commit = Some(Instant::now());
        committed
            .lock()
            .expect("not poisoned")
            .extend(ids.iter().map(|(_, id)| *id));
        for (stream, id) in ids {
            match stream {
                Some(stream) => {
                    published
                        .committed
                        .entry(stream)
                        .or_default()
                        .insert(id.to_string());
                }
                None => published.committed_unrouted += 1,
            }
        }
    }
    Ok(published)
}

/// The entries of every demo stream once their total reaches what was committed.
async fn wait_until_drained(
    sink: &Sink,
    published: &Published,
) -> anyhow::Result<HashMap<&'static str, Vec<Landed>>> {
    let mut connection = sink.connection();
    let expected = published.routed();
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    loop {
        let mut total = 0;
        for stream in published.committed.keys() {
            let len: usize = connection.xlen(sink.stream_key(stream)).await?;
            total += len;
        }
        if total >= expected {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "only {total} of {expected} entries arrived within {DRAIN_TIMEOUT:?}; \
                 see `outbox-relay status` for what holds the relay back"
            );
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let drained_at = Instant::now();
    if let Some(last_commit) = published.last_commit {
        outln!(
            "relay: drained {:.1} ms after the last commit",
            drained_at
                .saturating_duration_since(last_commit)
                .as_secs_f64()
                * 1000.0
        );
    }
    let mut landed = HashMap::new();
    for &stream in published.committed.keys() {
        landed.insert(stream, read_stream(sink, stream).await?);
    }
    Ok(landed)
}

/// One stream entry, as the check needs it.
struct Landed {
    id: String,
    position: String,
    group: String,
    /// Milliseconds from the message's insert (Postgres clock) to its entry id (Redis clock).
    latency_ms: Option<i64>,
}

async fn read_stream(sink: &Sink, stream: &str) -> anyhow::Result<Vec<Landed>> {
    let mut connection = sink.connection();
    let key = sink.stream_key(stream);
    let mut entries = Vec::new();
    let mut start = "-".to_owned();
    loop {
        let reply: StreamRangeReply = connection.xrange_count(&key, &start, "+", 1000).await?;
        let Some(last) = reply.ids.last() else { break };
        start = format!("({}", last.id);
        for entry in &reply.ids {
            let field = |name: &str| entry.get::<String>(name).unwrap_or_default();
            let appended_ms = entry
                .id
                .split('-')
                .next()
                .and_then(|ms| ms.parse::<i64>().ok());
            let created_ms = chrono::DateTime::parse_from_rfc3339(&field("created_at"))
                .ok()
                .map(|at| at.timestamp_millis());
            entries.push(Landed {
                id: field("id"),
                position: field("position"),
                group: field("group"),
                latency_ms: appended_ms.zip(created_ms).map(|(a, c)| a - c),
            });
        }
    }
    Ok(entries)
}

/// Every committed routed message exactly once in its stream, nothing rolled back, positions
/// increasing within each stream.
async fn check(
    sink: &Sink,
    group: &str,
    published: &Published,
    landed: &HashMap<&'static str, Vec<Landed>>,
) -> anyhow::Result<()> {
    let mut problems = Vec::new();
    let mut latencies = Vec::new();
    outln!("landed:");
    let mut streams: Vec<_> = landed.keys().copied().collect();
    streams.sort_unstable();
    for stream in streams {
        let entries = &landed[stream];
        let expected = &published.committed[stream];
        outln!(
            "  {:<40} {:>6} entries",
            sink.stream_key(stream),
            entries.len()
        );
        let mut seen = HashSet::new();
        for entry in entries {
            if !seen.insert(entry.id.as_str()) {
                problems.push(format!("{stream}: {} appears twice", entry.id));
            }
            if published.rolled_back.contains(&entry.id) {
                problems.push(format!(
                    "{stream}: rolled-back message {} forwarded",
                    entry.id
                ));
            } else if !expected.contains(&entry.id) {
                problems.push(format!("{stream}: unexpected message {}", entry.id));
            }
            if entry.group != group {
                problems.push(format!("{stream}: entry of group `{}`", entry.group));
            }
            latencies.extend(entry.latency_ms);
        }
        let missing = expected
            .iter()
            .filter(|id| !seen.contains(id.as_str()))
            .count();
        if missing > 0 {
            problems.push(format!("{stream}: {missing} committed messages missing"));
        }
        let positions: Vec<outbox_relay::Position> = entries
            .iter()
            .filter_map(|entry| entry.position.parse().ok())
            .collect();
        if positions.len() != entries.len() || positions.windows(2).any(|w| w[0] >= w[1]) {
            problems.push(format!("{stream}: positions not increasing"));
        }
    }
    outln!(
        "  (passed over, no route)                  {:>6} messages",
        published.committed_unrouted
    );
    if !latencies.is_empty() {
        latencies.sort_unstable();
        let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
        outln!(
            "latency, insert → stream entry (includes the time each transaction stayed open): p50 {} ms, p99 {} ms, max {} ms",
            at(0.5),
            at(0.99),
            at(1.0)
        );
    }
    if !problems.is_empty() {
        bail!(
            "the demo found {} problem(s): {}",
            problems.len(),
            problems.join("; ")
        );
    }
    outln!(
        "checked: all {} routed committed messages landed exactly once, none of the {} rolled-back ones, in position order per stream",
        published.routed(),
        published.rolled_back.len()
    );
    Ok(())
}

/// Removes what this run made: its Redis keys, its consumer group (with its delivery rows)
/// and exactly the messages it committed — by id and topic, never anyone else's.
async fn clean_up(pool: &PgPool, sink: &Sink, group: &str, ids: &[Uuid]) -> anyhow::Result<()> {
    let keys = sink.delete_keys_with_prefix(sink.key_prefix()).await?;
    store::consumer_groups_delete(pool, group).await?;
    let topics: Vec<&str> = TOPICS.iter().map(|(topic, _)| *topic).collect();
    let deleted = store::messages_delete_published(pool, ids, &topics).await?;
    outln!(
        "cleaned up: {keys} Redis keys, the consumer group {group} and the {deleted} messages it published (--keep keeps them)"
    );
    let kept = ids.len() as u64 - deleted;
    if kept > 0 {
        outln!(
            "{kept} of the demo's messages stay in the outbox: another consumer group has a retrying, blocked or dead delivery row for them (see `outbox-relay stuck`)"
        );
    }
    Ok(())
}

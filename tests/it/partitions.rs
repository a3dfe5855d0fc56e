//! Partitioned groups (`[[groups]] partitions = N`): several real `outbox-relay run` processes
//! share one group's partitions; members die (kill -9), stop past their lease (SIGSTOP), come
//! back and join while new messages keep arriving. Every message lands exactly once, and the
//! messages of each key in position order.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use outbox_relay::Message;
use rand::Rng;
use serde_json::json;

use crate::harness::cli::outbox_relay;
use crate::harness::redis::TestRedis;
use crate::harness::relay::{RelayProcess, TempDir, relay_toml, wait_for_cursor_at_the_end};
use crate::harness::{TestDb, eventually, watchdog};

const KEYS: usize = 61;

/// Messages `from..from + count` in one transaction, `{"n", "k"}` keyed by `k`; every tenth
/// message has no key (its id decides its partition).
async fn publish_keyed(db: &TestDb, from: usize, count: usize) {
    let messages: Vec<Message> = (from..from + count)
        .map(|n| {
            let key = format!("k{}", n % KEYS);
            let message = Message::new("orders.created", json!({"n": n, "k": key}));
            if n % 10 == 9 {
                message
            } else {
                message.key(key)
            }
        })
        .collect();
    let mut tx = db.pool.begin().await.unwrap();
    outbox_relay::publish_batch_in_tx(&mut tx, &messages)
        .await
        .unwrap();
    tx.commit().await.unwrap();
}

fn partitioned_config(
    dir: &TempDir,
    db: &TestDb,
    redis: &TestRedis,
    partitions: u32,
) -> std::path::PathBuf {
    let group = format!(
        "[[groups]]\nname = \"g\"\npartitions = {partitions}\n[[groups.routes]]\ntopics = [\"orders.*\"]\nhandler = \"forward\"\nstream = \"all\"\n"
    );
    dir.write(
        "relay.toml",
        &relay_toml(
            db,
            redis,
            "batch_size = 200\nidle_poll_ms = 2\nlease_ttl_ms = 600",
            &group,
        ),
    )
}

/// Stream `all` holds `0..published` each once, and each key's messages in publishing order.
async fn assert_exactly_once_in_key_order(redis: &TestRedis, published: usize) {
    let payloads = redis.payloads("all").await;
    let numbers: Vec<u64> = payloads.iter().map(|p| p["n"].as_u64().unwrap()).collect();
    let unique: HashSet<u64> = numbers.iter().copied().collect();
    assert_eq!(unique.len(), numbers.len(), "duplicates");
    assert_eq!(numbers.len(), published, "lost messages");
    let mut last_of_key: HashMap<String, u64> = HashMap::new();
    for payload in &payloads {
        let n = payload["n"].as_u64().unwrap();
        if n % 10 == 9 {
            continue; // keyless
        }
        let key = payload["k"].as_str().unwrap().to_owned();
        if let Some(before) = last_of_key.insert(key.clone(), n) {
            assert!(before < n, "key {key}: {n} after {before}");
        }
    }
}

/// The partitions' lease owners, by partition.
async fn owners(db: &TestDb) -> Vec<Option<String>> {
    sqlx::query_scalar(
        "SELECT CASE WHEN g.lease_expires_at > now() THEN g.lease_owner END \
           FROM outbox.consumer_groups g WHERE outbox.group_of(g.name) = 'g' ORDER BY g.partition",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap()
}

/// How many partitions relay `relay` holds.
fn held_by(owners: &[Option<String>], relay: &RelayProcess) -> usize {
    let pid = format!(":{}:", relay.pid());
    owners
        .iter()
        .filter(|o| o.as_deref().is_some_and(|o| o.contains(&pid)))
        .count()
}

async fn wait_for_all(redis: &TestRedis, published: usize, relays: &[RelayProcess]) {
    let started = Instant::now();
    while redis.stream_len("all").await < published {
        if started.elapsed() > Duration::from_secs(120) {
            let logs: Vec<String> = relays.iter().map(|r| r.log()).collect();
            panic!(
                "{}/{published} after 120 s; logs:\n{}",
                redis.stream_len("all").await,
                logs.join("\n-----\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_relays_on_eight_partitions_through_kill_9_and_sigstop_deliver_each_once_in_key_order()
 {
    let _watchdog = watchdog(Duration::from_secs(600));
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    let dir = TempDir::new(&db.name);
    let config = partitioned_config(&dir, &db, &redis, 8);
    let mut published = 0;
    for _ in 0..200 {
        publish_keyed(&db, published, 500).await;
        published += 500;
    }
    let started = Instant::now();
    let mut relays: Vec<RelayProcess> = (0..3)
        .map(|i| RelayProcess::start(&config, &format!("relay{i}")))
        .collect();
    let mut rng = rand::rng();
    for round in 0..10 {
        let alive_ms = rng.random_range(200..700u64);
        let deadline = Instant::now() + Duration::from_millis(alive_ms);
        while Instant::now() < deadline {
            publish_keyed(&db, published, 40).await;
            published += 40;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let victim = rng.random_range(0..relays.len());
        let name = format!("relay{victim}-{round}");
        let old = std::mem::replace(&mut relays[victim], RelayProcess::start(&config, &name));
        old.kill9();
        eprintln!(
            "round {round}: killed relay {victim} after {alive_ms} ms; {}/{published} in the stream",
            redis.stream_len("all").await
        );
    }
    // One member stops past its lease (600 ms): the others take its partitions; when it
    // comes back it is fenced, rejoins, and gets partitions again.
    relays[1].signal("STOP");
    for _ in 0..20 {
        publish_keyed(&db, published, 40).await;
        published += 40;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eventually(
        Duration::from_secs(20),
        "the others hold all 8 partitions",
        || async {
            let owners = owners(&db).await;
            let others = held_by(&owners, &relays[0]) + held_by(&owners, &relays[2]);
            (others == 8).then_some(())
        },
    )
    .await;
    relays[1].signal("CONT");
    for _ in 0..20 {
        publish_keyed(&db, published, 40).await;
        published += 40;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_for_all(&redis, published, &relays).await;
    eventually(
        Duration::from_secs(20),
        "each relay holding 2 or 3 partitions",
        || async {
            let owners = owners(&db).await;
            relays
                .iter()
                .all(|r| (2..=3).contains(&held_by(&owners, r)))
                .then_some(())
        },
    )
    .await;
    assert_exactly_once_in_key_order(&redis, published).await;
    for relay in relays {
        assert_eq!(relay.terminate(Duration::from_secs(10)).await, Some(0));
    }
    let members: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbox.group_members WHERE expires_at > now()")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(members, 0, "a clean stop leaves the group");
    eprintln!("drained in {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fourth_relay_joining_mid_drain_takes_partitions_without_duplicates() {
    let _watchdog = watchdog(Duration::from_secs(600));
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    let dir = TempDir::new(&db.name);
    let config = partitioned_config(&dir, &db, &redis, 8);
    let mut published = 0;
    for _ in 0..40 {
        publish_keyed(&db, published, 500).await;
        published += 500;
    }
    let mut relays: Vec<RelayProcess> = (0..3)
        .map(|i| RelayProcess::start(&config, &format!("relay{i}")))
        .collect();
    eventually(
        Duration::from_secs(20),
        "the three holding all partitions",
        || async {
            let owners = owners(&db).await;
            let held: usize = relays.iter().map(|r| held_by(&owners, r)).sum();
            (held == 8 && redis.stream_len("all").await > 0).then_some(())
        },
    )
    .await;
    relays.push(RelayProcess::start(&config, "relay3"));
    for _ in 0..20 {
        publish_keyed(&db, published, 40).await;
        published += 40;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eventually(Duration::from_secs(20), "two partitions each", || async {
        let owners = owners(&db).await;
        relays
            .iter()
            .all(|r| held_by(&owners, r) == 2)
            .then_some(())
    })
    .await;
    wait_for_all(&redis, published, &relays).await;
    assert_exactly_once_in_key_order(&redis, published).await;
    let handed_over = relays
        .iter()
        .filter(|r| r.log().contains("partition assigned to another relay"))
        .count();
    assert!(handed_over > 0, "some partition was handed over");
    for relay in relays {
        assert_eq!(relay.terminate(Duration::from_secs(10)).await, Some(0));
    }
}

#[tokio::test]
async fn the_sql_partition_function_agrees_with_the_relay() {
    let _watchdog = watchdog(Duration::from_secs(600));
    let db = TestDb::new().await;
    let ids: Vec<uuid::Uuid> = (0..200).map(|_| uuid::Uuid::now_v7()).collect();
    let keys: Vec<Option<String>> = (0..200)
        .map(|i| (i % 5 != 0).then(|| format!("customer-{i}-ü")))
        .collect();
    for partitions in [2u32, 7, 8, 1024] {
        let from_sql: Vec<i32> = sqlx::query_scalar(
            "SELECT outbox.partition_of(k, i, $3) FROM unnest($1::text[], $2::uuid[]) AS x (k, i)",
        )
        .bind(&keys)
        .bind(&ids)
        .bind(partitions as i32)
        .fetch_all(&db.pool)
        .await
        .unwrap();
        let from_rust: Vec<i32> = keys
            .iter()
            .zip(&ids)
            .map(|(k, id)| outbox_relay::relay::partition_of(k.as_deref(), *id, partitions) as i32)
            .collect();
        assert_eq!(from_sql, from_rust, "{partitions} partitions");
    }
}

/// `outbox-relay --config <config> <args>`: exit code and stdout + stderr.
fn cli(config: &Path, args: &[&str]) -> (i32, String) {
    let output = outbox_relay()
        .args(["--config", config.to_str().unwrap()])
        .args(args)
        .output()
        .expect("run outbox-relay");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code().unwrap_or(-1), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_stored_with_other_partitions_is_refused_at_start() {
    let _watchdog = watchdog(Duration::from_secs(600));
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    let dir = TempDir::new(&db.name);
    let four = partitioned_config(&dir, &db, &redis, 4);
    publish_keyed(&db, 0, 100).await;
    let relay = RelayProcess::start(&four, "four");
    eventually(Duration::from_secs(20), "all 100 forwarded", || async {
        (redis.stream_len("all").await == 100).then_some(())
    })
    .await;
    assert_eq!(relay.terminate(Duration::from_secs(10)).await, Some(0));
    let eight = partitioned_config(&dir, &db, &redis, 8);
    let (code, text) = cli(&eight, &["run"]);
    assert_ne!(code, 0, "{text}");
    assert!(
        text.contains("has 4 partition(s) in the database but 8 configured")
            && text.contains("outbox-relay groups repartition g --partitions 8"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repartitioning_mid_drain_four_to_eight_to_one_to_four_delivers_each_once_in_key_order() {
    let _watchdog = watchdog(Duration::from_secs(600));
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    let dir = TempDir::new(&db.name);
    let mut published = 0;
    let mut relays = Vec::new();
    for (round, (from, to)) in [(4, 8), (8, 1), (1, 4)].into_iter().enumerate() {
        for _ in 0..20 {
            publish_keyed(&db, published, 1000).await;
            published += 1000;
            // Messages the group does not route: passed over, never dead-lettered.
            sqlx::query("SELECT outbox.publish('audit.logged', '{}', 'k' || n) FROM generate_series(1, 50) n")
                .execute(&db.pool)
                .await
                .unwrap();
        }
        let config = partitioned_config(&dir, &db, &redis, from);
        let relay = RelayProcess::start(&config, &format!("before-{round}"));
        // Killed mid-drain: the partitions stop at different cursors.
        eventually(
            Duration::from_secs(30),
            "some of the backlog forwarded",
            || async { (redis.stream_len("all").await > published - 15000).then_some(()) },
        )
        .await;
        let to_text = to.to_string();
        let repartition = [
            "groups",
            "repartition",
            "g",
            "--partitions",
            &to_text,
            "--yes",
        ];
        if round == 0 {
            // A relay that died may have appended what its cursor does not show: refused
            // until a relay with the old count ran and stopped cleanly.
            relay.kill9();
            tokio::time::sleep(Duration::from_millis(700)).await;
            let (code, text) = cli(&config, &repartition);
            assert_eq!(code, 2, "{text}");
            assert!(text.contains("did not release"), "{text}");
            let relay = RelayProcess::start(&config, "settle");
            tokio::time::sleep(Duration::from_millis(1500)).await;
            assert_eq!(relay.terminate(Duration::from_secs(10)).await, Some(0));
        } else {
            // Stopped cleanly mid-drain: the partitions stop at different cursors.
            assert_eq!(relay.terminate(Duration::from_secs(10)).await, Some(0));
        }
        let (code, text) = cli(&config, &repartition);
        assert_eq!(code, 0, "{text}");
        eprintln!("{text}");
        let config = partitioned_config(&dir, &db, &redis, to);
        relays.push(RelayProcess::start(&config, &format!("after-{round}")));
        wait_for_all(&redis, published, &relays).await;
        assert_exactly_once_in_key_order(&redis, published).await;
        let relay = relays.pop().unwrap();
        assert_eq!(relay.terminate(Duration::from_secs(10)).await, Some(0));
    }
    let stuck: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox.deliveries")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        stuck, 0,
        "no delivery row left (unrouted messages are not dead letters)"
    );
    let rows: Vec<(String, bool)> =
        sqlx::query_as("SELECT name, retired FROM outbox.consumer_groups ORDER BY name")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    let current: Vec<&str> = rows.iter().filter(|r| !r.1).map(|r| r.0.as_str()).collect();
    assert_eq!(current, ["g/0", "g/1", "g/2", "g/3"], "{rows:?}");
    let (code, text) = cli(&partitioned_config(&dir, &db, &redis, 4), &["status"]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("g/3") && !text.contains("g/4"), "{text}");
}

/// Group row `name`'s cursor, as text `(tx_id,seq)`.
async fn cursor_of(db: &TestDb, name: &str) -> String {
    sqlx::query_scalar(
        "SELECT format('(%s,%s)', cursor_tx_id, cursor_seq) FROM outbox.consumer_groups WHERE name = $1",
    )
    .bind(name)
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

/// A group `g` of 4 partitions that a relay (returned, still running) has forwarded
/// `messages` messages of; the config is `relay.toml` in the directory.
async fn drained_on_four_partitions(
    messages: usize,
) -> (TestDb, TestRedis, TempDir, std::path::PathBuf, RelayProcess) {
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    let dir = TempDir::new(&db.name);
    let four = partitioned_config(&dir, &db, &redis, 4);
    publish_keyed(&db, 0, messages).await;
    let relay = RelayProcess::start(&four, "first");
    wait_for_all(&redis, messages, std::slice::from_ref(&relay)).await;
    (db, redis, dir, four, relay)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repartition_waits_for_appends_redis_holds_uncommitted_and_for_running_members() {
    let _watchdog = watchdog(Duration::from_secs(600));
    let (db, redis, dir, four, relay) = drained_on_four_partitions(2000).await;
    assert_eq!(relay.terminate(Duration::from_secs(10)).await, Some(0));

    // A relay's append landed and its cursor update did not (it stopped past its grace, or
    // the update failed): g/1's cursor back before its last entries, its watermark where it was.
    let end = cursor_of(&db, "g/1").await;
    sqlx::query(
        "UPDATE outbox.consumer_groups g SET cursor_tx_id = m.tx_id, cursor_seq = m.seq
           FROM (SELECT tx_id, seq FROM outbox.messages ORDER BY tx_id, seq OFFSET 500 LIMIT 1) m
          WHERE g.name = 'g/1'",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let repartition = ["groups", "repartition", "g", "--partitions", "8", "--yes"];
    for args in [
        &repartition[..],
        &[
            "groups",
            "repartition",
            "g",
            "--partitions",
            "8",
            "--dry-run",
        ],
    ] {
        let (code, text) = cli(&four, args);
        assert_eq!(code, 2, "{text}");
        assert!(
            text.contains("`g/1` appended to Redis past its cursor")
                && text.contains("outbox-watermark:g/1")
                && text.contains("with `partitions = 4` again"),
            "{text}"
        );
    }

    // As the message says: a relay with the old split catches up, skipping what Redis holds.
    let relay = RelayProcess::start(&four, "settle");
    eventually(Duration::from_secs(20), "g/1 back at its end", || async {
        (cursor_of(&db, "g/1").await == end).then_some(())
    })
    .await;
    assert_eq!(redis.stream_len("all").await, 2000, "nothing sent twice");

    // A retry's entry landed and its delivery row was not updated: the row still retrying,
    // the entry's token in Redis.
    let (id, tx_id, seq): (uuid::Uuid, String, i64) = sqlx::query_as(
        "SELECT id, tx_id::text, seq FROM outbox.messages
          WHERE outbox.partition_of(key, id, 4) = 2 ORDER BY tx_id, seq LIMIT 1",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO outbox.deliveries (group_name, message_id, status, attempts, next_attempt_at,
                                        message_tx_id, message_seq)
         VALUES ('g/2', $1, 'retrying', 1, now() + interval '1 hour', $2::xid8, $3)",
    )
    .bind(id)
    .bind(&tx_id)
    .bind(seq)
    .execute(&db.pool)
    .await
    .unwrap();
    let token = outbox_relay::sink::late_token_key(&redis.prefix, "all", "g/2", &format!("{id}:0"));
    let mut connection = redis.connection().await;
    let () = redis::AsyncCommands::set(&mut connection, &token, "1")
        .await
        .unwrap();

    // A member still running (its group paused: no lease held) is refused too.
    let (code, text) = cli(&four, &["groups", "pause", "g"]);
    assert_eq!(code, 0, "{text}");
    eventually(Duration::from_secs(10), "no lease held", || async {
        owners(&db).await.iter().all(Option::is_none).then_some(())
    })
    .await;
    let (code, text) = cli(&four, &repartition);
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("are running group `g`") && text.contains(&format!(":{}:", relay.pid())),
        "{text}"
    );
    assert_eq!(relay.terminate(Duration::from_secs(10)).await, Some(0));
    let (code, text) = cli(&four, &repartition);
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains(&format!("`g/2` appended message {id} to Redis"))
            && text.contains(&format!("outbox-relay retry {id}")),
        "{text}"
    );
    // (Here the message was delivered by the forward pass already: the row goes.)
    sqlx::query("DELETE FROM outbox.deliveries")
        .execute(&db.pool)
        .await
        .unwrap();

    let (code, text) = cli(&four, &repartition);
    assert_eq!(code, 0, "{text}");
    let (code, text) = cli(&four, &["groups", "resume", "g"]);
    assert_eq!(code, 0, "{text}");
    publish_keyed(&db, 2000, 1000).await;
    let eight = partitioned_config(&dir, &db, &redis, 8);
    let relay = RelayProcess::start(&eight, "after");
    wait_for_all(&redis, 3000, std::slice::from_ref(&relay)).await;
    assert_exactly_once_in_key_order(&redis, 3000).await;
    assert_eq!(relay.terminate(Duration::from_secs(10)).await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_configured_with_the_old_split_takes_no_row_of_the_new_one() {
    let _watchdog = watchdog(Duration::from_secs(600));
    let (db, redis, _dir, four, relay) = drained_on_four_partitions(100).await;
    let (code, text) = cli(&four, &["groups", "pause", "g"]);
    assert_eq!(code, 0, "{text}");
    // Split behind its back (what `groups repartition` writes, without its checks): the rows
    // now say 8 partitions.
    sqlx::query(
        "INSERT INTO outbox.consumer_groups (name, partitions, partition, cursor_tx_id, cursor_seq)
         SELECT 'g/' || p, 8, p, c.cursor_tx_id, c.cursor_seq
           FROM generate_series(0, 7) p,
                (SELECT cursor_tx_id, cursor_seq FROM outbox.consumer_groups WHERE name = 'g/0') c
             ON CONFLICT (name) DO UPDATE SET partitions = 8, partition = excluded.partition",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let (code, text) = cli(&four, &["groups", "resume", "g"]);
    assert_eq!(code, 0, "{text}");
    publish_keyed(&db, 100, 100).await;
    eventually(Duration::from_secs(10), "the error logged", || async {
        relay
            .log()
            .contains("`groups repartition` split the group otherwise")
            .then_some(())
    })
    .await;
    // And each of its workers fails its steps, saying what to do (readiness shows it too).
    eventually(Duration::from_secs(10), "the step error", || async {
        relay
            .log()
            .contains("has 8 partition(s) in the database but 4 configured")
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        owners(&db).await.iter().all(Option::is_none),
        "a lease was taken"
    );
    assert_eq!(redis.stream_len("all").await, 100);
    assert_eq!(relay.terminate(Duration::from_secs(10)).await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitions_lag_counts_its_own_messages() {
    let _watchdog = watchdog(Duration::from_secs(600));
    let (db, redis, _dir, four, relay) = drained_on_four_partitions(40).await;
    let (code, text) = cli(&four, &["groups", "pause", "g"]);
    assert_eq!(code, 0, "{text}");
    publish_keyed(&db, 40, 400).await;
    let lags: Vec<(i32, i64, i64, f64)> = sqlx::query_as(
        "SELECT s.partition, s.lag_messages,
                (SELECT count(*) FROM outbox.messages m
                  WHERE (m.tx_id, m.seq) > (s.cursor_tx_id, s.cursor_seq)
                    AND outbox.partition_of(m.key, m.id, 4) = s.partition),
                s.lag_seconds
           FROM outbox.group_status s WHERE s.group_name = 'g' ORDER BY s.partition",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(lags.len(), 4, "{lags:?}");
    for (partition, lag, own, seconds) in &lags {
        assert_eq!(lag, own, "partition {partition}: {lags:?}");
        assert!(
            *own > 0 && *seconds > 0.0,
            "partition {partition}: {lags:?}"
        );
    }
    assert_eq!(lags.iter().map(|l| l.1).sum::<i64>(), 400, "{lags:?}");
    let (code, text) = cli(&four, &["groups", "resume", "g"]);
    assert_eq!(code, 0, "{text}");
    wait_for_all(&redis, 440, std::slice::from_ref(&relay)).await;
    wait_for_cursor_at_the_end(&db).await;
    // One partition paused by hand: `groups resume` resumes it, and says so.
    sqlx::query("UPDATE outbox.consumer_groups SET paused = true WHERE name = 'g/1'")
        .execute(&db.pool)
        .await
        .unwrap();
    let (code, text) = cli(&four, &["groups", "resume", "g"]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("group `g` resumed"), "{text}");
    assert_eq!(relay.terminate(Duration::from_secs(10)).await, Some(0));
}

/// The position (`tx:seq`) of the `n`-th message (from 0), in position order.
async fn position_of_nth(db: &TestDb, n: i64) -> String {
    sqlx::query_scalar(
        "SELECT tx_id::text || ':' || seq FROM outbox.messages ORDER BY tx_id, seq OFFSET $1 LIMIT 1",
    )
    .bind(n)
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

/// Messages after position `after` (`tx:seq`) whose partition of 4 is (`in_3`) or is not 3.
async fn count_after(db: &TestDb, after: &str, in_3: bool) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM outbox.messages m
          WHERE (m.tx_id::text::numeric, m.seq) > (split_part($1, ':', 1)::numeric, split_part($1, ':', 2)::bigint)
            AND (outbox.partition_of(m.key, m.id, 4) = 3) = $2",
    )
    .bind(after)
    .bind(in_3)
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_and_replay_count_and_move_each_partition_from_its_own_cursor() {
    let _watchdog = watchdog(Duration::from_secs(600));
    let (db, redis, _dir, four, relay) = drained_on_four_partitions(400).await;
    assert_eq!(relay.terminate(Duration::from_secs(10)).await, Some(0));
    // Partition 3 behind the others (its last entries in Redis, their cursor update lost).
    let behind = position_of_nth(&db, 99).await;
    let (tx_id, seq) = behind.split_once(':').unwrap();
    sqlx::query(
        "UPDATE outbox.consumer_groups SET cursor_tx_id = $1::xid8, cursor_seq = $2::bigint WHERE name = 'g/3'",
    )
    .bind(tx_id)
    .bind(seq)
    .execute(&db.pool)
    .await
    .unwrap();
    let generation_of_3 = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT replay_generation FROM outbox.consumer_groups WHERE name = 'g/3'",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap()
    };

    // A reset to the end skips partition 3's backlog: it says so, it does not say "nothing".
    // (The end is below the oldest transaction running on the server, another test's
    // perhaps: asked again until it is past the backlog.)
    let own = count_after(&db, &behind, true).await;
    let (text, report) = eventually(Duration::from_secs(20), "the whole backlog", || async {
        let (code, text) = cli(
            &four,
            &["groups", "reset", "g", "--to-end", "--dry-run", "--json"],
        );
        assert_eq!(code, 0, "{text}");
        let report: serde_json::Value = serde_json::from_str(&text).unwrap();
        (report["messages"] == own).then_some((text, report))
    })
    .await;
    assert_eq!(report["moved"], true, "{text}");
    assert_eq!(report["from"], behind.as_str(), "{text}");
    assert_eq!(report["messages"], own, "{text}");

    // A replay from the 200th message: partitions 0–2 send their own again; partition 3, whose
    // cursor is before it, is left alone (its generation too: its entries past its cursor are
    // skipped when it reads them again, not sent twice).
    let from = position_of_nth(&db, 199).await;
    let generation = generation_of_3().await;
    let (code, text) = cli(
        &four,
        &[
            "replay",
            "--group",
            "g",
            "--from-position",
            &from,
            "--yes",
            "--json",
        ],
    );
    assert_eq!(code, 0, "{text}");
    let report: serde_json::Value = serde_json::from_str(&text).unwrap();
    let again = count_after(&db, &from, false).await;
    assert_eq!(report["messages"], again, "{text}");
    assert_eq!(generation_of_3().await, generation);
    let relay = RelayProcess::start(&four, "after");
    let expected = 400 + again as usize;
    eventually(Duration::from_secs(30), "the replay delivered", || async {
        let owners = owners(&db).await;
        let caught_up: bool = sqlx::query_scalar(
            "SELECT bool_and(g.cursor_tx_id = l.tx_id AND g.cursor_seq = l.seq)
               FROM outbox.consumer_groups g,
                    (SELECT tx_id, seq FROM outbox.messages ORDER BY tx_id DESC, seq DESC LIMIT 1) l
              WHERE outbox.group_of(g.name) = 'g'",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        (caught_up
            && owners.iter().all(Option::is_some)
            && redis.stream_len("all").await >= expected)
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        redis.stream_len("all").await,
        expected,
        "sent once more: only the replayed"
    );
    assert_eq!(relay.terminate(Duration::from_secs(10)).await, Some(0));
}

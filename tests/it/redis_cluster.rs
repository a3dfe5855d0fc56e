//! The relay against a private Redis Cluster (3 masters, 3 replicas): streams spread over the
//! masters, kill -9 of the relay, kill -9 of a master (its replica takes over), a slot moving
//! while the relay appends to it, commands other than `run`, and a `[redis] cluster` setting
//! that does not match the server.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rand::Rng;

use crate::harness::TestDb;
use crate::harness::cli::{outbox_relay, run};
use crate::harness::cluster::PrivateCluster;
use crate::harness::redis::TestRedis;
use crate::harness::relay::{RelayProcess, TempDir};
use crate::harness::{eventually, watchdog};

/// Topics `t0` … `t{streams-1}`, each forwarded to stream `s.<topic>`.
const KEYS: u64 = 50;

/// A config for `db` on the cluster at `seed`, keys under `prefix`, one group `g` forwarding
/// topic `tN` to stream `s.tN`.
fn cluster_toml(db: &TestDb, seed: &str, prefix: &str, relay: &str) -> String {
    format!(
        "database_url = \"{}\"\nredis_url = \"{seed}\"\n[redis]\ncluster = true\nkey_prefix = \"{prefix}\"\n[relay]\n{relay}\n\
         [[groups]]\nname = \"g\"\n[[groups.routes]]\ntopics = [\"*\"]\nhandler = \"forward\"\nstream = \"s.{{topic}}\"\n",
        db.url
    )
}

/// Publishes `{"n": from}` … `{"n": from+count-1}` in one statement: topic `t(n % streams)`,
/// key `k(n % KEYS)`, `pad` bytes of padding.
async fn publish(db: &TestDb, from: u64, count: u64, streams: u64, pad: usize) {
    sqlx::query(
        "SELECT outbox.publish('t' || (n % $3), jsonb_build_object('n', n, 'pad', repeat('x', $4)), 'k' || (n % $5)) \
           FROM generate_series($1::bigint, $1::bigint + $2 - 1) AS n",
    )
    .bind(from as i64)
    .bind(count as i64)
    .bind(streams as i64)
    .bind(pad as i32)
    .bind(KEYS as i64)
    .execute(&db.pool)
    .await
    .unwrap();
}

/// Every stream's numbers, read through the cluster.
async fn numbers_by_stream(cluster: &PrivateCluster, prefix: &str, streams: u64) -> Vec<Vec<u64>> {
    let mut all = Vec::new();
    for stream in 0..streams {
        all.push(cluster.numbers(&format!("{prefix}s.t{stream}")).await);
    }
    all
}

async fn xlen(cluster: &PrivateCluster, key: &str) -> u64 {
    redis::cmd("XLEN")
        .arg(key)
        .query_async(&mut cluster.connection().await)
        .await
        .unwrap()
}

async fn delivered(cluster: &PrivateCluster, prefix: &str, streams: u64) -> u64 {
    let mut connection = cluster.connection().await;
    let mut total = 0;
    for stream in 0..streams {
        let len: u64 = redis::cmd("XLEN")
            .arg(format!("{prefix}s.t{stream}"))
            .query_async(&mut connection)
            .await
            .unwrap();
        total += len;
    }
    total
}

/// Every number below `published` once, each in its topic's stream, and per key ascending.
fn assert_exactly_once_in_key_order(by_stream: &[Vec<u64>], published: u64) {
    let streams = by_stream.len() as u64;
    let mut seen = vec![0u32; published as usize];
    for (stream, numbers) in by_stream.iter().enumerate() {
        let mut last_of_key: HashMap<u64, u64> = HashMap::new();
        for &n in numbers {
            assert_eq!(n % streams, stream as u64, "{n} in the wrong stream");
            seen[n as usize] += 1;
            if let Some(previous) = last_of_key.insert(n % KEYS, n) {
                assert!(
                    previous < n,
                    "key k{} out of order: {previous} then {n}",
                    n % KEYS
                );
            }
        }
    }
    let lost: Vec<usize> = (0..seen.len()).filter(|&n| seen[n] == 0).collect();
    let twice: Vec<usize> = (0..seen.len()).filter(|&n| seen[n] > 1).collect();
    assert!(
        lost.is_empty(),
        "{} lost, first {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    assert!(
        twice.is_empty(),
        "{} duplicated, first {:?}",
        twice.len(),
        &twice[..twice.len().min(5)]
    );
}

async fn wait_for_all(
    cluster: &PrivateCluster,
    prefix: &str,
    streams: u64,
    published: u64,
    within: Duration,
) {
    eventually(within, "every message in the streams", || async {
        (delivered(cluster, prefix, streams).await >= published).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_streams_over_three_masters_survive_five_relay_kills_exactly_once_in_key_order() {
    let _watchdog = watchdog(Duration::from_secs(600));
    let cluster = tokio::task::spawn_blocking(PrivateCluster::start)
        .await
        .unwrap();
    let db = TestDb::new().await;
    let prefix = "t:".to_owned(); // the cluster is this test's own
    let dir = TempDir::new(&db.name);
    let config = dir.write(
        "relay.toml",
        &cluster_toml(
            &db,
            &cluster.seed_url(),
            &prefix,
            "batch_size = 500\nidle_poll_ms = 2\nlease_ttl_ms = 300",
        ),
    );
    let streams = 20;
    let masters: std::collections::HashSet<u16> = (0..streams)
        .map(|s| cluster.master_of(&format!("{prefix}s.t{s}")))
        .collect();
    assert_eq!(
        masters.len(),
        3,
        "the streams are spread over the three masters"
    );

    let mut published = 0;
    while published < 90_000 {
        publish(&db, published, 10_000, streams, 20).await;
        published += 10_000;
    }
    for round in 0..5 {
        let relay = RelayProcess::start(&config, "relay");
        let alive = Duration::from_millis(rand::rng().random_range(400..1500));
        let deadline = Instant::now() + alive;
        while Instant::now() < deadline {
            publish(&db, published, 400, streams, 20).await;
            published += 400;
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
        relay.kill9();
        eprintln!(
            "round {round}: killed after {alive:?} with {}/{published} appended",
            delivered(&cluster, &prefix, streams).await
        );
    }
    let rest = if published < 100_000 {
        100_000 - published
    } else {
        1000
    };
    publish(&db, published, rest, streams, 20).await;
    published += rest;
    let relay = RelayProcess::start(&config, "relay");
    wait_for_all(
        &cluster,
        &prefix,
        streams,
        published,
        Duration::from_secs(120),
    )
    .await;
    assert_eq!(
        relay.terminate(Duration::from_secs(10)).await,
        Some(0),
        "SIGTERM exits 0"
    );
    assert_exactly_once_in_key_order(
        &numbers_by_stream(&cluster, &prefix, streams).await,
        published,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_killed_mid_drain_fails_over_to_its_replica_and_the_repair_heals_the_loss() {
    let _watchdog = watchdog(Duration::from_secs(600));
    let mut cluster = tokio::task::spawn_blocking(PrivateCluster::start)
        .await
        .unwrap();
    let db = TestDb::new().await;
    let prefix = "t:".to_owned(); // the cluster is this test's own
    let dir = TempDir::new(&db.name);
    let config = dir.write(
        "relay.toml",
        &cluster_toml(
            &db,
            &cluster.seed_url(),
            &prefix,
            "batch_size = 200\nidle_poll_ms = 2\nmax_backoff_ms = 200",
        ),
    );
    let streams = 6;
    let published = 60_000;
    for from in (0..published).step_by(10_000) {
        publish(&db, from, 10_000, streams, 1000).await;
    }
    let victim_key = format!("{prefix}s.t0");
    let master = cluster.master_of(&victim_key);
    let replica = cluster.replica_of(master);
    let relay = RelayProcess::start(&config, "relay");
    eventually(
        Duration::from_secs(30),
        "appends on the victim's master",
        || async {
            let len: u64 = redis::cmd("XLEN")
                .arg(&victim_key)
                .query_async(&mut cluster.connection().await)
                .await
                .unwrap();
            (len >= 2000).then_some(())
        },
    )
    .await;
    // The replica stops reading its master's stream for a while (more than a socket buffer
    // of entries goes by), then the master dies: the replica is promoted without them.
    cluster.node(replica).signal("STOP");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    cluster.node(master).kill9();
    cluster.node(replica).signal("CONT");
    eprintln!("killed master {master}; waiting for replica {replica} to take over");
    tokio::task::block_in_place(|| cluster.wait_for_promotion(replica, Duration::from_secs(20)));

    let deadline = Instant::now() + Duration::from_secs(120);
    while delivered(&cluster, &prefix, streams).await < published {
        if Instant::now() > deadline {
            let log = relay.log();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            panic!(
                "{} of {published} delivered after 120 s; relay log, last lines first:\n{}",
                delivered(&cluster, &prefix, streams).await,
                tail.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let log = relay.log();
    relay.terminate(Duration::from_secs(10)).await;
    assert_exactly_once_in_key_order(
        &numbers_by_stream(&cluster, &prefix, streams).await,
        published,
    );
    let repaired: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("ERROR") && l.contains("Redis lost entries"))
        .collect();
    assert!(
        !repaired.is_empty(),
        "an ERROR says what was repaired:\n{log}"
    );
    assert!(
        repaired
            .iter()
            .any(|l| l.contains("stream=s.t0") && l.contains("reappended=")),
        "{repaired:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_that_moves_while_the_relay_appends_to_it_keeps_every_message_once_in_order() {
    let _watchdog = watchdog(Duration::from_secs(600));
    let cluster = tokio::task::spawn_blocking(PrivateCluster::start)
        .await
        .unwrap();
    let db = TestDb::new().await;
    let prefix = "t:".to_owned(); // the cluster is this test's own
    let dir = TempDir::new(&db.name);
    let config = dir.write(
        "relay.toml",
        &cluster_toml(
            &db,
            &cluster.seed_url(),
            &prefix,
            "batch_size = 100\nidle_poll_ms = 2\nmax_backoff_ms = 200",
        ),
    );
    let streams = 3;
    publish(&db, 0, 5000, streams, 100).await;
    let relay = RelayProcess::start(&config, "relay");
    let moving = format!("{prefix}s.t0");
    eventually(
        Duration::from_secs(30),
        "appends to the stream that will move",
        || async {
            let len: u64 = redis::cmd("XLEN")
                .arg(&moving)
                .query_async(&mut cluster.connection().await)
                .await
                .unwrap();
            (len > 0).then_some(())
        },
    )
    .await;
    let source = cluster.master_of(&moving);
    let target = *cluster.masters().iter().find(|&&m| m != source).unwrap();
    // Writers keep publishing while the slot's keys move one by one.
    let writer = {
        let pool = db.pool.clone();
        tokio::spawn(async move {
            let mut from = 5000u64;
            for _ in 0..40 {
                sqlx::query(
                    "SELECT outbox.publish('t' || (n % 3), jsonb_build_object('n', n, 'pad', repeat('x', 100)), 'k' || (n % 50)) \
                       FROM generate_series($1::bigint, $1::bigint + 99) AS n",
                )
                .bind(from as i64)
                .execute(&pool)
                .await
                .unwrap();
                from += 100;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            from
        })
    };
    let moved = {
        let moving = moving.clone();
        tokio::task::spawn_blocking(move || {
            let moved =
                cluster.migrate_slot_of(&moving, source, target, Duration::from_millis(150));
            (cluster, moved)
        })
    };
    let (cluster, moved) = moved.await.unwrap();
    let published = writer.await.unwrap();
    eprintln!("moved {moved} key(s) of {moving}'s slot from {source} to {target}");
    assert!(moved >= 2, "the stream and its watermark moved");
    assert_eq!(cluster.master_of(&moving), target);
    wait_for_all(
        &cluster,
        &prefix,
        streams,
        published,
        Duration::from_secs(60),
    )
    .await;
    relay.terminate(Duration::from_secs(10)).await;
    assert_exactly_once_in_key_order(
        &numbers_by_stream(&cluster, &prefix, streams).await,
        published,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_status_and_replay_work_against_a_cluster() {
    let _watchdog = watchdog(Duration::from_secs(600));
    let cluster = tokio::task::spawn_blocking(PrivateCluster::start)
        .await
        .unwrap();
    let db = TestDb::new().await;
    let prefix = "t:".to_owned(); // the cluster is this test's own
    let dir = TempDir::new(&db.name);
    let config = dir.write(
        "relay.toml",
        &cluster_toml(&db, &cluster.seed_url(), &prefix, ""),
    );
    let config = config.to_str().unwrap();

    let demo = run(outbox_relay().args(["demo", "--config", config]));
    assert_eq!(demo.code, Some(0), "{}{}", demo.stdout, demo.stderr);
    assert!(demo.stdout.contains("checked: all"), "{}", demo.stdout);

    let check = run(outbox_relay().args(["config", "check", "--config", config, "--connect"]));
    assert_eq!(check.code, Some(0), "{}{}", check.stdout, check.stderr);

    publish(&db, 0, 300, 3, 10).await;
    let relay = RelayProcess::start(std::path::Path::new(config), "relay");
    wait_for_all(&cluster, &prefix, 3, 300, Duration::from_secs(30)).await;
    let status = run(outbox_relay().args(["status", "--config", config]));
    assert_eq!(status.code, Some(0), "{}{}", status.stdout, status.stderr);
    let replay = run(outbox_relay().args([
        "replay",
        "--config",
        config,
        "--group",
        "g",
        "--from-time",
        "1h",
        "--yes",
    ]));
    assert_eq!(replay.code, Some(0), "{}{}", replay.stdout, replay.stderr);
    wait_for_all(&cluster, &prefix, 3, 600, Duration::from_secs(30)).await;
    relay.terminate(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_setting_that_does_not_match_the_server_is_an_error_naming_it() {
    let _watchdog = watchdog(Duration::from_secs(600));
    let cluster = tokio::task::spawn_blocking(PrivateCluster::start)
        .await
        .unwrap();
    let db = TestDb::new().await;
    let dir = TempDir::new(&db.name);
    let plain = TestRedis::new();
    let cases = [
        (
            plain.url.clone(),
            "cluster = true",
            "remove `[redis] cluster = true`",
        ),
        (
            cluster.seed_url(),
            "cluster = false",
            "set `[redis] cluster = true`",
        ),
    ];
    for (url, setting, advice) in cases {
        let file = dir.write(
            "mismatch.toml",
            &format!(
                "database_url = \"{}\"\nredis_url = \"{url}\"\n[redis]\n{setting}\n",
                db.url
            ),
        );
        let out = run(outbox_relay().args([
            "config",
            "check",
            "--config",
            file.to_str().unwrap(),
            "--connect",
        ]));
        assert_ne!(out.code, Some(0), "{setting} against {url} must fail");
        let text = format!("{}{}", out.stdout, out.stderr);
        assert!(text.contains(advice), "{setting} against {url}: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_drain_spreads_its_streams_over_the_cluster_and_cleans_up_every_master() {
    let _watchdog = watchdog(Duration::from_secs(600));
    let cluster = tokio::task::spawn_blocking(PrivateCluster::start)
        .await
        .unwrap();
    let db = TestDb::new().await;
    let dir = TempDir::new(&db.name);
    let config = dir.write(
        "bench.toml",
        &format!(
            "redis_url = \"{}\"\n[redis]\ncluster = true\n",
            cluster.seed_url()
        ),
    );
    let out = run(outbox_relay().args([
        "bench",
        "drain",
        "--config",
        config.to_str().unwrap(),
        "--database-url",
        &db.url,
        "--messages",
        "3000",
        "--streams",
        "8",
        "--json",
        dir.0.join("summary.json").to_str().unwrap(),
    ]));
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("8 stream(s) on a Redis Cluster"),
        "{}",
        out.stderr
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.0.join("summary.json")).unwrap())
            .expect("--json");
    assert_eq!(json["parameters"]["streams"], 8, "{json}");
    assert_eq!(json["parameters"]["redis_cluster"], true, "{json}");
    for master in cluster.masters() {
        let left = cluster.cli(master, &["--scan", "--pattern", "outbox-bench:*"]);
        assert!(left.trim().is_empty(), "keys left on {master}: {left}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_is_red_while_a_slot_has_no_master() {
    let _watchdog = watchdog(Duration::from_secs(600));
    let mut cluster = tokio::task::spawn_blocking(PrivateCluster::start)
        .await
        .unwrap();
    let db = TestDb::new().await;
    let dir = TempDir::new(&db.name);
    let http = crate::harness::servers::free_port();
    let config = dir.write(
        "relay.toml",
        &format!(
            "{}[http]\nlisten = \"127.0.0.1:{http}\"\n",
            cluster_toml(&db, &cluster.seed_url(), "t:", "idle_poll_ms = 5")
        ),
    );
    let addr: std::net::SocketAddr = format!("127.0.0.1:{http}").parse().unwrap();
    let relay = RelayProcess::start(&config, "relay");
    eventually(Duration::from_secs(20), "/readyz 200", || async {
        let ready = crate::harness::http_get(addr, "/readyz").await;
        ready.filter(|(status, _)| *status == 200)
    })
    .await;
    // A master and its replica die: their slots have no master, the cluster says fail.
    let master = cluster.masters()[0];
    let replica = cluster.replica_of(master);
    cluster.node(replica).kill9();
    cluster.node(master).kill9();
    let (status, body) = eventually(Duration::from_secs(30), "/readyz not 200", || async {
        let ready = crate::harness::http_get(addr, "/readyz").await;
        ready.filter(|(status, _)| *status != 200)
    })
    .await;
    assert_eq!(status, 503, "{body}");
    relay.terminate(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_replicas_waits_on_each_streams_master() {
    let _watchdog = watchdog(Duration::from_secs(600));
    let cluster = tokio::task::spawn_blocking(PrivateCluster::start)
        .await
        .unwrap();
    let db = TestDb::new().await;
    let prefix = "t:".to_owned();
    let dir = TempDir::new(&db.name);
    let config = dir.write(
        "relay.toml",
        &cluster_toml(&db, &cluster.seed_url(), &prefix, "idle_poll_ms = 5").replace(
            "[redis]\n",
            "[redis]\nwait_replicas = 1\nwait_timeout_ms = 2000\n",
        ),
    );
    let streams = 6;
    publish(&db, 0, 6000, streams, 20).await;
    let relay = RelayProcess::start(&config, "relay");
    wait_for_all(&cluster, &prefix, streams, 6000, Duration::from_secs(60)).await;
    let log = relay.log();
    relay.terminate(Duration::from_secs(10)).await;
    // Each stream's WAIT went to its own master, whose replica answered: no shortfall.
    assert!(!log.contains("replica(s) within"), "{log}");
    assert_exactly_once_in_key_order(&numbers_by_stream(&cluster, &prefix, streams).await, 6000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_name_that_cannot_keep_its_watermark_in_its_slot_fails_its_messages_not_the_others()
 {
    let _watchdog = watchdog(Duration::from_secs(600));
    let cluster = tokio::task::spawn_blocking(PrivateCluster::start)
        .await
        .unwrap();
    let db = TestDb::new().await;
    let toml = format!(
        "database_url = \"{}\"\nredis_url = \"{}\"\n[redis]\ncluster = true\nkey_prefix = \"t:\"\n\
         [relay]\nidle_poll_ms = 5\n[[groups]]\nname = \"g\"\n[[groups.routes]]\ntopics = [\"*\"]\n\
         handler = \"forward\"\nstream = \"events.{{key}}\"\nmax_attempts = 1\n",
        db.url,
        cluster.seed_url()
    );
    let ids = crate::harness::relay::publish_messages(
        &db.pool,
        vec![
            outbox_relay::Message::new("t", serde_json::json!({"n": 0})).key("a}b"),
            outbox_relay::Message::new("t", serde_json::json!({"n": 1})).key("ok"),
            outbox_relay::Message::new("t", serde_json::json!({"n": 2})).key("ok"),
        ],
        false,
    )
    .await;
    let relay = crate::harness::relay::InProcessRelay::start(&toml).await;
    let (status, error): (String, String) = eventually(
        Duration::from_secs(30),
        "the brace key's message dead",
        || async {
            sqlx::query_as(
                "SELECT d.status, coalesce(d.last_error, '') FROM outbox.deliveries d \
                  WHERE d.message_id = $1 AND d.status = 'dead'",
            )
            .bind(ids[0])
            .fetch_optional(&db.pool)
            .await
            .unwrap()
        },
    )
    .await;
    assert_eq!(status, "dead");
    assert!(error.contains("CROSSSLOT"), "{error}");
    eventually(
        Duration::from_secs(30),
        "the other key's messages",
        || async { (cluster.numbers("t:events.ok").await == [1, 2]).then_some(()) },
    )
    .await;
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_paused_past_its_lease_is_fenced_on_every_master() {
    let _watchdog = watchdog(Duration::from_secs(600));
    let cluster = tokio::task::spawn_blocking(PrivateCluster::start)
        .await
        .unwrap();
    let db = TestDb::new().await;
    let prefix = "t:".to_owned();
    let dir = TempDir::new(&db.name);
    let config = dir.write(
        "relay.toml",
        &cluster_toml(
            &db,
            &cluster.seed_url(),
            &prefix,
            "idle_poll_ms = 2\nbatch_size = 60\nlease_ttl_ms = 400",
        ),
    );
    let streams = 6;
    let masters: std::collections::HashSet<u16> = (0..streams)
        .map(|s| cluster.master_of(&format!("{prefix}s.t{s}")))
        .collect();
    assert_eq!(masters.len(), 3, "the streams are on every master");
    publish(&db, 0, 3000, streams, 20).await;
    let stale = RelayProcess::start(&config, "stale");
    eventually(
        Duration::from_secs(20),
        "the stale relay appending",
        || async { (delivered(&cluster, &prefix, streams).await > 0).then_some(()) },
    )
    .await;
    stale.signal("STOP");
    let fresh = RelayProcess::start(&config, "fresh");
    publish(&db, 3000, 3000, streams, 20).await;
    wait_for_all(&cluster, &prefix, streams, 6000, Duration::from_secs(60)).await;
    stale.signal("CONT");
    eventually(
        Duration::from_secs(10),
        "the stale relay noticing",
        || async { stale.log().contains("lease lost").then_some(()) },
    )
    .await;
    publish(&db, 6000, 600, streams, 20).await;
    wait_for_all(&cluster, &prefix, streams, 6600, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stale.terminate(Duration::from_secs(10)).await;
    fresh.terminate(Duration::from_secs(10)).await;
    assert_exactly_once_in_key_order(&numbers_by_stream(&cluster, &prefix, streams).await, 6600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_stops_acknowledging_holds_the_cursor_until_it_comes_back() {
    let _watchdog = watchdog(Duration::from_secs(600));
    let cluster = tokio::task::spawn_blocking(PrivateCluster::start)
        .await
        .unwrap();
    let db = TestDb::new().await;
    let prefix = "t:".to_owned();
    let dir = TempDir::new(&db.name);
    let config = dir.write(
        "relay.toml",
        &cluster_toml(
            &db,
            &cluster.seed_url(),
            &prefix,
            "idle_poll_ms = 5\nmax_backoff_ms = 200",
        )
        .replace(
            "[redis]\n",
            "[redis]\nwait_replicas = 1\nwait_timeout_ms = 300\n",
        ),
    );
    // One stream, so the cursor can only pass what its master's replica acknowledged.
    let stream_master = cluster.master_of(&format!("{prefix}s.t0"));
    let replica = cluster.replica_of(stream_master);
    let relay = RelayProcess::start(&config, "relay");
    eventually(Duration::from_secs(20), "the group's row", || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM outbox.consumer_groups")
            .fetch_one(&db.pool)
            .await
            .ok()
            .filter(|n| *n == 1)
    })
    .await;
    let cursor = || async {
        sqlx::query_scalar::<_, i64>("SELECT cursor_seq FROM outbox.consumer_groups")
            .fetch_one(&db.pool)
            .await
            .unwrap()
    };
    let before = cursor().await;
    cluster
        .nodes
        .iter()
        .find(|n| n.port == replica)
        .unwrap()
        .signal("STOP");
    publish(&db, 0, 100, 1, 20).await;
    eventually(
        Duration::from_secs(20),
        "appended to the master",
        || async { (delivered(&cluster, &prefix, 1).await == 100).then_some(()) },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        cursor().await,
        before,
        "no replica acknowledged: the cursor waits"
    );
    assert!(relay.log().contains("0 of 1 replica(s)"), "{}", relay.log());
    cluster
        .nodes
        .iter()
        .find(|n| n.port == replica)
        .unwrap()
        .signal("CONT");
    eventually(Duration::from_secs(60), "the cursor moves", || async {
        (cursor().await > before).then_some(())
    })
    .await;
    relay.terminate(Duration::from_secs(10)).await;
    assert_exactly_once_in_key_order(&numbers_by_stream(&cluster, &prefix, 1).await, 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_copies_go_through_a_failover_of_their_master_exactly_once() {
    let _watchdog = watchdog(Duration::from_secs(600));
    let mut cluster = tokio::task::spawn_blocking(PrivateCluster::start)
        .await
        .unwrap();
    let db = TestDb::new().await;
    // Keys with a stray `}` make every message dead at once (CROSSSLOT, max_attempts = 1), so
    // each one becomes a late entry: its dead-letter copy, appended by token.
    let toml = format!(
        "database_url = \"{}\"\nredis_url = \"{}\"\n[redis]\ncluster = true\nkey_prefix = \"t:\"\n\
         wait_replicas = 1\nwait_timeout_ms = 2000\n[relay]\nidle_poll_ms = 5\nmax_backoff_ms = 200\n\
         [[groups]]\nname = \"g\"\ndead_letter_stream = \"dead\"\n[[groups.routes]]\ntopics = [\"*\"]\n\
         handler = \"forward\"\nstream = \"events.{{key}}\"\nmax_attempts = 1\n",
        db.url,
        cluster.seed_url()
    );
    let publish_dead = |from: u64| {
        let pool = db.pool.clone();
        async move {
            sqlx::query(
                "SELECT outbox.publish('t', jsonb_build_object('n', n), 'k}' || n) \
                   FROM generate_series($1::bigint, $1::bigint + 49) AS n",
            )
            .bind(from as i64)
            .execute(&pool)
            .await
            .unwrap();
        }
    };
    publish_dead(0).await;
    let relay = crate::harness::relay::InProcessRelay::start(&toml).await;
    eventually(Duration::from_secs(30), "50 dead-letter copies", || async {
        (xlen(&cluster, "t:dead").await == 50).then_some(())
    })
    .await;
    let master = cluster.master_of("t:dead");
    let replica = cluster.replica_of(master);
    cluster.node(master).kill9();
    tokio::task::block_in_place(|| cluster.wait_for_promotion(replica, Duration::from_secs(20)));
    publish_dead(50).await;
    eventually(
        Duration::from_secs(60),
        "100 dead-letter copies",
        || async { (xlen(&cluster, "t:dead").await >= 100).then_some(()) },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    relay.stop().await;
    let numbers = cluster.numbers("t:dead").await;
    let mut sorted = numbers.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), numbers.len(), "no copy twice: {numbers:?}");
    assert_eq!(sorted, (0..100).collect::<Vec<u64>>(), "every copy once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_the_masters_close_as_idle_cost_no_failed_step() {
    let _watchdog = watchdog(Duration::from_secs(600));
    let cluster = tokio::task::spawn_blocking(PrivateCluster::start)
        .await
        .unwrap();
    for node in &cluster.nodes {
        cluster.cli(node.port, &["config", "set", "timeout", "1"]);
    }
    let db = TestDb::new().await;
    let prefix = "t:".to_owned();
    let dir = TempDir::new(&db.name);
    let config = dir.write(
        "relay.toml",
        &cluster_toml(&db, &cluster.seed_url(), &prefix, "idle_poll_ms = 5"),
    );
    let streams = 6;
    let relay = RelayProcess::start(&config, "relay");
    for round in 0..3u64 {
        publish(&db, round * 600, 600, streams, 20).await;
        wait_for_all(
            &cluster,
            &prefix,
            streams,
            (round + 1) * 600,
            Duration::from_secs(30),
        )
        .await;
        // Long enough for every master to close the relay's idle watch connections.
        tokio::time::sleep(Duration::from_millis(2500)).await;
    }
    let log = relay.log();
    relay.terminate(Duration::from_secs(10)).await;
    assert!(!log.contains("relay step failed"), "{log}");
    assert_exactly_once_in_key_order(&numbers_by_stream(&cluster, &prefix, streams).await, 1800);
}

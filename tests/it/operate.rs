//! Operator actions on a live outbox: `replay`, `prune`, `groups pause|resume|reset`, with a
//! real relay forwarding to real Redis.

use std::time::Duration;

use serde_json::{Value, json};
use uuid::Uuid;

use crate::harness::cli::{Run, outbox_relay, run};
use crate::harness::redis::TestRedis;
use crate::harness::relay::{
    InProcessRelay, RelayProcess, TempDir, forward_all, insert_delivery, keyed_message,
    publish_messages, publish_numbered, relay_toml,
};
use crate::harness::{TestDb, eventually};

const FAST: &str = "idle_poll_ms = 20\nlease_ttl_ms = 2000";

fn cli(db: &TestDb, args: &[&str]) -> Run {
    run(outbox_relay().args(["--database-url", &db.url]).args(args))
}

/// Publishes `{"n": from}` .. in one transaction each; returns the ids in order.
async fn publish(db: &TestDb, from: u64, count: u64) -> Vec<Uuid> {
    let messages = (from..from + count)
        .map(|n| outbox_relay::Message::new("t", json!({ "n": n })))
        .collect();
    publish_messages(&db.pool, messages, false).await
}

async fn position_of(db: &TestDb, id: Uuid) -> String {
    sqlx::query_scalar(
        "SELECT m.tx_id::text || ':' || m.seq FROM outbox.messages m WHERE m.id = $1",
    )
    .bind(id)
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

async fn wait_for_numbers(redis: &TestRedis, expected: &[u64]) {
    eventually(Duration::from_secs(10), "the stream's entries", || async {
        let numbers = redis.numbers("all").await;
        (numbers.len() >= expected.len()).then_some(())
    })
    .await;
    // Nothing more than expected arrives (the relay polls every 20 ms).
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(redis.numbers("all").await, expected);
}

#[tokio::test]
async fn replay_redelivers_exactly_the_messages_after_the_position() {
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    let relay =
        InProcessRelay::start(&relay_toml(&db, &redis, FAST, &forward_all("g", "all"))).await;
    let ids = publish(&db, 0, 10).await;
    wait_for_numbers(&redis, &(0..10).collect::<Vec<_>>()).await;

    // A dry run counts and changes nothing; without --yes the command refuses (exit 2).
    let from = position_of(&db, ids[5]).await;
    let dry = cli(
        &db,
        &[
            "replay",
            "--group",
            "g",
            "--from-position",
            &from,
            "--dry-run",
        ],
    );
    assert_eq!(dry.code, Some(0), "{}", dry.stderr);
    assert!(
        dry.stdout.contains("4 would be delivered again"),
        "{}",
        dry.stdout
    );
    let refused = cli(&db, &["replay", "--group", "g", "--from-position", &from]);
    assert_eq!(refused.code, Some(2), "{}", refused.stderr);
    assert!(refused.stderr.contains("--yes"), "{}", refused.stderr);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(redis.numbers("all").await.len(), 10);

    // The replay, with the relay running: messages 6..9 once more, then new ones as usual.
    let done = cli(
        &db,
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
    assert_eq!(done.code, Some(0), "{}", done.stderr);
    let report: Value = serde_json::from_str(&done.stdout).unwrap();
    assert_eq!(report["affected"], 4, "{report:#}");
    assert_eq!(report["replay_generation"], 1);
    let mut expected: Vec<u64> = (0..10).chain(6..10).collect();
    wait_for_numbers(&redis, &expected).await;
    publish(&db, 10, 1).await;
    expected.push(10);
    wait_for_numbers(&redis, &expected).await;

    // --from-message replays that message too; a position past the cursor is refused.
    let again = cli(
        &db,
        &[
            "replay",
            "--group",
            "g",
            "--from-message",
            &ids[8].to_string(),
            "--yes",
        ],
    );
    assert_eq!(again.code, Some(0), "{}", again.stderr);
    expected.extend([8, 9, 10]);
    wait_for_numbers(&redis, &expected).await;
    let ahead = cli(
        &db,
        &[
            "replay",
            "--group",
            "g",
            "--from-position",
            "999999999:1",
            "--yes",
        ],
    );
    assert_eq!(ahead.code, Some(2), "{}", ahead.stderr);
    assert!(ahead.stderr.contains("past group"), "{}", ahead.stderr);
    relay.stop().await;
}

#[tokio::test]
async fn replay_from_time_leaves_a_dead_letter_to_its_row() {
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    let relay =
        InProcessRelay::start(&relay_toml(&db, &redis, FAST, &forward_all("g", "all"))).await;
    let ids = publish(&db, 0, 6).await;
    wait_for_numbers(&redis, &(0..6).collect::<Vec<_>>()).await;
    relay.stop().await;
    // Messages 0..2 are an hour old; message 4 has a dead delivery row in the group.
    sqlx::query(
        "UPDATE outbox.messages SET created_at = now() - interval '1 hour' WHERE id = ANY($1)",
    )
    .bind(&ids[..3])
    .execute(&db.pool)
    .await
    .unwrap();
    insert_delivery(&db.pool, "g", ids[4], "dead", 1).await;

    let done = cli(
        &db,
        &["replay", "--group", "g", "--from-time", "30m", "--yes"],
    );
    assert_eq!(done.code, Some(0), "{}", done.stderr);
    assert!(
        done.stdout
            .contains("3 messages lie between: 2 will be delivered again"),
        "{}",
        done.stdout
    );
    assert!(
        done.stdout
            .contains("1 keeps its retrying/blocked/dead delivery row"),
        "{}",
        done.stdout
    );
    let relay =
        InProcessRelay::start(&relay_toml(&db, &redis, FAST, &forward_all("g", "all"))).await;
    wait_for_numbers(&redis, &[0, 1, 2, 3, 4, 5, 3, 5]).await;
    relay.stop().await;
}

#[tokio::test]
async fn prune_never_deletes_what_a_group_still_needs() {
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    let ids = publish(&db, 0, 10).await;
    // No group yet: nothing is known to be delivered, nothing goes.
    let none = cli(&db, &["prune", "--older-than", "1s"]);
    assert_eq!(none.code, Some(0), "{}", none.stderr);
    assert!(
        none.stdout.contains("no consumer groups"),
        "{}",
        none.stdout
    );

    // Group `fast` has passed everything; `slow` only messages 0..5 (its cursor at 5).
    let groups = format!(
        "{}{}",
        forward_all("fast", "all"),
        forward_all("slow", "slow")
    );
    let relay = InProcessRelay::start(&relay_toml(&db, &redis, FAST, &groups)).await;
    wait_for_numbers(&redis, &(0..10).collect::<Vec<_>>()).await;
    relay.stop().await;
    let slow_cursor = position_of(&db, ids[5]).await;
    let (tx_id, seq) = slow_cursor.split_once(':').unwrap();
    sqlx::query("UPDATE outbox.consumer_groups SET cursor_tx_id = $1::xid8, cursor_seq = $2 WHERE name = 'slow'")
        .bind(tx_id)
        .bind(seq.parse::<i64>().unwrap())
        .execute(&db.pool)
        .await
        .unwrap();
    // Message 2 is a dead letter of `fast`; messages 0..7 are old, 8 and 9 are new.
    insert_delivery(&db.pool, "fast", ids[2], "dead", 1).await;
    sqlx::query(
        "UPDATE outbox.messages SET created_at = now() - interval '2 days' WHERE id = ANY($1)",
    )
    .bind(&ids[..8])
    .execute(&db.pool)
    .await
    .unwrap();

    let dry = cli(
        &db,
        &[
            "prune",
            "--older-than",
            "1d",
            "--dry-run",
            "--json",
            "--batch-size",
            "2",
        ],
    );
    assert_eq!(dry.code, Some(0), "{}", dry.stderr);
    let report: Value = serde_json::from_str(&dry.stdout).unwrap();
    assert_eq!(
        (
            &report["deletable"],
            &report["deleted"],
            &report["kept_for_deliveries"]
        ),
        (&json!(5), &json!(0), &json!(1)),
        "{report:#}"
    );
    assert_eq!(report["horizon"]["group"], "slow");
    assert_eq!(db.message_count().await, 10);

    let done = cli(&db, &["prune", "--older-than", "1d", "--batch-size", "2"]);
    assert_eq!(done.code, Some(0), "{}", done.stderr);
    assert!(
        done.stdout.contains("deleted 5 messages written before"),
        "{}",
        done.stdout
    );
    let left: Vec<Uuid> =
        sqlx::query_scalar("SELECT m.id FROM outbox.messages m ORDER BY m.tx_id, m.seq")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(left, [ids[2], ids[6], ids[7], ids[8], ids[9]]);

    // The slow group still gets everything it had not passed.
    let relay = InProcessRelay::start(&relay_toml(&db, &redis, FAST, &groups)).await;
    eventually(Duration::from_secs(10), "slow catches up", || async {
        (redis.numbers("slow").await.ends_with(&[6, 7, 8, 9])).then_some(())
    })
    .await;
    relay.stop().await;
}

#[tokio::test]
async fn pause_stops_a_running_relay_and_resume_lets_it_go_on() {
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    let relay =
        InProcessRelay::start(&relay_toml(&db, &redis, FAST, &forward_all("g", "all"))).await;
    publish(&db, 0, 1).await;
    wait_for_numbers(&redis, &[0]).await;

    let paused = cli(&db, &["groups", "pause", "g"]);
    assert_eq!(paused.code, Some(0), "{}", paused.stderr);
    assert!(
        paused.stdout.contains("group `g` paused"),
        "{}",
        paused.stdout
    );
    assert!(
        paused.stdout.contains("lease was taken from relay"),
        "{}",
        paused.stdout
    );
    publish(&db, 1, 1).await;
    // Nothing observable says "the relay did not forward": wait several idle polls (20 ms)
    // and lease attempts, then check nothing arrived.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(redis.numbers("all").await, [0]);
    let list = cli(&db, &["groups", "list"]);
    assert!(list.stdout.contains("paused"), "{}", list.stdout);
    let again = cli(&db, &["groups", "pause", "g"]);
    assert!(again.stdout.contains("already paused"), "{}", again.stdout);

    let resumed = cli(&db, &["groups", "resume", "g"]);
    assert_eq!(resumed.code, Some(0), "{}", resumed.stderr);
    wait_for_numbers(&redis, &[0, 1]).await;
    let missing = cli(&db, &["groups", "pause", "nope"]);
    assert_eq!(missing.code, Some(1));
    assert!(
        missing.stderr.contains("does not exist"),
        "{}",
        missing.stderr
    );
    relay.stop().await;
}

#[tokio::test]
async fn reset_skips_the_backlog_or_delivers_everything_again() {
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    let toml = relay_toml(&db, &redis, FAST, &forward_all("g", "all"));
    let relay = InProcessRelay::start(&toml).await;
    publish(&db, 0, 2).await;
    wait_for_numbers(&redis, &[0, 1]).await;
    relay.stop().await;
    // A backlog of 3 (one of them a dead letter) while no relay runs.
    let backlog = publish_messages(
        &db.pool,
        (2..5)
            .map(|n| keyed_message("t", &json!({ "n": n })))
            .collect(),
        false,
    )
    .await;
    insert_delivery(&db.pool, "g", backlog[0], "dead", 1).await;

    // The end is just below the oldest transaction still running on the server (snapshot
    // xmin, whatever its database): while another test's older transaction runs, the backlog
    // is past it. Asked again until that one ends.
    let dry = eventually(
        Duration::from_secs(20),
        "the backlog before the end",
        || async {
            let dry = cli(&db, &["groups", "reset", "g", "--to-end", "--dry-run"]);
            assert_eq!(dry.code, Some(0), "{}", dry.stderr);
            dry.stdout
                .contains("3 messages lie between: 3 would be skipped")
                .then_some(dry)
        },
    )
    .await;
    assert!(
        dry.stdout.contains("1 dead delivery row would be deleted"),
        "{}",
        dry.stdout
    );
    assert!(
        dry.stdout.contains(":end"),
        "the cursor as a position: {}",
        dry.stdout
    );
    assert!(
        !dry.stdout.contains(&i64::MAX.to_string()),
        "{}",
        dry.stdout
    );
    let usage = cli(&db, &["groups", "reset", "g"]);
    assert_eq!(usage.code, Some(2), "{}", usage.stderr);
    for flag in ["--to-start", "--to-end", "--yes", "--dry-run"] {
        assert!(usage.stderr.contains(flag), "{flag}: {}", usage.stderr);
    }
    let done = cli(&db, &["groups", "reset", "g", "--to-end", "--yes"]);
    assert_eq!(done.code, Some(0), "{}", done.stderr);
    let status = cli(&db, &["status", "--json"]);
    let status: Value = serde_json::from_str(&status.stdout).unwrap();
    let cursor = status["groups"][0]["cursor"].as_str().unwrap().to_owned();
    assert!(cursor.ends_with(":end"), "{cursor}");
    // What status prints, replay takes back.
    let again = cli(
        &db,
        &[
            "replay",
            "--group",
            "g",
            "--from-position",
            &cursor,
            "--dry-run",
        ],
    );
    assert_eq!(again.code, Some(0), "{}", again.stderr);
    assert!(again.stdout.contains("nothing to do"), "{}", again.stdout);
    let relay = InProcessRelay::start(&toml).await;
    publish(&db, 5, 1).await;
    wait_for_numbers(&redis, &[0, 1, 5]).await;

    // --to-start: everything again, once.
    let done = cli(&db, &["groups", "reset", "g", "--to-start", "--yes"]);
    assert_eq!(done.code, Some(0), "{}", done.stderr);
    wait_for_numbers(&redis, &[0, 1, 5, 0, 1, 2, 3, 4, 5]).await;
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_replay_duplicates_nothing_within_it() {
    const MESSAGES: usize = 10_000;
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    let dir = TempDir::new(&db.name);
    let config = dir.forward_all_config(
        &db,
        &redis,
        "batch_size = 20\nidle_poll_ms = 2\nlease_ttl_ms = 300",
    );
    for from in (0..MESSAGES).step_by(1000) {
        publish_numbered(&db.pool, from, 1000).await;
    }
    let mut relay = RelayProcess::start(&config, "relay");
    eventually(Duration::from_secs(60), "the first delivery", || async {
        (redis.stream_len("all").await >= MESSAGES).then_some(())
    })
    .await;

    let replay = cli(
        &db,
        &["replay", "--group", "g", "--from-position", "0:0", "--yes"],
    );
    assert_eq!(replay.code, Some(0), "{}", replay.stderr);
    // Kill the relay each time the replay has sent some more, and start another.
    let mut killed_mid_replay = 0;
    for round in 1..=4 {
        let mark = MESSAGES + round * MESSAGES / 6;
        eventually(Duration::from_secs(60), "the replay going on", || async {
            (redis.stream_len("all").await >= mark).then_some(())
        })
        .await;
        relay.kill9();
        let at_kill = redis.stream_len("all").await;
        eprintln!("round {round}: killed with {at_kill} entries in the stream");
        if at_kill < 2 * MESSAGES {
            killed_mid_replay += 1;
        }
        relay = RelayProcess::start(&config, "relay");
    }
    assert!(
        killed_mid_replay > 0,
        "every kill came after the replay ended"
    );
    eventually(Duration::from_secs(60), "the replay to finish", || async {
        (redis.stream_len("all").await >= 2 * MESSAGES).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let expected: Vec<u64> = (0..MESSAGES as u64).chain(0..MESSAGES as u64).collect();
    assert_eq!(redis.numbers("all").await, expected);
    relay.kill9();
}

#[tokio::test]
async fn groups_sharing_reads_each_get_everything_once_and_a_paused_one_gets_nothing() {
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    let groups: String = (0..4)
        .map(|g| forward_all(&format!("g{g}"), &format!("s{g}")))
        .collect();
    let toml = relay_toml(
        &db,
        &redis,
        "idle_poll_ms = 5\nbatch_size = 20\nlease_ttl_ms = 2000",
        &groups,
    );
    let relay = InProcessRelay::start(&toml).await;
    for from in (0..600).step_by(100) {
        publish_numbered(&db.pool, from, 100).await;
    }
    let all: Vec<u64> = (0..600).collect();
    for g in 0..4 {
        let stream = format!("s{g}");
        eventually(Duration::from_secs(20), "every group's stream", || async {
            (redis.numbers(&stream).await.len() >= 600).then_some(())
        })
        .await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    for g in 0..4 {
        assert_eq!(redis.numbers(&format!("s{g}")).await, all, "group g{g}");
    }

    // A paused group takes nothing from the reads the others share.
    let paused = cli(&db, &["groups", "pause", "g1"]);
    assert_eq!(paused.code, Some(0), "{}", paused.stderr);
    publish_numbered(&db.pool, 600, 50).await;
    eventually(
        Duration::from_secs(10),
        "the others get the new ones",
        || async { (redis.numbers("s0").await.len() >= 650).then_some(()) },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(redis.numbers("s1").await.len(), 600);
    let resumed = cli(&db, &["groups", "resume", "g1"]);
    assert_eq!(resumed.code, Some(0), "{}", resumed.stderr);
    let all: Vec<u64> = (0..650).collect();
    eventually(
        Duration::from_secs(10),
        "the paused group catching up",
        || async { (redis.numbers("s1").await == all).then_some(()) },
    )
    .await;
    relay.stop().await;
}

#[tokio::test]
async fn every_command_taking_a_group_refuses_one_that_does_not_exist() {
    let db = TestDb::new().await;
    for name in ["notifications", "audit"] {
        outbox_relay::store::consumer_groups_ensure(&db.pool, name, false)
            .await
            .unwrap();
    }
    let id = Uuid::now_v7().to_string();
    for args in [
        &["status", "--group", "nosuch"][..],
        &["stuck", "--group", "nosuch"],
        &["stuck", "--group", "nosuch", "--json"],
        &["dead", "list", "--group", "nosuch"],
        &["dead", "retry", "--group", "nosuch"],
        &["dead", "discard", "--group", "nosuch"],
        &["retry", &id, "--group", "nosuch"],
        &["groups", "pause", "nosuch"],
        &["groups", "resume", "nosuch"],
        &["groups", "reset", "nosuch", "--to-end", "--dry-run"],
        &[
            "replay",
            "--group",
            "nosuch",
            "--from-position",
            "0:0",
            "--dry-run",
        ],
    ] {
        let out = cli(&db, args);
        assert_eq!(out.code, Some(1), "{args:?}: {}{}", out.stdout, out.stderr);
        assert!(out.stdout.is_empty(), "{args:?}: {}", out.stdout);
        assert!(
            out.stderr.contains(
                "consumer group `nosuch` does not exist; the groups are `audit`, `notifications`"
            ),
            "{args:?}: {}",
            out.stderr
        );
    }
    // An existing group with nothing to show is still fine.
    let out = cli(&db, &["stuck", "--group", "audit"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(out.stdout.contains("nothing stuck"), "{}", out.stdout);
    let out = cli(&db, &["dead", "list", "--group", "audit"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
}

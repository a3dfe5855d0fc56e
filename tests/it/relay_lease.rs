//! One active relay per group: a second one waits as a standby and takes over when the first
//! dies; a relay that lost its lease while still running can neither append nor move the cursor.

use std::time::{Duration, Instant};

use crate::harness::redis::TestRedis;
use crate::harness::relay::{
    RelayProcess, TempDir, assert_numbered_exactly_once, cursor_of_g, lease_owner,
    publish_numbered, wait_for_cursor_at_the_end, wait_for_lease_owner,
};
use crate::harness::{TestDb, eventually};

fn owner_pid(owner: &str) -> u32 {
    owner
        .split(':')
        .nth(1)
        .and_then(|pid| pid.parse().ok())
        .expect("owner is host:pid:nonce")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_within_the_lease_time_when_the_active_relay_dies() {
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    let dir = TempDir::new(&db.name);
    let config = dir.forward_all_config(&db, &redis, "idle_poll_ms = 2\nlease_ttl_ms = 1000");
    let first = RelayProcess::start(&config, "first");
    let owner = wait_for_lease_owner(&db).await;
    assert_eq!(owner_pid(&owner), first.pid());
    let second = RelayProcess::start(&config, "second");
    let standing_by = format!("holder={owner}");
    eventually(
        Duration::from_secs(10),
        "the standby saying it stands by",
        || async { second.log().contains(&standing_by).then_some(()) },
    )
    .await;

    let mut published = 0;
    for _ in 0..10 {
        publish_numbered(&db.pool, published, 20).await;
        published += 20;
        tokio::time::sleep(Duration::from_millis(30)).await;
        let owner = lease_owner(&db).await.expect("held");
        assert_eq!(
            owner_pid(&owner),
            first.pid(),
            "the standby must not take a live lease"
        );
    }
    eventually(
        Duration::from_secs(10),
        "first batches forwarded",
        || async { (redis.stream_len("all").await == published).then_some(()) },
    )
    .await;

    let log = second.log();
    let said = log.matches("standing by").count();
    assert_eq!(
        said, 1,
        "one INFO line while it waits, not one a poll:\n{log}"
    );
    first.kill9();
    let killed = Instant::now();
    publish_numbered(&db.pool, published, 50).await;
    published += 50;
    let owner = eventually(
        Duration::from_secs(10),
        "the standby holding the lease",
        || async {
            lease_owner(&db)
                .await
                .filter(|owner| owner_pid(owner) == second.pid())
        },
    )
    .await;
    let takeover = killed.elapsed();
    assert!(
        takeover < Duration::from_millis(1000 + 1000),
        "took over after {takeover:?}; {owner}"
    );
    eventually(Duration::from_secs(10), "everything forwarded", || async {
        (redis.stream_len("all").await >= published).then_some(())
    })
    .await;
    assert_eq!(second.terminate(Duration::from_secs(5)).await, Some(0));
    assert_numbered_exactly_once(&redis, published).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_paused_past_its_lease_can_neither_append_nor_move_the_cursor() {
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    let dir = TempDir::new(&db.name);
    let config = dir.forward_all_config(
        &db,
        &redis,
        "idle_poll_ms = 2\nbatch_size = 10\nlease_ttl_ms = 400",
    );
    let stale = RelayProcess::start(&config, "stale");
    wait_for_lease_owner(&db).await;
    let mut published = 0;
    publish_numbered(&db.pool, published, 100).await;
    published += 100;
    // Freeze it mid-drain (it reads 10 at a time), past its lease.
    tokio::time::sleep(Duration::from_millis(15)).await;
    stale.signal("STOP");
    let fresh = RelayProcess::start(&config, "fresh");
    eventually(
        Duration::from_secs(10),
        "the fresh relay holding the lease",
        || async {
            lease_owner(&db)
                .await
                .filter(|owner| owner_pid(owner) == fresh.pid())
        },
    )
    .await;
    publish_numbered(&db.pool, published, 100).await;
    published += 100;
    eventually(
        Duration::from_secs(10),
        "the fresh relay forwarding everything",
        || async { (redis.stream_len("all").await >= published).then_some(()) },
    )
    .await;
    // Its last cursor update may land just after the last append: wait for the cursor to
    // reach the end before taking it as the reference.
    wait_for_cursor_at_the_end(&db).await;
    let cursor_before = cursor_of_g(&db).await;

    // Wake the stale relay: whatever it had in flight must be refused.
    stale.signal("CONT");
    eventually(
        Duration::from_secs(10),
        "the stale relay noticing it lost the lease",
        || async { stale.log().contains("lease lost").then_some(()) },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        lease_owner(&db).await.map(|o| owner_pid(&o)),
        Some(fresh.pid())
    );
    let cursor_after = cursor_of_g(&db).await;
    assert_eq!(
        cursor_before, cursor_after,
        "the stale relay moved the cursor"
    );
    assert_eq!(stale.terminate(Duration::from_secs(5)).await, Some(0));
    assert_eq!(fresh.terminate(Duration::from_secs(5)).await, Some(0));
    assert_numbered_exactly_once(&redis, published).await;
}

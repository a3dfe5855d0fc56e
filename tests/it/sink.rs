//! The watermarked append on its own, against the real Redis: replays add nothing, a newer
//! lease epoch fences an older one (even when it had nothing new to add), a new replay
//! generation passes, and two relays racing on one stream never duplicate an entry.

use outbox_relay::config::{ConnectionUrl, RedisSettings};
use outbox_relay::position::Position;
use outbox_relay::sink::{Entry, Sink, StreamAppend, Writer};

use crate::harness::redis::TestRedis;

async fn sink(redis: &TestRedis) -> Sink {
    let settings = RedisSettings {
        key_prefix: redis.prefix.clone(),
        ..Default::default()
    };
    let url = ConnectionUrl::parse(&redis.url, &["redis"]).unwrap();
    Sink::connect(&url, &settings).await.unwrap()
}

fn writer(epoch: i64, replay_generation: i64) -> Writer<'static> {
    Writer {
        group: "g",
        epoch,
        replay_generation,
    }
}

/// Messages `seqs` of transaction 100, one entry each to stream `out`, payload `{"n": seq}`.
fn batch(seqs: impl IntoIterator<Item = i64>) -> Vec<StreamAppend> {
    vec![StreamAppend {
        stream: "out".into(),
        entries: seqs
            .into_iter()
            .map(|seq| Entry {
                position: Position::new(100, seq),
                ordinal: 0,
                fields: vec![("payload", format!(r#"{{"n": {seq}}}"#))],
            })
            .collect(),
        appended_through: None,
    }]
}

#[tokio::test]
async fn a_replayed_batch_adds_only_what_lies_past_the_watermark() {
    let redis = TestRedis::new();
    let sink = sink(&redis).await;
    let first = sink.append(writer(1, 0), &batch(1..=5), &[]).await.unwrap();
    let again = sink.append(writer(1, 0), &batch(1..=5), &[]).await.unwrap();
    let overlap = sink.append(writer(1, 0), &batch(3..=8), &[]).await.unwrap();
    assert_eq!((first.appended, first.skipped), (5, 0));
    assert_eq!((again.appended, again.skipped), (0, 5));
    assert_eq!((overlap.appended, overlap.skipped), (3, 3));
    assert_eq!(redis.numbers("out").await, [1, 2, 3, 4, 5, 6, 7, 8]);
    // A replay generation above the old one sends the same messages again, once.
    let replayed = sink.append(writer(1, 1), &batch(2..=3), &[]).await.unwrap();
    let twice = sink.append(writer(1, 1), &batch(2..=3), &[]).await.unwrap();
    assert_eq!((replayed.appended, twice.appended), (2, 0));
    assert_eq!(redis.numbers("out").await, [1, 2, 3, 4, 5, 6, 7, 8, 2, 3]);
}

#[tokio::test]
async fn a_newer_epoch_fences_the_older_one_even_when_it_added_nothing() {
    let redis = TestRedis::new();
    let sink = sink(&redis).await;
    sink.append(writer(1, 0), &batch(1..=3), &[]).await.unwrap();
    // Epoch 2 takes over and re-sends what is already there: nothing added, epoch recorded.
    let takeover = sink.append(writer(2, 0), &batch(1..=3), &[]).await.unwrap();
    assert_eq!(takeover.appended, 0);
    let refused = sink
        .append(writer(1, 0), &batch(4..=6), &[])
        .await
        .unwrap_err();
    assert!(refused.is_fenced(), "{refused}");
    assert!(
        refused
            .to_string()
            .contains("epoch 1 is older than epoch 2"),
        "{refused}"
    );
    assert_eq!(redis.numbers("out").await, [1, 2, 3]);
    // The fenced append left its connection usable for the next append.
    sink.append(writer(2, 0), &batch(4..=4), &[]).await.unwrap();
    assert_eq!(redis.numbers("out").await, [1, 2, 3, 4]);
}

#[tokio::test]
async fn two_relays_racing_on_one_stream_never_duplicate_an_entry() {
    // An old relay (epoch 1) that does not know it lost its lease and the new one (epoch 2)
    // append the same batches at the same time, on connections of their own. Whatever
    // interleaving Redis sees, each message is in the stream at most once, in order, and
    // epoch 1 adds nothing once epoch 2 has written.
    let redis = TestRedis::new();
    let (old, new) = (sink(&redis).await, sink(&redis).await);
    let race = |sink: Sink, epoch| {
        tokio::spawn(async move {
            let mut fenced_at = None;
            for start in (1..=400).step_by(20) {
                let result = sink
                    .append(writer(epoch, 0), &batch(start..start + 20), &[])
                    .await;
                match result {
                    Ok(_) => assert!(fenced_at.is_none(), "appended after being fenced"),
                    Err(e) if e.is_fenced() => fenced_at = fenced_at.or(Some(start)),
                    Err(e) => panic!("{e}"),
                }
            }
            fenced_at
        })
    };
    let (old_run, new_run) = (race(old, 1), race(new, 2));
    let (old_fenced, new_fenced) = (old_run.await.unwrap(), new_run.await.unwrap());
    assert_eq!(new_fenced, None);
    let numbers = redis.numbers("out").await;
    assert_eq!(
        numbers,
        (1..=400).collect::<Vec<u64>>(),
        "old relay fenced at {old_fenced:?}"
    );
}

#[tokio::test]
async fn a_relay_that_kept_watching_between_batches_still_sees_the_takeover() {
    // The old relay's connection keeps watching its watermark between two of its batches (it
    // plans the second on what it read after the first); the new relay writes in between.
    let redis = TestRedis::new();
    let (old, new) = (sink(&redis).await, sink(&redis).await);
    old.append(writer(1, 0), &batch(1..=3), &[]).await.unwrap();
    new.append(writer(2, 0), &batch(1..=4), &[]).await.unwrap();
    let refused = old
        .append(writer(1, 0), &batch(4..=6), &[])
        .await
        .unwrap_err();
    assert!(refused.is_fenced(), "{refused}");
    assert_eq!(redis.numbers("out").await, [1, 2, 3, 4]);
    // And the new relay's next batches go on (its connection was watching too).
    new.append(writer(2, 0), &batch(5..=6), &[]).await.unwrap();
    new.append(writer(2, 0), &batch(7..=7), &[]).await.unwrap();
    assert_eq!(redis.numbers("out").await, [1, 2, 3, 4, 5, 6, 7]);
}

//! A custom Rust handler on the embedded relay.
//!
//! Publishes three orders in one transaction, runs a relay whose group `billing` sends every
//! `orders.*` message through `ByRegion` (orders go to a stream per region; an order without a
//! region is refused for good and ends up as a dead letter), prints what landed, cleans up.
//!
//! ```text
//! cargo run --example custom_handler     # DATABASE_URL / REDIS_URL, default: the local services
//! ```

use std::time::Duration;

use anyhow::Context;
use outbox_relay::config::{ConnectionUrl, RedisSettings, RelaySettings};
use outbox_relay::handler::{DecodedMessage, Handler, HandlerError, Output};
use outbox_relay::relay::{Relay, Route};
use outbox_relay::sink::Sink;
use outbox_relay::{Message, publish_batch_in_tx};
use redis::AsyncCommands;
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// Orders go to `orders.<region>`; an order without a region can never be delivered.
struct ByRegion;

#[async_trait::async_trait]
impl Handler for ByRegion {
    async fn handle(&self, message: &DecodedMessage) -> Result<Vec<Output>, HandlerError> {
        let region = message.payload["region"]
            .as_str()
            .ok_or_else(|| HandlerError::permanent("the order has no region"))?;
        Ok(vec![Output::new(
            format!("orders.{region}"),
            message.payload.clone(),
        )])
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let database_url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/app".to_owned());
    let redis_url =
        std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let database_url = ConnectionUrl::parse(&database_url, &["postgres", "postgresql"])
        .map_err(anyhow::Error::msg)?;
    let redis_url =
        ConnectionUrl::parse(&redis_url, &["redis", "rediss"]).map_err(anyhow::Error::msg)?;

    let pool = outbox_relay::store::connect(&database_url, 4).await?;
    outbox_relay::migrate(&pool).await?;
    // A key prefix and group of this run's own, so the example never touches real data.
    let run = uuid::Uuid::now_v7().simple().to_string();
    let prefix = format!("example-{}:", &run[20..]);
    let group = format!("example-billing-{}", &run[20..]);
    let redis_settings = RedisSettings {
        key_prefix: prefix.clone(),
        ..RedisSettings::default()
    };
    let sink = Sink::connect(&redis_url, &redis_settings).await?;

    let relay = Relay::new(pool.clone(), sink.clone(), RelaySettings::default(), vec![])
        .from_now(true)
        .route(
            &group,
            Route::call(&["example.orders.*"], "by-region", ByRegion)?,
        );
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(relay.run(shutdown.clone()));
    // Wait until the relay has created its group (from now on), then publish.
    wait_for(|| async {
        sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS (SELECT 1 FROM outbox.consumer_groups WHERE name = $1)",
        )
        .bind(&group)
        .fetch_one(&pool)
        .await
        .unwrap_or(false)
    })
    .await?;
    let mut tx = pool.begin().await?;
    publish_batch_in_tx(
        &mut tx,
        &[
            Message::new("example.orders.placed", json!({"order": 1, "region": "eu"})),
            Message::new("example.orders.placed", json!({"order": 2, "region": "us"})),
            Message::new("example.orders.placed", json!({"order": 3})),
        ],
    )
    .await?;
    tx.commit().await?;

    let mut redis = sink.connection();
    wait_for(|| {
        let mut redis = redis.clone();
        let (eu, us) = (format!("{prefix}orders.eu"), format!("{prefix}orders.us"));
        async move {
            let eu: usize = redis.xlen(&eu).await.unwrap_or(0);
            let us: usize = redis.xlen(&us).await.unwrap_or(0);
            eu + us == 2
        }
    })
    .await?;
    wait_for(|| async {
        sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS (SELECT 1 FROM outbox.deliveries WHERE group_name = $1 AND status = 'dead')",
        )
        .bind(&group)
        .fetch_one(&pool)
        .await
        .unwrap_or(false)
    })
    .await?;
    for region in ["eu", "us"] {
        let len: usize = redis.xlen(format!("{prefix}orders.{region}")).await?;
        println!("stream orders.{region}: {len} entry");
    }
    let error: String = sqlx::query_scalar(
        "SELECT last_error FROM outbox.deliveries WHERE group_name = $1 AND status = 'dead'",
    )
    .bind(&group)
    .fetch_one(&pool)
    .await?;
    println!("dead letter: {error}");

    shutdown.cancel();
    running.await.context("relay task")??;
    outbox_relay::sink::delete_keys_with_prefix(&mut redis, &prefix).await?;
    outbox_relay::store::consumer_groups_delete(&pool, &group).await?;
    println!("done");
    Ok(())
}

/// Polls `check` every 20 ms for up to 10 s.
async fn wait_for<F, Fut>(mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check().await {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "timed out");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

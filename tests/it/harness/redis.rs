//! A unique Redis key prefix per test on the shared server (`TEST_REDIS_URL`, default
//! `redis://127.0.0.1:6379`); its keys are deleted when the value is dropped.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use redis::AsyncCommands;

pub fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

pub struct TestRedis {
    pub url: String,
    pub prefix: String,
    client: redis::Client,
}

/// One stream entry's fields.
#[derive(Debug, Clone)]
pub struct StreamEntry {
    pub fields: HashMap<String, String>,
}

impl TestRedis {
    pub fn new() -> TestRedis {
        TestRedis::at(&redis_url())
    }

    /// A unique prefix on the server at `url` (e.g. a private one).
    pub fn at(url: &str) -> TestRedis {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let url = url.to_owned();
        let prefix = format!(
            "outbox-test:{}:{}:",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let client = redis::Client::open(url.as_str()).expect("TEST_REDIS_URL");
        TestRedis {
            url,
            prefix,
            client,
        }
    }

    /// A connection that waits up to 30 s for a reply (redis-rs's default of 500 ms is too short
    /// for reading back a large stream while the other tests load the machine).
    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        let config = redis::AsyncConnectionConfig::new()
            .set_response_timeout(Some(std::time::Duration::from_secs(30)));
        self.client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .unwrap_or_else(|e| panic!("connect to Redis at {}: {e}", self.url))
    }

    /// The `payload` field of every entry of `stream`, parsed, oldest first.
    pub async fn payloads(&self, stream: &str) -> Vec<serde_json::Value> {
        self.entries(stream)
            .await
            .iter()
            .map(|e| serde_json::from_str(&e.fields["payload"]).expect("payload is JSON"))
            .collect()
    }

    /// The payloads' `n` of every entry of `stream`, oldest first.
    pub async fn numbers(&self, stream: &str) -> Vec<u64> {
        self.payloads(stream)
            .await
            .iter()
            .map(|p| p["n"].as_u64().expect("payload has a number n"))
            .collect()
    }

    /// Every entry of `stream` (named without the prefix), oldest first, read in pages.
    pub async fn entries(&self, stream: &str) -> Vec<StreamEntry> {
        let mut connection = self.connection().await;
        let key = format!("{}{stream}", self.prefix);
        let mut entries = Vec::new();
        let mut start = "-".to_owned();
        loop {
            let page: redis::streams::StreamRangeReply = connection
                .xrange_count(&key, &start, "+", 2000)
                .await
                .expect("XRANGE");
            let Some(last) = page.ids.last() else {
                return entries;
            };
            start = format!("({}", last.id);
            entries.extend(page.ids.into_iter().map(|entry| {
                StreamEntry {
                    fields: entry
                        .map
                        .iter()
                        .map(|(name, value)| {
                            let value: String =
                                redis::from_redis_value_ref(value).expect("string field");
                            (name.clone(), value)
                        })
                        .collect(),
                }
            }));
        }
    }

    pub async fn stream_len(&self, stream: &str) -> usize {
        let mut connection = self.connection().await;
        connection
            .xlen(format!("{}{stream}", self.prefix))
            .await
            .expect("XLEN")
    }

    /// Keys under this test's prefix.
    pub async fn keys(&self) -> Vec<String> {
        let mut connection = self.connection().await;
        let mut keys: Vec<String> = connection
            .keys(format!("{}*", self.prefix))
            .await
            .expect("KEYS");
        keys.sort();
        keys
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        let Ok(mut connection) = self.client.get_connection() else {
            return;
        };
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}*", self.prefix))
            .query(&mut connection)
            .unwrap_or_default();
        if !keys.is_empty() {
            let _: Result<(), _> = redis::cmd("DEL").arg(keys).query(&mut connection);
        }
    }
}

//! Helpers for applications' own tests (like River's `rivertest`): what did this transaction
//! publish? Use them before `commit()` (or before a rollback you are testing).
//!
//! ```no_run
//! # async fn example(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
//! use outbox_relay::{Message, publish_in_tx, testing};
//!
//! let mut tx = pool.begin().await?;
//! publish_in_tx(&mut tx, Message::new("orders.created", serde_json::json!({"id": 1}))).await?;
//! let published = testing::published_in_tx(&mut tx).await?;
//! assert_eq!(published.len(), 1);
//! testing::assert_published_in_tx(&mut tx, "orders.created").await;
//! # Ok(()) }
//! ```

use sqlx::PgConnection;

pub use crate::store::StoredMessage;

/// Every message the current transaction of `conn` has published so far, in position order.
pub async fn published_in_tx(conn: &mut PgConnection) -> Result<Vec<StoredMessage>, sqlx::Error> {
    crate::store::messages_of_current_transaction(conn).await
}

/// Panics (with what was published instead) unless the current transaction of `conn` has
/// published at least one message on `topic`; returns those messages.
pub async fn assert_published_in_tx(conn: &mut PgConnection, topic: &str) -> Vec<StoredMessage> {
    let published = published_in_tx(conn)
        .await
        .unwrap_or_else(|e| panic!("could not read the outbox: {e}"));
    let matching: Vec<StoredMessage> = published
        .iter()
        .filter(|m| m.topic == topic)
        .cloned()
        .collect();
    if matching.is_empty() {
        let topics: Vec<&str> = published.iter().map(|m| m.topic.as_str()).collect();
        panic!(
            "expected a message on topic `{topic}` in this transaction; it published {topics:?}"
        );
    }
    matching
}

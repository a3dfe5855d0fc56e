//! The opt-in NOTIFY trigger on `outbox.messages` (DESIGN §3): installing, dropping, and
//! asking whether it is there. The channel the trigger notifies is [`NOTIFY_CHANNEL`].

use sqlx::PgPool;

/// The channel `outbox.notify_new_messages()` notifies (migration 0006).
pub const NOTIFY_CHANNEL: &str = "outbox_messages";

/// Installs the trigger; true when it was not installed before.
pub async fn notify_trigger_install(pool: &PgPool) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(include_str!("sql/notify_trigger_install.sql"))
        .fetch_one(pool)
        .await
}

/// Drops the trigger; true when it was installed before.
pub async fn notify_trigger_drop(pool: &PgPool) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(include_str!("sql/notify_trigger_drop.sql"))
        .fetch_one(pool)
        .await
}

/// Whether the trigger is installed.
pub async fn notify_trigger_installed(pool: &PgPool) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(include_str!("sql/notify_trigger_installed.sql"))
        .fetch_one(pool)
        .await
}

//! Statements on `outbox.group_members`: the relays running a partitioned group.

use std::time::Duration;

use sqlx::PgPool;

type Timestamp = chrono::DateTime<chrono::Utc>;

/// A relay running a partitioned group, as `outbox.group_members` has it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GroupMember {
    /// The group.
    pub group: String,
    /// The relay (its owner name, `host:pid:random`).
    pub member: String,
    /// When it joined.
    pub joined_at: chrono::DateTime<chrono::Utc>,
    /// When its heartbeat runs out.
    pub expires_at: chrono::DateTime<chrono::Utc>,
    /// Whether its heartbeat has not run out (a dead member stays listed for an hour).
    pub alive: bool,
}

/// The members of `group` (every partitioned group when `None`), by group and name.
pub async fn group_members_list<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    group: Option<&str>,
) -> Result<Vec<GroupMember>, sqlx::Error> {
    type Row = (String, String, Timestamp, Timestamp, bool);
    let rows: Vec<Row> = sqlx::query_as(include_str!("sql/group_members_list.sql"))
        .bind(group)
        .fetch_all(executor)
        .await?;
    Ok(rows
        .into_iter()
        .map(
            |(group, member, joined_at, expires_at, alive)| GroupMember {
                group,
                member,
                joined_at,
                expires_at,
                alive,
            },
        )
        .collect())
}

/// Writes `member`'s heartbeat for `group` (alive for `ttl` more) and returns every live
/// member of the group, itself included, in name order.
pub async fn group_members_heartbeat(
    pool: &PgPool,
    group: &str,
    member: &str,
    ttl: Duration,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(include_str!("sql/group_members_heartbeat.sql"))
        .bind(group)
        .bind(member)
        .bind(ttl.as_secs_f64() * 1000.0)
        .fetch_all(pool)
        .await
}

/// Removes `member` from `group` (a clean stop).
pub async fn group_members_leave(
    pool: &PgPool,
    group: &str,
    member: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(include_str!("sql/group_members_leave.sql"))
        .bind(group)
        .bind(member)
        .execute(pool)
        .await?;
    Ok(())
}

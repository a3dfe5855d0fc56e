//! How far each consumer group has appended to each of its streams (`outbox.stream_marks`),
//! kept beside the cursor so the relay can tell when Redis lost acknowledged appends. The
//! marks are moved by [`super::consumer_groups_cursor_advance`], in the statement that moves
//! the cursor; this module reads them.

use sqlx::PgPool;

/// One stream's marks, as the Redis watermark writes them (`sink::DedupeMark` text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamMark {
    /// The stream, named without the configured `key_prefix`.
    pub stream: String,
    /// The last entry appended.
    pub mark: String,
    /// The first entry ever appended (where a re-append of a lost stream starts).
    pub first_mark: String,
}

/// The marks of every stream `group` has appended to.
pub async fn stream_marks_of_group(
    pool: &PgPool,
    group: &str,
) -> Result<Vec<StreamMark>, sqlx::Error> {
    let rows: Vec<(String, String, String)> =
        sqlx::query_as(include_str!("sql/stream_marks_of_group.sql"))
            .bind(group)
            .fetch_all(pool)
            .await?;
    Ok(rows
        .into_iter()
        .map(|(stream, mark, first_mark)| StreamMark {
            stream,
            mark,
            first_mark,
        })
        .collect())
}

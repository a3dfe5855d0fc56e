//! Creating and dropping whole databases (the scratch databases of `outbox-relay bench`).
//!
//! Identifiers cannot be bound as parameters, so names are checked to be plain lowercase
//! identifiers before they are spliced into the statement.

use sqlx::{AssertSqlSafe, PgPool};

fn checked_identifier(name: &str) -> Result<&str, sqlx::Error> {
    let plain = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if plain {
        Ok(name)
    } else {
        Err(sqlx::Error::Protocol(format!(
            "`{name}` is not a plain database name"
        )))
    }
}

/// CREATE DATABASE `name` (a plain lowercase identifier).
pub async fn database_create(pool: &PgPool, name: &str) -> Result<(), sqlx::Error> {
    let name = checked_identifier(name)?;
    sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(pool)
        .await?;
    Ok(())
}

/// DROP DATABASE IF EXISTS `name` WITH (FORCE): ends the sessions still connected to it.
pub async fn database_drop(pool: &PgPool, name: &str) -> Result<(), sqlx::Error> {
    let name = checked_identifier(name)?;
    sqlx::query(AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(pool)
    .await?;
    Ok(())
}

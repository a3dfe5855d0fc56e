//! Least privilege: the grants that let a role publish, or run the relay, and nothing more.
//! Roles are cluster-wide and created by a DBA; these functions only GRANT (idempotently) on
//! the objects of the `outbox` schema. The statements live in `sql/roles_grant_*.sql`, written
//! so that a DBA can also run them with `psql -v role=NAME -f FILE`.

use sqlx::{AssertSqlSafe, PgPool};

/// What a role is allowed to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoleKind {
    /// Publish messages: `outbox.publish()` and `publish_in_tx`, nothing else.
    Publisher,
    /// Run the relay: read messages and schemas, move its groups' cursors, keep retry state.
    Relay,
}

impl RoleKind {
    /// The grant script, with `:"role"` where the quoted role name goes (psql's syntax).
    pub fn grant_script(self) -> &'static str {
        match self {
            RoleKind::Publisher => include_str!("sql/roles_grant_publisher.sql"),
            RoleKind::Relay => include_str!("sql/roles_grant_relay.sql"),
        }
    }

    /// `publisher` or `relay`, as `grant` and its errors name the kind.
    pub fn as_str(self) -> &'static str {
        match self {
            RoleKind::Publisher => "publisher",
            RoleKind::Relay => "relay",
        }
    }
}

/// Granting a role its privileges failed; nothing was granted.
#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    /// No role has this name: a DBA creates roles, outbox-relay only grants to them.
    #[error(
        "role `{0}` does not exist: a DBA creates it first, e.g. CREATE ROLE \"{0}\" LOGIN PASSWORD '…'"
    )]
    UnknownRole(String),
    /// The role exists but the grant script failed: most often it was not run as the owner
    /// of the outbox schema, or before `migrate`.
    #[error(
        "could not grant {kind} privileges to role `{role}`: {cause} (run `outbox-relay migrate` first, as the owner of the outbox schema)"
    )]
    Grant {
        /// `publisher` or `relay` ([`RoleKind::as_str`]).
        kind: &'static str,
        /// The role's name.
        role: String,
        /// The database's error in one line ([`crate::store::describe`]).
        cause: String,
    },
}

/// `role` quoted as an SQL identifier: any name is safe to splice into the script.
pub fn quote_ident(role: &str) -> String {
    format!("\"{}\"", role.replace('"', "\"\""))
}

/// The grant script of `kind` for `role`, ready to run (what `grant --print` shows).
pub fn roles_grant_sql(kind: RoleKind, role: &str) -> String {
    kind.grant_script().replace(":\"role\"", &quote_ident(role))
}

/// Grants `kind`'s privileges to the existing `role`, all statements or none.
/// Run it as the owner of the outbox schema (or a superuser); running it again changes nothing.
pub async fn roles_grant(pool: &PgPool, kind: RoleKind, role: &str) -> Result<(), GrantError> {
    let fail = |e: sqlx::Error| GrantError::Grant {
        kind: kind.as_str(),
        role: role.to_owned(),
        cause: super::describe(&e),
    };
    let exists: bool = sqlx::query_scalar(include_str!("sql/roles_exists.sql"))
        .bind(role)
        .fetch_one(pool)
        .await
        .map_err(fail)?;
    if !exists {
        return Err(GrantError::UnknownRole(role.to_owned()));
    }
    // One simple-query message: Postgres runs its statements as one implicit transaction.
    sqlx::raw_sql(AssertSqlSafe(roles_grant_sql(kind, role)))
        .execute(pool)
        .await
        .map_err(fail)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_names_are_quoted_identifiers_everywhere_in_the_script() {
        let sql = roles_grant_sql(RoleKind::Publisher, "app\"; DROP TABLE x; --");
        assert!(!sql.contains(":\"role\""), "{sql}");
        assert!(sql.contains("TO \"app\"\"; DROP TABLE x; --\";"), "{sql}");
        let relay = roles_grant_sql(RoleKind::Relay, "outbox_relay");
        assert_eq!(relay.matches("TO \"outbox_relay\";").count(), 9, "{relay}");
    }
}

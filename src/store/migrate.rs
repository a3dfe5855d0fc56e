//! Applying our migrations (`migrations/`) to a database, next to the application's own.
//!
//! sqlx keeps applied migrations in one table; two migrators sharing `_sqlx_migrations` on the
//! search path fail with "previously applied but is missing" (sqlx #1698, #3573). Ours keep
//! their bookkeeping in `outbox._sqlx_migrations`, so an application's migrator and ours run
//! in any order, any number of times. Running ours twice is a no-op.

use sqlx::PgPool;
use sqlx::migrate::Migrator;

/// Where our migrator records what it applied; never the application's `_sqlx_migrations`.
const MIGRATIONS_TABLE: &str = "outbox._sqlx_migrations";

/// One migration applied by a [`migrate`] call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedMigration {
    /// Its number (`0003` of `0003_deliveries.sql`).
    pub version: i64,
    /// Its description (`deliveries`).
    pub description: String,
}

/// What a [`migrate`] call did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    /// Migrations this call applied, oldest first; empty when the schema was up to date.
    pub applied: Vec<AppliedMigration>,
    /// How many migrations this version of outbox-relay knows.
    pub known: usize,
}

/// Why [`migrate`] (or [`schema_version`]) failed. A migration that failed was rolled back
/// with its transaction; the ones before it stay applied, and running [`migrate`] again goes
/// on from there.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// Reading `outbox._sqlx_migrations` failed (Postgres unreachable, no permission).
    #[error("could not read which outbox migrations are applied")]
    ReadApplied(#[source] sqlx::Error),
    /// A newer outbox-relay migrated this database: this one does not know migration `.0`.
    #[error(
        "the outbox schema in this database is newer than this outbox-relay: migration {0} is \
         applied but unknown here; upgrade outbox-relay"
    )]
    SchemaNewerThanBinary(i64),
    /// A migration failed to apply.
    #[error("applying the outbox migrations failed")]
    Apply(#[source] sqlx::migrate::MigrateError),
}

fn migrator() -> Migrator {
    let mut migrator = sqlx::migrate!("./migrations");
    migrator.dangerous_set_table_name(MIGRATIONS_TABLE);
    migrator.create_schema("outbox");
    migrator
}

/// Creates or upgrades the `outbox` schema (tables, functions) in the database `pool` points at.
/// Idempotent; safe to run concurrently (sqlx serialises migrators with an advisory lock) and
/// next to the application's own sqlx migrations.
pub async fn migrate(pool: &PgPool) -> Result<MigrationReport, MigrateError> {
    let migrator = migrator();
    let before = applied_versions(pool).await?;
    migrator.run(pool).await.map_err(|error| match error {
        sqlx::migrate::MigrateError::VersionMissing(version) => {
            MigrateError::SchemaNewerThanBinary(version)
        }
        other => MigrateError::Apply(other),
    })?;
    let applied = migrator
        .iter()
        .filter(|m| m.migration_type.is_up_migration() && !before.contains(&m.version))
        .map(|m| AppliedMigration {
            version: m.version,
            description: m.description.to_string(),
        })
        .collect();
    Ok(MigrationReport {
        applied,
        known: migrator.iter().count(),
    })
}

/// How the `outbox` schema of a database compares with what this outbox-relay knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchemaVersion {
    /// Every migration this outbox-relay knows is applied, and nothing newer.
    Current,
    /// `applied` of the `known` migrations are applied (0: `migrate` never ran here).
    Behind {
        /// How many are applied.
        applied: usize,
        /// How many this outbox-relay knows.
        known: usize,
    },
    /// A migration newer than this outbox-relay is applied (a newer version migrated).
    Newer(i64),
}

/// Reads which of our migrations the database `pool` points at has applied, without
/// changing anything: `run` refuses to start on a schema that is behind.
pub async fn schema_version(pool: &PgPool) -> Result<SchemaVersion, MigrateError> {
    let applied = applied_versions(pool).await?;
    let known: Vec<i64> = migrator()
        .iter()
        .filter(|m| m.migration_type.is_up_migration())
        .map(|m| m.version)
        .collect();
    if let Some(&newer) = applied.iter().find(|v| !known.contains(v)) {
        return Ok(SchemaVersion::Newer(newer));
    }
    let present = known.iter().filter(|v| applied.contains(v)).count();
    Ok(if present == known.len() {
        SchemaVersion::Current
    } else {
        SchemaVersion::Behind {
            applied: present,
            known: known.len(),
        }
    })
}

async fn applied_versions(pool: &PgPool) -> Result<Vec<i64>, MigrateError> {
    let exists: bool = sqlx::query_scalar(include_str!("sql/migrations_table_exists.sql"))
        .fetch_one(pool)
        .await
        .map_err(MigrateError::ReadApplied)?;
    if !exists {
        return Ok(Vec::new());
    }
    sqlx::query_scalar(include_str!("sql/migrations_applied.sql"))
        .fetch_all(pool)
        .await
        .map_err(MigrateError::ReadApplied)
}

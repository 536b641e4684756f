//! The read-model schema migrations: refinery SQL files from `migrations/`
//! (`V{n}__{name}.sql`, forward-only), embedded in the binary.
//!
//! - [`migrate`] applies the pending ones, each in its own transaction, under an
//!   advisory lock (two daemons starting together do not race), with refinery's
//!   checksum verification (`abort_divergent`, `abort_missing`).
//! - [`status`] compares the database's `refinery_schema_history` with the embedded
//!   migrations without changing anything: what is pending, and what the database
//!   holds that this binary does not know (unknown versions, or same version with a
//!   different name or checksum).
//! - [`check`] is *the* schema check — startup, `gxd migrate --check` and readiness all
//!   use it: the status, or [`MigrationError::Diverged`] (whose message is the one
//!   explanation of a diverged database) when the database is not this binary's.
//!
//! [`check_pool`] and [`migrate_pool`] do the same on a pooled connection.

use std::fmt;

use refinery::Migration;

use super::Pool;

mod embedded {
    refinery::embed_migrations!("../migrations");
}

/// refinery's history table.
pub const HISTORY_TABLE: &str = "refinery_schema_history";

/// Advisory lock key held while migrating ("gxd-mig" in ASCII).
const MIGRATION_LOCK_KEY: i64 = 0x0067_7864_2d6d_6967;

/// Errors from checking or applying migrations.
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    #[error("PostgreSQL error while checking migrations: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error(
        "the database's schema diverges from this gxd binary: {}. \
         It was migrated by a different gxd version; run that version, or restore a matching database",
        .0.describe_divergence()
    )]
    Diverged(Box<MigrationStatus>),
    #[error("applying migrations failed: {0}")]
    Refinery(#[from] refinery::Error),
    #[error("no PostgreSQL connection for the schema check: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
}

/// A migration's `V{version}__{name}`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct MigrationName {
    pub version: i64,
    pub name: String,
}

impl fmt::Display for MigrationName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "V{}__{}", self.version, self.name)
    }
}

fn names(list: &[MigrationName]) -> String {
    list.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The database's migration state relative to this binary.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrationStatus {
    /// Applied, and known to this binary with the same name and checksum.
    pub applied: Vec<MigrationName>,
    /// Known to this binary, not applied.
    pub pending: Vec<MigrationName>,
    /// Applied, but unknown to this binary (a newer gxd migrated this database).
    pub unknown: Vec<MigrationName>,
    /// Applied under a version this binary knows, but with another name or checksum
    /// (the database's name is reported).
    pub divergent: Vec<MigrationName>,
}

impl MigrationStatus {
    /// Everything this binary knows is applied, and nothing else.
    pub fn is_current(&self) -> bool {
        self.pending.is_empty() && !self.is_diverged()
    }

    /// The database holds migrations this binary does not know or that differ.
    pub fn is_diverged(&self) -> bool {
        !self.unknown.is_empty() || !self.divergent.is_empty()
    }

    /// One line naming the unknown and divergent migrations.
    pub fn describe_divergence(&self) -> String {
        let mut parts = Vec::new();
        if !self.unknown.is_empty() {
            parts.push(format!(
                "applied migration(s) unknown to this binary: {}",
                names(&self.unknown)
            ));
        }
        if !self.divergent.is_empty() {
            parts.push(format!(
                "applied migration(s) that differ from this binary's (name or checksum): {}",
                names(&self.divergent)
            ));
        }
        parts.join("; ")
    }

    /// One line naming the pending migrations.
    pub fn describe_pending(&self) -> String {
        format!(
            "{} migration(s) not applied: {}",
            self.pending.len(),
            names(&self.pending)
        )
    }
}

/// The migrations embedded in this binary, in version order.
pub fn embedded_migrations() -> Vec<Migration> {
    let mut list = embedded::migrations::runner().get_migrations().clone();
    list.sort();
    list
}

/// Names of the embedded migrations, in version order.
pub fn embedded_names() -> Vec<MigrationName> {
    embedded_migrations().iter().map(name_of).collect()
}

fn name_of(m: &Migration) -> MigrationName {
    MigrationName {
        version: i64::from(m.version()),
        name: m.name().to_owned(),
    }
}

/// Compares the database with the embedded migrations. Read-only.
pub async fn status(client: &tokio_postgres::Client) -> Result<MigrationStatus, MigrationError> {
    let embedded = embedded_migrations();
    // The history in the schema refinery writes it to: the connection's current schema
    // (`public`, or a rebuild's shadow schema), never one further down the search path.
    let schema: String = client
        .query_one("SELECT current_schema()", &[])
        .await?
        .get(0);
    let table = format!("\"{}\".{HISTORY_TABLE}", schema.replace('"', "\"\""));
    let exists: bool = client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
        .await?
        .get(0);
    let mut applied_rows = Vec::new();
    if exists {
        // Read the history ourselves (refinery's reader panics on malformed rows).
        for row in client
            .query(
                &format!(
                    "SELECT version::int8, coalesce(name, ''), coalesce(checksum, '') \
                     FROM {table} ORDER BY version"
                ),
                &[],
            )
            .await?
        {
            let version: i64 = row.get(0);
            let name: String = row.get(1);
            let checksum: String = row.get(2);
            applied_rows.push((
                MigrationName { version, name },
                checksum.parse::<u64>().ok(),
            ));
        }
    }

    let mut st = MigrationStatus::default();
    for (applied, checksum) in &applied_rows {
        match embedded
            .iter()
            .find(|m| i64::from(m.version()) == applied.version)
        {
            None => st.unknown.push(applied.clone()),
            Some(m) if m.name() == applied.name && Some(m.checksum()) == *checksum => {
                st.applied.push(applied.clone());
            }
            Some(_) => st.divergent.push(applied.clone()),
        }
    }
    for m in &embedded {
        if !applied_rows
            .iter()
            .any(|(a, _)| a.version == i64::from(m.version()))
        {
            st.pending.push(name_of(m));
        }
    }
    Ok(st)
}

/// The schema check: [`status`], refused with [`MigrationError::Diverged`] when the
/// database holds migrations this binary does not know, or that differ from its own.
/// `Ok` with pending migrations means "behind, can be migrated". Read-only.
pub async fn check(client: &tokio_postgres::Client) -> Result<MigrationStatus, MigrationError> {
    let st = status(client).await?;
    if st.is_diverged() {
        return Err(MigrationError::Diverged(Box::new(st)));
    }
    Ok(st)
}

/// [`check`] on a connection from `pool`.
pub async fn check_pool(pool: &Pool) -> Result<MigrationStatus, MigrationError> {
    let client = pool.get().await?;
    check(&client).await
}

/// [`migrate`] on a connection from `pool`.
pub async fn migrate_pool(pool: &Pool) -> Result<Vec<MigrationName>, MigrationError> {
    let mut client = pool.get().await?;
    migrate(&mut client).await
}

/// Applies the pending migrations (each in its own transaction) and returns their
/// names. Refuses, changing nothing, when the database has diverged. Holds a
/// session advisory lock meanwhile, so concurrent callers apply each migration once.
pub async fn migrate(
    client: &mut tokio_postgres::Client,
) -> Result<Vec<MigrationName>, MigrationError> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK_KEY])
        .await?;
    let result = migrate_locked(client).await;
    let unlock = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK_KEY])
        .await;
    let applied = result?;
    unlock?;
    Ok(applied)
}

async fn migrate_locked(
    client: &mut tokio_postgres::Client,
) -> Result<Vec<MigrationName>, MigrationError> {
    let before = check(client).await?;
    if before.pending.is_empty() {
        return Ok(Vec::new());
    }
    let report = embedded::migrations::runner()
        .set_abort_divergent(true)
        .set_abort_missing(true)
        .set_grouped(false)
        .run_async(client)
        .await?;
    let applied: Vec<MigrationName> = report.applied_migrations().iter().map(name_of).collect();
    for m in &applied {
        tracing::info!(migration = %m, "applied migration");
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_migrations_are_named_and_ordered() {
        let names = embedded_names();
        assert!(!names.is_empty());
        assert_eq!(names[0].to_string(), "V1__read_models");
        let mut sorted = names.clone();
        sorted.sort();
        sorted.dedup_by_key(|n| n.version);
        assert_eq!(sorted, names, "versions are unique and ordered");
    }

    #[test]
    fn status_descriptions_name_migrations() {
        let st = MigrationStatus {
            pending: vec![MigrationName {
                version: 2,
                name: "more".into(),
            }],
            unknown: vec![MigrationName {
                version: 9,
                name: "future".into(),
            }],
            ..Default::default()
        };
        assert!(!st.is_current());
        assert!(st.is_diverged());
        assert!(st.describe_pending().contains("V2__more"));
        assert!(st.describe_divergence().contains("V9__future"));
    }
}

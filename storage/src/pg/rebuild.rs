//! Rebuilding the read models from the ledger: a shadow schema, a digest, and an atomic swap.
//!
//! `gxd projections rebuild` replays the channel from block 0 into fresh tables while the
//! API keeps serving the current ones, then swaps. This module is its PostgreSQL side:
//!
//! - [`Rebuild::begin`] takes the rebuild's session lock (one rebuild at a time), checks
//!   that the live schema is current and holds only this channel, drops what an
//!   interrupted rebuild left ([`SHADOW_SCHEMA`], [`RETIRED_SCHEMA`]) and creates the shadow
//!   schema with the embedded migrations, and returns a pool whose connections write there
//!   (`search_path`), so the projector's unqualified statements fill the shadow tables.
//! - The projector takes the **block lock** of the schema it writes into, shared, at the
//!   start of every block transaction ([`BLOCK_LOCK_SQL`], in `BlockTx::begin`).
//!   [`Rebuild::lock_live`] takes the live schema's block lock exclusively in a transaction:
//!   it waits for the live projector's block in flight and holds the next one back, so
//!   the live read models stand still at one position while the shadow catches up to it
//!   (the shadow's lock is another one), both are [`digest`]ed and [`Rebuild::swap`] moves
//!   the tables: the live ones to [`RETIRED_SCHEMA`], the shadow ones to `public`, in the
//!   same transaction. Readers see the old tables or the new ones, never a mix; the live
//!   projector's next block goes into the new tables (PostgreSQL re-resolves cached
//!   statements after DDL) at the position it expected.
//! - `user_profiles` is not a projection (the API writes it): it never moves.
//!
//! A crash at any point leaves the live tables serving: before the swap's commit nothing of
//! them changed; after it, only the leftover schemas remain, dropped by the next rebuild.

use std::fmt;

use tokio_postgres::GenericClient;

use super::migrate::{self, MigrationError};
use super::pool::{PgError, PgSettings, Pool, connect_pool_in_schema};
use super::projection::{self, Position, ProjectionError};

/// The schema a rebuild writes into.
pub const SHADOW_SCHEMA: &str = "gxd_rebuild";
/// The schema the replaced tables are moved to by the swap (dropped right after).
pub const RETIRED_SCHEMA: &str = "gxd_retired";
/// The schema gxd's read models live in.
pub const LIVE_SCHEMA: &str = "public";

/// Class of gxd's two-key advisory locks (`pg_advisory_lock(int, int)`): "gxd" + 1.
pub(crate) const LOCK_CLASS: i32 = 0x6778_6401;
/// Second key of the rebuild's session lock (one rebuild at a time).
const REBUILD_LOCK: i32 = 1;

/// Taken (shared) by every block transaction of the projector: the block lock of the schema
/// its statements write into. `$1` is [`LOCK_CLASS`].
pub(crate) const BLOCK_LOCK_SQL: &str =
    "SELECT pg_advisory_xact_lock_shared($1, hashtext(current_schema()))";

/// One table of the read models, as the digest reads it.
#[derive(Debug, Clone, Copy)]
pub struct ProjectionTable {
    pub name: &'static str,
    /// Columns left out of the digest: when the row was written (`now()`), not what the
    /// ledger says.
    pub wall_clock_columns: &'static [&'static str],
}

/// Every table the projector writes (everything the migrations create except
/// `user_profiles`, which the API writes).
pub const PROJECTION_TABLES: &[ProjectionTable] = &[
    ProjectionTable {
        name: "projector_checkpoints",
        wall_clock_columns: &["updated_at"],
    },
    ProjectionTable {
        name: "applied_transactions",
        wall_clock_columns: &["applied_at"],
    },
    ProjectionTable {
        name: "users",
        wall_clock_columns: &[],
    },
    ProjectionTable {
        name: "wallets",
        wall_clock_columns: &[],
    },
    ProjectionTable {
        name: "wallet_owners",
        wall_clock_columns: &[],
    },
    ProjectionTable {
        name: "transfers",
        wall_clock_columns: &[],
    },
    ProjectionTable {
        name: "wallet_history",
        wall_clock_columns: &[],
    },
    ProjectionTable {
        name: "proposals",
        wall_clock_columns: &[],
    },
    ProjectionTable {
        name: "proposal_decisions",
        wall_clock_columns: &[],
    },
    ProjectionTable {
        name: "projection_dead_letters",
        wall_clock_columns: &["recorded_at"],
    },
];

/// Errors of a rebuild's PostgreSQL side.
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    #[error("another `gxd projections rebuild` is running on this database")]
    AlreadyRunning,
    #[error(
        "the read models are not at this gxd's schema ({0}); run `gxd migrate` before rebuilding"
    )]
    SchemaNotCurrent(String),
    #[error(
        "the read models hold channel(s) {others:?} besides {channel:?}; a rebuild replaces \
         every projection table, so it would lose them"
    )]
    OtherChannels {
        channel: String,
        others: Vec<String>,
    },
    #[error(transparent)]
    Migration(#[from] MigrationError),
    #[error(transparent)]
    Connect(#[from] PgError),
    #[error(transparent)]
    Projection(#[from] ProjectionError),
    #[error("PostgreSQL error: {0}")]
    Postgres(#[from] tokio_postgres::Error),
}

/// A table's row count and SHA-256 over its rows (as JSON, sorted, without wall-clock
/// columns).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableDigest {
    pub table: &'static str,
    pub rows: u64,
    pub sha256: String,
}

/// The digest of a schema's read models: one [`TableDigest`] per [`PROJECTION_TABLES`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digest {
    pub tables: Vec<TableDigest>,
}

impl Digest {
    /// The tables whose content differs from `other`'s.
    pub fn differences(&self, other: &Digest) -> Vec<&'static str> {
        self.tables
            .iter()
            .zip(&other.tables)
            .filter(|(a, b)| a != b)
            .map(|(a, _)| a.table)
            .collect()
    }

    /// One SHA-256 over the tables' digests (for printing and comparing).
    pub fn combined(&self) -> String {
        use sha2::{Digest as _, Sha256};
        let mut h = Sha256::new();
        for t in &self.tables {
            h.update(t.table.as_bytes());
            h.update(t.rows.to_be_bytes());
            h.update(t.sha256.as_bytes());
        }
        hex::encode(h.finalize())
    }

    /// Rows over all tables.
    pub fn rows(&self) -> u64 {
        self.tables.iter().map(|t| t.rows).sum()
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({} rows)", self.combined(), self.rows())
    }
}

fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// The digest of the read models in `schema` (the live one, [`LIVE_SCHEMA`], or the
/// shadow). Deterministic: the same ledger projected the same way gives the same digest,
/// whenever and however often the rows were written. Runs in the caller's transaction if
/// it is one, so it can be taken under [`Rebuild::lock_live`].
pub async fn digest(client: &impl GenericClient, schema: &str) -> Result<Digest, RebuildError> {
    let mut tables = Vec::with_capacity(PROJECTION_TABLES.len());
    for table in PROJECTION_TABLES {
        let sql = format!(
            "SELECT count(*), encode(sha256(convert_to(coalesce(string_agg(r, E'\\n' ORDER BY r), ''), 'UTF8')), 'hex') \
             FROM (SELECT (to_jsonb(t) - $1::text[])::text AS r FROM {}.{} t) s",
            quote_ident(schema),
            quote_ident(table.name)
        );
        let excluded: Vec<&str> = table.wall_clock_columns.to_vec();
        let row = client.query_one(&sql, &[&excluded]).await?;
        let rows: i64 = row.get(0);
        tables.push(TableDigest {
            table: table.name,
            rows: u64::try_from(rows).unwrap_or(0),
            sha256: row.get(1),
        });
    }
    Ok(Digest { tables })
}

/// A rebuild in progress: holds the rebuild's session lock on its own connection, and the
/// pool that writes into the shadow schema.
pub struct Rebuild {
    lock: tokio_postgres::Client,
    shadow: Pool,
    channel: String,
}

impl fmt::Debug for Rebuild {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rebuild")
            .field("channel", &self.channel)
            .finish_non_exhaustive()
    }
}

impl Rebuild {
    /// Checks the live schema, takes the rebuild lock and creates a fresh shadow schema
    /// (module docs). `settings` are the live database's.
    pub async fn begin(settings: &PgSettings, channel: &str) -> Result<Rebuild, RebuildError> {
        let lock = super::connect(settings).await?;
        let got: bool = lock
            .query_one(
                "SELECT pg_try_advisory_lock($1, $2)",
                &[&LOCK_CLASS, &REBUILD_LOCK],
            )
            .await?
            .get(0);
        if !got {
            return Err(RebuildError::AlreadyRunning);
        }
        let status = migrate::check(&lock).await?;
        if !status.is_current() {
            return Err(RebuildError::SchemaNotCurrent(status.describe_pending()));
        }
        let others: Vec<String> = lock
            .query(
                "SELECT channel FROM public.projector_checkpoints WHERE channel <> $1 ORDER BY 1",
                &[&channel],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if !others.is_empty() {
            return Err(RebuildError::OtherChannels {
                channel: channel.to_owned(),
                others,
            });
        }
        lock.batch_execute(&format!(
            "DROP SCHEMA IF EXISTS {SHADOW_SCHEMA} CASCADE; DROP SCHEMA IF EXISTS {RETIRED_SCHEMA} CASCADE; \
             CREATE SCHEMA {SHADOW_SCHEMA};"
        ))
        .await?;
        let shadow = connect_pool_in_schema(settings, SHADOW_SCHEMA).await?;
        migrate::migrate_pool(&shadow).await?;
        Ok(Rebuild {
            lock,
            shadow,
            channel: channel.to_owned(),
        })
    }

    /// The pool whose connections write into the shadow schema (for the projector).
    pub fn shadow_pool(&self) -> &Pool {
        &self.shadow
    }

    /// The live read models' position (outside any lock; it moves while the daemon runs).
    pub async fn live_position(&self) -> Result<Option<Position>, RebuildError> {
        live_position(&self.lock, &self.channel).await
    }

    /// Opens the swap transaction: waits for the live projector's block in flight, then
    /// holds its next one back until the transaction ends. Returns the live position, which
    /// stays put while the transaction is open.
    pub async fn lock_live(&mut self) -> Result<(Swap<'_>, Option<Position>), RebuildError> {
        let tx = self.lock.transaction().await?;
        tx.execute(
            "SELECT pg_advisory_xact_lock($1, hashtext($2))",
            &[&LOCK_CLASS, &LIVE_SCHEMA],
        )
        .await?;
        let position = live_position(&tx, &self.channel).await?;
        Ok((Swap { tx }, position))
    }

    /// Drops the shadow and retired schemas and releases the rebuild lock.
    pub async fn finish(self) -> Result<(), RebuildError> {
        self.shadow.close();
        self.lock
            .batch_execute(&format!(
                "DROP SCHEMA IF EXISTS {SHADOW_SCHEMA} CASCADE; DROP SCHEMA IF EXISTS {RETIRED_SCHEMA} CASCADE;"
            ))
            .await?;
        self.lock
            .execute(
                "SELECT pg_advisory_unlock($1, $2)",
                &[&LOCK_CLASS, &REBUILD_LOCK],
            )
            .await?;
        Ok(())
    }
}

async fn live_position(
    client: &impl GenericClient,
    channel: &str,
) -> Result<Option<Position>, RebuildError> {
    Ok(projection::position_in(client, LIVE_SCHEMA, channel).await?)
}

/// The swap transaction ([`Rebuild::lock_live`]): the live read models stand still.
pub struct Swap<'a> {
    tx: tokio_postgres::Transaction<'a>,
}

impl fmt::Debug for Swap<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Swap").finish_non_exhaustive()
    }
}

impl Swap<'_> {
    /// The shadow's position, read in this transaction.
    pub async fn shadow_position(&self, channel: &str) -> Result<Option<Position>, RebuildError> {
        Ok(projection::position_in(&self.tx, SHADOW_SCHEMA, channel).await?)
    }

    /// Digests of the live and the shadow read models, in this transaction.
    pub async fn digests(&self) -> Result<(Digest, Digest), RebuildError> {
        let live = digest(&self.tx, LIVE_SCHEMA).await?;
        let shadow = digest(&self.tx, SHADOW_SCHEMA).await?;
        Ok((live, shadow))
    }

    /// Moves the live tables out and the shadow tables in, and commits.
    pub async fn swap(self) -> Result<(), RebuildError> {
        let mut sql = format!("CREATE SCHEMA {RETIRED_SCHEMA};");
        for t in PROJECTION_TABLES {
            sql += &format!(
                "ALTER TABLE {LIVE_SCHEMA}.{0} SET SCHEMA {RETIRED_SCHEMA};",
                quote_ident(t.name)
            );
        }
        for t in PROJECTION_TABLES {
            sql += &format!(
                "ALTER TABLE {SHADOW_SCHEMA}.{0} SET SCHEMA {LIVE_SCHEMA};",
                quote_ident(t.name)
            );
        }
        self.tx.batch_execute(&sql).await?;
        self.tx.commit().await?;
        Ok(())
    }

    /// Ends the transaction without swapping (the live projector goes on).
    pub async fn abandon(self) -> Result<(), RebuildError> {
        self.tx.rollback().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_the_migrations_create_is_a_projection_or_the_profiles() {
        let sql: String = migrate::embedded_migrations()
            .iter()
            .filter_map(|m| m.sql().map(str::to_owned))
            .collect();
        let created: Vec<&str> = sql
            .split("CREATE TABLE ")
            .skip(1)
            .filter_map(|s| s.split_whitespace().next())
            .collect();
        let mut expected: Vec<&str> = PROJECTION_TABLES.iter().map(|t| t.name).collect();
        expected.push("user_profiles");
        let mut created_sorted = created.clone();
        created_sorted.sort_unstable();
        expected.sort_unstable();
        assert_eq!(created_sorted, expected);
    }

    #[test]
    fn differences_name_the_tables() {
        let d = |sha: &str| Digest {
            tables: vec![
                TableDigest {
                    table: "a",
                    rows: 1,
                    sha256: "x".into(),
                },
                TableDigest {
                    table: "b",
                    rows: 1,
                    sha256: sha.into(),
                },
            ],
        };
        assert!(d("y").differences(&d("y")).is_empty());
        assert_eq!(d("y").differences(&d("z")), vec!["b"]);
        assert_ne!(d("y").combined(), d("z").combined());
        assert_eq!(d("y").rows(), 2);
    }
}

//! The daemon's readiness checks (`/readyz`), each a thin adapter from a storage probe to
//! the API's [`ReadinessCheck`].

use gxd_api::ReadinessCheck;
use gxd_storage::pg::{self, Pool};

/// Readiness: PostgreSQL answers.
pub struct PostgresReady {
    pool: Pool,
}

impl PostgresReady {
    pub fn new(pool: Pool) -> Self {
        Self { pool }
    }
}

#[async_trait::async_trait]
impl ReadinessCheck for PostgresReady {
    fn name(&self) -> &'static str {
        "postgres"
    }

    async fn check(&self) -> Result<(), String> {
        pg::ping(&self.pool).await.map_err(|e| e.to_string())
    }
}

/// Readiness: the database's schema is exactly this binary's migrations (the same check
/// as at startup and in `gxd migrate --check`).
pub struct MigrationsCurrent {
    pool: Pool,
}

impl MigrationsCurrent {
    pub fn new(pool: Pool) -> Self {
        Self { pool }
    }
}

#[async_trait::async_trait]
impl ReadinessCheck for MigrationsCurrent {
    fn name(&self) -> &'static str {
        "migrations"
    }

    async fn check(&self) -> Result<(), String> {
        let status = pg::migrate::check_pool(&self.pool)
            .await
            .map_err(|e| e.to_string())?;
        if status.pending.is_empty() {
            Ok(())
        } else {
            Err(status.describe_pending())
        }
    }
}

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

/// Readiness: the outbox accepts writes (a failed WAL write — a full disk — turns it off
/// until storage has reopened its database, which it does by itself once it can write).
pub struct OutboxWritable {
    db: gxd_storage::Db,
}

impl OutboxWritable {
    pub fn new(db: gxd_storage::Db) -> Self {
        Self { db }
    }
}

#[async_trait::async_trait]
impl ReadinessCheck for OutboxWritable {
    fn name(&self) -> &'static str {
        "outbox"
    }

    async fn check(&self) -> Result<(), String> {
        let status = self.db.write_status();
        if status.writable {
            Ok(())
        } else if status.blocked {
            Err(format!(
                "the outbox's last write failed (disk full or I/O error); not accepting \
                 commands until storage has reopened its database (attempts so far: {})",
                status.recovery_attempts
            ))
        } else {
            Err(
                "the outbox's last write failed (disk full or I/O error); not accepting commands"
                    .into(),
            )
        }
    }
}

/// Readiness: the projector follows the ledger (not halted on a poison transaction, not
/// retrying a lost peer or database).
pub struct ProjectorReady {
    status: tokio::sync::watch::Receiver<gxd_engine::projector::ProjectorStatus>,
}

impl ProjectorReady {
    pub fn new(
        status: tokio::sync::watch::Receiver<gxd_engine::projector::ProjectorStatus>,
    ) -> Self {
        Self { status }
    }
}

#[async_trait::async_trait]
impl ReadinessCheck for ProjectorReady {
    fn name(&self) -> &'static str {
        "projector"
    }

    async fn check(&self) -> Result<(), String> {
        use gxd_engine::projector::ProjectorState;
        let status = self.status.borrow().clone();
        match status.state {
            ProjectorState::Running => Ok(()),
            ProjectorState::Starting | ProjectorState::Reconciling => {
                Err("starting: catching up with the ledger".into())
            }
            ProjectorState::Retrying { reason } => Err(format!("retrying: {reason}")),
            ProjectorState::Halted { reason } => Err(format!("halted: {reason}")),
            ProjectorState::Stopped => Err("stopped".into()),
        }
    }
}

fn chrono_now() -> gxd_engine::projector::Timestamp {
    gxd_engine::projector::now()
}

/// Readiness: the projector is not behind the ledger by more than `max_lag` (the time since
/// it first learned of a block it has not applied; see the projector's module docs). Named
/// `projector_lag`; its reason says by how many blocks and seconds.
pub struct ProjectorLag {
    status: tokio::sync::watch::Receiver<gxd_engine::projector::ProjectorStatus>,
    max_lag: std::time::Duration,
}

impl ProjectorLag {
    pub fn new(
        status: tokio::sync::watch::Receiver<gxd_engine::projector::ProjectorStatus>,
        max_lag: std::time::Duration,
    ) -> Self {
        Self { status, max_lag }
    }
}

#[async_trait::async_trait]
impl ReadinessCheck for ProjectorLag {
    fn name(&self) -> &'static str {
        "projector_lag"
    }

    async fn check(&self) -> Result<(), String> {
        let status = self.status.borrow().clone();
        match status.lag_problem(self.max_lag, chrono_now()) {
            None => Ok(()),
            Some(reason) => Err(reason),
        }
    }
}

/// `GET /api/v1/admin/projector`: the projector's status watch as the API's snapshot.
pub struct ProjectorStatusView {
    status: tokio::sync::watch::Receiver<gxd_engine::projector::ProjectorStatus>,
}

impl ProjectorStatusView {
    pub fn new(
        status: tokio::sync::watch::Receiver<gxd_engine::projector::ProjectorStatus>,
    ) -> Self {
        Self { status }
    }
}

impl gxd_api::ProjectorView for ProjectorStatusView {
    fn snapshot(&self) -> gxd_api::ProjectorSnapshot {
        use gxd_engine::projector::ProjectorState;
        let s = self.status.borrow().clone();
        let lag_seconds = Some(s.lag_now().as_secs_f64());
        let (state, last_error) = match s.state {
            ProjectorState::Starting => ("starting", None),
            ProjectorState::Reconciling => ("reconciling", None),
            ProjectorState::Running => ("running", None),
            ProjectorState::Retrying { reason } => ("retrying", Some(reason)),
            ProjectorState::Halted { reason } => ("halted", Some(reason)),
            ProjectorState::Stopped => ("stopped", None),
        };
        gxd_api::ProjectorSnapshot {
            state: state.to_owned(),
            projected_block: s.height,
            checkpoint_height: s.checkpoint_height,
            ledger_height: s.ledger_height,
            lag_seconds,
            last_error,
            last_projected_at: s.last_projected_at,
        }
    }
}

//! The projector's state as Prometheus metrics (`gxd_projector_*`), read from its status
//! watch: the last projected block, the checkpoint log's, seconds since the last projected
//! block, whether it follows the ledger, the transactions it dead-lettered, and the lag:
//! the ledger height, blocks behind it, and seconds behind it (the readiness input; see
//! the projector's module docs, "Lag").

use std::time::Duration;

use chrono::Utc;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::projector::{ProjectorState, ProjectorStatus};

/// The gauges; see the module documentation.
pub struct ProjectorMetrics {
    block: prometheus::IntGauge,
    checkpoint_block: prometheus::IntGauge,
    last_block_age: prometheus::Gauge,
    running: prometheus::IntGauge,
    dead_lettered: prometheus::IntGauge,
    ledger_height: prometheus::IntGauge,
    lag_blocks: prometheus::IntGauge,
    lag_seconds: prometheus::Gauge,
}

impl ProjectorMetrics {
    /// Registers the gauges in `registry`.
    pub fn new(registry: &prometheus::Registry) -> Result<Self, prometheus::Error> {
        let gauge = |name: &str, help: &str| prometheus::IntGauge::new(name, help);
        let m = Self {
            block: gauge(
                "gxd_projector_block",
                "Last block applied to the read models (-1 before the first).",
            )?,
            checkpoint_block: gauge(
                "gxd_projector_checkpoint_block",
                "Last block in the checkpoint log (-1 before the first).",
            )?,
            last_block_age: prometheus::Gauge::new(
                "gxd_projector_last_block_age_seconds",
                "Seconds since this run last projected a block (0 before the first).",
            )?,
            running: gauge(
                "gxd_projector_running",
                "1 while the projector follows the ledger; 0 while starting, retrying, halted.",
            )?,
            dead_lettered: gauge(
                "gxd_projector_dead_lettered_transactions",
                "Transactions this run recorded in projection_dead_letters.",
            )?,
            ledger_height: gauge(
                "gxd_projector_ledger_height",
                "The ledger's height as last known (blocks 0..height exist; -1 before known).",
            )?,
            lag_blocks: gauge(
                "gxd_projector_lag_blocks",
                "Blocks on the ledger not yet applied to the read models (-1 before known).",
            )?,
            lag_seconds: prometheus::Gauge::new(
                "gxd_projector_lag_seconds",
                "Seconds since the projector first knew of a block it has not applied yet \
                 (0 when caught up); readiness fails above [projector] max_lag_seconds.",
            )?,
        };
        for g in [
            &m.block,
            &m.checkpoint_block,
            &m.running,
            &m.dead_lettered,
            &m.ledger_height,
            &m.lag_blocks,
        ] {
            registry.register(Box::new(g.clone()))?;
        }
        registry.register(Box::new(m.last_block_age.clone()))?;
        registry.register(Box::new(m.lag_seconds.clone()))?;
        m.block.set(-1);
        m.checkpoint_block.set(-1);
        m.ledger_height.set(-1);
        m.lag_blocks.set(-1);
        Ok(m)
    }

    fn update(&self, s: &ProjectorStatus) {
        let block = |h: Option<u64>| h.map_or(-1, |h| i64::try_from(h).unwrap_or(i64::MAX));
        self.block.set(block(s.height));
        self.checkpoint_block.set(block(s.checkpoint_height));
        self.running
            .set(i64::from(matches!(s.state, ProjectorState::Running)));
        self.dead_lettered
            .set(i64::try_from(s.dead_lettered).unwrap_or(i64::MAX));
        let age = s
            .last_projected_at
            .and_then(|t| (Utc::now() - t).to_std().ok())
            .map_or(0.0, |d| d.as_secs_f64());
        self.last_block_age.set(age);
        self.ledger_height.set(block(s.ledger_height));
        self.lag_blocks.set(block(s.lag_blocks));
        self.lag_seconds.set(s.lag(Utc::now()).as_secs_f64());
    }

    /// Follows `status` until `shutdown` (the age gauge is refreshed every second).
    pub async fn run(
        self,
        mut status: watch::Receiver<ProjectorStatus>,
        shutdown: CancellationToken,
    ) {
        loop {
            let current = status.borrow_and_update().clone();
            self.update(&current);
            tokio::select! {
                () = shutdown.cancelled() => return,
                changed = status.changed() => if changed.is_err() { return },
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
}

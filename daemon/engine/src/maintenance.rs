//! Outbox housekeeping in the background: retention (COMMITTED commands past
//! `committed_retention`, idempotency keys past `idempotency_window`, in bounded chunks per
//! write round so enqueues are never held up) and the outbox gauges
//! (`gxd_outbox_commands{status}`, `gxd_outbox_oldest_due_age_seconds`,
//! `gxd_outbox_oldest_in_flight_age_seconds`) and the storage writer's state
//! (`gxd_storage_write_blocked`, `gxd_storage_recovery_attempts_total`,
//! `gxd_storage_recoveries_total`: writes refused after a sticky write error, and the
//! writer's in-process reopens).
//! Dead letters are kept until an operator requeues them.

use std::time::Duration;

use chrono::Utc;
use gxd_storage::outbox::{Outbox, Status};
use tokio_util::sync::CancellationToken;

/// Gauges over the outbox.
#[derive(Clone)]
struct Gauges {
    by_status: prometheus::IntGaugeVec,
    oldest_due_age: prometheus::Gauge,
    oldest_in_flight_age: prometheus::Gauge,
    purged: prometheus::IntCounter,
    write_blocked: prometheus::IntGauge,
    recovery_attempts: prometheus::IntCounter,
    recoveries: prometheus::IntCounter,
}

/// In-flight commands examined per status for the oldest (the submitter keeps at most
/// `max_in_flight`, default 64, in flight).
const IN_FLIGHT_SCAN: usize = 1024;

/// Seconds the longest-running in-flight (PREPARED or SUBMITTED) command has been in
/// flight, i.e. since its `prepared_at` (0 when none is).
pub fn oldest_in_flight_age(
    outbox: &Outbox,
    now: chrono::DateTime<Utc>,
) -> Result<f64, gxd_storage::StorageError> {
    let mut oldest: Option<chrono::DateTime<Utc>> = None;
    for status in [Status::Prepared, Status::Submitted] {
        for c in outbox
            .list_by_status(status, None, IN_FLIGHT_SCAN)?
            .commands
        {
            let since = c.prepared_at.unwrap_or(c.updated_at);
            oldest = Some(oldest.map_or(since, |o| o.min(since)));
        }
    }
    Ok(oldest
        .and_then(|t| (now - t).to_std().ok())
        .map_or(0.0, |d| d.as_secs_f64()))
}

impl Gauges {
    fn new(registry: &prometheus::Registry) -> Result<Self, prometheus::Error> {
        let by_status = prometheus::IntGaugeVec::new(
            prometheus::Opts::new(
                "gxd_outbox_commands",
                "Commands in the outbox, by status (pending, prepared, submitted, committed, failed, \
                 projected).",
            ),
            &["status"],
        )?;
        let oldest_due_age = prometheus::Gauge::new(
            "gxd_outbox_oldest_due_age_seconds",
            "How long the earliest due command has been due (0 when none is).",
        )?;
        let oldest_in_flight_age = prometheus::Gauge::new(
            "gxd_outbox_oldest_in_flight_age_seconds",
            "How long the longest-running PREPARED or SUBMITTED command has been in flight \
             (0 when none is).",
        )?;
        let purged = prometheus::IntCounter::new(
            "gxd_outbox_purged_commands_total",
            "COMMITTED and PROJECTED commands removed by retention.",
        )?;
        let write_blocked = prometheus::IntGauge::new(
            "gxd_storage_write_blocked",
            "1 while storage refuses writes after a sticky write error (disk full, I/O error) \
             until it has reopened its database, else 0.",
        )?;
        let recovery_attempts = prometheus::IntCounter::new(
            "gxd_storage_recovery_attempts_total",
            "Attempts to reopen the database after a sticky write error.",
        )?;
        let recoveries = prometheus::IntCounter::new(
            "gxd_storage_recoveries_total",
            "Reopens of the database after a sticky write error that succeeded.",
        )?;
        registry.register(Box::new(by_status.clone()))?;
        registry.register(Box::new(oldest_due_age.clone()))?;
        registry.register(Box::new(oldest_in_flight_age.clone()))?;
        registry.register(Box::new(purged.clone()))?;
        registry.register(Box::new(write_blocked.clone()))?;
        registry.register(Box::new(recovery_attempts.clone()))?;
        registry.register(Box::new(recoveries.clone()))?;
        Ok(Self {
            by_status,
            oldest_due_age,
            oldest_in_flight_age,
            purged,
            write_blocked,
            recovery_attempts,
            recoveries,
        })
    }

    fn refresh(&self, outbox: &Outbox) {
        let storage = outbox.db().write_status();
        self.write_blocked.set(i64::from(storage.blocked));
        // Counters follow the storage's own counts (which only grow).
        for (counter, total) in [
            (&self.recovery_attempts, storage.recovery_attempts),
            (&self.recoveries, storage.recoveries),
        ] {
            counter.inc_by(total.saturating_sub(counter.get()));
        }
        match outbox.counts() {
            Ok(counts) => {
                for s in Status::ALL {
                    self.by_status
                        .with_label_values(&[s.as_str().to_ascii_lowercase().as_str()])
                        .set(i64::try_from(counts.get(s)).unwrap_or(i64::MAX));
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot count the outbox"),
        }
        let age = match outbox.next_due_at() {
            Ok(Some(at)) => (Utc::now() - at)
                .to_std()
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0),
            Ok(None) => 0.0,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the due index");
                0.0
            }
        };
        self.oldest_due_age.set(age);
        match oldest_in_flight_age(outbox, Utc::now()) {
            Ok(age) => self.oldest_in_flight_age.set(age),
            Err(e) => tracing::warn!(error = %e, "cannot read the in-flight commands"),
        }
    }
}

/// Outbox housekeeping; see the module documentation.
pub struct Maintenance {
    outbox: Outbox,
    gauges: Gauges,
    /// Between two rounds of gauges (and purges every `purge_every` rounds).
    interval: Duration,
    purge_every: u32,
}

impl Maintenance {
    /// Gauges every `interval`, retention every `purge_interval` (at least one interval).
    pub fn new(
        outbox: Outbox,
        registry: &prometheus::Registry,
        interval: Duration,
        purge_interval: Duration,
    ) -> Result<Self, prometheus::Error> {
        let interval = interval.max(Duration::from_millis(100));
        let rounds = (purge_interval.as_millis() / interval.as_millis()).max(1);
        Ok(Self {
            outbox,
            gauges: Gauges::new(registry)?,
            interval,
            purge_every: u32::try_from(rounds).unwrap_or(u32::MAX),
        })
    }

    /// Runs until `shutdown`. Storage errors are logged and retried next round: retention
    /// waits, it never stops the daemon.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut round: u32 = 0;
        loop {
            self.gauges.refresh(&self.outbox);
            if round.is_multiple_of(self.purge_every) {
                match self.outbox.purge(Utc::now()).await {
                    Ok(report) => self.gauges.purged.inc_by(report.commands_removed),
                    Err(e) => tracing::warn!(error = %e, "outbox retention failed; retrying later"),
                }
            }
            round = round.wrapping_add(1);
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(self.interval) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gxd_storage::outbox::{NewCommand, OutboxOptions};
    use gxd_storage::{Db, DbOptions};

    #[tokio::test]
    async fn oldest_in_flight_age_is_the_longest_running_prepared_or_submitted_command() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), &DbOptions::default()).unwrap();
        let outbox = Outbox::new(db, OutboxOptions::default()).unwrap();
        assert_eq!(oldest_in_flight_age(&outbox, Utc::now()).unwrap(), 0.0);
        let mut ids = Vec::new();
        for i in 0..2 {
            let c = outbox
                .enqueue(NewCommand {
                    tenant: "t".into(),
                    command_type: "X".into(),
                    request_id: format!("r{i}"),
                    partition_key: format!("p{i}"),
                    extra_partition_keys: Vec::new(),
                    payload: Vec::new(),
                })
                .await
                .unwrap();
            ids.push(c.command.id);
        }
        // The younger command goes in flight first: age counts from prepared_at.
        let first = outbox
            .mark_prepared(ids[1], "tx1".into(), vec![1])
            .await
            .unwrap();
        outbox.mark_submitted(ids[1]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        outbox
            .mark_prepared(ids[0], "tx0".into(), vec![1])
            .await
            .unwrap();
        let at = first.prepared_at.unwrap() + chrono::Duration::seconds(10);
        let age = oldest_in_flight_age(&outbox, at).unwrap();
        assert!((age - 10.0).abs() < 1e-9, "{age}");
        outbox.mark_committed(ids[1], 3).await.unwrap();
        outbox.mark_committed(ids[0], 3).await.unwrap();
        assert_eq!(oldest_in_flight_age(&outbox, at).unwrap(), 0.0);
    }

    #[tokio::test]
    async fn gauges_count_the_outbox_and_retention_purges_old_commits() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), &DbOptions::default()).unwrap();
        let opts = OutboxOptions {
            idempotency_window: Duration::from_millis(1),
            committed_retention: Duration::from_millis(1),
            ..OutboxOptions::default()
        };
        let outbox = Outbox::new(db, opts).unwrap();
        let mut ids = Vec::new();
        for i in 0..3 {
            let c = outbox
                .enqueue(NewCommand {
                    tenant: "t".into(),
                    command_type: "X".into(),
                    request_id: format!("r{i}"),
                    partition_key: format!("p{i}"),
                    extra_partition_keys: Vec::new(),
                    payload: Vec::new(),
                })
                .await
                .unwrap();
            ids.push(c.command.id);
        }
        outbox
            .mark_prepared(ids[0], "tx0".into(), vec![1])
            .await
            .unwrap();
        outbox.mark_committed(ids[0], 7).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;

        let registry = prometheus::Registry::new();
        let m = Maintenance::new(
            outbox.clone(),
            &registry,
            Duration::from_millis(100),
            Duration::from_millis(100),
        )
        .unwrap();
        let stop = CancellationToken::new();
        let task = tokio::spawn(m.run(stop.clone()));
        let purged = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if outbox.get(ids[0]).is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(purged.is_ok(), "the committed command is purged");
        tokio::time::sleep(Duration::from_millis(250)).await;
        stop.cancel();
        task.await.unwrap();
        let text = {
            let mut buf = Vec::new();
            prometheus::Encoder::encode(
                &prometheus::TextEncoder::new(),
                &registry.gather(),
                &mut buf,
            )
            .unwrap();
            String::from_utf8(buf).unwrap()
        };
        assert!(
            text.contains(r#"gxd_outbox_commands{status="pending"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"gxd_outbox_commands{status="committed"} 0"#),
            "{text}"
        );
        assert!(
            text.contains("gxd_outbox_purged_commands_total 1"),
            "{text}"
        );
        // The two PENDING ones are due: their age is positive.
        assert!(
            !text.contains("gxd_outbox_oldest_due_age_seconds 0\n"),
            "{text}"
        );
        // Pending ones keep their idempotency keys and records.
        assert!(outbox.get(ids[1]).is_ok() && outbox.get(ids[2]).is_ok());
    }
}

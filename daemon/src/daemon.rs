//! Startup, supervision and ordered shutdown of the daemon.
//!
//! Startup: local state directory → PostgreSQL pool → schema check (refuse a
//! diverged database; apply pending migrations when `migrate_on_startup`) → the
//! RocksDB outbox and checkpoint log → outbox maintenance → the engine (submitter,
//! projector) when `[fabric]` names a peer → HTTP listener → supervision, which sends
//! `READY=1` to systemd once the peer accepts a connection (at once without a peer).
//!
//! Watchdog: under `WatchdogSec=` the supervision loop sends `WATCHDOG=1` every half of
//! `$WATCHDOG_USEC` after `READY=1`, from the same task that watches the subsystems, so
//! pings stop when supervision stops (a wedged runtime, a stuck startup gate) and
//! systemd restarts the daemon.
//!
//! Supervision: every long-running subsystem is a spawned task with a child of
//! the root `CancellationToken`. If one ends on its own — error, or panic — the
//! daemon shuts down and exits non-zero: no half-alive process.
//!
//! Shutdown (on the shutdown future, i.e. SIGTERM/SIGINT, or a failed task):
//! `/readyz` turns 503, then the subsystems stop in order — HTTP (stop accepting,
//! finish in-flight requests), the submitter, the projector, outbox maintenance —
//! each bounded by its configured timeout and aborted past it; every `JoinHandle`
//! is awaited; finally storage (PostgreSQL pool, RocksDB) is closed, also bounded.
//! A halted projector is not a failed subsystem: it waits for shutdown while
//! `/readyz` reports why it halted.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow};
use gxd_api::{ApiState, ReadinessCheck};
use gxd_fabric::tls::PeerConnector;
use gxd_storage::checkpoint::CheckpointLog;
use gxd_storage::outbox::{Outbox, OutboxOptions};
use gxd_storage::pg::{self, Pool};
use gxd_storage::{Db, DbOptions};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::exit::{self, SchemaRefused};
use crate::readiness::{
    MigrationsCurrent, OutboxWritable, PostgresReady, ProjectorLag, ProjectorReady,
    ProjectorStatusView,
};
use crate::sdnotify;

/// Runs the daemon until `shutdown` resolves (or a subsystem fails), then stops
/// it in order. A shutdown requested during startup stops startup.
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
    let mut shutdown = std::pin::pin!(shutdown);
    let registry = prometheus::Registry::new();
    let daemon = tokio::select! {
        daemon = Daemon::start(config, registry) => daemon?,
        () = &mut shutdown => {
            tracing::info!("shutdown requested during startup");
            return Ok(());
        }
    };
    daemon.run_until(shutdown).await
}

/// A long-running subsystem task.
struct Subsystem {
    name: &'static str,
    token: CancellationToken,
    handle: JoinHandle<anyhow::Result<()>>,
    stop_timeout: Duration,
    /// The task has ended and its `JoinHandle` has been consumed by supervision.
    ended: bool,
}

/// A started daemon: listening, ready, not yet supervising.
pub struct Daemon {
    config: Config,
    root: CancellationToken,
    api_state: ApiState,
    api_addr: SocketAddr,
    pool: Pool,
    /// The outbox's and checkpoint log's RocksDB (closed last).
    db: Option<Db>,
    /// In shutdown order.
    subsystems: Vec<Subsystem>,
    registry: prometheus::Registry,
    /// The engine's peer connection (`None` without `[fabric]` peers).
    peer: Option<Arc<PeerConnector>>,
}

impl Daemon {
    /// Starts every subsystem. `registry` is the daemon's one metrics registry,
    /// passed down to each subsystem and exposed at `/metrics`.
    pub async fn start(config: Config, registry: prometheus::Registry) -> anyhow::Result<Daemon> {
        tracing::info!(version = env!("CARGO_PKG_VERSION"), "gxd starting");
        register_build_info(&registry)?;

        tokio::fs::create_dir_all(&config.data_dir)
            .await
            .with_context(|| format!("create storage.data_dir {}", config.data_dir.display()))?;

        let pool = pg::connect_pool(&config.database)
            .await
            .context("connect to PostgreSQL (database.*)")?;
        prepare_schema(&pool, config.migrate_on_startup).await?;

        // The local state: outbox and checkpoint log, in one RocksDB.
        let db_path = Db::path_in(&config.data_dir);
        let db = {
            let path = db_path.clone();
            tokio::task::spawn_blocking(move || Db::open(&path, &DbOptions::default()))
                .await
                .context("open storage task")?
                .with_context(|| format!("open the outbox in {}", db_path.display()))?
        };
        let outbox = Outbox::new(db.clone(), OutboxOptions::default())
            .with_context(|| format!("open the outbox in {}", db_path.display()))?;
        let checkpoints = CheckpointLog::new(db.clone());

        let mut checks: Vec<Arc<dyn ReadinessCheck>> = vec![
            Arc::new(PostgresReady::new(pool.clone())),
            Arc::new(MigrationsCurrent::new(pool.clone())),
            Arc::new(OutboxWritable::new(db.clone())),
        ];
        let root = CancellationToken::new();
        let mut engine_subsystems = Vec::new();
        let mut projector_view: Option<Arc<dyn gxd_api::ProjectorView>> = None;
        let mut on_enqueue: Option<Arc<dyn Fn() + Send + Sync>> = None;
        let mut read_cache: Option<Arc<gxd_api::ReadCache>> = None;
        let mut peer = None;
        // Outbox retention and gauges, with or without a peer.
        let maintenance_token = root.child_token();
        let maintenance = {
            let m = gxd_engine::maintenance::Maintenance::new(
                outbox.clone(),
                &registry,
                Duration::from_secs(5),
                Duration::from_secs(60),
            )
            .context("register outbox metrics")?;
            let token = maintenance_token.clone();
            tokio::spawn(async move {
                m.run(token).await;
                Ok(())
            })
        };
        match &config.fabric {
            None => tracing::warn!(
                "no fabric.peer_endpoints configured: the submitter and the projector do not run"
            ),
            Some(fabric) => {
                let mut engine = crate::engine::build(
                    &config,
                    fabric,
                    outbox.clone(),
                    checkpoints.clone(),
                    pool.clone(),
                    &registry,
                )?;
                // Wallet reads from memory between blocks: sound because this projector,
                // the only writer of the read models, invalidates after every block.
                let cache = Arc::new(
                    gxd_api::ReadCache::new(
                        &registry,
                        gxd_api::v1::cache::DEFAULT_TTL,
                        gxd_api::v1::cache::DEFAULT_CAPACITY,
                    )
                    .context("register the read cache metrics")?,
                );
                engine.projector = engine.projector.with_on_applied(cache.invalidator());
                read_cache = Some(cache);
                checks.push(Arc::new(ProjectorReady::new(engine.projector.status())));
                checks.push(Arc::new(ProjectorLag::new(
                    engine.projector.status(),
                    config.projector.max_lag,
                )));
                projector_view = Some(Arc::new(ProjectorStatusView::new(
                    engine.projector.status(),
                )));
                let waker = engine.waker.clone();
                on_enqueue = Some(Arc::new(move || waker.wake()));
                peer = Some(engine.connector.clone());
                let projector_metrics =
                    gxd_engine::projector_metrics::ProjectorMetrics::new(&registry)
                        .context("register projector metrics")?;
                let projector_status = engine.projector.status();
                let submitter_token = root.child_token();
                let submitter = {
                    let token = submitter_token.clone();
                    let submitter = engine.submitter;
                    tokio::spawn(async move { submitter.run(token).await.context("submitter") })
                };
                let projector_token = root.child_token();
                let projector = {
                    let token = projector_token.clone();
                    let projector = engine.projector;
                    tokio::spawn(async move {
                        let metrics =
                            tokio::spawn(projector_metrics.run(projector_status, token.clone()));
                        if let Err(e) = projector.run(token.clone()).await {
                            // Halted (a poison transaction, a broken chain): the daemon stays
                            // up — the API serves, /readyz says why — until an operator acts.
                            tracing::error!(error = %e, "the projector halted; /readyz reports it");
                            token.cancelled().await;
                        }
                        let _ = metrics.await;
                        Ok(())
                    })
                };
                tracing::info!(
                    peers = ?fabric.peer_endpoints,
                    msp_id = %fabric.msp_id,
                    channel = %fabric.channel,
                    chaincode = %fabric.chaincode,
                    "engine started"
                );
                engine_subsystems.push(Subsystem {
                    name: "submitter",
                    token: submitter_token,
                    handle: submitter,
                    stop_timeout: config.shutdown.http_drain,
                    ended: false,
                });
                engine_subsystems.push(Subsystem {
                    name: "projector",
                    token: projector_token,
                    handle: projector,
                    stop_timeout: config.shutdown.http_drain,
                    ended: false,
                });
            }
        }
        let mut api_state = ApiState::new(&registry, checks)
            .context("register API metrics")?
            .with_limits(config.api_limits)
            .with_v1(gxd_api::V1Deps {
                outbox: outbox.clone(),
                pool: pool.clone(),
                channel: config.fabric.as_ref().map_or_else(
                    || crate::config::FabricSection::default().channel,
                    |f| f.channel.clone(),
                ),
                projector: projector_view,
                on_enqueue,
                read_cache,
            });
        match &config.auth {
            Some(auth) => {
                tracing::info!(issuer = %auth.issuer, audience = %auth.audience,
                    kids = ?auth.authenticator.kids(), "JWT authentication configured");
                api_state = api_state.with_authenticator(auth.authenticator.clone());
            }
            None => tracing::warn!(
                "no [auth] section: the authenticated API routes answer 401 until one is configured"
            ),
        }

        let listener = tokio::net::TcpListener::bind(config.api_listen)
            .await
            .with_context(|| format!("listen on api.listen {}", config.api_listen))?;
        let api_addr = listener
            .local_addr()
            .context("read the API listen address")?;
        let http_token = root.child_token();
        let app = gxd_api::router(api_state.clone());
        let http = {
            let token = http_token.clone();
            tokio::spawn(async move {
                gxd_api::serve(listener, app, token.cancelled_owned())
                    .await
                    .context("HTTP server")
            })
        };
        tracing::info!(api = %api_addr, "API listening");

        // Shutdown order: stop accepting (HTTP), then the submitter, then the projector.
        let mut subsystems = vec![Subsystem {
            name: "http",
            token: http_token,
            handle: http,
            stop_timeout: config.shutdown.http_drain,
            ended: false,
        }];
        subsystems.extend(engine_subsystems);
        subsystems.push(Subsystem {
            name: "outbox-maintenance",
            token: maintenance_token,
            handle: maintenance,
            stop_timeout: config.shutdown.storage_close,
            ended: false,
        });
        Ok(Daemon {
            config,
            root,
            api_state,
            api_addr,
            pool,
            db: Some(db),
            subsystems,
            registry,
            peer,
        })
    }

    /// The address the API listens on (useful with port 0).
    pub fn api_addr(&self) -> SocketAddr {
        self.api_addr
    }

    /// The daemon's metrics registry.
    pub fn registry(&self) -> &prometheus::Registry {
        &self.registry
    }

    /// Supervises until `shutdown` resolves or a subsystem ends, then stops
    /// everything in order. `Err` when a subsystem failed or a stop phase overran.
    pub async fn run_until(
        mut self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> anyhow::Result<()> {
        let notifier = notify_systemd(
            self.peer.clone(),
            self.api_addr,
            sdnotify::watchdog_interval(),
        );
        let failure = supervise(&mut self.subsystems, shutdown, notifier).await;
        if failure.is_some() {
            // The error itself is reported once, when the daemon exits with it.
            tracing::warn!("a subsystem stopped unexpectedly; shutting down");
        }
        let overran = self.shutdown().await;
        match (failure, overran.is_empty()) {
            (Some(err), _) => Err(err),
            (None, true) => {
                tracing::info!("gxd stopped");
                Ok(())
            }
            (None, false) => Err(anyhow!(
                "shutdown phase(s) exceeded their timeout: {}",
                overran.join(", ")
            )),
        }
    }

    /// Ordered shutdown; returns the phases that overran their timeout.
    async fn shutdown(self) -> Vec<&'static str> {
        sdnotify::notify_logged("STOPPING=1");
        self.api_state.set_draining();
        let mut overran = stop_in_order(self.subsystems).await;
        self.root.cancel();

        let pool = self.pool;
        let db = self.db;
        let close = tokio::task::spawn_blocking(move || {
            pool.close();
            drop(db);
        });
        if tokio::time::timeout(self.config.shutdown.storage_close, close)
            .await
            .is_err()
        {
            tracing::warn!(
                timeout = ?self.config.shutdown.storage_close,
                "closing storage exceeded its timeout"
            );
            overran.push("storage");
        } else {
            tracing::info!("storage closed");
        }
        overran
    }
}

/// The supervision loop's duty towards systemd, polled by [`supervise`] (so it stops
/// when supervision does): `READY=1` once the peer, when there is one, accepts a
/// connection (migrations and storage are up before supervision starts), then
/// `WATCHDOG=1` every `watchdog` (half of `$WATCHDOG_USEC`), forever.
async fn notify_systemd(
    peer: Option<Arc<PeerConnector>>,
    api: SocketAddr,
    watchdog: Option<Duration>,
) -> Infallible {
    if let Some(peer) = peer {
        let mut delay = Duration::from_millis(200);
        let mut waiting_logged = false;
        while let Err(e) = peer.channel().await {
            if !waiting_logged {
                tracing::warn!(error = %e, "waiting for the peer before reporting ready to systemd");
                waiting_logged = true;
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }
    sdnotify::notify_logged("READY=1");
    tracing::info!(api = %api, "gxd ready");
    match watchdog {
        Some(every) => {
            tracing::info!(interval = ?every, "systemd watchdog pings on");
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                sdnotify::notify_logged("WATCHDOG=1");
            }
        }
        None => std::future::pending().await,
    }
}

/// Waits for `shutdown`, or for any subsystem to end (which is a failure: they
/// run until cancelled), while polling `notifier` (readiness and watchdog pings).
/// Returns that failure, if any.
async fn supervise(
    subsystems: &mut [Subsystem],
    shutdown: impl Future<Output = ()> + Send,
    notifier: impl Future<Output = Infallible> + Send,
) -> Option<anyhow::Error> {
    if subsystems.is_empty() {
        tokio::select! {
            () = shutdown => {}
            never = notifier => match never {},
        }
        return None;
    }
    let ended = {
        let watched = futures::future::select_all(
            subsystems
                .iter_mut()
                .map(|s| Box::pin(watch(s.name, &mut s.handle))),
        );
        tokio::select! {
            () = shutdown => {
                tracing::info!("shutdown requested");
                None
            }
            (err, index, _) = watched => Some((err, index)),
            never = notifier => match never {},
        }
    };
    let (err, index) = ended?;
    if let Some(sub) = subsystems.get_mut(index) {
        sub.ended = true;
    }
    Some(err)
}

/// Cancels and awaits each subsystem in turn, each bounded by its stop timeout;
/// returns the names of those that overran (and were aborted).
async fn stop_in_order(subsystems: Vec<Subsystem>) -> Vec<&'static str> {
    let mut overran = Vec::new();
    for sub in subsystems {
        sub.token.cancel();
        if sub.ended {
            continue;
        }
        if !stop(sub.name, sub.handle, sub.stop_timeout).await {
            overran.push(sub.name);
        }
    }
    overran
}

/// Resolves when a subsystem's task ends, with the reason as an error (a task
/// must run until cancelled, so any end counts as a failure here).
async fn watch(name: &'static str, handle: &mut JoinHandle<anyhow::Result<()>>) -> anyhow::Error {
    match handle.await {
        Ok(Ok(())) => anyhow!("subsystem {name} ended unexpectedly"),
        Ok(Err(e)) => e.context(format!("subsystem {name} failed")),
        Err(e) if e.is_panic() => anyhow!("subsystem {name} panicked"),
        Err(e) => anyhow!("subsystem {name} was cancelled: {e}"),
    }
}

/// Awaits a cancelled subsystem for at most `timeout`, aborting it past that.
/// Returns false if it overran.
async fn stop(
    name: &'static str,
    mut handle: JoinHandle<anyhow::Result<()>>,
    timeout: Duration,
) -> bool {
    match tokio::time::timeout(timeout, &mut handle).await {
        Ok(Ok(Ok(()))) => {
            tracing::info!(subsystem = name, "stopped");
            true
        }
        Ok(Ok(Err(e))) => {
            tracing::warn!(subsystem = name, error = %crate::exit::one_line(&e), "stopped with an error");
            true
        }
        Ok(Err(e)) => {
            tracing::error!(subsystem = name, error = %e, "task failed while stopping");
            true
        }
        Err(_) => {
            tracing::warn!(subsystem = name, ?timeout, "did not stop in time; aborting");
            handle.abort();
            let _ = handle.await;
            false
        }
    }
}

/// Checks the schema against the embedded migrations ([`pg::migrate::check`]); applies
/// pending ones when allowed. Refuses (exit code 65) a diverged database, or a pending one
/// when migrating on startup is off.
async fn prepare_schema(pool: &Pool, migrate_on_startup: bool) -> anyhow::Result<()> {
    let status = pg::migrate::check_pool(pool)
        .await
        .map_err(|e| exit::schema_error(e, "start"))?;
    if status.pending.is_empty() {
        tracing::info!(applied = status.applied.len(), "database schema is current");
        return Ok(());
    }
    if !migrate_on_startup {
        return Err(SchemaRefused(format!(
            "refusing to start: {}; run `gxd migrate` (database.migrate_on_startup is false)",
            status.describe_pending()
        ))
        .into());
    }
    let applied = pg::migrate::migrate_pool(pool)
        .await
        .map_err(|e| exit::schema_error(e, "start"))?;
    tracing::info!(count = applied.len(), "migrations applied at startup");
    Ok(())
}

fn register_build_info(registry: &prometheus::Registry) -> anyhow::Result<()> {
    let info = prometheus::IntGaugeVec::new(
        prometheus::Opts::new("gxd_build_info", "gxd build information; always 1."),
        &["version"],
    )?;
    info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
    registry.register(Box::new(info))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn subsystem(
        name: &'static str,
        stop_timeout: Duration,
        body: impl FnOnce(CancellationToken) -> JoinHandle<anyhow::Result<()>>,
    ) -> Subsystem {
        let token = CancellationToken::new();
        Subsystem {
            name,
            handle: body(token.clone()),
            token,
            stop_timeout,
            ended: false,
        }
    }

    #[tokio::test]
    async fn a_panicking_subsystem_is_a_failure_not_a_half_alive_process() {
        let mut subs = vec![
            subsystem("steady", Duration::from_secs(1), |t| {
                tokio::spawn(async move {
                    t.cancelled().await;
                    Ok(())
                })
            }),
            subsystem("boom", Duration::from_secs(1), |_| {
                tokio::spawn(async {
                    tokio::task::yield_now().await;
                    panic!("boom");
                })
            }),
        ];
        let failure = supervise(&mut subs, std::future::pending(), std::future::pending()).await;
        let text = failure.expect("the panic ends supervision").to_string();
        assert!(text.contains("boom") && text.contains("panicked"), "{text}");
        // The others are still stopped in order.
        assert!(stop_in_order(subs).await.is_empty());
    }

    #[tokio::test]
    async fn an_erroring_subsystem_is_reported_with_its_cause() {
        let mut subs = vec![subsystem("db", Duration::from_secs(1), |_| {
            tokio::spawn(async { Err(anyhow!("connection lost")) })
        })];
        let failure = supervise(&mut subs, std::future::pending(), std::future::pending())
            .await
            .unwrap();
        assert_eq!(
            crate::exit::one_line(&failure),
            "subsystem db failed: connection lost"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn subsystems_stop_in_order_and_an_overrun_is_aborted() {
        let order = std::sync::Arc::new(Mutex::new(Vec::new()));
        let cooperative = |name: &'static str| {
            let order = order.clone();
            subsystem(name, Duration::from_secs(5), move |t| {
                tokio::spawn(async move {
                    t.cancelled().await;
                    order.lock().unwrap().push(name);
                    Ok(())
                })
            })
        };
        let mut subs = vec![cooperative("http"), cooperative("submitter")];
        subs.push(subsystem("stuck", Duration::from_secs(2), |_| {
            tokio::spawn(async {
                std::future::pending::<()>().await;
                Ok(())
            })
        }));
        subs.push(cooperative("projector"));

        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tx.send(()).unwrap();
        let failure = supervise(
            &mut subs,
            async {
                let _ = rx.await;
            },
            std::future::pending(),
        )
        .await;
        assert!(failure.is_none());
        let start = tokio::time::Instant::now();
        let overran = stop_in_order(subs).await;
        assert_eq!(overran, ["stuck"]);
        assert_eq!(*order.lock().unwrap(), ["http", "submitter", "projector"]);
        // Bounded by the stuck phase's timeout (virtual time).
        assert_eq!(start.elapsed().as_secs(), 2);
    }
}

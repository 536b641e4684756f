//! `gxd projections rebuild`: replay the channel from block 0 into fresh read models while
//! the current ones keep serving, then swap them in atomically.
//!
//! The replay is the [`Projector`] itself — the same handlers, batching and poison policy
//! as `gxd run` — writing into the shadow schema of [`pg::rebuild`](gxd_storage::pg::rebuild)
//! through a pool whose `search_path` is that schema, with a scratch checkpoint log (the
//! daemon's own log describes the live read models and is never touched) and no outbox
//! (command statuses are the live projector's business). Its block source is bounded: it
//! hands out blocks up to a target and then waits for the target to rise.
//!
//! 1. The target is the live read models' position (not the ledger height: both sides
//!    must reach the same block to be compared). While the daemon runs, that position
//!    moves; the target follows it until the shadow is within [`RebuildConfig::slack_blocks`].
//! 2. The swap transaction takes the live schema's block lock (the live projector's block
//!    in flight finishes, its next one waits), reads the live position, lets the shadow
//!    finish up to it, and digests both sides: same ledger, same position, so the digests
//!    must be equal unless the live read models are wrong (a fixed handler bug, a changed
//!    poison policy — what a rebuild is for).
//! 3. Swap (or, with `swap: false`, only compare), commit, drop the old tables.
//!
//! Progress (blocks, transactions, rate, ETA) goes to a callback every
//! [`RebuildConfig::progress_interval`].

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use gxd_fabric::block::ParsedBlock;
use gxd_fabric::stream::StreamError;
use gxd_storage::checkpoint::CheckpointLog;
use gxd_storage::pg::PgSettings;
use gxd_storage::pg::rebuild::{Digest, Rebuild, RebuildError as PgRebuildError};
use gxd_storage::{Db, DbOptions, StorageError};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::projector::{
    BlockSource, BlockSourceFactory, PoisonPolicy, ProjectionHandler, Projector, ProjectorConfig,
    ProjectorState, ProjectorStatus,
};

/// How a rebuild runs.
#[derive(Debug, Clone)]
pub struct RebuildConfig {
    pub channel: String,
    pub poison: PoisonPolicy,
    pub batch_writes: bool,
    /// Swap the rebuilt read models in (else only compare them, and drop them).
    pub swap: bool,
    /// How often progress is reported.
    pub progress_interval: Duration,
    /// The shadow is taken to the swap when it is at most this many blocks behind the
    /// live position (the rest is replayed with the live projector held back).
    pub slack_blocks: u64,
    /// Where the scratch checkpoint log goes (a fresh directory is made inside).
    pub scratch_dir: PathBuf,
}

impl RebuildConfig {
    pub fn new(channel: impl Into<String>) -> Self {
        RebuildConfig {
            channel: channel.into(),
            poison: PoisonPolicy::Halt,
            batch_writes: true,
            swap: true,
            progress_interval: Duration::from_secs(1),
            slack_blocks: 16,
            scratch_dir: std::env::temp_dir(),
        }
    }
}

/// Where a rebuild is.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    /// Last block applied to the shadow read models.
    pub block: Option<u64>,
    /// The block the shadow is being taken to (the live position, as last read).
    pub target: u64,
    /// Transactions replayed so far.
    pub transactions: u64,
    pub elapsed: Duration,
    pub transactions_per_second: f64,
    /// At the current rate; `None` before there is a rate.
    pub eta: Option<Duration>,
}

/// What a rebuild did.
#[derive(Debug, Clone)]
pub struct RebuildReport {
    /// The block both read models were at when compared (and swapped).
    pub position: u64,
    pub blocks: u64,
    pub transactions: u64,
    pub elapsed: Duration,
    /// The live read models' digest before the swap, and the rebuilt ones'.
    pub live: Digest,
    pub rebuilt: Digest,
    pub swapped: bool,
}

impl RebuildReport {
    /// Whether the rebuilt read models equal the incremental ones.
    pub fn identical(&self) -> bool {
        self.live == self.rebuilt
    }
}

/// Why a rebuild failed (nothing of the live read models changed).
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    #[error("nothing to rebuild: the read models of channel {0:?} have no block yet")]
    Empty(String),
    #[error(transparent)]
    Pg(#[from] PgRebuildError),
    #[error("the scratch checkpoint log: {0}")]
    Scratch(String),
    #[error("the replay stopped: {0}")]
    Replay(String),
    #[error("cancelled")]
    Cancelled,
}

impl From<StorageError> for RebuildError {
    fn from(e: StorageError) -> Self {
        RebuildError::Scratch(e.to_string())
    }
}

#[derive(Debug, Default)]
struct Counters {
    transactions: AtomicU64,
}

/// A block source handing out blocks up to a target (a watch), then waiting.
struct Bounded {
    inner: Arc<dyn BlockSourceFactory>,
    target: watch::Receiver<u64>,
    counters: Arc<Counters>,
}

struct BoundedSource {
    inner: Box<dyn BlockSource>,
    next: u64,
    target: watch::Receiver<u64>,
    cancel: CancellationToken,
    counters: Arc<Counters>,
}

impl BlockSourceFactory for Bounded {
    fn open(
        &self,
        channel: &str,
        start: u64,
        previous_hash: Option<Vec<u8>>,
        cancel: CancellationToken,
    ) -> Box<dyn BlockSource> {
        Box::new(BoundedSource {
            inner: self
                .inner
                .open(channel, start, previous_hash, cancel.clone()),
            next: start,
            target: self.target.clone(),
            cancel,
            counters: self.counters.clone(),
        })
    }

    fn ledger_height<'a>(
        &'a self,
        channel: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<u64>> + Send + 'a>> {
        self.inner.ledger_height(channel)
    }
}

#[async_trait::async_trait]
impl BlockSource for BoundedSource {
    async fn next_block(&mut self) -> Result<Option<ParsedBlock>, StreamError> {
        while self.next > *self.target.borrow_and_update() {
            tokio::select! {
                () = self.cancel.cancelled() => return Ok(None),
                changed = self.target.changed() => {
                    if changed.is_err() {
                        return Ok(None);
                    }
                }
            }
        }
        let block = self.inner.next_block().await?;
        if let Some(b) = &block {
            self.next = b.number.saturating_add(1);
            self.counters
                .transactions
                .fetch_add(b.transactions.len() as u64, Ordering::Relaxed);
        }
        Ok(block)
    }
}

/// A fresh directory for the scratch checkpoint log, removed on drop.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn create(parent: &std::path::Path) -> Result<ScratchDir, RebuildError> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir = parent.join(format!("gxd-rebuild-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .map_err(|e| RebuildError::Scratch(format!("create {}: {e}", dir.display())))?;
        Ok(ScratchDir(dir))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            tracing::warn!(dir = %self.0.display(), error = %e, "could not remove the rebuild's scratch directory");
        }
    }
}

/// Rebuilds the read models of `config.channel` from the ledger (module docs). `settings`
/// are the live database's; `source` the peer's blocks; `handler` the domain's.
pub async fn rebuild(
    settings: &PgSettings,
    config: RebuildConfig,
    handler: Arc<dyn ProjectionHandler>,
    source: Arc<dyn BlockSourceFactory>,
    mut on_progress: impl FnMut(&Progress),
    shutdown: CancellationToken,
) -> Result<RebuildReport, RebuildError> {
    let started = Instant::now();
    let mut pg = Rebuild::begin(settings, &config.channel).await?;
    let result = replay_and_swap(
        &mut pg,
        &config,
        handler,
        source,
        &mut on_progress,
        &shutdown,
        started,
    )
    .await;
    // The shadow (or, after a swap, the old tables) goes whatever happened.
    let finished = pg.finish().await;
    let report = result?;
    finished?;
    Ok(report)
}

async fn replay_and_swap(
    pg: &mut Rebuild,
    config: &RebuildConfig,
    handler: Arc<dyn ProjectionHandler>,
    source: Arc<dyn BlockSourceFactory>,
    on_progress: &mut impl FnMut(&Progress),
    shutdown: &CancellationToken,
    started: Instant,
) -> Result<RebuildReport, RebuildError> {
    let channel = config.channel.as_str();
    let Some(first_target) = pg.live_position().await? else {
        return Err(RebuildError::Empty(channel.to_owned()));
    };
    let scratch = ScratchDir::create(&config.scratch_dir)?;
    let path = scratch.0.join("rocksdb");
    let db = tokio::task::spawn_blocking(move || Db::open(path, &DbOptions::default()))
        .await
        .map_err(|e| RebuildError::Scratch(e.to_string()))??;
    let (target_tx, target_rx) = watch::channel(first_target.block_number);
    let counters = Arc::new(Counters::default());
    let bounded = Bounded {
        inner: source,
        target: target_rx,
        counters: counters.clone(),
    };
    let projector = Projector::new(
        ProjectorConfig::new(channel)
            .with_poison_policy(config.poison)
            .with_batch_writes(config.batch_writes),
        pg.shadow_pool().clone(),
        CheckpointLog::new(db.clone()),
        handler,
        Arc::new(bounded),
    );
    let mut status = projector.status();
    let stop = shutdown.child_token();
    let _stop_projector = stop.clone().drop_guard();
    let run = tokio::spawn(projector.run(stop.clone()));

    let progress = |status: &ProjectorStatus, target: u64| {
        let elapsed = started.elapsed();
        let transactions = counters.transactions.load(Ordering::Relaxed);
        let secs = elapsed.as_secs_f64();
        let block_rate = status.height.map(|h| (h + 1) as f64 / secs.max(1e-3));
        let remaining = target.saturating_sub(status.height.unwrap_or(0));
        Progress {
            block: status.height,
            target,
            transactions,
            elapsed,
            transactions_per_second: transactions as f64 / secs.max(1e-3),
            eta: block_rate
                .filter(|r| *r > 0.0)
                .map(|r| Duration::from_secs_f64(remaining as f64 / r)),
        }
    };

    // Phase 1: follow the live position without holding anything.
    let mut target = first_target.block_number;
    let mut tick = tokio::time::interval(config.progress_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        wait_for(&mut status, target, &mut tick, shutdown, &mut |s| {
            on_progress(&progress(s, target))
        })
        .await?;
        let live = pg.live_position().await?.map_or(target, |p| p.block_number);
        if live <= target.saturating_add(config.slack_blocks) {
            break;
        }
        target = live;
        target_tx.send_replace(target);
    }

    // Phase 2: hold the live projector, finish, compare, swap.
    let (swap, live) = pg.lock_live().await?;
    let live = live.ok_or_else(|| {
        RebuildError::Replay("the live read models lost their position during the rebuild".into())
    })?;
    if live.block_number < target {
        let _ = swap.abandon().await;
        return Err(RebuildError::Replay(format!(
            "the live read models went back from block {target} to {} during the rebuild",
            live.block_number
        )));
    }
    target = live.block_number;
    target_tx.send_replace(target);
    wait_for(&mut status, target, &mut tick, shutdown, &mut |s| {
        on_progress(&progress(s, target))
    })
    .await?;
    stop.cancel();
    match run.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(RebuildError::Replay(e.to_string())),
        Err(e) => return Err(RebuildError::Replay(e.to_string())),
    }
    let shadow = swap.shadow_position(&config.channel).await?;
    if shadow.as_ref() != Some(&live) {
        let _ = swap.abandon().await;
        return Err(RebuildError::Replay(format!(
            "the rebuilt read models are at {:?}, the live ones at block {} (hash {}): not the same chain",
            shadow.map(|p| p.block_number),
            live.block_number,
            hex::encode(&live.block_hash)
        )));
    }
    let (live_digest, rebuilt) = swap.digests().await?;
    on_progress(&progress(&status.borrow(), target));
    if config.swap {
        swap.swap().await?;
    } else {
        swap.abandon().await?;
    }
    drop(db);
    Ok(RebuildReport {
        position: target,
        blocks: target + 1,
        transactions: counters.transactions.load(Ordering::Relaxed),
        elapsed: started.elapsed(),
        live: live_digest,
        rebuilt,
        swapped: config.swap,
    })
}

/// Waits until the shadow projector has applied `target`, reporting progress on every tick;
/// fails if it halts or stops.
async fn wait_for(
    status: &mut watch::Receiver<ProjectorStatus>,
    target: u64,
    tick: &mut tokio::time::Interval,
    shutdown: &CancellationToken,
    report: &mut dyn FnMut(&ProjectorStatus),
) -> Result<(), RebuildError> {
    loop {
        {
            let s = status.borrow_and_update();
            if s.height.is_some_and(|h| h >= target) {
                return Ok(());
            }
            match &s.state {
                ProjectorState::Halted { reason } => {
                    return Err(RebuildError::Replay(reason.clone()));
                }
                ProjectorState::Stopped => return Err(RebuildError::Cancelled),
                _ => {}
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return Err(RebuildError::Cancelled),
            changed = status.changed() => {
                if changed.is_err() {
                    return Err(RebuildError::Replay("the replay ended".into()));
                }
            }
            _ = tick.tick() => report(&status.borrow()),
        }
    }
}

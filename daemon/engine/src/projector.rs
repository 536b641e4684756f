//! The block projector: committed blocks → read models, in block order, exactly once.
//!
//! [`Projector::run`] follows a block source (the peer's Deliver stream, through a
//! [`BlockSourceFactory`]) from its position and applies each block in one PostgreSQL
//! transaction ([`BlockTx`]): every transaction is recorded (valid or not; an invalid
//! one — MVCC conflict, DUPLICATE_TXID — changes nothing else), the chaincode event of
//! each valid one goes to the [`ProjectionHandler`] (the domain's, plugged in by the
//! daemon), and the position is written as a compare-and-set on the previous block and
//! hash. Only after that commit is the block appended to the RocksDB checkpoint log,
//! which checks hash-chain continuity.
//!
//! PostgreSQL's position (`projector_checkpoints`) is authoritative. At startup (and
//! after every transient failure) the projector reconciles the checkpoint log with it:
//! entries beyond the position are truncated (from the top), and entries missing below
//! it — a crash after the PostgreSQL commit and before the append — are appended again
//! from the stream (the blocks are read, checked against the stored hash, and not
//! applied a second time).
//!
//! Poison transactions (a valid transaction whose event the handler refuses: a
//! [`HandlerError::Poison`], or a data error from storage) follow the configured
//! [`PoisonPolicy`]: [`Halt`](PoisonPolicy::Halt) (the default) stops before the block,
//! leaving the position at the block before and the reason in the status;
//! [`DeadLetter`](PoisonPolicy::DeadLetter) undoes the handler's writes (a savepoint),
//! records the transaction in `projection_dead_letters` and goes on. Never a silent skip.
//! Other storage errors (PostgreSQL down, connections killed) are transient: the block is
//! abandoned, and the projector waits (bounded, jittered backoff), reconciles and resumes.
//!
//! # Command statuses (with [`Projector::with_outbox`])
//! The checkpoint-log append is [`Outbox::record_projected_block`]: in the same RocksDB
//! write batch as the block's checkpoint, the commands of its VALID transactions (found by
//! tx id in the outbox's tx index, whatever attempt used it) move to PROJECTED, from any
//! state (the ledger is the truth; a late commit of an earlier attempt is recorded there).
//! So "block N is in the checkpoint log" and "block N's commands are PROJECTED" are one
//! fact, and the startup reconciliation that re-appends blocks missing from the log after
//! a crash between the PostgreSQL commit and the append (re-read from the stream) re-marks
//! their commands too. Marking is idempotent. Blocks appended before the outbox was
//! attached (an older gxd) are not re-marked: their commands stay COMMITTED.
//!
//! # Pipelining
//! Two things overlap, neither reordering what is durable: the stream is read and
//! verified ahead by a task of its own ([`ProjectorConfig::prefetch_blocks`] blocks); and
//! block N's checkpoint append runs beside block N+1's PostgreSQL transaction when N+1 is
//! already there (during a catch-up), or right after N's commit when it is not (following
//! the ledger: nothing waits for the next block with an append unfinished). Appends stay
//! in block order, each after its block's PostgreSQL commit, so the log can only be behind
//! PostgreSQL — by at most one block more than before — which the reconciliation above
//! repairs. The status (`height`, `checkpoint_height`, `last_block`) of a block is
//! published after its append, so a status at block N still means N is in PostgreSQL,
//! in the checkpoint log and its commands PROJECTED.
//!
//! # Lag
//! The ledger height is what the projector knows of the peer's: the highest block the
//! stream delivered + 1, and every [`ProjectorConfig::height_probe_interval`] a probe
//! ([`BlockSourceFactory::ledger_height`]: for Deliver, one DeliverFiltered request for the
//! newest block), which keeps working while the projector is stalled (retrying, or waiting
//! on a stream that delivers nothing) — as long as [`Projector::run`] runs. **Lag** is
//! the age of the oldest committed-but-unprojected block as observed: the time since the
//! projector first learned of a block it has not yet applied (`ProjectorStatus::behind_since`);
//! none when it has applied every block it knows of. Lag in blocks is the ledger height −
//! (projected block + 1).
//!
//! Status: a `watch` channel of [`ProjectorStatus`] (state, projected height, ledger height,
//! lag, the last block's time and transactions), for readiness, metrics and the API.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use gxd_fabric::block::{BlockTransaction, ParsedBlock};
use gxd_fabric::identity::SigningIdentity;
use gxd_fabric::stream::{Backoff, BlockStream, BlockStreamConfig, StreamError};
use gxd_fabric::tls::PeerConnector;
use gxd_storage::StorageError;
use gxd_storage::checkpoint::{CheckpointLog, NewCheckpoint};
use gxd_storage::outbox::{ChaincodeResult, LedgerCommit, Outbox};
use gxd_storage::pg::Pool;
use gxd_storage::pg::projection::{self, Position};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use gxd_storage::pg::projection::{
    BlockTx, ChaincodeEvent, HandlerError, ProjectionError, ProjectionHandler, TxContext, TxOutcome,
};

/// What to do with a poison transaction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PoisonPolicy {
    /// Stop before the block; the status says why. An operator fixes the cause (or
    /// switches the policy) and restarts.
    #[default]
    Halt,
    /// Record the transaction in the dead-letter table and go on.
    DeadLetter,
}

/// The projector's settings.
#[derive(Debug, Clone)]
pub struct ProjectorConfig {
    pub channel: String,
    pub poison: PoisonPolicy,
    /// Wait between attempts after a transient failure.
    pub retry: Backoff,
    /// How often the ledger height is asked of the peer (lag). Default 1 s.
    pub height_probe_interval: Duration,
    /// Buffer each block's read-model writes and write them at commit in multi-row
    /// statements ([`BlockTx::begin_batched`]; default). A block whose batch fails with a
    /// data error is applied again one transaction at a time, where the poison policy
    /// sees the offending transaction. Off: always one transaction at a time.
    pub batch_writes: bool,
    /// Blocks read and verified ahead of the one being applied (default 4): the stream's
    /// decoding and hash checks, and the peer's sending, overlap the PostgreSQL work. At
    /// least 1.
    pub prefetch_blocks: usize,
}

impl ProjectorConfig {
    pub fn new(channel: impl Into<String>) -> Self {
        ProjectorConfig {
            channel: channel.into(),
            poison: PoisonPolicy::default(),
            retry: Backoff {
                initial: Duration::from_millis(200),
                max: Duration::from_secs(10),
                multiplier: 2.0,
                jitter: 0.2,
                max_attempts: None,
            },
            height_probe_interval: Duration::from_secs(1),
            batch_writes: true,
            prefetch_blocks: 4,
        }
    }

    pub fn with_batch_writes(mut self, batch_writes: bool) -> Self {
        self.batch_writes = batch_writes;
        self
    }

    pub fn with_poison_policy(mut self, poison: PoisonPolicy) -> Self {
        self.poison = poison;
        self
    }
}

/// A source of verified, consecutive blocks.
#[async_trait::async_trait]
pub trait BlockSource: Send {
    /// The next block; `Ok(None)` once cancelled.
    async fn next_block(&mut self) -> Result<Option<ParsedBlock>, StreamError>;
}

#[async_trait::async_trait]
impl BlockSource for BlockStream {
    async fn next_block(&mut self) -> Result<Option<ParsedBlock>, StreamError> {
        self.next().await
    }
}

/// Opens a block source at a position (the projector reopens it after failures).
pub trait BlockSourceFactory: Send + Sync {
    /// Blocks from `start` on; the first one's previous hash must be `previous_hash`
    /// when given.
    fn open(
        &self,
        channel: &str,
        start: u64,
        previous_hash: Option<Vec<u8>>,
        cancel: CancellationToken,
    ) -> Box<dyn BlockSource>;

    /// The channel's ledger height as the peer reports it now, if this source can ask
    /// (the default cannot: the lag then rests on the blocks the stream delivers).
    fn ledger_height<'a>(
        &'a self,
        _channel: &'a str,
    ) -> Pin<Box<dyn Future<Output = Option<u64>> + Send + 'a>> {
        Box::pin(async { None })
    }
}

/// The peer's Deliver service as a [`BlockSourceFactory`] ([`BlockStream`]).
#[derive(Clone)]
pub struct DeliverSource {
    pub connector: Arc<PeerConnector>,
    pub signer: SigningIdentity,
    pub backoff: Backoff,
}

impl std::fmt::Debug for DeliverSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeliverSource").finish_non_exhaustive()
    }
}

impl BlockSourceFactory for DeliverSource {
    fn open(
        &self,
        channel: &str,
        start: u64,
        previous_hash: Option<Vec<u8>>,
        cancel: CancellationToken,
    ) -> Box<dyn BlockSource> {
        let mut config = BlockStreamConfig::new(channel, start);
        config.previous_hash = previous_hash;
        config.backoff = self.backoff;
        Box::new(BlockStream::new(
            self.connector.clone(),
            self.signer.clone(),
            config,
            cancel,
        ))
    }

    fn ledger_height<'a>(
        &'a self,
        channel: &'a str,
    ) -> Pin<Box<dyn Future<Output = Option<u64>> + Send + 'a>> {
        Box::pin(async move {
            let probe = gxd_fabric::stream::ledger_height(&self.connector, &self.signer, channel);
            match tokio::time::timeout(Duration::from_secs(5), probe).await {
                Ok(Ok(h)) => Some(h),
                Ok(Err(e)) => {
                    tracing::debug!(channel, error = %e, "ledger height probe failed");
                    None
                }
                Err(_) => None,
            }
        })
    }
}

/// A block source read ahead by a task of its own ([`ProjectorConfig::prefetch_blocks`]):
/// the stream's decoding and checks, and the peer's sending (HTTP/2 flow control lets it
/// send only as fast as the stream is read), overlap the projector's PostgreSQL work. The
/// task owns the source; it stops when the source ends or fails (the error is the last
/// item), or when this is dropped (with the source's cancellation, which the projector
/// triggers whenever it leaves the stream).
struct Prefetch {
    blocks: tokio::sync::mpsc::Receiver<Result<ParsedBlock, StreamError>>,
}

impl Prefetch {
    fn spawn(mut source: Box<dyn BlockSource>, depth: usize) -> Self {
        let (tx, blocks) = tokio::sync::mpsc::channel(depth.max(1));
        tokio::spawn(async move {
            loop {
                let item = match source.next_block().await {
                    Ok(Some(block)) => Ok(block),
                    Ok(None) => return,
                    Err(e) => Err(e),
                };
                let last = item.is_err();
                if tx.send(item).await.is_err() || last {
                    return;
                }
            }
        });
        Prefetch { blocks }
    }

    /// The next block; `Ok(None)` once the source ended (cancelled).
    async fn next_block(&mut self) -> Result<Option<ParsedBlock>, StreamError> {
        self.blocks.recv().await.transpose()
    }

    /// The next block if one is ready, without waiting.
    fn try_next(&mut self) -> Option<Result<Option<ParsedBlock>, StreamError>> {
        match self.blocks.try_recv() {
            Ok(item) => Some(item.map(Some)),
            Err(tokio::sync::mpsc::error::TryRecvError::Empty) => None,
            Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => Some(Ok(None)),
        }
    }
}

/// Where the projector is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProjectorState {
    /// Not started yet.
    Starting,
    /// Bringing the checkpoint log in line with PostgreSQL's position.
    Reconciling,
    /// Following the ledger.
    Running,
    /// A transient failure; retrying after a wait.
    Retrying { reason: String },
    /// Stopped for good (a poison transaction under `Halt`, a position conflict, a broken
    /// chain); `run` returned the error.
    Halted { reason: String },
    /// Shut down.
    Stopped,
}

/// A transaction of the last projected block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectedTx {
    /// Empty for an undecodable transaction.
    pub tx_id: String,
    pub validation_code: i32,
    pub outcome: TxOutcome,
}

/// The last projected block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectedBlock {
    pub number: u64,
    pub header_hash: Vec<u8>,
    /// The latest transaction timestamp in the block (None if it has none).
    pub block_time: Option<DateTime<Utc>>,
    pub transactions: Vec<ProjectedTx>,
}

/// What the projector reports (see [`Projector::status`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectorStatus {
    pub state: ProjectorState,
    /// Last block applied to the read models (PostgreSQL's position).
    pub height: Option<u64>,
    /// Last block in the checkpoint log (equal to `height` once reconciled).
    pub checkpoint_height: Option<u64>,
    /// The last block projected by this run, if any.
    pub last_block: Option<ProjectedBlock>,
    /// When this run last projected a block (wall clock).
    pub last_projected_at: Option<DateTime<Utc>>,
    /// Transactions dead-lettered by this run.
    pub dead_lettered: u64,
    /// The ledger's height as last known (blocks 0..height exist): the stream's latest
    /// block + 1, or the peer's answer to the height probe, whichever is higher.
    pub ledger_height: Option<u64>,
    /// Blocks on the ledger not yet applied: `ledger_height − (height + 1)`.
    pub lag_blocks: Option<u64>,
    /// Since when the projector has known of a block it has not applied yet (the oldest
    /// committed-but-unprojected block, as observed); `None` when caught up. See the
    /// module docs, "Lag".
    pub behind_since: Option<DateTime<Utc>>,
}

impl ProjectorStatus {
    /// How long the projector has been behind the ledger at `now` (zero when caught up).
    pub fn lag(&self, now: DateTime<Utc>) -> Duration {
        self.behind_since
            .and_then(|t| (now - t).to_std().ok())
            .unwrap_or(Duration::ZERO)
    }

    /// [`ProjectorStatus::lag`] now.
    pub fn lag_now(&self) -> Duration {
        self.lag(Utc::now())
    }

    /// The readiness input (`/readyz` check `projector_lag`): why the projector counts as
    /// behind the ledger at `now` — lag above `max_lag` — or `None`.
    pub fn lag_problem(&self, max_lag: Duration, now: DateTime<Utc>) -> Option<String> {
        let lag = self.lag(now);
        if lag <= max_lag {
            return None;
        }
        Some(format!(
            "behind the ledger: {} block(s) not projected (projected block {}, ledger height \
             {}) for {:.1} s, more than max_lag_seconds = {}",
            self.lag_blocks.unwrap_or(0),
            self.height
                .map_or_else(|| "none".to_owned(), |h| h.to_string()),
            self.ledger_height
                .map_or_else(|| "unknown".to_owned(), |h| h.to_string()),
            lag.as_secs_f64(),
            max_lag.as_secs()
        ))
    }
}

/// A wall-clock time as the projector's status carries it.
pub type Timestamp = DateTime<Utc>;

/// The wall clock, as the projector reads it.
pub fn now() -> Timestamp {
    Utc::now()
}

/// What the projector knows of the ledger's height over time, for the lag.
#[derive(Debug, Default)]
struct LagTracker {
    /// (height, when first known), heights increasing: each says "blocks below `height`
    /// existed at that time". Entries wholly projected are dropped.
    seen: VecDeque<(u64, DateTime<Utc>)>,
    max_height: Option<u64>,
}

/// Height observations kept (a stalled projector adds one per probe).
const MAX_HEIGHT_OBSERVATIONS: usize = 4096;

impl LagTracker {
    fn observe(&mut self, height: u64, at: DateTime<Utc>) {
        if self.max_height.is_some_and(|m| height <= m) {
            return;
        }
        self.max_height = Some(height);
        if self.seen.len() < MAX_HEIGHT_OBSERVATIONS {
            self.seen.push_back((height, at));
        } else if let Some(last) = self.seen.back_mut() {
            // Full: the newest entry stands for the higher height (its time is earlier
            // than the truth, so the lag is overstated rather than hidden).
            last.0 = height;
        }
    }

    /// Publishes the lag for projected block `projected` into `s`.
    fn publish(&mut self, projected: Option<u64>, s: &mut ProjectorStatus) {
        let next = projected.map_or(0, |h| h.saturating_add(1));
        while self.seen.front().is_some_and(|(h, _)| *h <= next) {
            self.seen.pop_front();
        }
        s.ledger_height = self.max_height;
        s.lag_blocks = self.max_height.map(|h| h.saturating_sub(next));
        s.behind_since = self.seen.front().map(|(_, t)| *t);
    }
}

/// Why the projector stopped.
#[derive(Debug, thiserror::Error)]
pub enum ProjectorError {
    #[error(
        "poison transaction at block {block}, index {tx_index} (tx {tx_id:?}, event {event:?}): \
         {reason}; the projector halts before the block (policy Halt)"
    )]
    Poison {
        block: u64,
        tx_index: u32,
        tx_id: String,
        event: String,
        reason: String,
    },
    #[error(transparent)]
    PositionConflict(ProjectionError),
    #[error("block stream: {0}")]
    Stream(#[from] StreamError),
    #[error("checkpoint log: {0}")]
    Checkpoint(#[from] StorageError),
    #[error("checkpoint log and read models disagree: {0}")]
    Inconsistent(String),
}

enum Failure {
    Transient(String),
    Fatal(ProjectorError),
}

impl From<ProjectionError> for Failure {
    fn from(e: ProjectionError) -> Self {
        match e {
            ProjectionError::PositionConflict { .. } => {
                Failure::Fatal(ProjectorError::PositionConflict(e))
            }
            other => Failure::Transient(other.to_string()),
        }
    }
}

impl From<StorageError> for Failure {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::CheckpointRefused { .. } => {
                Failure::Fatal(ProjectorError::Inconsistent(e.to_string()))
            }
            StorageError::Unavailable { .. } => Failure::Transient(e.to_string()),
            other => Failure::Fatal(ProjectorError::Checkpoint(other)),
        }
    }
}

impl From<StreamError> for Failure {
    fn from(e: StreamError) -> Self {
        match e {
            StreamError::GaveUp { .. } => Failure::Transient(e.to_string()),
            other => Failure::Fatal(ProjectorError::Stream(other)),
        }
    }
}

/// The block projector of one channel.
pub struct Projector {
    config: ProjectorConfig,
    pool: Pool,
    log: CheckpointLog,
    handler: Arc<dyn ProjectionHandler>,
    source: Arc<dyn BlockSourceFactory>,
    status: Arc<watch::Sender<ProjectorStatus>>,
    lag: Arc<Mutex<LagTracker>>,
    outbox: Option<Outbox>,
    on_applied: Option<Arc<dyn Fn(u64) + Send + Sync>>,
}

impl std::fmt::Debug for Projector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Projector")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn to_datetime(t: SystemTime) -> Option<DateTime<Utc>> {
    Some(DateTime::<Utc>::from(t))
}

impl Projector {
    pub fn new(
        config: ProjectorConfig,
        pool: Pool,
        checkpoint_log: CheckpointLog,
        handler: Arc<dyn ProjectionHandler>,
        source: Arc<dyn BlockSourceFactory>,
    ) -> Self {
        let (status, _) = watch::channel(ProjectorStatus {
            state: ProjectorState::Starting,
            height: None,
            checkpoint_height: None,
            last_block: None,
            last_projected_at: None,
            dead_lettered: 0,
            ledger_height: None,
            lag_blocks: None,
            behind_since: None,
        });
        Projector {
            config,
            pool,
            log: checkpoint_log,
            handler,
            source,
            status: Arc::new(status),
            lag: Arc::new(Mutex::new(LagTracker::default())),
            outbox: None,
            on_applied: None,
        }
    }

    /// Calls `hook(block)` right after each block's PostgreSQL commit, before its
    /// checkpoint append (which marks its commands PROJECTED): a read cache of the read
    /// models invalidates there, so a client that saw its command PROJECTED never reads a
    /// row cached before the block. It must not block.
    pub fn with_on_applied(mut self, hook: Arc<dyn Fn(u64) + Send + Sync>) -> Self {
        self.on_applied = Some(hook);
        self
    }

    /// Records command statuses in `outbox` (module docs): each block's checkpoint append
    /// moves its commands to PROJECTED in the same batch. `outbox` must be on the same
    /// database as the checkpoint log (the daemon's one RocksDB).
    pub fn with_outbox(mut self, outbox: Outbox) -> Self {
        self.outbox = Some(outbox);
        self
    }

    /// The projector's status, updated as it goes (also after `run` returned).
    pub fn status(&self) -> watch::Receiver<ProjectorStatus> {
        self.status.subscribe()
    }

    fn set_state(&self, state: ProjectorState) {
        self.status.send_modify(|s| s.state = state);
    }

    /// Notes a ledger height learned now and republishes the lag.
    fn observe_height(&self, height: u64) {
        observe(&self.lag, &self.status, height);
    }

    /// Projects until `shutdown` is cancelled (`Ok`) or a fatal error (`Err`, also in the
    /// status as `Halted`). Transient failures are retried by themselves. The ledger-height
    /// probe runs as long as this does: while the projector retries or waits on a stalled
    /// stream the lag keeps being measured; a halted or stopped projector is not ready
    /// anyway (and leaves the peer alone).
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), ProjectorError> {
        let probe_stop = shutdown.child_token();
        let _stop_probe = probe_stop.clone().drop_guard();
        tokio::spawn(probe_heights(
            self.source.clone(),
            self.config.channel.clone(),
            self.config.height_probe_interval,
            self.lag.clone(),
            self.status.clone(),
            probe_stop,
        ));
        let mut attempt: u32 = 0;
        loop {
            match self.run_once(&shutdown, &mut attempt).await {
                Ok(()) => {
                    self.set_state(ProjectorState::Stopped);
                    return Ok(());
                }
                Err(Failure::Fatal(e)) => {
                    tracing::error!(channel = %self.config.channel, error = %e, "projector halted");
                    self.set_state(ProjectorState::Halted {
                        reason: e.to_string(),
                    });
                    return Err(e);
                }
                Err(Failure::Transient(reason)) => {
                    attempt = attempt.saturating_add(1);
                    let delay = self.config.retry.delay(attempt);
                    tracing::warn!(channel = %self.config.channel, %reason, attempt, ?delay, "projector: transient failure; retrying");
                    self.set_state(ProjectorState::Retrying { reason });
                    tokio::select! {
                        () = shutdown.cancelled() => {
                            self.set_state(ProjectorState::Stopped);
                            return Ok(());
                        }
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    /// Reconciles, then follows the stream; returns on shutdown or failure.
    async fn run_once(
        &self,
        shutdown: &CancellationToken,
        attempt: &mut u32,
    ) -> Result<(), Failure> {
        self.set_state(ProjectorState::Reconciling);
        let channel = self.config.channel.as_str();
        let mut position = projection::position(&self.pool, channel).await?;
        self.status
            .send_modify(|s| s.height = position.as_ref().map(|p| p.block_number));
        let last = self.log.last(channel)?;
        let logged = last.as_ref().map(|l| l.number);
        self.status.send_modify(|s| s.checkpoint_height = logged);
        // Blocks up to `log_only_until` are already in PostgreSQL: only the log needs them.
        let (start, previous_hash, log_only_until) = match (&position, last) {
            (None, None) => (0, None, None),
            (None, Some(_)) => {
                let n = self.log.reset(channel).await?;
                self.status.send_modify(|s| s.checkpoint_height = None);
                tracing::warn!(
                    channel,
                    removed = n,
                    "checkpoint log ahead of the read models (no position): reset"
                );
                (0, None, None)
            }
            (Some(p), Some(l)) if l.number >= p.block_number => {
                let at = self.log.get(channel, p.block_number)?.ok_or_else(|| {
                    Failure::Fatal(ProjectorError::Inconsistent(format!(
                        "block {} missing from the checkpoint log",
                        p.block_number
                    )))
                })?;
                if at.header_hash != p.block_hash {
                    return Err(Failure::Fatal(ProjectorError::Inconsistent(format!(
                        "block {}: read models have hash {}, checkpoint log {}",
                        p.block_number,
                        hex::encode(&p.block_hash),
                        hex::encode(&at.header_hash)
                    ))));
                }
                if l.number > p.block_number {
                    let n = self.log.truncate_after(channel, p.block_number).await?;
                    self.status
                        .send_modify(|s| s.checkpoint_height = Some(p.block_number));
                    tracing::warn!(
                        channel,
                        position = p.block_number,
                        removed = n,
                        "checkpoint log ahead of the read models: truncated"
                    );
                }
                (p.block_number + 1, Some(p.block_hash.clone()), None)
            }
            (Some(p), l) => {
                tracing::warn!(channel, position = p.block_number, log = ?l.as_ref().map(|l| l.number), "checkpoint log behind the read models: appending the missing blocks");
                let start = l.as_ref().map_or(0, |l| l.number + 1);
                (start, l.map(|l| l.header_hash), Some(p.block_number))
            }
        };
        let cancel = shutdown.child_token();
        let _stop_source = cancel.clone().drop_guard();
        let source = self
            .source
            .open(channel, start, previous_hash, cancel.clone());
        let mut source = Prefetch::spawn(source, self.config.prefetch_blocks);
        if log_only_until.is_none() {
            self.set_state(ProjectorState::Running);
        }
        // A block applied to PostgreSQL whose checkpoint append (and status) is still to
        // do: it runs beside the next block's PostgreSQL transaction (module docs,
        // "Pipelining"), or at once when no next block is ready.
        let mut pending: Option<(ParsedBlock, ProjectedBlock)> = None;
        loop {
            let next = match pending.take() {
                None => source.next_block().await?,
                Some(prev) => match source.try_next() {
                    Some(Ok(next)) => {
                        pending = Some(prev);
                        next
                    }
                    Some(Err(e)) => {
                        self.finish(prev).await?;
                        return Err(e.into());
                    }
                    None => {
                        self.finish(prev).await?;
                        continue;
                    }
                },
            };
            let Some(block) = next else {
                if let Some(prev) = pending.take() {
                    self.finish(prev).await?;
                }
                return Ok(());
            };
            self.observe_height(block.number.saturating_add(1));
            if let Some(until) = log_only_until
                && block.number <= until
            {
                if block.number == until
                    && position
                        .as_ref()
                        .is_some_and(|p| p.block_hash != block.header_hash)
                {
                    return Err(Failure::Fatal(ProjectorError::Inconsistent(format!(
                        "block {until} on the ledger differs from the read models' position"
                    ))));
                }
                self.append(&block).await?;
                self.status
                    .send_modify(|s| s.checkpoint_height = Some(block.number));
                if block.number == until {
                    self.set_state(ProjectorState::Running);
                }
                continue;
            }
            let applied = match pending.take() {
                None => self.apply_block(&block, position.as_ref()).await,
                Some(prev) => {
                    let (applied, finished) = tokio::join!(
                        self.apply_block(&block, position.as_ref()),
                        self.finish(prev)
                    );
                    // A failed append leaves the log behind PostgreSQL (which may now have
                    // this block too): the reconciliation appends what is missing.
                    finished?;
                    applied
                }
            };
            let projected = applied?;
            if let Some(hook) = &self.on_applied {
                hook(block.number);
            }
            crate::kill_point!(crate::failpoints::PROJECTOR_AFTER_PG_COMMIT);
            position = Some(Position {
                block_number: block.number,
                block_hash: block.header_hash.to_vec(),
            });
            *attempt = 0;
            pending = Some((block, projected));
        }
    }

    /// A block applied to PostgreSQL: its checkpoint append (which marks its commands
    /// PROJECTED), then its status.
    async fn finish(
        &self,
        (block, projected): (ParsedBlock, ProjectedBlock),
    ) -> Result<(), Failure> {
        self.append(&block).await?;
        let lag = self.lag.clone();
        self.status.send_modify(|s| {
            if let Ok(mut lag) = lag.lock() {
                lag.publish(Some(block.number), s);
            }
            s.state = ProjectorState::Running;
            s.height = Some(block.number);
            s.checkpoint_height = Some(block.number);
            s.dead_lettered += projected
                .transactions
                .iter()
                .filter(|t| t.outcome == TxOutcome::DeadLettered)
                .count() as u64;
            s.last_block = Some(projected);
            s.last_projected_at = Some(Utc::now());
        });
        Ok(())
    }

    async fn append(&self, block: &ParsedBlock) -> Result<(), Failure> {
        let checkpoint = NewCheckpoint {
            number: block.number,
            header_hash: block.header_hash.to_vec(),
            previous_hash: block.previous_hash.clone(),
            tx_count: block.transactions.len() as u64,
        };
        let Some(outbox) = &self.outbox else {
            self.log.append(&self.config.channel, checkpoint).await?;
            return Ok(());
        };
        let valid = block
            .transactions
            .iter()
            .filter(|t| t.is_valid() && !t.tx_id.is_empty() && t.tx_id.len() <= 256)
            .map(|t| LedgerCommit {
                txid: t.tx_id.clone(),
                block_number: block.number,
                tx_index: u32::try_from(t.index).ok(),
                result: t
                    .response
                    .as_ref()
                    .map(|r| ChaincodeResult::new(Some(r.status), &r.payload)),
            })
            .collect();
        let out = outbox
            .record_projected_block(&self.config.channel, checkpoint, valid)
            .await?;
        if !out.changed.is_empty() {
            tracing::debug!(
                block = block.number,
                commands = out.changed.len(),
                "commands projected"
            );
        }
        Ok(())
    }

    fn context(&self, block: &ParsedBlock, tx: &BlockTransaction) -> Result<TxContext, Failure> {
        let tx_index = u32::try_from(tx.index).map_err(|_| {
            Failure::Fatal(ProjectorError::Inconsistent(format!(
                "block {}: transaction index {} out of range",
                block.number, tx.index
            )))
        })?;
        Ok(TxContext {
            channel: self.config.channel.clone(),
            block_number: block.number,
            tx_index,
            tx_id: tx.tx_id.clone(),
            // Deterministic when absent (a rebuild must give the same rows).
            timestamp: tx
                .system_time()
                .and_then(to_datetime)
                .unwrap_or(DateTime::<Utc>::UNIX_EPOCH),
            creator_msp_id: tx.creator_msp_id.clone(),
            validation_code: tx.validation_code,
        })
    }

    /// One block, one PostgreSQL transaction: batched first (when configured), and if
    /// the batch fails on the data, again one transaction at a time.
    async fn apply_block(
        &self,
        block: &ParsedBlock,
        previous: Option<&Position>,
    ) -> Result<ProjectedBlock, Failure> {
        if self.config.batch_writes {
            match self.apply_block_as(block, previous, true).await? {
                Ok(projected) => return Ok(projected),
                Err(reason) => {
                    tracing::info!(channel = %self.config.channel, block = block.number, %reason, "batched block refused; applying it one transaction at a time");
                }
            }
        }
        match self.apply_block_as(block, previous, false).await? {
            Ok(projected) => Ok(projected),
            Err(reason) => Err(Failure::Transient(reason)),
        }
    }

    /// One attempt at a block; `Ok(Err(reason))`: a batched commit failed on the data
    /// (nothing kept).
    async fn apply_block_as(
        &self,
        block: &ParsedBlock,
        previous: Option<&Position>,
        batched: bool,
    ) -> Result<Result<ProjectedBlock, String>, Failure> {
        let channel = self.config.channel.as_str();
        let mut conn = self
            .pool
            .get()
            .await
            .map_err(|e| Failure::Transient(format!("no PostgreSQL connection: {e}")))?;
        let mut btx = if batched {
            BlockTx::begin_batched(&mut conn, channel, block.number).await?
        } else {
            BlockTx::begin(&mut conn, channel, block.number).await?
        };
        let mut txs = Vec::with_capacity(block.transactions.len());
        let mut block_time: Option<DateTime<Utc>> = None;
        for tx in &block.transactions {
            let ctx = self.context(block, tx)?;
            let has_ts = tx.system_time().is_some();
            if has_ts {
                block_time = Some(block_time.map_or(ctx.timestamp, |t| t.max(ctx.timestamp)));
            }
            let event = tx.event.as_ref().filter(|e| !e.event_name.is_empty());
            let (outcome, name) = match (tx.is_valid(), event) {
                (false, _) => (TxOutcome::Invalid, event.map(|e| e.event_name.as_str())),
                (true, None) => (TxOutcome::Applied, None),
                (true, Some(ev)) => {
                    let event = ChaincodeEvent {
                        chaincode_id: ev.chaincode_id.clone(),
                        name: ev.event_name.clone(),
                        payload: ev.payload.clone(),
                    };
                    let outcome = self.apply_event(&mut btx, &ctx, &event).await?;
                    (outcome, Some(ev.event_name.as_str()))
                }
            };
            btx.record_transaction(&ctx, name, outcome, has_ts)?;
            txs.push(ProjectedTx {
                tx_id: tx.tx_id.clone(),
                validation_code: tx.validation_code,
                outcome,
            });
        }
        let prev = previous.map(|p| (p.block_number, p.block_hash.as_slice()));
        match btx.commit(&block.header_hash, prev).await {
            Err(e) if batched && e.is_data_error() => return Ok(Err(e.to_string())),
            other => other?,
        }
        Ok(Ok(ProjectedBlock {
            number: block.number,
            header_hash: block.header_hash.to_vec(),
            block_time,
            transactions: txs,
        }))
    }

    async fn apply_event(
        &self,
        btx: &mut BlockTx<'_>,
        ctx: &TxContext,
        event: &ChaincodeEvent,
    ) -> Result<TxOutcome, Failure> {
        let dead_letter = self.config.poison == PoisonPolicy::DeadLetter;
        if dead_letter {
            btx.savepoint().await?;
        }
        let reason = match self.handler.apply(btx, ctx, event).await {
            Ok(()) => {
                btx.release_savepoint().await?;
                return Ok(TxOutcome::Applied);
            }
            Err(HandlerError::Poison(reason)) => reason,
            Err(HandlerError::Storage(e)) if e.is_data_error() => e.to_string(),
            Err(HandlerError::Storage(e)) => return Err(Failure::Transient(e.to_string())),
        };
        if !dead_letter {
            return Err(Failure::Fatal(ProjectorError::Poison {
                block: ctx.block_number,
                tx_index: ctx.tx_index,
                tx_id: ctx.tx_id.clone(),
                event: event.name.clone(),
                reason,
            }));
        }
        tracing::warn!(channel = %ctx.channel, block = ctx.block_number, tx_index = ctx.tx_index, tx_id = %ctx.tx_id, event = %event.name, %reason, "poison transaction dead-lettered");
        btx.rollback_to_savepoint().await?;
        btx.dead_letter(ctx, Some(&event.name), &reason, Some(&event.payload))
            .await?;
        Ok(TxOutcome::DeadLettered)
    }
}

fn observe(lag: &Mutex<LagTracker>, status: &watch::Sender<ProjectorStatus>, height: u64) {
    let now = Utc::now();
    status.send_if_modified(|s| {
        let Ok(mut lag) = lag.lock() else {
            return false;
        };
        lag.observe(height, now);
        let before = (s.ledger_height, s.lag_blocks, s.behind_since);
        lag.publish(s.height, s);
        before != (s.ledger_height, s.lag_blocks, s.behind_since)
    });
}

/// Asks the source for the ledger height every `interval` until `shutdown`.
async fn probe_heights(
    source: Arc<dyn BlockSourceFactory>,
    channel: String,
    interval: Duration,
    lag: Arc<Mutex<LagTracker>>,
    status: Arc<watch::Sender<ProjectorStatus>>,
    shutdown: CancellationToken,
) {
    loop {
        let height = tokio::select! {
            () = shutdown.cancelled() => return,
            h = source.ledger_height(&channel) => h,
        };
        if let Some(h) = height {
            observe(&lag, &status, h);
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status() -> ProjectorStatus {
        ProjectorStatus {
            state: ProjectorState::Running,
            height: None,
            checkpoint_height: None,
            last_block: None,
            last_projected_at: None,
            dead_lettered: 0,
            ledger_height: None,
            lag_blocks: None,
            behind_since: None,
        }
    }

    #[test]
    fn lag_is_the_age_of_the_oldest_unprojected_block_known() {
        let t0 = DateTime::<Utc>::UNIX_EPOCH + chrono::Duration::seconds(1000);
        let mut lag = LagTracker::default();
        let mut s = status();
        // Caught up: height 5 means blocks 0..=4; block 4 projected.
        lag.observe(5, t0);
        lag.publish(Some(4), &mut s);
        assert_eq!(
            (s.ledger_height, s.lag_blocks, s.behind_since),
            (Some(5), Some(0), None)
        );
        // The ledger moves while we stay: behind since the first sighting.
        lag.observe(7, t0 + chrono::Duration::seconds(1));
        lag.observe(9, t0 + chrono::Duration::seconds(2));
        lag.observe(8, t0 + chrono::Duration::seconds(3)); // lower: ignored
        lag.publish(Some(4), &mut s);
        assert_eq!(s.lag_blocks, Some(4));
        assert_eq!(s.behind_since, Some(t0 + chrono::Duration::seconds(1)));
        assert_eq!(
            s.lag(t0 + chrono::Duration::seconds(6)),
            Duration::from_secs(5)
        );
        // Blocks 5 and 6 applied: what was known at t0+1 is done; t0+2's height 9 is not.
        lag.publish(Some(6), &mut s);
        assert_eq!(s.behind_since, Some(t0 + chrono::Duration::seconds(2)));
        assert_eq!(s.lag_blocks, Some(2));
        // All applied.
        lag.publish(Some(8), &mut s);
        assert_eq!((s.lag_blocks, s.behind_since), (Some(0), None));
        assert_eq!(s.lag(t0 + chrono::Duration::seconds(60)), Duration::ZERO);
    }

    #[test]
    fn lag_tracker_is_bounded() {
        let t0 = DateTime::<Utc>::UNIX_EPOCH;
        let mut lag = LagTracker::default();
        for h in 1..=(MAX_HEIGHT_OBSERVATIONS as u64 + 100) {
            lag.observe(h, t0 + chrono::Duration::seconds(h as i64));
        }
        assert_eq!(lag.seen.len(), MAX_HEIGHT_OBSERVATIONS);
        let mut s = status();
        lag.publish(None, &mut s);
        assert_eq!(s.ledger_height, Some(MAX_HEIGHT_OBSERVATIONS as u64 + 100));
        assert_eq!(s.behind_since, Some(t0 + chrono::Duration::seconds(1)));
    }
}

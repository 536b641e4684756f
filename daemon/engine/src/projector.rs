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
//! Status: a `watch` channel of [`ProjectorStatus`] (state, projected height, the last
//! block's time and transactions), for readiness, metrics and the submitter.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use gxd_fabric::block::{BlockTransaction, ParsedBlock};
use gxd_fabric::identity::SigningIdentity;
use gxd_fabric::stream::{Backoff, BlockStream, BlockStreamConfig, StreamError};
use gxd_fabric::tls::PeerConnector;
use gxd_storage::StorageError;
use gxd_storage::checkpoint::{CheckpointLog, NewCheckpoint};
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
    /// Buffer each block's read-model writes and write them at commit in multi-row
    /// statements ([`BlockTx::begin_batched`]; default). A block whose batch fails with a
    /// data error is applied again one transaction at a time, where the poison policy
    /// sees the offending transaction. Off: always one transaction at a time.
    pub batch_writes: bool,
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
            batch_writes: true,
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
    status: watch::Sender<ProjectorStatus>,
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
        });
        Projector {
            config,
            pool,
            log: checkpoint_log,
            handler,
            source,
            status,
        }
    }

    /// The projector's status, updated as it goes (also after `run` returned).
    pub fn status(&self) -> watch::Receiver<ProjectorStatus> {
        self.status.subscribe()
    }

    fn set_state(&self, state: ProjectorState) {
        self.status.send_modify(|s| s.state = state);
    }

    /// Projects until `shutdown` is cancelled (`Ok`) or a fatal error (`Err`, also in the
    /// status as `Halted`). Transient failures are retried by themselves.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), ProjectorError> {
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
        let mut source = self.source.open(channel, start, previous_hash, cancel);
        if log_only_until.is_none() {
            self.set_state(ProjectorState::Running);
        }
        loop {
            let Some(block) = source.next_block().await? else {
                return Ok(());
            };
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
            let projected = self.apply_block(&block, position.as_ref()).await?;
            self.append(&block).await?;
            position = Some(Position {
                block_number: block.number,
                block_hash: block.header_hash.to_vec(),
            });
            *attempt = 0;
            self.status.send_modify(|s| {
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
        }
    }

    async fn append(&self, block: &ParsedBlock) -> Result<(), Failure> {
        self.log
            .append(
                &self.config.channel,
                NewCheckpoint {
                    number: block.number,
                    header_hash: block.header_hash.to_vec(),
                    previous_hash: block.previous_hash.clone(),
                    tx_count: block.transactions.len() as u64,
                },
            )
            .await?;
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

//! The devnet node: shared state of the peer (ledger, MSPs, identities, height) and the
//! in-process ordering service, which cuts blocks by count, size or timeout and hands each
//! block to the committer (validate, add metadata, write atomically, publish the height,
//! wake the block's CommitStatus waiters).
//!
//! The committer is a pipeline: while block N is written, block N+1 is cut and its
//! transactions checked in parallel ([`pipeline::speculate`]); once N is in the ledger,
//! N+1's duplicates and read conflicts are resolved in order ([`pipeline::resolve`]) by the
//! sequential validation's own rules, its commit hash is chained to N's, it is
//! signed and its write starts.

mod pipeline;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prost::Message;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::blocks::{finish_block, new_block};
use super::faults::Faults;
use super::genesis::{ChannelConfig, genesis_block};
use super::ledger::{BlockCommit, Ledger, LedgerError, TxRecord};
use super::msp::MspManager;
use super::peer::{ChannelInfo, Validator};
use gxd_fabric::block::block_header_hash;
use gxd_fabric::identity::{SignError, SigningIdentity};
use gxd_fabric::proto::common::Block;
use pipeline::Speculated;

/// Block cutting parameters of the ordering service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchConfig {
    /// Cut a block when it holds this many transactions.
    pub max_message_count: usize,
    /// Cut a block when its transactions reach this many bytes.
    pub preferred_max_bytes: usize,
    /// Refuse a single transaction larger than this (REQUEST_ENTITY_TOO_LARGE).
    pub absolute_max_bytes: usize,
    /// Cut a block this long after its first transaction arrived.
    pub timeout: Duration,
}

impl Default for BatchConfig {
    /// Fabric's defaults scaled for a development peer: the fabric-samples test network cuts
    /// at 10 messages or 2 s; the devnet cuts at 100 messages, 2 MiB, or 100 ms, so a single
    /// transaction commits quickly while a loaded devnet still builds full blocks.
    fn default() -> Self {
        Self {
            max_message_count: 100,
            preferred_max_bytes: 2 * 1024 * 1024,
            absolute_max_bytes: 10 * 1024 * 1024,
            timeout: Duration::from_millis(100),
        }
    }
}

/// State shared by the gRPC services and the orderer task.
pub struct Node {
    pub channel: ChannelInfo,
    pub msp: MspManager,
    pub peer_signers: Vec<SigningIdentity>,
    pub orderer_signer: SigningIdentity,
    pub ledger: Ledger,
    pub endorsing_orgs: Vec<String>,
    /// `host:port` this peer reports in gateway error details.
    pub peer_address: String,
    pub batch: BatchConfig,
    pub faults: Faults,
    pub shutdown: CancellationToken,
    height_tx: watch::Sender<u64>,
    submit_tx: mpsc::Sender<Vec<u8>>,
    waiters: Waiters,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("channel", &self.channel)
            .finish_non_exhaustive()
    }
}

/// What the orderer task needs to start.
pub struct OrdererParts {
    submit_rx: mpsc::Receiver<Vec<u8>>,
    tip: Tip,
}

/// The committer's view of the chain's end.
#[derive(Debug, Clone)]
struct Tip {
    height: u64,
    last_header_hash: Vec<u8>,
    /// The last block's COMMIT_HASH value (empty before block 1).
    commit_hash: Vec<u8>,
}

/// Errors starting or running the node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("stored block {0} cannot be decoded")]
    CorruptBlock(u64),
    #[error("the ledger holds channel {ledger}, not the configured channel {configured}")]
    ChannelMismatch { ledger: String, configured: String },
    #[error("committer task failed: {0}")]
    Committer(String),
    #[error("orderer: {0}")]
    Sign(#[from] SignError),
}

impl Node {
    /// Builds the node; writes the genesis block if the ledger is empty.
    #[allow(clippy::too_many_arguments)]
    pub fn open(
        channel: ChannelInfo,
        msp: MspManager,
        peer_signers: Vec<SigningIdentity>,
        orderer_signer: SigningIdentity,
        ledger: Ledger,
        genesis: &ChannelConfig,
        peer_address: String,
        batch: BatchConfig,
        faults: Faults,
        shutdown: CancellationToken,
    ) -> Result<(Arc<Self>, OrdererParts), NodeError> {
        let mut tip = Tip {
            height: ledger.height()?,
            last_header_hash: Vec::new(),
            commit_hash: Vec::new(),
        };
        if tip.height == 0 {
            let mut block = genesis_block(genesis, &orderer_signer)?;
            let filter = vec![gxd_fabric::proto::protos::TxValidationCode::Valid as u8];
            finish_block(&mut block, &orderer_signer, filter)?;
            let tx_id = super::blocks::summarize(&block)
                .first()
                .map(|t| t.tx_id.clone())
                .unwrap_or_default();
            ledger.commit(&BlockCommit {
                number: 0,
                block_bytes: block.encode_to_vec(),
                txs: vec![(
                    tx_id,
                    TxRecord {
                        block: 0,
                        index: 0,
                        code: 0,
                    },
                )],
                writes: Vec::new(),
            })?;
            tracing::info!(channel = %channel.channel_id, "genesis block written");
            tip.height = 1;
        }
        let genesis_channel = ledger
            .block(0)?
            .and_then(|b| Block::decode(b.as_slice()).ok())
            .and_then(|b| b.data.and_then(|d| d.data.into_iter().next()))
            .and_then(|env| super::blocks::envelope_channel_header(&env))
            .map(|(_, chdr)| chdr.channel_id);
        if let Some(genesis_channel) = genesis_channel
            && genesis_channel != channel.channel_id
        {
            return Err(NodeError::ChannelMismatch {
                ledger: genesis_channel,
                configured: channel.channel_id,
            });
        }
        let last = tip.height - 1;
        let bytes = ledger.block(last)?.ok_or(NodeError::CorruptBlock(last))?;
        let block = Block::decode(bytes.as_slice()).map_err(|_| NodeError::CorruptBlock(last))?;
        tip.commit_hash = super::blocks::commit_hash_of(&block);
        let header = block.header.ok_or(NodeError::CorruptBlock(last))?;
        tip.last_header_hash = block_header_hash(&header).to_vec();
        let endorsing_orgs = msp
            .msp_ids()
            .filter(|id| *id != super::crypto::ORDERER_ORG.msp_id)
            .map(str::to_owned)
            .collect();
        let (height_tx, _) = watch::channel(tip.height);
        let (submit_tx, submit_rx) = mpsc::channel(batch.max_message_count.max(1) * 4);
        let node = Arc::new(Self {
            channel,
            msp,
            peer_signers,
            orderer_signer,
            ledger,
            endorsing_orgs,
            peer_address,
            batch,
            faults,
            shutdown,
            height_tx,
            submit_tx,
            waiters: Waiters::default(),
        });
        Ok((node, OrdererParts { submit_rx, tip }))
    }

    /// Number of committed blocks.
    pub fn height(&self) -> u64 {
        *self.height_tx.borrow()
    }

    /// A receiver notified after each block commit.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.height_tx.subscribe()
    }

    /// Hands an envelope to the ordering service. `Err` when it has stopped.
    pub async fn order(&self, envelope: Vec<u8>) -> Result<(), ()> {
        self.submit_tx.send(envelope).await.map_err(|_| ())
    }

    /// Waits until block `number` is committed. `false` on shutdown.
    pub async fn wait_for_block(&self, number: u64) -> bool {
        let mut rx = self.subscribe();
        loop {
            if *rx.borrow_and_update() > number {
                return true;
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return false,
                changed = rx.changed() => if changed.is_err() { return false },
            }
        }
    }

    /// Waits until `tx_id` is committed and returns its record (`None` on shutdown). The
    /// waiter is registered before the ledger is read, and the committer notifies after its
    /// write, so a commit is never missed; each commit wakes only its own transactions' waiters.
    pub async fn wait_for_tx(&self, tx_id: &str) -> Result<Option<TxRecord>, LedgerError> {
        let (tx, rx) = oneshot::channel();
        let _guard = self.waiters.register(tx_id, tx);
        // Declared after the guard, so dropped before it: the guard then sees it closed.
        let mut rx = rx;
        if let Some(rec) = self.ledger.tx(tx_id)? {
            return Ok(Some(rec));
        }
        tokio::select! {
            _ = self.shutdown.cancelled() => Ok(None),
            rec = &mut rx => Ok(rec.ok()),
        }
    }

    /// Reads and decodes committed block `number`.
    pub fn read_block(&self, number: u64) -> Result<Option<Block>, NodeError> {
        match self.ledger.block(number)? {
            None => Ok(None),
            Some(bytes) => Block::decode(bytes.as_slice())
                .map(Some)
                .map_err(|_| NodeError::CorruptBlock(number)),
        }
    }

    fn validator(&self) -> Validator<'_> {
        Validator {
            channel: &self.channel,
            msp: &self.msp,
            ledger: &self.ledger,
            endorsing_orgs: &self.endorsing_orgs,
        }
    }

    /// Validates block `number`'s envelopes and signs the block (nothing is written yet).
    /// `previous` is the block being written concurrently, if any: its transactions are
    /// treated as committed (see [`pipeline`]).
    fn build_block(
        &self,
        tip: &mut Tip,
        envelopes: Vec<Vec<u8>>,
        speculated: Vec<Speculated>,
        previous: Option<&Written>,
    ) -> Result<Built, NodeError> {
        let number = tip.height;
        let (filter, index, writes) =
            pipeline::resolve(&self.validator(), number, speculated, previous)?;
        // kvLedger.CommitLegacy: the commit hash chain starts at block 1 (after the genesis
        // block) and goes on while the previous block had one. The previous block's hash is
        // the tip's, set when that block was built (it may still be being written).
        let commit_hash = (number == 1 || !tip.commit_hash.is_empty()).then(|| {
            let updates = super::blocks::update_batch_bytes(&writes);
            super::blocks::commit_hash(&filter, &updates, &tip.commit_hash)
        });
        let mut block = new_block(number, tip.last_header_hash.clone(), envelopes);
        finish_block(&mut block, &self.orderer_signer, filter)?;
        if let Some(hash) = &commit_hash {
            super::blocks::set_commit_hash(&mut block, hash);
        }
        let header_hash = block
            .header
            .as_ref()
            .map(|h| block_header_hash(h).to_vec())
            .unwrap_or_default();
        tip.height = number + 1;
        tip.last_header_hash = header_hash;
        if let Some(hash) = commit_hash {
            tip.commit_hash = hash;
        }
        Ok(Built {
            commit: BlockCommit {
                number,
                block_bytes: block.encode_to_vec(),
                txs: index,
                writes,
            },
        })
    }

    /// Writes a built block, publishes the height and wakes the waiters of its transactions.
    fn write_block(&self, built: Built) -> Result<Written, NodeError> {
        let commit = built.commit;
        self.ledger.commit(&commit)?;
        self.height_tx.send_replace(commit.number + 1);
        self.waiters.notify(&commit.txs);
        tracing::debug!(
            block = commit.number,
            txs = commit.txs.len(),
            "block committed"
        );
        Ok(Written::of(&commit))
    }
}

/// A validated, signed block ready to be written.
struct Built {
    commit: BlockCommit,
}

/// What the next block's validation needs of a block written concurrently with it.
#[derive(Debug, Default)]
pub(crate) struct Written {
    pub(crate) tx_ids: HashSet<String>,
    pub(crate) keys: HashSet<(String, String)>,
}

impl Written {
    fn of(commit: &BlockCommit) -> Self {
        Self {
            tx_ids: commit.txs.iter().map(|(id, _)| id.clone()).collect(),
            keys: commit
                .writes
                .iter()
                .map(|w| (w.namespace.clone(), w.key.clone()))
                .collect(),
        }
    }
}

/// CommitStatus waiters by transaction id.
#[derive(Default)]
struct Waiters {
    map: Mutex<HashMap<String, Vec<oneshot::Sender<TxRecord>>>>,
}

/// Removes a waiter's closed registration when its request ends.
struct WaiterGuard<'a> {
    waiters: &'a Waiters,
    tx_id: String,
}

impl Waiters {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<oneshot::Sender<TxRecord>>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn register(&self, tx_id: &str, tx: oneshot::Sender<TxRecord>) -> WaiterGuard<'_> {
        self.lock().entry(tx_id.to_owned()).or_default().push(tx);
        WaiterGuard {
            waiters: self,
            tx_id: tx_id.to_owned(),
        }
    }

    fn notify(&self, txs: &[(String, TxRecord)]) {
        let mut map = self.lock();
        if map.is_empty() {
            return;
        }
        for (tx_id, rec) in txs {
            if let Some(senders) = map.remove(tx_id) {
                for s in senders {
                    let _ = s.send(*rec);
                }
            }
        }
    }
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        let mut map = self.waiters.lock();
        if let Some(senders) = map.get_mut(&self.tx_id) {
            senders.retain(|s| !s.is_closed());
            if senders.is_empty() {
                map.remove(&self.tx_id);
            }
        }
    }
}

/// The ordering service: batches envelopes into blocks and commits them, until shutdown;
/// on shutdown the pending batch is still committed (an acknowledged Submit is never lost).
/// The write of one block overlaps with cutting and validating the next.
pub async fn run_orderer(node: Arc<Node>, parts: OrdererParts) -> Result<(), NodeError> {
    let OrdererParts {
        mut submit_rx,
        mut tip,
    } = parts;
    let batch = node.batch;
    let mut writing: Option<JoinHandle<Result<Written, NodeError>>> = None;
    loop {
        let first = tokio::select! {
            _ = node.shutdown.cancelled() => None,
            env = submit_rx.recv() => env,
        };
        let Some(first) = first else {
            // Drain whatever was acknowledged before shutdown.
            let mut rest = Vec::new();
            while let Ok(env) = submit_rx.try_recv() {
                rest.push(env);
            }
            if !rest.is_empty() {
                commit(&node, tip, rest, &mut writing).await?;
            }
            if let Some(w) = writing.take() {
                joined(w.await)?;
            }
            return Ok(());
        };
        let mut bytes = first.len();
        let mut pending = vec![first];
        let deadline = tokio::time::Instant::now() + batch.timeout;
        while pending.len() < batch.max_message_count && bytes < batch.preferred_max_bytes {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                _ = node.shutdown.cancelled() => break,
                env = submit_rx.recv() => match env {
                    Some(env) => {
                        bytes += env.len();
                        pending.push(env);
                    }
                    None => break,
                },
            }
        }
        tip = commit(&node, tip, pending, &mut writing).await?;
    }
}

fn joined<T>(r: Result<Result<T, NodeError>, tokio::task::JoinError>) -> Result<T, NodeError> {
    match r {
        Ok(result) => result,
        Err(e) => Err(NodeError::Committer(e.to_string())),
    }
}

/// Validates the block after `tip` (in parallel, while the previous block is still being
/// written), then, once that write is done, resolves, signs it and starts its write.
async fn commit(
    node: &Arc<Node>,
    tip: Tip,
    envelopes: Vec<Vec<u8>>,
    writing: &mut Option<JoinHandle<Result<Written, NodeError>>>,
) -> Result<Tip, NodeError> {
    let n = Arc::clone(node);
    let (envelopes, speculated) = joined(
        tokio::task::spawn_blocking(move || {
            let speculated: Vec<Speculated> = pipeline::speculate(&n.validator(), &envelopes)?;
            Ok((envelopes, speculated))
        })
        .await,
    )?;
    let previous = match writing.take() {
        Some(w) => Some(joined(w.await)?),
        None => None,
    };
    let n = Arc::clone(node);
    let (tip, built) = joined(
        tokio::task::spawn_blocking(move || {
            let mut tip = tip;
            let built = n.build_block(&mut tip, envelopes, speculated, previous.as_ref())?;
            Ok((tip, built))
        })
        .await,
    )?;
    let n = Arc::clone(node);
    *writing = Some(tokio::task::spawn_blocking(move || n.write_block(built)));
    Ok(tip)
}

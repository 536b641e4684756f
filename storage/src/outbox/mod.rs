//! The crash-safe RocksDB command outbox.
//!
//! A command accepted by [`Outbox::enqueue`] is on disk (WAL fsync'd, group-committed with
//! the other enqueues of the same moment) before `enqueue` returns; the submitter then moves
//! it through the state machine below until it is committed on the ledger or dead-lettered.
//! The engine knows nothing of GX: the command type is an opaque string, the payload opaque
//! bytes.
//!
//! # State machine
//! ```text
//!             enqueue
//!                │
//!                ▼         mark_prepared          mark_submitted
//!   ┌──────▶ PENDING ──────────────────▶ PREPARED ──────────────▶ SUBMITTED
//!   │            │  ▲ schedule_retry        │  │                    │  │
//!   │            │  └───────────────────────┘  │ mark_committed      │  │ mark_committed
//!   │            │  └─────────────────────────────────────────────────┘  │
//!   │            │                             ▼                         ▼
//!   │ requeue    │ mark_failed             COMMITTED ◀───────────────────┘
//!   │            ▼                             │ record_projected_block
//!   └─────── FAILED ◀── mark_failed            ▼
//!            (from PENDING, PREPARED      PROJECTED
//!             or SUBMITTED)
//! ```
//! - **Late commits** ([`Outbox::record_ledger_commit`], [`Outbox::mark_committed_tx`],
//!   [`Outbox::record_projected_block`]): a VALID transaction of *any* attempt of a command
//!   — found through the tx index below — is recorded on the command whatever its state:
//!   PENDING (a retry waiting), PREPARED/SUBMITTED (a later attempt in flight, whose tx id
//!   goes to the history as `SUPERSEDED`) and FAILED all become COMMITTED (or PROJECTED)
//!   with that tx id and block. The ledger is the truth. A command that is COMMITTED leaves
//!   its partition queues and the due index in the same batch, and `mark_prepared` refuses
//!   it, so a retry that was not yet prepared is never submitted. A COMMITTED or PROJECTED
//!   command is never re-pointed to a second VALID tx id (logged as an error; the first
//!   stays).
//! - **PROJECTED** (terminal, like COMMITTED for counts, lists and retention): the
//!   projector applied the block of the command's VALID transaction to the read models.
//!   [`Outbox::record_projected_block`] marks a block's commands in the same write batch as
//!   the block's checkpoint-log append, from any state (if the submitter has not recorded
//!   the commit yet, the ledger says it anyway), idempotently.
//! - `schedule_retry` (from PENDING, PREPARED or SUBMITTED → PENDING) is for an attempt that
//!   certainly did **not** commit (endorsement refused, MVCC conflict reported in a block,
//!   submit refused before ordering): it clears the prepared transaction, so the next
//!   attempt is endorsed afresh. For an ambiguous outcome the submitter keeps the command
//!   SUBMITTED and resubmits the same signed bytes (same transaction id).
//! - Repeating the transition a command is already in with the same data (`mark_prepared`
//!   with the same txid, `mark_submitted`, `mark_committed` with the same block) returns the
//!   command unchanged, so callers that retry after an unknown outcome are safe.
//! - Every other transition is refused with [`StorageError::IllegalTransition`].
//! - Every transition is one write batch with all its index updates; a transition's reply
//!   is sent only after that batch is fsync'd.
//!
//! # Partition order
//! Each command has a set of **partition keys** — the wallets it touches on the ledger: a
//! transfer its payer and its payee — 1 to [`MAX_PARTITION_KEYS`] distinct non-empty keys:
//! `partition_key` (the first) and `extra_partition_keys` (deduplicated, in byte order).
//! Each key has a **queue**: the **queued** commands with that key — PENDING, PREPARED and
//! SUBMITTED — in acceptance order. A command's **head** position in a queue is the oldest
//! entry; **in flight** means PREPARED or SUBMITTED. Rules:
//! - [`Outbox::enqueue`] appends the command to the tail of **every** one of its queues in
//!   one write round, under one sequence number taken from a single counter (the queue key
//!   is (partition, sequence)), so all queues are ordered by one global acceptance order;
//! - a command is **due** — in the due index, returned by [`Outbox::next_due`] once its
//!   `next_attempt_at` has come — only while it is PENDING and the head of **all** its
//!   queues, and only such a command may go in flight ([`Outbox::mark_prepared`] on any
//!   other is refused with [`StorageError::PartitionBusy`], naming the first partition
//!   where another command is ahead of it). So no key ever has two commands in flight; a
//!   head waiting for its retry time **blocks all its partitions**: order over throughput;
//! - a command leaves all its queues when it is COMMITTED or FAILED; in each queue it
//!   headed, the next command becomes head, and due if it now heads all of *its* queues
//!   (one seek per key of that command);
//! - a dead-lettered command that is requeued goes to the **tail** of all its queues under
//!   a new sequence number: the commands behind it were not held back while it was dead,
//!   and requeueing is an operator's explicit "send it now".
//!
//! **Why this never deadlocks.** Every queue is ordered by the one global sequence, so
//! any two commands sharing keys are in the same relative order in every queue they share:
//! there is no cycle of "A waits for B on one key, B for A on another". Whatever is queued,
//! the command with the smallest sequence number heads every one of its queues, so it is
//! due (or in flight, or waiting only for its own retry time); when it leaves, the next
//! smallest does. Every queued command is thus eventually due: no deadlock, no starvation
//! (`storage/tests/state_machine.rs` checks both against a plain reference model).
//!
//! So commands touching one wallet reach the submitter, and the ledger, in acceptance
//! order, and never run concurrently — for GX, whose transactions read the wallets they
//! write, gxd never makes an MVCC conflict of its own. Whether an enqueued command heads
//! its queues is answered by the in-memory partition-length mirror ([`partitions`]), not
//! by a seek. `next_due` is not a lease: one dispatcher (the submitter) owns the PENDING →
//! PREPARED step and remembers which heads it is working on.
//!
//! # Idempotency
//! (tenant, request id) → command id. A repeat with the same command type, partition keys
//! (as a set) and payload (compared by SHA-256, [`payload_digest`]) returns the original
//! command (`created: false`); with a different one it is [`StorageError::Conflict`]. One
//! allowance: a command stored without extra keys (every command accepted before they
//! existed) is also repeated by a request with the same type, first key and payload, so a
//! client's retry across the upgrade that added the payee's key is not refused. An
//! idempotency key lives at least [`OutboxOptions::idempotency_window`] and, past that, as
//! long as its command is not committed (a dead-lettered or stuck command keeps its key);
//! it is removed at the latest with its command.
//!
//! # Transaction-id index
//! `txids` (tx id → command) and `command_txids` ((command, tx id) → empty) hold every tx
//! id any attempt of a command used. They are written in the same batch as
//! [`Outbox::mark_prepared`] stores the tx id — before that tx id can reach the orderer —
//! and removed with the command by retention. [`Outbox::command_by_txid`] reads them.
//!
//! # Change notifications
//! [`Outbox::subscribe`] gives a `broadcast` receiver of [`CommandChange`] (command id, new
//! status), sent after the durable write of every state change (enqueue, each transition,
//! late commits, projection). It is a hint for waiters (an SSE stream, a long poll): a slow
//! receiver may miss changes (`RecvError::Lagged`) and must then re-read the commands it
//! waits for; the outbox stays the truth.
//!
//! # Retention
//! [`Outbox::purge`] removes COMMITTED and PROJECTED commands older than
//! [`OutboxOptions::committed_retention`] and expired idempotency keys, a bounded chunk per
//! write round so it never holds up enqueues. FAILED commands are kept until an operator
//! requeues them.

pub(crate) mod cf;
mod integrity;
mod keys;
mod partitions;
pub mod record;

use std::collections::HashSet;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::broadcast;

pub use crate::types::{CommandId, Status};
pub use integrity::IntegrityReport;

use crate::checkpoint::{self, AppendOutcome, NewCheckpoint};
use crate::db::{Db, META, Registration, Round, Schema, cf_handle, decode_u64};
use crate::error::{Result, StorageError};
use record::{
    IdempotencyEntry, decode_command, decode_idempotency, decode_tx_index, encode_command,
    encode_tx_index,
};

/// A status by its name, any case (API and CLI input); an unknown one is
/// [`StorageError::InvalidInput`]. (Here rather than beside [`Status`], which must not
/// depend on the error type.)
impl FromStr for Status {
    type Err = StorageError;
    fn from_str(s: &str) -> Result<Self> {
        Status::ALL
            .into_iter()
            .find(|st| st.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| StorageError::InvalidInput(format!("unknown status {s:?}")))
    }
}

/// A command to accept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCommand {
    /// Tenant (organization, API client); scopes the request id. Non-empty.
    pub tenant: String,
    /// Command type, opaque to the engine (`TRANSFER_TOKENS`, ...). Non-empty.
    pub command_type: String,
    /// The client's request id (idempotency key). Non-empty.
    pub request_id: String,
    /// Partition key: commands with the same key leave in acceptance order. Non-empty.
    pub partition_key: String,
    /// The command's further partition keys (the other wallets it touches): it keeps
    /// acceptance order in each of these partitions too (module docs, "Partition order").
    /// Deduplicated, a repeat of `partition_key` dropped; with `partition_key` at most
    /// [`MAX_PARTITION_KEYS`] distinct keys, each non-empty. Usually empty.
    pub extra_partition_keys: Vec<String>,
    /// Payload, opaque.
    pub payload: Vec<u8>,
}

impl NewCommand {
    /// Every partition key of the command as it will be stored: `partition_key`, then the
    /// distinct extra keys in byte order (what [`Command::partition_keys`] will return).
    pub fn partition_keys(&self) -> Vec<String> {
        std::iter::once(self.partition_key.clone())
            .chain(normalized_extras(
                &self.partition_key,
                &self.extra_partition_keys,
            ))
            .collect()
    }
}

/// An error recorded on a command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandError {
    /// Stage: endorse, submit, commit_status, commit, validate, ...
    pub stage: String,
    /// Code: gRPC status, validation code, ...
    pub code: String,
    /// Message (stored up to 4 KiB).
    pub message: String,
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AttemptOutcome {
    /// Retry scheduled.
    Retried,
    /// Dead-lettered.
    Failed,
    /// Requeued from the dead letter by an operator.
    Requeued,
    /// Abandoned in flight because an earlier tx id of the command committed (a late
    /// commit); its tx id is recorded here.
    Superseded,
}

impl AttemptOutcome {
    /// Stable on-disk code.
    pub fn code(self) -> u8 {
        match self {
            AttemptOutcome::Retried => 1,
            AttemptOutcome::Failed => 2,
            AttemptOutcome::Requeued => 3,
            AttemptOutcome::Superseded => 4,
        }
    }

    /// The outcome of an on-disk code.
    pub fn from_code(code: u8) -> Option<Self> {
        [
            AttemptOutcome::Retried,
            AttemptOutcome::Failed,
            AttemptOutcome::Requeued,
            AttemptOutcome::Superseded,
        ]
        .into_iter()
        .find(|o| o.code() == code)
    }
}

/// One entry of a command's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttemptRecord {
    /// The attempt count when it ended.
    pub attempt: u32,
    /// How it ended.
    pub outcome: AttemptOutcome,
    /// The transaction id it used, if it got that far.
    pub txid: Option<String>,
    /// Its error.
    pub error: Option<CommandError>,
    /// When.
    pub at: DateTime<Utc>,
}

/// A stored command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Command {
    /// Id.
    pub id: CommandId,
    /// Tenant.
    pub tenant: String,
    /// Command type.
    pub command_type: String,
    /// Request id.
    pub request_id: String,
    /// Partition key (the first; the wallet whose order the command keeps first of all).
    pub partition_key: String,
    /// Its further partition keys: distinct, in byte order, none equal to
    /// `partition_key`; empty for most commands (and for every record written before they
    /// existed).
    pub extra_partition_keys: Vec<String>,
    /// Payload (hex in JSON; the API renders it as it sees fit).
    #[serde(with = "crate::db::hex_bytes")]
    pub payload: Vec<u8>,
    /// SHA-256 of (type, partition keys, payload): [`payload_digest`].
    #[serde(skip)]
    pub payload_digest: [u8; 32],
    /// Status.
    pub status: Status,
    /// Attempts that ended in an error since acceptance (or the last requeue).
    pub attempts: u32,
    /// When it is due (for PENDING).
    pub next_attempt_at: DateTime<Utc>,
    /// The last error.
    pub last_error: Option<CommandError>,
    /// Fabric transaction id (from PREPARED on).
    pub txid: Option<String>,
    /// Signed transaction envelope (PREPARED, SUBMITTED; dropped at commit).
    #[serde(skip)]
    pub signed_tx: Option<Vec<u8>>,
    /// Block number (COMMITTED, PROJECTED).
    pub block_number: Option<u64>,
    /// Index of the transaction in its block, once known (the projector records it; a
    /// commit recorded by the submitter alone does not know it).
    pub tx_index: Option<u32>,
    /// The chaincode's response (COMMITTED, PROJECTED; bounded to 16 KiB).
    pub result: Option<ChaincodeResult>,
    /// Accepted at.
    pub created_at: DateTime<Utc>,
    /// Last changed at.
    pub updated_at: DateTime<Utc>,
    /// Prepared at.
    pub prepared_at: Option<DateTime<Utc>>,
    /// Submitted at.
    pub submitted_at: Option<DateTime<Utc>>,
    /// Committed at.
    pub committed_at: Option<DateTime<Utc>>,
    /// Dead-lettered at.
    pub failed_at: Option<DateTime<Utc>>,
    /// Applied to the read models at (PROJECTED).
    pub projected_at: Option<DateTime<Utc>>,
    /// Times requeued.
    pub requeues: u32,
    /// Past attempts, oldest first (the last [`OutboxOptions::max_history`]).
    pub history: Vec<AttemptRecord>,
    /// Position in its partition queues (one sequence number, the same in each).
    #[serde(skip)]
    pub queue_seq: u64,
}

impl Command {
    /// Every partition key of the command: `partition_key` first, then the extras.
    pub fn partition_keys(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.partition_key.as_str())
            .chain(self.extra_partition_keys.iter().map(String::as_str))
    }
}

/// The chaincode's response to a transaction, as endorsed (bounded).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChaincodeResult {
    /// Response status (200 = OK), when known.
    pub status: Option<i32>,
    /// Response payload, at most [`MAX_RESULT_BYTES`] (hex in JSON).
    #[serde(with = "crate::db::hex_bytes")]
    pub payload: Vec<u8>,
    /// The payload was longer and was cut at [`MAX_RESULT_BYTES`].
    pub truncated: bool,
}

/// Longest stored chaincode response payload.
pub const MAX_RESULT_BYTES: usize = 16 * 1024;

impl ChaincodeResult {
    /// A result, its payload cut at [`MAX_RESULT_BYTES`].
    pub fn new(status: Option<i32>, payload: &[u8]) -> Self {
        let truncated = payload.len() > MAX_RESULT_BYTES;
        ChaincodeResult {
            status,
            payload: payload[..payload.len().min(MAX_RESULT_BYTES)].to_vec(),
            truncated,
        }
    }
}

/// A transaction the ledger has committed VALID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerCommit {
    /// Its transaction id.
    pub txid: String,
    /// Its block.
    pub block_number: u64,
    /// Its index in the block, when known.
    pub tx_index: Option<u32>,
    /// The chaincode's response, when known.
    pub result: Option<ChaincodeResult>,
}

/// A command changed (sent by [`Outbox::subscribe`] after the change is durable).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandChange {
    /// The command.
    pub id: CommandId,
    /// Its status now.
    pub status: Status,
}

/// Result of [`Outbox::record_projected_block`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectedBlockOutcome {
    /// The checkpoint-log append.
    pub checkpoint: AppendOutcome,
    /// Commands that changed (to PROJECTED), in block order.
    pub changed: Vec<CommandChange>,
}

/// Result of [`Outbox::enqueue`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnqueueOutcome {
    /// The command (the original one for an idempotent repeat).
    pub command: Command,
    /// True if this call created it.
    pub created: bool,
}

/// A page of [`Outbox::list_by_status`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Page {
    /// Commands, oldest first.
    pub commands: Vec<Command>,
    /// Pass as `cursor` for the next page; `None` at the end.
    pub next_cursor: Option<CommandId>,
}

/// Commands per status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusCounts {
    /// PENDING.
    pub pending: u64,
    /// PREPARED.
    pub prepared: u64,
    /// SUBMITTED.
    pub submitted: u64,
    /// COMMITTED (not yet purged).
    pub committed: u64,
    /// FAILED.
    pub failed: u64,
    /// PROJECTED (not yet purged).
    #[serde(default)]
    pub projected: u64,
}

impl StatusCounts {
    /// The count of one status.
    pub fn get(&self, s: Status) -> u64 {
        match s {
            Status::Pending => self.pending,
            Status::Prepared => self.prepared,
            Status::Submitted => self.submitted,
            Status::Committed => self.committed,
            Status::Failed => self.failed,
            Status::Projected => self.projected,
        }
    }

    fn slot(&mut self, s: Status) -> &mut u64 {
        match s {
            Status::Pending => &mut self.pending,
            Status::Prepared => &mut self.prepared,
            Status::Submitted => &mut self.submitted,
            Status::Committed => &mut self.committed,
            Status::Failed => &mut self.failed,
            Status::Projected => &mut self.projected,
        }
    }

    /// All commands.
    pub fn total(&self) -> u64 {
        Status::ALL.iter().map(|s| self.get(*s)).sum()
    }
}

/// Outbox settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxOptions {
    /// Minimum time an idempotency key is remembered. Default 24 h (what payment APIs
    /// promise). Must not exceed `committed_retention`.
    pub idempotency_window: Duration,
    /// COMMITTED and PROJECTED commands older than this are purged. Default 7 days.
    pub committed_retention: Duration,
    /// Largest payload accepted. Default 1 MiB.
    pub max_payload_bytes: usize,
    /// History entries kept per command (oldest dropped). Default 64.
    pub max_history: usize,
    /// Records examined per purge round (bounds how long a purge holds the writer).
    /// Default 512.
    pub purge_chunk: usize,
}

impl Default for OutboxOptions {
    fn default() -> Self {
        OutboxOptions {
            idempotency_window: Duration::from_secs(24 * 3600),
            committed_retention: Duration::from_secs(7 * 24 * 3600),
            max_payload_bytes: 1 << 20,
            max_history: 64,
            purge_chunk: 512,
        }
    }
}

impl OutboxOptions {
    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        if self.idempotency_window > self.committed_retention {
            return Err(StorageError::InvalidInput(format!(
                "idempotency_window ({:?}) must not exceed committed_retention ({:?})",
                self.idempotency_window, self.committed_retention
            )));
        }
        if self.purge_chunk == 0 || self.max_payload_bytes == 0 {
            return Err(StorageError::InvalidInput(
                "purge_chunk and max_payload_bytes must be positive".to_owned(),
            ));
        }
        Ok(())
    }
}

/// What a purge removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PurgeReport {
    /// COMMITTED and PROJECTED commands removed.
    pub commands_removed: u64,
    /// Transaction-id index entries removed with them.
    pub txids_removed: u64,
    /// Idempotency keys expired (those of removed commands included).
    pub idempotency_keys_removed: u64,
}

/// What the outbox keeps in the database: its column families ([`cf`]) and, on the writer
/// thread, the length of every partition queue ([`partitions`]).
pub(crate) const SCHEMA: Schema = Schema {
    families: cf::ALL,
    extensions: &[Registration::of::<partitions::PartitionLengths>()],
};

/// Longest tenant, request id (bytes).
const MAX_ID_BYTES: usize = 256;
/// Longest command type.
const MAX_TYPE_BYTES: usize = 128;
/// Longest partition key.
pub const MAX_PARTITION_BYTES: usize = 1024;
/// Most distinct partition keys of one command (`partition_key` and its extras).
pub const MAX_PARTITION_KEYS: usize = 8;
/// Longest stored error message.
const MAX_ERROR_MESSAGE_BYTES: usize = 4096;

/// The outbox. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Outbox {
    db: Db,
    opts: Arc<OutboxOptions>,
    changes: broadcast::Sender<CommandChange>,
}

/// Buffered change notifications per subscriber before it lags.
const CHANGE_CAPACITY: usize = 4096;

impl Outbox {
    /// The outbox in `db`. Logs the counts per status.
    pub fn new(db: Db, opts: OutboxOptions) -> Result<Outbox> {
        opts.validate()?;
        let (changes, _) = broadcast::channel(CHANGE_CAPACITY);
        let outbox = Outbox {
            db,
            opts: Arc::new(opts),
            changes,
        };
        let c = outbox.counts()?;
        tracing::info!(
            pending = c.pending,
            prepared = c.prepared,
            submitted = c.submitted,
            committed = c.committed,
            failed = c.failed,
            projected = c.projected,
            "outbox opened"
        );
        Ok(outbox)
    }

    /// The database.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// The settings.
    pub fn options(&self) -> &OutboxOptions {
        &self.opts
    }

    /// Accepts a command; returns once it is durable. An idempotent repeat returns the
    /// original command with `created: false`.
    pub async fn enqueue(&self, mut new: NewCommand) -> Result<EnqueueOutcome> {
        validate_new(&new, self.opts.max_payload_bytes)?;
        new.extra_partition_keys = normalized_extras(&new.partition_key, &new.extra_partition_keys);
        let digest = payload_digest(&new);
        let out = self
            .db
            .write(move |round| stage_enqueue(round, new, digest))
            .await?;
        if out.created {
            self.notify(&out.command);
        }
        Ok(out)
    }

    /// Notifications of command changes, each sent after its change is durable (see the
    /// module docs: a hint for waiters; a lagging receiver must re-read).
    pub fn subscribe(&self) -> broadcast::Receiver<CommandChange> {
        self.changes.subscribe()
    }

    fn notify(&self, c: &Command) {
        // No receiver is not an error.
        let _ = self.changes.send(CommandChange {
            id: c.id,
            status: c.status,
        });
    }

    fn notified(&self, c: Result<Command>) -> Result<Command> {
        if let Ok(c) = &c {
            self.notify(c);
        }
        c
    }

    /// PENDING head → PREPARED, storing the transaction id and signed envelope.
    pub async fn mark_prepared(
        &self,
        id: CommandId,
        txid: String,
        signed_tx: Vec<u8>,
    ) -> Result<Command> {
        validate_txid(&txid)?;
        let c = self
            .db
            .write(move |round| stage_prepared(round, id, txid, signed_tx))
            .await;
        self.notified(c)
    }

    /// PREPARED → SUBMITTED.
    pub async fn mark_submitted(&self, id: CommandId) -> Result<Command> {
        let c = self.db.write(move |round| stage_submitted(round, id)).await;
        self.notified(c)
    }

    /// PREPARED or SUBMITTED → COMMITTED in `block`, for the command's current tx id
    /// (tx index and result unknown). The next command of each of its partitions becomes
    /// due if it heads all of its own.
    /// Repeating it, or calling it on a command already PROJECTED in that block, returns
    /// the command unchanged.
    pub async fn mark_committed(&self, id: CommandId, block: u64) -> Result<Command> {
        let max_history = self.opts.max_history;
        let c = self
            .db
            .write(move |round| stage_committed(round, id, block, max_history))
            .await;
        self.notified(c)
    }

    /// Records that `commit.txid`, a tx id of command `id` (its current one or an earlier
    /// attempt's), committed VALID: → COMMITTED from any state (a late commit, module
    /// docs), with block, tx index and result. A tx id not used by `id` is
    /// [`StorageError::InvalidInput`]. Idempotent; PROJECTED stays PROJECTED.
    pub async fn mark_committed_tx(&self, id: CommandId, commit: LedgerCommit) -> Result<Command> {
        validate_txid(&commit.txid)?;
        let max_history = self.opts.max_history;
        let c = self
            .db
            .write(move |round| {
                let owner = lookup_txid(round, &commit.txid)?;
                let current = load(round, id)?;
                if owner != Some(id) && current.txid.as_deref() != Some(commit.txid.as_str()) {
                    return Err(StorageError::InvalidInput(format!(
                        "transaction {} is not one of command {id}'s",
                        commit.txid
                    )));
                }
                stage_ledger_commit(round, current, commit, Status::Committed, max_history)
                    .map(|(c, _)| c)
            })
            .await;
        self.notified(c)
    }

    /// A VALID transaction seen on the ledger: if its tx id is in the index, records it on
    /// its command as [`Outbox::mark_committed_tx`] does. `None` for a tx id no command of
    /// this outbox used (another organization's, or purged).
    pub async fn record_ledger_commit(&self, commit: LedgerCommit) -> Result<Option<Command>> {
        validate_txid(&commit.txid)?;
        let max_history = self.opts.max_history;
        let c = self
            .db
            .write(move |round| {
                let Some(id) = lookup_txid(round, &commit.txid)? else {
                    return Ok(None);
                };
                let current = load(round, id)?;
                stage_ledger_commit(round, current, commit, Status::Committed, max_history)
                    .map(|(c, _)| Some(c))
            })
            .await?;
        if let Some(c) = &c {
            self.notify(c);
        }
        Ok(c)
    }

    /// The projector's step after a block's PostgreSQL commit, in **one** durable write
    /// batch: appends `block` to `channel`'s checkpoint log (as
    /// [`crate::checkpoint::CheckpointLog::append`], same checks) and moves the commands of
    /// the block's VALID transactions (`valid`, found through the tx index; unknown tx ids
    /// are skipped) to PROJECTED from any state. Idempotent: offering the same block again
    /// appends nothing and changes no command already PROJECTED, so a replay after a crash
    /// repairs what a crash between the PostgreSQL commit and this batch left undone.
    pub async fn record_projected_block(
        &self,
        channel: &str,
        block: NewCheckpoint,
        valid: Vec<LedgerCommit>,
    ) -> Result<ProjectedBlockOutcome> {
        checkpoint::validate_channel(channel)?;
        for v in &valid {
            validate_txid(&v.txid)?;
        }
        let channel = channel.to_owned();
        let max_history = self.opts.max_history;
        let out = self
            .db
            .write(move |round| {
                let checkpoint = checkpoint::stage_append(round, &channel, block)?;
                let mut changed = Vec::new();
                for commit in valid {
                    let Some(id) = lookup_txid(round, &commit.txid)? else {
                        continue;
                    };
                    let current = match load(round, id) {
                        Ok(c) => c,
                        Err(StorageError::NotFound { .. }) => {
                            // A dangling index entry (integrity reports it) must not stop
                            // the read models.
                            tracing::error!(txid = %commit.txid, command_id = %id, "tx index points to a missing command; not marked");
                            continue;
                        }
                        Err(e) => return Err(e),
                    };
                    let (c, did) = stage_ledger_commit(
                        round,
                        current,
                        commit,
                        Status::Projected,
                        max_history,
                    )?;
                    if did {
                        changed.push(CommandChange {
                            id: c.id,
                            status: c.status,
                        });
                    }
                }
                Ok(ProjectedBlockOutcome {
                    checkpoint,
                    changed,
                })
            })
            .await?;
        for change in &out.changed {
            let _ = self.changes.send(*change);
        }
        Ok(out)
    }

    /// The command that used transaction id `txid` in any of its attempts, if it is still
    /// kept.
    pub fn command_by_txid(&self, txid: &str) -> Result<Option<Command>> {
        let raw = &*self.db.raw()?;
        let snapshot = raw.snapshot();
        let key = keys::txid(txid);
        let Some(bytes) = snapshot.get_pinned_cf(cf_handle(raw, cf::TXIDS)?, &key)? else {
            return Ok(None);
        };
        let id = decode_tx_index(&key, &bytes)?;
        let ckey = keys::command(id);
        match snapshot.get_pinned_cf(cf_handle(raw, cf::COMMANDS)?, ckey)? {
            Some(bytes) => decode_command(&ckey, &bytes).map(Some),
            None => Err(StorageError::corrupt(
                "txids",
                &key,
                format!("points to missing command {id}"),
            )),
        }
    }

    /// Every tx id command `id` used (from the index), in byte order.
    pub fn txids_of(&self, id: CommandId) -> Result<Vec<String>> {
        let raw = &*self.db.raw()?;
        let (lower, upper) = keys::command_txids_range(id);
        let mut ro = rocksdb::ReadOptions::default();
        ro.set_iterate_upper_bound(upper);
        let mut it = raw.raw_iterator_cf_opt(cf_handle(raw, cf::COMMAND_TXIDS)?, ro);
        it.seek(&lower);
        let mut out = Vec::new();
        while let Some(key) = it.key() {
            out.push(keys::split_command_txid(key)?.1);
            it.next();
        }
        it.status()?;
        Ok(out)
    }

    /// PENDING, PREPARED or SUBMITTED → PENDING, due at `next_attempt_at`; counts an attempt
    /// and records the error. Only for attempts that certainly did not commit (see the
    /// module docs).
    pub async fn schedule_retry(
        &self,
        id: CommandId,
        error: CommandError,
        next_attempt_at: DateTime<Utc>,
    ) -> Result<Command> {
        let max_history = self.opts.max_history;
        let c = self
            .db
            .write(move |round| {
                stage_retry(round, id, clip(error), next_attempt_at, max_history, true)
            })
            .await;
        self.notified(c)
    }

    /// PENDING → PENDING, due at `next_attempt_at`, with `error` as its last error, without
    /// counting an attempt or adding to the history: for an attempt that never reached a
    /// peer (the peer is down), which says nothing about the command. Only a PENDING command
    /// (nothing of this attempt in flight) can be postponed.
    pub async fn postpone(
        &self,
        id: CommandId,
        error: CommandError,
        next_attempt_at: DateTime<Utc>,
    ) -> Result<Command> {
        let max_history = self.opts.max_history;
        let c = self
            .db
            .write(move |round| {
                stage_retry(round, id, clip(error), next_attempt_at, max_history, false)
            })
            .await;
        self.notified(c)
    }

    /// PENDING, PREPARED or SUBMITTED → FAILED (dead letter) with its reason. It leaves all
    /// its partition queues; their next commands become due if they head all of theirs.
    pub async fn mark_failed(&self, id: CommandId, error: CommandError) -> Result<Command> {
        let max_history = self.opts.max_history;
        let c = self
            .db
            .write(move |round| stage_failed(round, id, clip(error), max_history))
            .await;
        self.notified(c)
    }

    /// FAILED → PENDING at the tail of all its partition queues, attempts reset, history
    /// kept.
    pub async fn requeue(&self, id: CommandId) -> Result<Command> {
        let max_history = self.opts.max_history;
        let c = self
            .db
            .write(move |round| stage_requeue(round, id, max_history))
            .await;
        self.notified(c)
    }

    /// Removes COMMITTED and PROJECTED commands committed before `older_than` (with their
    /// idempotency keys and tx-index entries), in bounded chunks. Returns how many.
    pub async fn purge_committed(&self, older_than: DateTime<Utc>) -> Result<PurgeReport> {
        let mut report = PurgeReport::default();
        let limit = self.opts.purge_chunk;
        let cutoff = older_than.timestamp_millis();
        for status in [Status::Committed, Status::Projected] {
            let mut cursor: Option<CommandId> = None;
            loop {
                let (chunk, next) = self
                    .db
                    .write(move |round| stage_purge_committed(round, status, cutoff, cursor, limit))
                    .await?;
                report.commands_removed += chunk.commands_removed;
                report.txids_removed += chunk.txids_removed;
                report.idempotency_keys_removed += chunk.idempotency_keys_removed;
                match next {
                    Some(c) => cursor = Some(c),
                    None => break,
                }
            }
        }
        Ok(report)
    }

    /// Removes idempotency keys created before `older_than` whose command is committed or
    /// gone (keys of live commands stay).
    pub async fn expire_idempotency(&self, older_than: DateTime<Utc>) -> Result<u64> {
        let mut removed = 0;
        let mut cursor: Option<Vec<u8>> = None;
        let limit = self.opts.purge_chunk;
        let cutoff = u64::try_from(older_than.timestamp_millis()).unwrap_or(0);
        loop {
            let (n, next) = self
                .db
                .write(move |round| stage_expire_idempotency(round, cutoff, cursor, limit))
                .await?;
            removed += n;
            match next {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        Ok(removed)
    }

    /// Retention as configured: purges COMMITTED and PROJECTED commands older than
    /// `committed_retention` and idempotency keys older than `idempotency_window`.
    pub async fn purge(&self, now: DateTime<Utc>) -> Result<PurgeReport> {
        let retention = chrono::Duration::from_std(self.opts.committed_retention)
            .map_err(|e| StorageError::InvalidInput(format!("committed_retention: {e}")))?;
        let window = chrono::Duration::from_std(self.opts.idempotency_window)
            .map_err(|e| StorageError::InvalidInput(format!("idempotency_window: {e}")))?;
        let mut report = self.purge_committed(now - retention).await?;
        report.idempotency_keys_removed += self.expire_idempotency(now - window).await?;
        if report.commands_removed > 0 || report.idempotency_keys_removed > 0 {
            tracing::info!(
                commands = report.commands_removed,
                idempotency_keys = report.idempotency_keys_removed,
                "outbox purged"
            );
        }
        Ok(report)
    }

    /// A command by id.
    pub fn get(&self, id: CommandId) -> Result<Command> {
        let raw = &*self.db.raw()?;
        let key = keys::command(id);
        match raw.get_pinned_cf(cf_handle(raw, cf::COMMANDS)?, key)? {
            Some(bytes) => decode_command(&key, &bytes),
            None => Err(not_found(id)),
        }
    }

    /// The command a (tenant, request id) maps to, if the key is remembered.
    pub fn find_by_request_id(&self, tenant: &str, request_id: &str) -> Result<Option<Command>> {
        let raw = &*self.db.raw()?;
        let snapshot = raw.snapshot();
        let ikey = keys::idempotency(tenant, request_id);
        let Some(bytes) = snapshot.get_pinned_cf(cf_handle(raw, cf::IDEMPOTENCY)?, &ikey)? else {
            return Ok(None);
        };
        let entry = decode_idempotency(&ikey, &bytes)?;
        let key = keys::command(entry.command_id);
        match snapshot.get_pinned_cf(cf_handle(raw, cf::COMMANDS)?, key)? {
            Some(bytes) => decode_command(&key, &bytes).map(Some),
            None => Err(StorageError::corrupt(
                "idempotency",
                &ikey,
                format!("points to missing command {}", entry.command_id),
            )),
        }
    }

    /// Commands with `status`, oldest first, after `cursor` (exclusive), at most `limit`.
    pub fn list_by_status(
        &self,
        status: Status,
        cursor: Option<CommandId>,
        limit: usize,
    ) -> Result<Page> {
        let raw = &*self.db.raw()?;
        let snapshot = raw.snapshot();
        let (lower, upper) = keys::status_range(status);
        let start = match cursor {
            Some(c) => {
                let mut k = keys::status(status, c).to_vec();
                k.push(0);
                k
            }
            None => lower.to_vec(),
        };
        let mut ro = rocksdb::ReadOptions::default();
        ro.set_iterate_upper_bound(upper.to_vec());
        let mut it = snapshot.raw_iterator_cf_opt(cf_handle(raw, cf::STATUS)?, ro);
        it.seek(&start);
        let mut ids = Vec::new();
        // One more than asked tells whether there is a next page.
        while let Some(key) = it.key() {
            if ids.len() > limit {
                break;
            }
            ids.push(keys::status_id(key)?);
            it.next();
        }
        it.status()?;
        let more = ids.len() > limit;
        ids.truncate(limit);
        let commands = load_many(raw, &snapshot, &ids)?;
        let next_cursor = if more { ids.last().copied() } else { None };
        Ok(Page {
            commands,
            next_cursor,
        })
    }

    /// Counts per status (maintained in the same batches as the changes).
    pub fn counts(&self) -> Result<StatusCounts> {
        let raw = &*self.db.raw()?;
        let meta = cf_handle(raw, META)?;
        let snapshot = raw.snapshot();
        let mut counts = StatusCounts::default();
        for s in Status::ALL {
            let key = keys::meta_count(s);
            if let Some(bytes) = snapshot.get_pinned_cf(meta, &key)? {
                *counts.slot(s) = decode_u64("meta", &key, &bytes)?;
            }
        }
        Ok(counts)
    }

    /// Up to `limit` commands to send now: the PENDING commands heading every one of their
    /// partition queues (so nothing sharing a key with them is in flight or older) whose
    /// `next_attempt_at <= now`; earliest due first. No two share a partition key.
    pub fn next_due(&self, limit: usize, now: DateTime<Utc>) -> Result<Vec<Command>> {
        self.next_due_excluding(limit, now, &HashSet::new())
    }

    /// [`next_due`](Self::next_due) without the commands in `exclude` (those a dispatcher
    /// already works on: they stay in the due index until prepared). Excluded entries cost
    /// a key comparison each, not a record read: a dispatcher with many commands in flight
    /// polls in time proportional to them, not to their records.
    pub fn next_due_excluding(
        &self,
        limit: usize,
        now: DateTime<Utc>,
        exclude: &HashSet<CommandId>,
    ) -> Result<Vec<Command>> {
        let raw = &*self.db.raw()?;
        let snapshot = raw.snapshot();
        let now_ms = due_ms(now);
        let mut ro = rocksdb::ReadOptions::default();
        ro.set_iterate_upper_bound(now_ms.saturating_add(1).to_be_bytes().to_vec());
        let mut it = snapshot.raw_iterator_cf_opt(cf_handle(raw, cf::DUE)?, ro);
        it.seek_to_first();
        let mut ids = Vec::new();
        while let Some(key) = it.key() {
            if ids.len() >= limit {
                break;
            }
            let (_, id) = keys::split_due(key)?;
            if !exclude.contains(&id) {
                ids.push(id);
            }
            it.next();
        }
        it.status()?;
        load_many(raw, &snapshot, &ids)
    }

    /// Flushes and compacts the due index, dropping the tombstones its queue-like use
    /// leaves (every prepared command deletes its entry). Until compacted they sit in front
    /// of the live entries, and every [`next_due`](Self::next_due) seek steps over all of
    /// them: a dispatcher calls this after a few thousand claims. The index holds only the
    /// due heads (small), so this takes milliseconds; it changes no data. Blocking.
    pub fn compact_due_index(&self) -> Result<()> {
        let raw = self.db.raw()?;
        let cf = cf_handle(&raw, cf::DUE)?;
        raw.flush_cf(cf)?;
        raw.compact_range_cf(cf, None::<&[u8]>, None::<&[u8]>);
        Ok(())
    }

    /// When the earliest dispatchable PENDING head is (or was) due, if there is one: a
    /// submitter that found nothing due sleeps until then (or until woken by an enqueue).
    /// One seek.
    pub fn next_due_at(&self) -> Result<Option<DateTime<Utc>>> {
        let raw = &*self.db.raw()?;
        let mut it = raw.raw_iterator_cf(cf_handle(raw, cf::DUE)?);
        it.seek_to_first();
        let first = match it.key() {
            Some(key) => Some(keys::split_due(key)?.0),
            None => None,
        };
        it.status()?;
        Ok(first.and_then(|ms| {
            DateTime::<Utc>::from_timestamp_millis(i64::try_from(ms).unwrap_or(i64::MAX))
        }))
    }

    /// Cross-checks every record against every index (and the counters). Reads the whole
    /// outbox under one snapshot: for tests, `gxd` diagnostics and after a crash.
    pub fn verify_integrity(&self) -> Result<IntegrityReport> {
        integrity::verify(&*self.db.raw()?)
    }
}

fn not_found(id: CommandId) -> StorageError {
    StorageError::NotFound {
        what: "command",
        id: id.to_string(),
    }
}

fn load_many(
    raw: &crate::db::RawDb,
    snapshot: &rocksdb::SnapshotWithThreadMode<'_, crate::db::RawDb>,
    ids: &[CommandId],
) -> Result<Vec<Command>> {
    let cf = cf_handle(raw, cf::COMMANDS)?;
    let keys: Vec<[u8; 16]> = ids.iter().map(|id| keys::command(*id)).collect();
    let values = snapshot.multi_get_cf(keys.iter().map(|k| (cf, k)));
    let mut out = Vec::with_capacity(ids.len());
    for (key, value) in keys.iter().zip(values) {
        match value? {
            Some(bytes) => out.push(decode_command(key, &bytes)?),
            None => {
                return Err(StorageError::corrupt(
                    "commands",
                    key,
                    "indexed command is missing",
                ));
            }
        }
    }
    Ok(out)
}

fn validate_new(new: &NewCommand, max_payload: usize) -> Result<()> {
    let check = |what: &str, v: &str, max: usize| {
        if v.is_empty() {
            return Err(StorageError::InvalidInput(format!("{what} is empty")));
        }
        if v.len() > max {
            return Err(StorageError::InvalidInput(format!(
                "{what} is longer than {max} bytes"
            )));
        }
        Ok(())
    };
    check("tenant", &new.tenant, MAX_ID_BYTES)?;
    check("request id", &new.request_id, MAX_ID_BYTES)?;
    check("command type", &new.command_type, MAX_TYPE_BYTES)?;
    // An empty partition key would put every such command in one partition and hide a
    // caller's bug (a missing wallet id): refused.
    check("partition key", &new.partition_key, MAX_PARTITION_BYTES)?;
    // Bound the list before looking at it (a caller's loop gone wrong), then each key,
    // then the distinct count.
    if new.extra_partition_keys.len() > MAX_EXTRA_KEYS_GIVEN {
        return Err(StorageError::InvalidInput(format!(
            "{} extra partition keys given; a command has at most {MAX_PARTITION_KEYS} \
             partition keys",
            new.extra_partition_keys.len()
        )));
    }
    for (i, key) in new.extra_partition_keys.iter().enumerate() {
        check(
            &format!("extra partition key {i}"),
            key,
            MAX_PARTITION_BYTES,
        )?;
    }
    let distinct = 1 + normalized_extras(&new.partition_key, &new.extra_partition_keys).len();
    if distinct > MAX_PARTITION_KEYS {
        return Err(StorageError::InvalidInput(format!(
            "{distinct} distinct partition keys; a command has at most {MAX_PARTITION_KEYS}"
        )));
    }
    if new.payload.len() > max_payload {
        return Err(StorageError::InvalidInput(format!(
            "payload is larger than {max_payload} bytes"
        )));
    }
    Ok(())
}

/// Extra keys given beyond which a list is refused before it is even deduplicated.
const MAX_EXTRA_KEYS_GIVEN: usize = 4 * MAX_PARTITION_KEYS;

/// The extra partition keys as stored: distinct, in byte order, without `primary`.
fn normalized_extras(primary: &str, extras: &[String]) -> Vec<String> {
    let set: std::collections::BTreeSet<&str> = extras
        .iter()
        .map(String::as_str)
        .filter(|k| *k != primary)
        .collect();
    set.into_iter().map(str::to_owned).collect()
}

/// SHA-256 over (type, partition, payload), each length-prefixed, then — only for a
/// command with extra partition keys — their count and each key (normalized: distinct, in
/// byte order), length-prefixed. The full key set is covered, so a repeat of a request id
/// with other keys is a conflict; a command without extra keys hashes as it always did,
/// so an idempotent repeat of a command accepted before extra keys existed still matches.
pub fn payload_digest(new: &NewCommand) -> [u8; 32] {
    let extras = normalized_extras(&new.partition_key, &new.extra_partition_keys);
    digest_of(new, &extras)
}

fn digest_of(new: &NewCommand, extras: &[String]) -> [u8; 32] {
    let mut h = Sha256::new();
    let mut part = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_be_bytes());
        h.update(bytes);
    };
    part(new.command_type.as_bytes());
    part(new.partition_key.as_bytes());
    part(new.payload.as_slice());
    if !extras.is_empty() {
        part(b"extra_partition_keys");
        part(&(extras.len() as u64).to_be_bytes());
        for key in extras {
            part(key.as_bytes());
        }
    }
    h.finalize().into()
}

fn clip(mut e: CommandError) -> CommandError {
    if e.message.len() > MAX_ERROR_MESSAGE_BYTES {
        let mut cut = MAX_ERROR_MESSAGE_BYTES;
        while !e.message.is_char_boundary(cut) {
            cut -= 1;
        }
        e.message.truncate(cut);
    }
    e
}

/// Current time at millisecond precision (what is stored).
fn now() -> DateTime<Utc> {
    let ms = Utc::now().timestamp_millis();
    DateTime::from_timestamp_millis(ms).unwrap_or_else(Utc::now)
}

/// A time as an index key component (ms since the epoch, 0 before it).
pub(crate) fn due_ms(t: DateTime<Utc>) -> u64 {
    u64::try_from(t.timestamp_millis()).unwrap_or(0)
}

/// Simulated failure between the steps of a change (feature `failpoints`); the writer rolls
/// the change back.
macro_rules! failpoint {
    ($name:literal) => {
        #[cfg(feature = "failpoints")]
        fail::fail_point!($name, |_| Err(StorageError::Unavailable {
            message: format!("failpoint {}", $name),
            source: None,
        }));
    };
}

// ---- the changes, run on the writer thread -------------------------------------------

fn load(round: &Round<'_>, id: CommandId) -> Result<Command> {
    let key = keys::command(id);
    match round.get(cf::COMMANDS, &key)? {
        Some(bytes) => decode_command(&key, &bytes),
        None => Err(not_found(id)),
    }
}

fn store(round: &mut Round<'_>, c: &Command) {
    round.put(
        cf::COMMANDS,
        keys::command(c.id).to_vec(),
        encode_command(c),
    );
}

fn add_count(round: &mut Round<'_>, status: Status, delta: i64) -> Result<()> {
    let key = keys::meta_count(status);
    let current = match round.get(META, &key)? {
        Some(bytes) => decode_u64("meta", &key, &bytes)?,
        None => 0,
    };
    let next = current
        .checked_add_signed(delta)
        .ok_or_else(|| StorageError::corrupt("meta", &key, "status counter would go negative"))?;
    round.put(META, key, next.to_be_bytes().to_vec());
    Ok(())
}

fn move_status(round: &mut Round<'_>, id: CommandId, from: Status, to: Status) -> Result<()> {
    if from == to {
        return Ok(());
    }
    round.delete(cf::STATUS, keys::status(from, id).to_vec());
    round.put(cf::STATUS, keys::status(to, id).to_vec(), Vec::new());
    add_count(round, from, -1)?;
    add_count(round, to, 1)
}

fn next_seq(round: &mut Round<'_>) -> Result<u64> {
    let seq = match round.get(META, keys::META_NEXT_SEQ)? {
        Some(bytes) => decode_u64("meta", keys::META_NEXT_SEQ, &bytes)?,
        None => 1,
    };
    round.put(
        META,
        keys::META_NEXT_SEQ.to_vec(),
        (seq + 1).to_be_bytes().to_vec(),
    );
    Ok(seq)
}

/// The first queued command of a partition: (queue key, id).
fn partition_head(round: &Round<'_>, partition: &str) -> Result<Option<(Vec<u8>, CommandId)>> {
    let (lower, upper) = keys::partition_range(partition);
    match round.first_in_range(cf::PARTITION_QUEUE, &lower, &upper)? {
        Some((key, value)) => {
            let id = CommandId::from_slice(&value).ok_or_else(|| {
                StorageError::corrupt("partition_queue", &key, "value is not a command id")
            })?;
            Ok(Some((key, id)))
        }
        None => Ok(None),
    }
}

/// The first of a queued command's partitions where it is not the head, with that
/// partition's head; `None` when it heads every one of its queues (then, and only then,
/// it may be due or in flight). One seek per partition key.
fn first_blocking(round: &Round<'_>, c: &Command) -> Result<Option<(String, Option<CommandId>)>> {
    first_blocking_besides(round, c, None)
}

/// [`first_blocking`], not asking about `known_head`, a partition `c` is known to head.
fn first_blocking_besides(
    round: &Round<'_>,
    c: &Command,
    known_head: Option<&str>,
) -> Result<Option<(String, Option<CommandId>)>> {
    for key in c.partition_keys().filter(|k| Some(*k) != known_head) {
        let head = partition_head(round, key)?.map(|(_, id)| id);
        if head != Some(c.id) {
            return Ok(Some((key.to_owned(), head)));
        }
    }
    Ok(None)
}

/// Whether every one of `keys`' queues is empty (from the in-memory length mirror: no
/// seek), i.e. whether a command appended to all of them now heads them all.
fn all_empty<'k>(round: &Round<'_>, keys: impl IntoIterator<Item = &'k str>) -> Result<bool> {
    for key in keys {
        if partitions::len(round, &keys::partition_prefix(key))? != 0 {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Appends command `c` (PENDING, `c.queue_seq` freshly taken) to the tail of every one of
/// its queues; due at `due_at` if it heads them all (every one was empty).
fn join_partitions(round: &mut Round<'_>, c: &Command, due_at: DateTime<Utc>) -> Result<()> {
    let heads_all = all_empty(round, c.partition_keys())?;
    for key in c.partition_keys() {
        round.put(
            cf::PARTITION_QUEUE,
            keys::partition_queue(key, c.queue_seq),
            c.id.to_bytes().to_vec(),
        );
        partitions::adjust(round, keys::partition_prefix(key), 1)?;
    }
    if heads_all {
        round.put(
            cf::DUE,
            keys::due(due_ms(due_at), c.id).to_vec(),
            Vec::new(),
        );
    }
    Ok(())
}

/// The current head of a partition (if any), which just became its head: due if it now
/// heads every one of its queues. `promoted` remembers the commands already made due in
/// this change (one can head several of the queues a leaving command left).
fn promote_head(
    round: &mut Round<'_>,
    partition: &str,
    promoted: &mut Vec<CommandId>,
) -> Result<()> {
    let Some((key, id)) = partition_head(round, partition)? else {
        return Ok(());
    };
    if promoted.contains(&id) {
        return Ok(());
    }
    let head = load(round, id)?;
    if head.status != Status::Pending {
        // It was behind the leaving command here, so it did not head all its queues:
        // it cannot have been in flight.
        return Err(StorageError::corrupt(
            "partition_queue",
            &key,
            format!(
                "command {id} behind the head is {} (only a command heading all its \
                 queues may be in flight)",
                head.status
            ),
        ));
    }
    if first_blocking_besides(round, &head, Some(partition))?.is_none() {
        round.put(
            cf::DUE,
            keys::due(due_ms(head.next_attempt_at), id).to_vec(),
            Vec::new(),
        );
        promoted.push(id);
    }
    Ok(())
}

/// Takes a queued command (in its old state `c`) out of every one of its partition
/// queues; in each queue it headed, the next command becomes head, and due if it now heads
/// all of its own queues.
fn leave_partition(round: &mut Round<'_>, c: &Command) -> Result<()> {
    // In flight or due means heading every queue; otherwise each queue is asked.
    let mut heads_all = c.status.is_in_flight();
    if c.status == Status::Pending {
        let due_key = keys::due(due_ms(c.next_attempt_at), c.id);
        if round.contains(cf::DUE, &due_key)? {
            round.delete(cf::DUE, due_key.to_vec());
            heads_all = true;
        }
    }
    let mut headed = Vec::new();
    for key in c.partition_keys() {
        let my_key = keys::partition_queue(key, c.queue_seq);
        if !round.contains(cf::PARTITION_QUEUE, &my_key)? {
            return Err(StorageError::corrupt(
                "partition_queue",
                &my_key,
                format!(
                    "queued command {} is missing from its partition queue {key:?}",
                    c.id
                ),
            ));
        }
        headed.push(heads_all || partition_head(round, key)?.is_some_and(|(k, _)| k == my_key));
    }
    for key in c.partition_keys() {
        round.delete(cf::PARTITION_QUEUE, keys::partition_queue(key, c.queue_seq));
        partitions::adjust(round, keys::partition_prefix(key), -1)?;
    }
    let mut promoted = Vec::new();
    for (key, headed) in c.partition_keys().zip(headed) {
        if headed {
            promote_head(round, key, &mut promoted)?;
        }
    }
    Ok(())
}

fn push_history(c: &mut Command, entry: AttemptRecord, max: usize) {
    c.history.push(entry);
    if c.history.len() > max {
        let excess = c.history.len() - max;
        c.history.drain(..excess);
    }
}

fn stage_enqueue(
    round: &mut Round<'_>,
    new: NewCommand,
    digest: [u8; 32],
) -> Result<EnqueueOutcome> {
    let ikey = keys::idempotency(&new.tenant, &new.request_id);
    if let Some(bytes) = round.get(cf::IDEMPOTENCY, &ikey)? {
        let entry = decode_idempotency(&ikey, &bytes)?;
        let command = match load(round, entry.command_id) {
            Err(StorageError::NotFound { .. }) if entry.payload_digest == digest => {
                return Err(StorageError::corrupt(
                    "idempotency",
                    &ikey,
                    format!("points to missing command {}", entry.command_id),
                ));
            }
            Err(StorageError::NotFound { .. }) => None,
            other => Some(other?),
        };
        // A command stored without extra keys — every one accepted before they existed —
        // is also repeated by a request with the same type, first key and payload: a
        // client's retry across the upgrade that added the payee's key.
        let command = command.filter(|c| {
            entry.payload_digest == digest
                || (c.extra_partition_keys.is_empty()
                    && entry.payload_digest == digest_of(&new, &[]))
        });
        let Some(command) = command else {
            return Err(StorageError::Conflict {
                tenant: new.tenant,
                request_id: new.request_id,
                existing: entry.command_id,
            });
        };
        return Ok(EnqueueOutcome {
            command,
            created: false,
        });
    }

    let now = now();
    let now_ms = due_ms(now);
    let id = CommandId::new_v7();
    let seq = next_seq(round)?;
    let command = Command {
        id,
        tenant: new.tenant,
        command_type: new.command_type,
        request_id: new.request_id,
        partition_key: new.partition_key,
        extra_partition_keys: new.extra_partition_keys,
        payload: new.payload,
        payload_digest: digest,
        status: Status::Pending,
        attempts: 0,
        next_attempt_at: now,
        last_error: None,
        txid: None,
        signed_tx: None,
        block_number: None,
        tx_index: None,
        result: None,
        created_at: now,
        updated_at: now,
        prepared_at: None,
        submitted_at: None,
        committed_at: None,
        failed_at: None,
        projected_at: None,
        requeues: 0,
        history: Vec::new(),
        queue_seq: seq,
    };
    store(round, &command);
    failpoint!("storage::outbox::enqueue::after_record");
    let entry = IdempotencyEntry {
        command_id: id,
        payload_digest: digest,
        created_at_ms: now.timestamp_millis(),
    };
    round.put(
        cf::IDEMPOTENCY,
        ikey.clone(),
        record::encode_idempotency(&entry),
    );
    round.put(
        cf::IDEM_EXPIRY,
        keys::idem_expiry(now_ms, &ikey),
        Vec::new(),
    );
    round.put(
        cf::STATUS,
        keys::status(Status::Pending, id).to_vec(),
        Vec::new(),
    );
    join_partitions(round, &command, now)?;
    add_count(round, Status::Pending, 1)?;
    failpoint!("storage::outbox::enqueue::staged");
    Ok(EnqueueOutcome {
        command,
        created: true,
    })
}

fn illegal(c: &Command, to: Status) -> StorageError {
    StorageError::IllegalTransition {
        id: c.id,
        from: c.status,
        to,
    }
}

fn stage_prepared(
    round: &mut Round<'_>,
    id: CommandId,
    txid: String,
    signed_tx: Vec<u8>,
) -> Result<Command> {
    let mut c = load(round, id)?;
    if c.status == Status::Prepared && c.txid.as_deref() == Some(txid.as_str()) {
        return Ok(c);
    }
    if c.status != Status::Pending {
        return Err(illegal(&c, Status::Prepared));
    }
    let due_key = keys::due(due_ms(c.next_attempt_at), id);
    if !round.contains(cf::DUE, &due_key)? {
        // Not due: behind another command in one of its queues (a PENDING command heading
        // them all is always in the due index, whatever its time).
        let (partition, head) = match first_blocking(round, &c)? {
            Some(blocking) => blocking,
            None => (c.partition_key.clone(), Some(id)),
        };
        return Err(StorageError::PartitionBusy {
            id,
            partition,
            head,
        });
    }
    round.delete(cf::DUE, due_key.to_vec());
    // The tx id is indexed before it can reach the orderer, so a late commit of it always
    // finds its command.
    index_txid(round, id, &txid)?;
    failpoint!("storage::outbox::transition::after_index");
    let now = now();
    c.status = Status::Prepared;
    c.txid = Some(txid);
    c.signed_tx = Some(signed_tx);
    c.prepared_at = Some(now);
    c.updated_at = now;
    store(round, &c);
    move_status(round, id, Status::Pending, Status::Prepared)?;
    failpoint!("storage::outbox::transition::staged");
    Ok(c)
}

fn stage_submitted(round: &mut Round<'_>, id: CommandId) -> Result<Command> {
    let mut c = load(round, id)?;
    match c.status {
        Status::Submitted => return Ok(c),
        Status::Prepared => {}
        _ => return Err(illegal(&c, Status::Submitted)),
    }
    let now = now();
    c.status = Status::Submitted;
    c.submitted_at = Some(now);
    c.updated_at = now;
    store(round, &c);
    failpoint!("storage::outbox::transition::after_record");
    move_status(round, id, Status::Prepared, Status::Submitted)?;
    failpoint!("storage::outbox::transition::staged");
    Ok(c)
}

fn stage_committed(
    round: &mut Round<'_>,
    id: CommandId,
    block: u64,
    max_history: usize,
) -> Result<Command> {
    let old = load(round, id)?;
    let txid = match (&old.status, &old.txid) {
        (Status::Prepared | Status::Submitted | Status::Committed | Status::Projected, Some(t)) => {
            t.clone()
        }
        _ => return Err(illegal(&old, Status::Committed)),
    };
    let commit = LedgerCommit {
        txid,
        block_number: block,
        tx_index: None,
        result: None,
    };
    stage_ledger_commit(round, old, commit, Status::Committed, max_history).map(|(c, _)| c)
}

/// The command of an indexed tx id.
fn lookup_txid(round: &Round<'_>, txid: &str) -> Result<Option<CommandId>> {
    let key = keys::txid(txid);
    round
        .get(cf::TXIDS, &key)?
        .map(|bytes| decode_tx_index(&key, &bytes))
        .transpose()
}

/// Indexes `txid` as command `id`'s (idempotent); a tx id of another command is refused.
fn index_txid(round: &mut Round<'_>, id: CommandId, txid: &str) -> Result<()> {
    match lookup_txid(round, txid)? {
        Some(owner) if owner == id => Ok(()),
        Some(owner) => Err(StorageError::InvalidInput(format!(
            "transaction id {txid} already belongs to command {owner}"
        ))),
        None => {
            round.put(cf::TXIDS, keys::txid(txid), encode_tx_index(id));
            round.put(cf::COMMAND_TXIDS, keys::command_txid(id, txid), Vec::new());
            Ok(())
        }
    }
}

/// Records a VALID transaction of command `old` (its current tx id or an earlier
/// attempt's) as `target` (COMMITTED or PROJECTED), from any state: the late-commit rule of
/// the module docs. Returns the command and whether anything changed.
///
/// - A command already COMMITTED/PROJECTED with the same tx id only gains what it lacked
///   (tx index, result, COMMITTED → PROJECTED); the same tx id in another block is
///   refused (a tx id commits once).
/// - A command already COMMITTED/PROJECTED with **another** tx id keeps its first commit:
///   a second VALID transaction of one command is an error worth an operator's look (GX
///   makes it impossible: its ids derive from the command id), logged, not recorded.
/// - Otherwise the command leaves its partition queues (if queued; the next ones become
///   due if they head all theirs), an in-flight attempt with another tx id goes to the history as SUPERSEDED, and
///   the command takes the commit's tx id, block, index and result.
fn stage_ledger_commit(
    round: &mut Round<'_>,
    old: Command,
    commit: LedgerCommit,
    target: Status,
    max_history: usize,
) -> Result<(Command, bool)> {
    let id = old.id;
    let same_tx = old.txid.as_deref() == Some(commit.txid.as_str());
    let now = now();
    if old.status.is_committed() {
        if !same_tx {
            tracing::error!(
                command_id = %id,
                recorded_txid = ?old.txid,
                txid = %commit.txid,
                block = commit.block_number,
                "a second VALID transaction for one command; keeping the first"
            );
            return Ok((old, false));
        }
        if old.block_number != Some(commit.block_number) {
            return Err(illegal(&old, target));
        }
        let mut c = old.clone();
        if c.tx_index.is_none() {
            c.tx_index = commit.tx_index;
        }
        // The block's response (with its status) is better than the endorsed payload alone.
        let known = |r: &Option<ChaincodeResult>| r.as_ref().map(|r| r.status.is_some());
        if commit.result.is_some()
            && known(&c.result) != Some(true)
            && known(&commit.result) >= known(&c.result)
        {
            c.result = commit.result;
        }
        if target == Status::Projected && c.status == Status::Committed {
            c.status = Status::Projected;
            c.projected_at = Some(now);
        }
        if c == old {
            return Ok((old, false));
        }
        c.updated_at = now;
        store(round, &c);
        move_status(round, id, old.status, c.status)?;
        return Ok((c, true));
    }
    if old.status.is_queued() {
        leave_partition(round, &old)?;
    }
    index_txid(round, id, &commit.txid)?;
    failpoint!("storage::outbox::transition::after_index");
    let from = old.status;
    let mut c = old;
    if !same_tx && let Some(previous) = c.txid.take() {
        let entry = AttemptRecord {
            attempt: c.attempts,
            outcome: AttemptOutcome::Superseded,
            txid: Some(previous),
            error: None,
            at: now,
        };
        push_history(&mut c, entry, max_history);
    }
    if !same_tx || !from.is_in_flight() {
        tracing::info!(
            command_id = %id,
            from = %from,
            txid = %commit.txid,
            block = commit.block_number,
            "late commit recorded: the ledger committed an earlier attempt's transaction"
        );
    }
    c.status = target;
    c.txid = Some(commit.txid);
    c.block_number = Some(commit.block_number);
    c.tx_index = commit.tx_index;
    c.result = commit.result;
    c.committed_at = Some(now);
    if target == Status::Projected {
        c.projected_at = Some(now);
    }
    c.updated_at = now;
    c.signed_tx = None;
    store(round, &c);
    move_status(round, id, from, target)?;
    failpoint!("storage::outbox::transition::staged");
    Ok((c, true))
}

fn stage_retry(
    round: &mut Round<'_>,
    id: CommandId,
    error: CommandError,
    next_attempt_at: DateTime<Utc>,
    max_history: usize,
    count_attempt: bool,
) -> Result<Command> {
    let mut c = load(round, id)?;
    let from = c.status;
    if !count_attempt && from != Status::Pending {
        return Err(illegal(&c, Status::Pending));
    }
    let new_due = keys::due(due_ms(next_attempt_at), id).to_vec();
    match from {
        Status::Pending => {
            let old_due = keys::due(due_ms(c.next_attempt_at), id);
            if round.contains(cf::DUE, &old_due)? {
                round.delete(cf::DUE, old_due.to_vec());
                round.put(cf::DUE, new_due, Vec::new());
            }
        }
        // In flight, hence the head of all its partitions: due again at the new time.
        Status::Prepared | Status::Submitted => round.put(cf::DUE, new_due, Vec::new()),
        Status::Committed | Status::Failed | Status::Projected => {
            return Err(illegal(&c, Status::Pending));
        }
    }
    failpoint!("storage::outbox::transition::after_index");
    let now = now();
    if count_attempt {
        c.attempts = c.attempts.saturating_add(1);
        let entry = AttemptRecord {
            attempt: c.attempts,
            outcome: AttemptOutcome::Retried,
            txid: c.txid.take(),
            error: Some(error.clone()),
            at: now,
        };
        push_history(&mut c, entry, max_history);
    }
    c.status = Status::Pending;
    c.last_error = Some(error);
    c.signed_tx = None;
    c.prepared_at = None;
    c.submitted_at = None;
    c.next_attempt_at = DateTime::from_timestamp_millis(next_attempt_at.timestamp_millis())
        .unwrap_or(next_attempt_at);
    c.updated_at = now;
    store(round, &c);
    move_status(round, id, from, Status::Pending)?;
    failpoint!("storage::outbox::transition::staged");
    Ok(c)
}

fn stage_failed(
    round: &mut Round<'_>,
    id: CommandId,
    error: CommandError,
    max_history: usize,
) -> Result<Command> {
    let old = load(round, id)?;
    if !old.status.is_queued() {
        return Err(illegal(&old, Status::Failed));
    }
    leave_partition(round, &old)?;
    failpoint!("storage::outbox::transition::after_index");
    let now = now();
    let mut c = old;
    let from = c.status;
    c.attempts = c.attempts.saturating_add(1);
    let entry = AttemptRecord {
        attempt: c.attempts,
        outcome: AttemptOutcome::Failed,
        txid: c.txid.take(),
        error: Some(error.clone()),
        at: now,
    };
    push_history(&mut c, entry, max_history);
    c.status = Status::Failed;
    c.last_error = Some(error);
    c.signed_tx = None;
    c.failed_at = Some(now);
    c.updated_at = now;
    store(round, &c);
    move_status(round, id, from, Status::Failed)?;
    failpoint!("storage::outbox::transition::staged");
    Ok(c)
}

fn stage_requeue(round: &mut Round<'_>, id: CommandId, max_history: usize) -> Result<Command> {
    let mut c = load(round, id)?;
    if c.status != Status::Failed {
        return Err(illegal(&c, Status::Pending));
    }
    let now = now();
    c.queue_seq = next_seq(round)?;
    join_partitions(round, &c, now)?;
    failpoint!("storage::outbox::transition::after_index");
    let entry = AttemptRecord {
        attempt: c.attempts,
        outcome: AttemptOutcome::Requeued,
        txid: None,
        error: None,
        at: now,
    };
    push_history(&mut c, entry, max_history);
    c.status = Status::Pending;
    c.attempts = 0;
    c.requeues = c.requeues.saturating_add(1);
    c.next_attempt_at = now;
    c.failed_at = None;
    c.txid = None;
    c.updated_at = now;
    store(round, &c);
    move_status(round, id, Status::Failed, Status::Pending)?;
    failpoint!("storage::outbox::transition::staged");
    Ok(c)
}

/// One chunk of `purge_committed`: returns what it removed and where to go on.
fn stage_purge_committed(
    round: &mut Round<'_>,
    status: Status,
    cutoff_ms: i64,
    cursor: Option<CommandId>,
    limit: usize,
) -> Result<(PurgeReport, Option<CommandId>)> {
    let mut report = PurgeReport::default();
    let (lower, _) = keys::status_range(status);
    let start = match cursor {
        Some(c) => {
            let mut k = keys::status(status, c).to_vec();
            k.push(0);
            k
        }
        None => lower.to_vec(),
    };
    // A command committed before the cutoff was created before it, and ids are created-at
    // ordered: scan only ids older than the cutoff.
    let mut upper = vec![status.code()];
    let cutoff_u = u64::try_from(cutoff_ms).unwrap_or(0);
    upper.extend_from_slice(&cutoff_u.to_be_bytes()[2..]);
    let entries = round.scan_range(cf::STATUS, &start, &upper, limit)?;
    let next = if entries.len() == limit {
        entries
            .last()
            .map(|(k, _)| keys::status_id(k))
            .transpose()?
    } else {
        None
    };
    for (key, _) in entries {
        let id = keys::status_id(&key)?;
        let c = load(round, id)?;
        let Some(committed_at) = c.committed_at else {
            return Err(StorageError::corrupt(
                "commands",
                &keys::command(id),
                format!("{status} without committed_at"),
            ));
        };
        if committed_at.timestamp_millis() >= cutoff_ms {
            continue;
        }
        round.delete(cf::COMMANDS, keys::command(id).to_vec());
        round.delete(cf::STATUS, key);
        add_count(round, status, -1)?;
        report.commands_removed += 1;
        report.txids_removed += unindex_command(round, id)?;
        let ikey = keys::idempotency(&c.tenant, &c.request_id);
        if let Some(bytes) = round.get(cf::IDEMPOTENCY, &ikey)? {
            let entry = decode_idempotency(&ikey, &bytes)?;
            if entry.command_id == id {
                round.delete(cf::IDEMPOTENCY, ikey.clone());
                let created = u64::try_from(entry.created_at_ms).unwrap_or(0);
                round.delete(cf::IDEM_EXPIRY, keys::idem_expiry(created, &ikey));
                report.idempotency_keys_removed += 1;
            }
        }
    }
    Ok((report, next))
}

/// One chunk of `expire_idempotency`.
fn stage_expire_idempotency(
    round: &mut Round<'_>,
    cutoff_ms: u64,
    cursor: Option<Vec<u8>>,
    limit: usize,
) -> Result<(u64, Option<Vec<u8>>)> {
    let start = match cursor {
        Some(mut c) => {
            c.push(0);
            c
        }
        None => Vec::new(),
    };
    let upper = cutoff_ms.to_be_bytes();
    let entries = round.scan_range(cf::IDEM_EXPIRY, &start, &upper, limit)?;
    let next = if entries.len() == limit {
        entries.last().map(|(k, _)| k.clone())
    } else {
        None
    };
    let mut removed = 0;
    for (key, _) in entries {
        let (created, ikey) = keys::split_idem_expiry(&key)?;
        let ikey = ikey.to_vec();
        let Some(bytes) = round.get(cf::IDEMPOTENCY, &ikey)? else {
            // Expiry entry without its key: drop it.
            round.delete(cf::IDEM_EXPIRY, key);
            continue;
        };
        let entry = decode_idempotency(&ikey, &bytes)?;
        if u64::try_from(entry.created_at_ms).unwrap_or(0) != created {
            round.delete(cf::IDEM_EXPIRY, key);
            continue;
        }
        let releasable = match load(round, entry.command_id) {
            Ok(c) => c.status.is_committed(),
            Err(StorageError::NotFound { .. }) => true,
            Err(e) => return Err(e),
        };
        if releasable {
            round.delete(cf::IDEMPOTENCY, ikey);
            round.delete(cf::IDEM_EXPIRY, key);
            removed += 1;
        }
    }
    Ok((removed, next))
}

/// Bound on one command's tx ids read in one go (attempts × requeues; far above any real
/// count, so a corrupt index cannot make a purge round unbounded).
const MAX_TXIDS_PER_COMMAND: usize = 4096;

/// Removes every tx-index entry of command `id`; returns how many tx ids.
fn unindex_command(round: &mut Round<'_>, id: CommandId) -> Result<u64> {
    let (lower, upper) = keys::command_txids_range(id);
    let entries = round.scan_range(cf::COMMAND_TXIDS, &lower, &upper, MAX_TXIDS_PER_COMMAND)?;
    let mut removed = 0;
    for (key, _) in entries {
        let (_, txid) = keys::split_command_txid(&key)?;
        if lookup_txid(round, &txid)? == Some(id) {
            round.delete(cf::TXIDS, keys::txid(&txid));
        }
        round.delete(cf::COMMAND_TXIDS, key);
        removed += 1;
    }
    Ok(removed)
}

/// Longest transaction id (Fabric's are 64 hex digits).
const MAX_TXID_BYTES: usize = 256;

fn validate_txid(txid: &str) -> Result<()> {
    if txid.is_empty() {
        return Err(StorageError::InvalidInput("empty txid".to_owned()));
    }
    if txid.len() > MAX_TXID_BYTES {
        return Err(StorageError::InvalidInput(format!(
            "txid is longer than {MAX_TXID_BYTES} bytes"
        )));
    }
    Ok(())
}

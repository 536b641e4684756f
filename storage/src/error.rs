//! The storage error type shared by the outbox and the checkpoint log.
//!
//! Every variant says what a caller can do about it; [`StorageError::kind`] folds them into
//! a small [`ErrorKind`] that the API maps once onto HTTP statuses (problem+json).

use std::sync::Arc;

use crate::types::{CommandId, Status};

/// What went wrong in `gxd-storage`.
///
/// Cheap to clone: a group-committed write that fails hands the same error to every
/// caller whose change was in the failed batch.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The thing looked up does not exist.
    #[error("{what} not found: {id}")]
    NotFound {
        /// The kind of thing ("command", "checkpoint").
        what: &'static str,
        /// Its id, as text.
        id: String,
    },

    /// An idempotency key was reused with a different request.
    #[error(
        "request id {request_id:?} of tenant {tenant:?} was already used for command {existing} with a different payload"
    )]
    Conflict {
        /// Tenant of the request.
        tenant: String,
        /// The reused request id.
        request_id: String,
        /// The command created by the first use of the request id.
        existing: CommandId,
    },

    /// The state machine refuses this transition.
    #[error("command {id}: illegal transition from {from} to {to}")]
    IllegalTransition {
        /// The command.
        id: CommandId,
        /// Its current status.
        from: Status,
        /// The status asked for.
        to: Status,
    },

    /// `mark_prepared` on a command that is not the dispatchable head of all its
    /// partitions (an older command sharing one of its partition keys is still queued or in
    /// flight).
    #[error("command {id} is not the head of partition {partition:?} (head: {head:?})")]
    PartitionBusy {
        /// The command.
        id: CommandId,
        /// The first of its partition keys where another command is ahead of it.
        partition: String,
        /// The command at the head of that partition.
        head: Option<CommandId>,
    },

    /// Appending a checkpoint that does not follow the last one.
    #[error("checkpoint log of channel {channel:?}: {reason}")]
    CheckpointRefused {
        /// The channel.
        channel: String,
        /// Why, in words: gap, previous-hash mismatch, or a different block already there.
        reason: CheckpointRefusal,
    },

    /// Input the storage layer cannot accept (empty ids, oversized keys, bad options).
    #[error("invalid input: {0}")]
    InvalidInput(String),

    /// The database cannot take the write or read now: an I/O error, a full disk, the
    /// writer stopped. Nothing was half-written (every change is one atomic write batch);
    /// the API answers 503 and the caller may retry.
    #[error("storage unavailable: {message}")]
    Unavailable {
        /// What RocksDB (or the writer) said.
        message: String,
        /// The RocksDB error, when there is one.
        #[source]
        source: Option<Arc<rocksdb::Error>>,
    },

    /// A record on disk does not decode or breaks an invariant.
    #[error("corrupt record in column family {cf}, key {key}: {reason}")]
    Corrupt {
        /// The column family.
        cf: &'static str,
        /// The key, hex encoded.
        key: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The database directory is locked by another process (or opened twice by this one).
    #[error("database {path} is locked by another process (is another gxd running?): {message}")]
    Locked {
        /// The RocksDB directory.
        path: String,
        /// What RocksDB said.
        message: String,
    },

    /// The database was written by a newer gxd whose format this version cannot read.
    #[error("database format version {found} is newer than the supported version {supported}")]
    UnsupportedFormat {
        /// Version found in the database.
        found: u32,
        /// Highest version this build reads.
        supported: u32,
    },
}

/// Why a checkpoint append was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointRefusal {
    /// The block number does not follow the last one.
    #[error("gap: expected block {expected}, got block {got}")]
    Gap {
        /// The block number that would continue the log.
        expected: u64,
        /// The block number offered.
        got: u64,
    },
    /// The previous hash of the block is not the header hash of the last block.
    #[error(
        "block {number}: previous hash {got} does not match the header hash {expected} of block {}",
        number.saturating_sub(1)
    )]
    PreviousHashMismatch {
        /// The block offered.
        number: u64,
        /// The last block's header hash, hex.
        expected: String,
        /// The previous hash the block carries, hex.
        got: String,
    },
    /// A different block with this number is already in the log.
    #[error("block {number} is already in the log with a different header hash")]
    Conflict {
        /// The block number.
        number: u64,
    },
}

/// The class of a [`StorageError`], from [`StorageError::kind`]: the one classification of
/// storage errors, for the API to map onto HTTP statuses (problem+json) in one place.
///
/// Deliberately exhaustive (no `#[non_exhaustive]`): a `match` on it names every class, so
/// a class added here fails to compile at that mapping instead of falling into a default.
/// The statuses below are what each class means to a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// 404: the thing looked up does not exist ([`StorageError::NotFound`]).
    NotFound,
    /// 409: the request contradicts what is stored — an idempotency key reused with another
    /// request, an illegal transition, a busy partition, a refused checkpoint
    /// ([`StorageError::Conflict`], [`StorageError::IllegalTransition`],
    /// [`StorageError::PartitionBusy`], [`StorageError::CheckpointRefused`]).
    Conflict,
    /// 400/422: input the storage layer cannot accept ([`StorageError::InvalidInput`]).
    InvalidInput,
    /// 503: retry later — I/O error, full disk, writer stopped, database locked; nothing
    /// was half-written ([`StorageError::Unavailable`], [`StorageError::Locked`]).
    Unavailable,
    /// 500: the database needs an operator — a corrupt record or a newer on-disk format
    /// ([`StorageError::Corrupt`], [`StorageError::UnsupportedFormat`]).
    Corrupt,
}

impl StorageError {
    /// The class of this error (see [`ErrorKind`]).
    pub fn kind(&self) -> ErrorKind {
        match self {
            StorageError::NotFound { .. } => ErrorKind::NotFound,
            StorageError::Conflict { .. }
            | StorageError::IllegalTransition { .. }
            | StorageError::PartitionBusy { .. }
            | StorageError::CheckpointRefused { .. } => ErrorKind::Conflict,
            StorageError::InvalidInput(_) => ErrorKind::InvalidInput,
            StorageError::Unavailable { .. } | StorageError::Locked { .. } => {
                ErrorKind::Unavailable
            }
            StorageError::Corrupt { .. } | StorageError::UnsupportedFormat { .. } => {
                ErrorKind::Corrupt
            }
        }
    }

    /// Whether retrying the same call later may succeed.
    pub fn is_retryable(&self) -> bool {
        self.kind() == ErrorKind::Unavailable
    }

    /// Whether this error, from writing a batch, is one RocksDB keeps as a sticky
    /// background error: an I/O error (a full disk, `EIO`, a file too large) on the WAL.
    /// Every later write fails the same way until the database is reopened, which the
    /// writer then does by itself (`db::recovery`). Errors that did not come from RocksDB
    /// (the writer stopped, a failpoint) and other RocksDB codes (busy, corruption) are not.
    pub(crate) fn is_sticky_write_error(&self) -> bool {
        matches!(
            self,
            StorageError::Unavailable { source: Some(e), .. }
                if e.kind() == rocksdb::ErrorKind::IOError
        )
    }

    pub(crate) fn corrupt(cf: &'static str, key: &[u8], reason: impl Into<String>) -> Self {
        StorageError::Corrupt {
            cf,
            key: hex::encode(key),
            reason: reason.into(),
        }
    }

    pub(crate) fn writer_stopped() -> Self {
        StorageError::Unavailable {
            message: "the storage writer has stopped".to_owned(),
            source: None,
        }
    }
}

impl From<rocksdb::Error> for StorageError {
    /// RocksDB errors on reads and writes. A corruption reported by RocksDB itself is
    /// [`StorageError::Corrupt`]; anything else (I/O error, no space, busy, shutting down)
    /// is [`StorageError::Unavailable`].
    fn from(e: rocksdb::Error) -> Self {
        match e.kind() {
            rocksdb::ErrorKind::Corruption => StorageError::Corrupt {
                cf: "(rocksdb)",
                key: String::new(),
                reason: e.to_string(),
            },
            _ => StorageError::Unavailable {
                message: e.to_string(),
                source: Some(Arc::new(e)),
            },
        }
    }
}

/// Result alias.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;

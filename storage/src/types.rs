//! Plain value types shared by the outbox and the error type: command ids and statuses.
//!
//! A leaf: it imports nothing else from this crate, so that [`crate::error`] can name these
//! types without depending on the outbox. They are re-exported (and documented for users)
//! as [`crate::outbox::CommandId`] and [`crate::outbox::Status`].

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A command id: a UUIDv7, so ids sort by acceptance time (keys are big-endian bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CommandId(Uuid);

impl CommandId {
    /// A new time-ordered id (monotonic within the process).
    pub fn new_v7() -> Self {
        CommandId(Uuid::now_v7())
    }

    /// The id's 16 bytes.
    pub fn to_bytes(self) -> [u8; 16] {
        *self.0.as_bytes()
    }

    /// An id from 16 bytes; `None` for any other length.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        Uuid::from_slice(bytes).ok().map(CommandId)
    }

    /// The UUID.
    pub fn as_uuid(&self) -> &Uuid {
        &self.0
    }

    /// The millisecond timestamp of a v7 id (0 for other versions).
    pub fn timestamp_ms(&self) -> u64 {
        let b = self.0.as_bytes();
        u64::from_be_bytes([0, 0, b[0], b[1], b[2], b[3], b[4], b[5]])
    }
}

impl From<Uuid> for CommandId {
    fn from(u: Uuid) -> Self {
        CommandId(u)
    }
}

impl fmt::Display for CommandId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl FromStr for CommandId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        Uuid::parse_str(s).map(CommandId)
    }
}

/// Status of a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    /// Accepted, waiting for (another) attempt.
    Pending,
    /// Endorsed and signed: transaction id and signed bytes stored. In flight.
    Prepared,
    /// Sent for ordering, waiting for its commit status. In flight.
    Submitted,
    /// Committed valid on the ledger (terminal).
    Committed,
    /// Dead letter: gave up, with its reason. Requeue sends it again.
    Failed,
    /// Committed valid and applied to the read models by the projector (terminal): what a
    /// client waits for to read its own write.
    Projected,
}

impl Status {
    /// All statuses.
    pub const ALL: [Status; 6] = [
        Status::Pending,
        Status::Prepared,
        Status::Submitted,
        Status::Committed,
        Status::Failed,
        Status::Projected,
    ];

    /// Stable on-disk code.
    pub fn code(self) -> u8 {
        match self {
            Status::Pending => 1,
            Status::Prepared => 2,
            Status::Submitted => 3,
            Status::Committed => 4,
            Status::Failed => 5,
            Status::Projected => 6,
        }
    }

    /// The status of an on-disk code.
    pub fn from_code(code: u8) -> Option<Self> {
        Status::ALL.into_iter().find(|s| s.code() == code)
    }

    /// Upper-case name, as in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "PENDING",
            Status::Prepared => "PREPARED",
            Status::Submitted => "SUBMITTED",
            Status::Committed => "COMMITTED",
            Status::Failed => "FAILED",
            Status::Projected => "PROJECTED",
        }
    }

    /// PREPARED or SUBMITTED.
    pub fn is_in_flight(self) -> bool {
        matches!(self, Status::Prepared | Status::Submitted)
    }

    /// On the ledger: COMMITTED or PROJECTED (terminal; retention purges both alike).
    pub fn is_committed(self) -> bool {
        matches!(self, Status::Committed | Status::Projected)
    }

    /// In its partition's queue: PENDING, PREPARED or SUBMITTED.
    pub fn is_queued(self) -> bool {
        matches!(self, Status::Pending | Status::Prepared | Status::Submitted)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

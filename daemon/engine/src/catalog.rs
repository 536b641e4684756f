//! The command catalog: how an outbox command becomes a chaincode transaction. The engine
//! treats command types and payloads as opaque; a deployment's catalog (GX's lives in
//! `gxd-gx`) knows them.

use gxd_storage::outbox::CommandId;

/// A chaincode invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// Chaincode function, e.g. `TransferTokens`.
    pub function: String,
    /// Its arguments.
    pub args: Vec<Vec<u8>>,
}

/// The command cannot become a transaction (unknown type, unreadable payload): a permanent
/// error, dead-lettered at once with this message — never retried.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidCommand(pub String);

/// Maps command types to chaincode invocations.
pub trait CommandCatalog: Send + Sync + 'static {
    /// The invocation for a command. `command_id` lets ids on the ledger derive from the
    /// command (a transfer id, a proposal id), so the chaincode's refusal of a reused id
    /// backs up the outbox's exactly-once.
    fn invocation(
        &self,
        command_type: &str,
        command_id: CommandId,
        payload: &[u8],
    ) -> Result<Invocation, InvalidCommand>;
}

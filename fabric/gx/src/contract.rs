//! The GX chaincode's contract, in one place: function names, event names, the JSON payload
//! of every event and the query results (`GetUser`, `GetWallet`, `GetProposal`).
//!
//! This module is the source of truth; README.md ("The GX chaincode contract") documents it.
//! The chaincode emits its events by serializing these types, so a consumer (the projector,
//! a deployment on a real network) deserializes them with the same types, e.g. with
//! [`GxEvent::decode`]. Field names are camelCase; amounts and balances are decimal strings
//! of non-negative integers in minor units; thresholds are JSON numbers. Consumers should
//! ignore fields they do not know (the types here do), so fields can be added compatibly.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Transaction and query names (the first argument of a Fabric invocation).
pub mod function {
    /// `Bootstrap(treasuryWalletId, initialSupply)`: admin only, once.
    pub const BOOTSTRAP: &str = "Bootstrap";
    /// `CreateUser(userId, profileJson)`.
    pub const CREATE_USER: &str = "CreateUser";
    /// `TransferTokens(transferId, fromWalletId, toWalletId, amount, memo)`.
    pub const TRANSFER_TOKENS: &str = "TransferTokens";
    /// `CreateMultisigWallet(walletId, ownersJson, threshold)`.
    pub const CREATE_MULTISIG_WALLET: &str = "CreateMultisigWallet";
    /// `ProposeTransfer(proposalId, fromWalletId, toWalletId, amount, memo)`.
    pub const PROPOSE_TRANSFER: &str = "ProposeTransfer";
    /// `ApproveTransfer(proposalId, approverId)`.
    pub const APPROVE_TRANSFER: &str = "ApproveTransfer";
    /// `RejectTransfer(proposalId, approverId)`.
    pub const REJECT_TRANSFER: &str = "RejectTransfer";
    /// `GetUser(userId)` → [`User`](super::User).
    pub const GET_USER: &str = "GetUser";
    /// `GetWallet(walletId)` → [`Wallet`](super::Wallet).
    pub const GET_WALLET: &str = "GetWallet";
    /// `GetProposal(proposalId)` → [`Proposal`](super::Proposal).
    pub const GET_PROPOSAL: &str = "GetProposal";
}

/// Chaincode event names (one event per transaction).
pub mod event {
    pub const SYSTEM_BOOTSTRAPPED: &str = "SystemBootstrapped";
    pub const USER_CREATED: &str = "UserCreated";
    pub const TOKENS_TRANSFERRED: &str = "TokensTransferred";
    pub const MULTISIG_WALLET_CREATED: &str = "MultisigWalletCreated";
    pub const TRANSFER_PROPOSED: &str = "TransferProposed";
    pub const TRANSFER_APPROVED: &str = "TransferApproved";
    pub const TRANSFER_REJECTED: &str = "TransferRejected";
}

/// An event payload type and the event name it is emitted under.
pub trait Event: Serialize + DeserializeOwned {
    /// The chaincode event name.
    const NAME: &'static str;
}

/// `SystemBootstrapped`, emitted by `Bootstrap`. The result of `Bootstrap` is the same JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SystemBootstrapped {
    pub treasury_wallet_id: String,
    pub initial_supply: String,
    /// The bootstrapping admin's organization: it owns the treasury wallet.
    pub msp_id: String,
}

impl Event for SystemBootstrapped {
    const NAME: &'static str = event::SYSTEM_BOOTSTRAPPED;
}

/// `UserCreated`, emitted by `CreateUser`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserCreated {
    pub user_id: String,
    /// Equal to `userId`.
    pub wallet_id: String,
    /// The `profileJson` object as given (no personal data: country and a commitment).
    pub profile: serde_json::Value,
    /// The creator's organization: it owns the user's wallet.
    pub msp_id: String,
}

impl Event for UserCreated {
    const NAME: &'static str = event::USER_CREATED;
}

/// `TokensTransferred`, emitted by `TransferTokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokensTransferred {
    pub transfer_id: String,
    pub from_wallet_id: String,
    pub to_wallet_id: String,
    pub amount: String,
    pub memo: String,
    /// Balance of the source wallet after the transfer.
    pub from_balance: String,
    /// Balance of the destination wallet after the transfer.
    pub to_balance: String,
}

impl Event for TokensTransferred {
    const NAME: &'static str = event::TOKENS_TRANSFERRED;
}

/// `MultisigWalletCreated`, emitted by `CreateMultisigWallet`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MultisigWalletCreated {
    pub wallet_id: String,
    /// User ids, in the order given.
    pub owners: Vec<String>,
    pub threshold: u32,
    /// The creator's organization: it owns the wallet.
    pub msp_id: String,
}

impl Event for MultisigWalletCreated {
    const NAME: &'static str = event::MULTISIG_WALLET_CREATED;
}

/// `TransferProposed`, emitted by `ProposeTransfer`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TransferProposed {
    pub proposal_id: String,
    pub from_wallet_id: String,
    pub to_wallet_id: String,
    pub amount: String,
    pub memo: String,
    /// The wallet's threshold, fixed into the proposal.
    pub threshold: u32,
    /// The wallet's owners: the only valid approvers.
    pub owners: Vec<String>,
}

impl Event for TransferProposed {
    const NAME: &'static str = event::TRANSFER_PROPOSED;
}

/// `TransferApproved`, emitted by `ApproveTransfer`. The approval that reaches the threshold
/// executes the transfer: `executed` is true, `status` is `EXECUTED`, and the balances after
/// the transfer are present.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TransferApproved {
    pub proposal_id: String,
    pub approver_id: String,
    /// Every approval so far, in order, this one last.
    pub approvals: Vec<String>,
    pub threshold: u32,
    pub status: ProposalStatus,
    pub executed: bool,
    pub from_wallet_id: String,
    pub to_wallet_id: String,
    pub amount: String,
    /// Only when `executed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_balance: Option<String>,
    /// Only when `executed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_balance: Option<String>,
}

impl Event for TransferApproved {
    const NAME: &'static str = event::TRANSFER_APPROVED;
}

/// `TransferRejected`, emitted by `RejectTransfer`. `status` becomes `REJECTED` once the
/// remaining owners can no longer reach the threshold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TransferRejected {
    pub proposal_id: String,
    pub approver_id: String,
    /// Every rejection so far, in order, this one last.
    pub rejections: Vec<String>,
    pub threshold: u32,
    pub status: ProposalStatus,
}

impl Event for TransferRejected {
    const NAME: &'static str = event::TRANSFER_REJECTED;
}

/// Any GX event, decoded from its name and payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GxEvent {
    SystemBootstrapped(SystemBootstrapped),
    UserCreated(UserCreated),
    TokensTransferred(TokensTransferred),
    MultisigWalletCreated(MultisigWalletCreated),
    TransferProposed(TransferProposed),
    TransferApproved(TransferApproved),
    TransferRejected(TransferRejected),
}

/// Why an event could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("unknown GX event {0:?}")]
    UnknownEvent(String),
    #[error("malformed {name} payload: {source}")]
    Malformed {
        name: &'static str,
        source: serde_json::Error,
    },
}

fn decode_as<T: Event>(payload: &[u8]) -> Result<T, DecodeError> {
    serde_json::from_slice(payload).map_err(|source| DecodeError::Malformed {
        name: T::NAME,
        source,
    })
}

impl GxEvent {
    /// Decodes the payload of the chaincode event called `name`.
    pub fn decode(name: &str, payload: &[u8]) -> Result<Self, DecodeError> {
        Ok(match name {
            event::SYSTEM_BOOTSTRAPPED => Self::SystemBootstrapped(decode_as(payload)?),
            event::USER_CREATED => Self::UserCreated(decode_as(payload)?),
            event::TOKENS_TRANSFERRED => Self::TokensTransferred(decode_as(payload)?),
            event::MULTISIG_WALLET_CREATED => Self::MultisigWalletCreated(decode_as(payload)?),
            event::TRANSFER_PROPOSED => Self::TransferProposed(decode_as(payload)?),
            event::TRANSFER_APPROVED => Self::TransferApproved(decode_as(payload)?),
            event::TRANSFER_REJECTED => Self::TransferRejected(decode_as(payload)?),
            other => return Err(DecodeError::UnknownEvent(other.to_owned())),
        })
    }

    /// The event's name.
    pub fn name(&self) -> &'static str {
        match self {
            Self::SystemBootstrapped(_) => SystemBootstrapped::NAME,
            Self::UserCreated(_) => UserCreated::NAME,
            Self::TokensTransferred(_) => TokensTransferred::NAME,
            Self::MultisigWalletCreated(_) => MultisigWalletCreated::NAME,
            Self::TransferProposed(_) => TransferProposed::NAME,
            Self::TransferApproved(_) => TransferApproved::NAME,
            Self::TransferRejected(_) => TransferRejected::NAME,
        }
    }
}

/// A wallet's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WalletType {
    Treasury,
    User,
    Multisig,
}

/// A proposal's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ProposalStatus {
    Pending,
    Executed,
    Rejected,
}

impl ProposalStatus {
    /// `PENDING`, `EXECUTED` or `REJECTED`, as in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Executed => "EXECUTED",
            Self::Rejected => "REJECTED",
        }
    }
}

/// A wallet: the stored record and the result of `GetWallet`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Wallet {
    pub wallet_id: String,
    #[serde(rename = "type")]
    pub wallet_type: WalletType,
    pub balance: String,
    /// Multisig wallets only: the owners' user ids.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub owners: Vec<String>,
    /// Multisig wallets only.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub threshold: u32,
    /// The organization that created the wallet; only its clients and admins may spend from
    /// it. Records written by the chaincode's first version lack it; `GetWallet` reports the
    /// organization the chaincode attributes them to (see the module docs of `gx`), and is
    /// absent only for a wallet no organization may spend from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub msp_id: Option<String>,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

/// A user: the stored record and the result of `GetUser`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct User {
    pub user_id: String,
    pub wallet_id: String,
    pub profile: serde_json::Value,
    /// The creator's organization (owner of the user's wallet).
    pub msp_id: String,
}

/// A multisig proposal: the stored record and the result of `GetProposal`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Proposal {
    pub proposal_id: String,
    pub from_wallet_id: String,
    pub to_wallet_id: String,
    pub amount: String,
    pub memo: String,
    pub threshold: u32,
    pub status: ProposalStatus,
    pub approvals: Vec<String>,
    pub rejections: Vec<String>,
}

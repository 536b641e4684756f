//! Request and response bodies of `/api/v1` (camelCase JSON; amounts are strings of
//! digits in minor units, never JSON numbers). Their OpenAPI schemas derive from these
//! types.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

// ---- commands ----

/// `POST /api/v1/admin/bootstrap`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BootstrapRequest {
    /// Id of the treasury wallet to create.
    #[schema(
        pattern = r"^[A-Za-z0-9._:@-]{1,128}$",
        min_length = 1,
        max_length = 128,
        example = "treasury"
    )]
    pub treasury_wallet_id: String,
    /// The supply minted into the treasury: a positive integer as a string of digits.
    #[schema(
        pattern = r"^[1-9][0-9]{0,38}$",
        min_length = 1,
        max_length = 39,
        example = "1000000"
    )]
    pub initial_supply: String,
    /// Idempotency key (alternative to the `Idempotency-Key` header).
    #[serde(default)]
    #[schema(min_length = 1, max_length = 200)]
    pub request_id: Option<String>,
}

/// `POST /api/v1/users`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateUserRequest {
    /// The user id (also its wallet id); letters, digits and `- _ . : @`, 1–128 characters.
    #[schema(
        pattern = r"^[A-Za-z0-9._:@-]{1,128}$",
        min_length = 1,
        max_length = 128,
        example = "alice"
    )]
    pub user_id: String,
    /// ISO 3166-1 alpha-2 country code (goes to the ledger).
    #[schema(pattern = r"^[A-Z]{2}$", example = "DE")]
    pub country: String,
    /// Personal data: kept in this organization's database only; the ledger gets a salted
    /// SHA-256 commitment to it.
    #[schema(value_type = Object)]
    pub profile: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    pub request_id: Option<String>,
}

/// `POST /api/v1/transfers` and `POST /api/v1/proposals`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TransferRequest {
    #[schema(
        pattern = r"^[A-Za-z0-9._:@-]{1,128}$",
        min_length = 1,
        max_length = 128,
        example = "alice"
    )]
    pub from_wallet_id: String,
    #[schema(
        pattern = r"^[A-Za-z0-9._:@-]{1,128}$",
        min_length = 1,
        max_length = 128,
        example = "bob"
    )]
    pub to_wallet_id: String,
    /// A positive integer as a string of digits (no sign, decimals, exponent or leading
    /// zeros; at most 2^128 − 1).
    #[schema(
        pattern = r"^[1-9][0-9]{0,38}$",
        min_length = 1,
        max_length = 39,
        example = "250"
    )]
    pub amount: String,
    /// At most 512 characters.
    #[serde(default)]
    #[schema(max_length = 512)]
    pub memo: Option<String>,
    #[serde(default)]
    pub request_id: Option<String>,
}

/// `POST /api/v1/multisig-wallets`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateMultisigWalletRequest {
    #[schema(
        pattern = r"^[A-Za-z0-9._:@-]{1,128}$",
        min_length = 1,
        max_length = 128,
        example = "vault"
    )]
    pub wallet_id: String,
    /// User ids, 1 to 32, each once; the caller must be one of them.
    #[schema(min_items = 1, max_items = 32)]
    pub owners: Vec<String>,
    /// Approvals needed to spend: 1 to the number of owners.
    #[schema(minimum = 1, maximum = 32, example = 2)]
    pub threshold: u32,
    #[serde(default)]
    pub request_id: Option<String>,
}

/// The answer to an accepted command (202; 200 for a repeat of the same idempotency key
/// with the same payload).
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Accepted {
    pub command_id: String,
    /// Always `accepted`: the command is durable in the outbox.
    #[schema(example = "accepted")]
    pub status: String,
    /// Where to follow the command: `GET` it, or `…/events` for server-sent events.
    pub status_url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wallet_id: Option<String>,
    /// The ledger's transfer id (derived from the command id).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transfer_id: Option<String>,
    /// The ledger's proposal id (derived from the command id).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proposal_id: Option<String>,
}

// ---- command status ----

/// Where a command is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CommandStatus {
    /// Durable in the outbox, not yet sent (or waiting for a retry).
    Accepted,
    /// Endorsed and sent to the ledger; waiting for the commit.
    Submitted,
    /// Committed valid on the ledger.
    Committed,
    /// Committed and applied to the read models (reads show it).
    Projected,
    /// Given up (dead letter); `error` says why. An operator may requeue it.
    Failed,
}

/// An error recorded on a command.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CommandErrorView {
    /// endorse, submit, commit_status, commit, validate, …
    pub stage: String,
    pub code: String,
    pub message: String,
}

/// `GET /api/v1/commands/{id}`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CommandView {
    pub command_id: String,
    /// The command type (`TRANSFER_TOKENS`, …).
    #[serde(rename = "type")]
    pub command_type: String,
    pub status: CommandStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tx_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub block_number: Option<u64>,
    /// The last error (a failed command's reason; a retried attempt's cause).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<CommandErrorView>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A command as operators see it (`GET /api/v1/admin/outbox`).
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OutboxCommand {
    #[serde(flatten)]
    pub command: CommandView,
    /// The outbox's own status (PENDING, PREPARED, SUBMITTED, COMMITTED, FAILED).
    pub outbox_status: String,
    /// Whose request it was (the token subject).
    pub tenant: String,
    pub request_id: String,
    /// The wallet whose order it keeps first of all (the paying or new wallet).
    pub partition_key: String,
    /// Every wallet whose order it keeps (its partition keys, `partitionKey` first): it
    /// goes to the ledger only when no older queued command touches any of them.
    pub partition_keys: Vec<String>,
    pub attempts: u32,
    pub requeues: u32,
    /// The payload (JSON).
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
}

/// A page of `GET /api/v1/admin/outbox`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OutboxPage {
    pub items: Vec<OutboxCommand>,
    /// Pass as `cursor` for the next page; `null` at the end.
    pub next_cursor: Option<String>,
}

/// `GET /api/v1/admin/outbox?status=&cursor=&limit=`.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct OutboxQuery {
    /// pending, prepared, submitted, committed, projected or failed (default failed).
    pub status: Option<String>,
    pub cursor: Option<String>,
    /// 1 to 200 (default 50).
    pub limit: Option<u32>,
}

/// `GET /api/v1/admin/outbox/counts`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OutboxCounts {
    pub pending: u64,
    pub prepared: u64,
    pub submitted: u64,
    pub committed: u64,
    /// Committed and applied to the read models.
    pub projected: u64,
    pub failed: u64,
    pub total: u64,
}

/// `GET /api/v1/admin/projector`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProjectorSnapshot {
    /// starting, reconciling, running, retrying, halted, stopped.
    pub state: String,
    /// Last block applied to the read models.
    pub projected_block: Option<u64>,
    /// Last block in the checkpoint log.
    pub checkpoint_height: Option<u64>,
    /// The ledger's height as last seen, when known.
    pub ledger_height: Option<u64>,
    /// How far the read models are behind the ledger, in seconds, when known.
    pub lag_seconds: Option<f64>,
    /// Why it is retrying or halted.
    pub last_error: Option<String>,
    pub last_projected_at: Option<DateTime<Utc>>,
}

// ---- wallets ----

/// `GET /api/v1/wallets/{id}`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WalletView {
    pub wallet_id: String,
    /// treasury, user or multisig.
    pub kind: String,
    /// A non-negative integer as a string of digits.
    pub balance: String,
    pub owners: Vec<String>,
    /// Multisig wallets: approvals needed to spend.
    pub threshold: Option<i32>,
    pub updated_at: DateTime<Utc>,
}

/// `in` (credit) or `out` (debit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    In,
    Out,
}

/// One entry of a wallet's history.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WalletTransactionView {
    pub tx_id: String,
    pub block_number: i64,
    pub timestamp: DateTime<Utc>,
    pub direction: Direction,
    /// The other side (absent for the initial mint).
    pub counterparty_wallet_id: Option<String>,
    pub amount: String,
    pub memo: Option<String>,
    /// The ledger's transfer id (the proposal id for a multisig transfer).
    pub transfer_id: String,
}

/// A page of a wallet's history, newest first.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WalletTransactionsPage {
    pub items: Vec<WalletTransactionView>,
    /// Opaque; pass as `cursor` for the next (older) page; `null` at the end.
    pub next_cursor: Option<String>,
}

/// `GET /api/v1/wallets/{id}/transactions?limit=&cursor=`.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// 1 to 200 (default 50).
    pub limit: Option<u32>,
    /// From the previous page's `nextCursor`.
    pub cursor: Option<String>,
}

// ---- users ----

/// `GET /api/v1/users/{id}`: the ledger's user joined with the organization's profile.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserView {
    pub user_id: String,
    /// The user is on the ledger (projected); false while its creation is on its way.
    pub on_ledger: bool,
    pub country: Option<String>,
    /// Hex SHA-256(salt ‖ profile JSON) as recorded on the ledger.
    pub profile_commitment: Option<String>,
    /// The personal data (this organization's database only).
    #[schema(value_type = Option<Object>)]
    pub profile: Option<serde_json::Value>,
    /// The user's wallet (same id).
    pub wallet_id: String,
    pub created_at: Option<DateTime<Utc>>,
}

// ---- proposals ----

/// A decision on a proposal.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DecisionItem {
    pub approver_id: String,
    /// approve or reject.
    pub decision: String,
    pub tx_id: String,
    pub block_number: i64,
    pub timestamp: DateTime<Utc>,
}

/// A multisig transfer proposal.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProposalView {
    pub proposal_id: String,
    /// The multisig wallet it spends from.
    pub wallet_id: String,
    pub to_wallet_id: String,
    pub amount: String,
    pub memo: Option<String>,
    /// pending, executed or rejected.
    pub state: String,
    pub threshold: i32,
    pub approvals: i32,
    pub rejections: i32,
    /// Who may decide: the wallet's owners.
    pub owners: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub closed_at: Option<DateTime<Utc>>,
    /// Every decision (`GET /api/v1/proposals/{id}`; empty in lists).
    pub decisions: Vec<DecisionItem>,
}

/// `GET /api/v1/proposals`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProposalList {
    pub items: Vec<ProposalView>,
}

/// `GET /api/v1/proposals?approver=&status=`.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ProposalQuery {
    /// An owner; default the caller (only admins may name another).
    pub approver: Option<String>,
    /// pending (only those the approver has not decided on), executed, rejected, or all
    /// (default pending).
    pub status: Option<String>,
    /// 1 to 200 (default 50).
    pub limit: Option<u32>,
}

// ---- problems (documentation only: the body is built by `problem.rs`) ----

/// RFC 9457 problem details (`application/problem+json`).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ProblemDoc {
    /// `urn:gxd:problem:<code>`.
    #[serde(rename = "type")]
    pub type_: String,
    pub title: String,
    pub status: u16,
    /// bad-request, validation-failed, unauthenticated, forbidden, not-found,
    /// method-not-allowed, conflict, payload-too-large, unsupported-media-type,
    /// rate-limited, unavailable, timeout, internal.
    pub code: String,
    pub detail: Option<String>,
    pub instance: Option<String>,
    /// The fields at fault (400, 422).
    pub errors: Option<Vec<FieldError>>,
    /// The existing command (409 on a reused idempotency key).
    pub command_id: Option<String>,
}

/// A field at fault.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FieldError {
    /// The JSON field (`amount`, `owners[1]`), query parameter or header.
    pub field: String,
    pub message: String,
}

//! The command routes: validate → authorize (read models) → accept into the outbox →
//! 202 once durable. Each command's partition keys are the wallets it touches on the
//! ledger, so the engine keeps acceptance order on every one of them and never has two
//! commands touching one wallet in flight (GX's transactions read the wallets they write:
//! two in one block would be an MVCC conflict of gxd's own making):
//!
//! | command | partition keys |
//! |---|---|
//! | transfer | the paying wallet, the payee |
//! | proposal | the multisig wallet, the payee |
//! | approve / reject | the proposal's multisig wallet, its payee (the approval that reaches the threshold moves funds to it) |
//! | create user / multisig wallet | the new wallet |
//! | bootstrap | the treasury |

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use gxd_gx::commands::{self as gx, command_type};
use gxd_storage::StorageError;
use gxd_storage::outbox::{Command, CommandId, NewCommand, Status};
use gxd_storage::pg::read_models::{self, ProfileRow, WalletRow};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::json::{ApiJson, ApiPath};
use super::types::{
    Accepted, BootstrapRequest, CreateMultisigWalletRequest, CreateUserRequest, TransferRequest,
};
use super::validate::{self, FieldErrors, invalid};
use super::{V1, pg_problem, v1};
use crate::ApiState;
use crate::auth::{AdminPrincipal, Principal};
use crate::problem::{ErrorCode, Problem};

/// The idempotency header.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// The request's idempotency key: the `Idempotency-Key` header or the body's `requestId`
/// (equal if both are given); `None` if neither is.
fn client_key(headers: &HeaderMap, body: Option<&str>) -> Result<Option<String>, Problem> {
    let header = match headers.get(IDEMPOTENCY_KEY) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .map_err(|_| invalid("Idempotency-Key", "must be visible ASCII"))?
                .to_owned(),
        ),
    };
    if let Some(h) = &header {
        validate::request_id(h).map_err(|m| invalid("Idempotency-Key", m))?;
    }
    if let Some(b) = body {
        validate::request_id(b).map_err(|m| invalid("requestId", m))?;
    }
    match (header, body) {
        (Some(h), Some(b)) if h != b => Err(invalid(
            "requestId",
            "differs from the Idempotency-Key header; give one, or both equal",
        )),
        (Some(h), _) => Ok(Some(h)),
        (None, Some(b)) => Ok(Some(b.to_owned())),
        (None, None) => Ok(None),
    }
}

/// A command about to be accepted.
struct Pending<'a> {
    principal: &'a Principal,
    command_type: &'static str,
    /// The client's key, or a fresh one (then the request is not idempotent).
    request_id: String,
    /// The first partition key (the paying or new wallet).
    partition_key: String,
    /// The other wallets the command touches.
    extra_partition_keys: Vec<String>,
    payload: Vec<u8>,
}

/// Whether a key is already known: then its checks against the current state are skipped
/// (the outbox answers the repeat — the original command, or 409 for another payload).
fn known(v1: &V1, principal: &Principal, key: Option<&str>) -> Result<Option<Command>, Problem> {
    match key {
        None => Ok(None),
        Some(k) => v1
            .deps
            .outbox
            .find_by_request_id(&principal.subject, k)
            .map_err(|e| storage_problem(&e)),
    }
}

fn storage_problem(e: &StorageError) -> Problem {
    match e {
        StorageError::Conflict { existing, .. } => Problem::new(ErrorCode::Conflict)
            .with_detail(
                "this idempotency key was used for another request; use a new key for a new \
                 request",
            )
            .with_extension("commandId", serde_json::json!(existing.to_string())),
        e => {
            if matches!(
                e.kind(),
                gxd_storage::ErrorKind::Unavailable | gxd_storage::ErrorKind::Corrupt
            ) {
                tracing::error!(error = %e, "outbox refused a command");
            }
            Problem::from(e)
        }
    }
}

fn encode<T: Serialize>(payload: &T) -> Result<Vec<u8>, Problem> {
    serde_json::to_vec(payload).map_err(|e| {
        tracing::error!(error = %e, "cannot encode a command payload");
        Problem::new(ErrorCode::Internal)
    })
}

/// Accepts the command (durable when this returns) and answers 202, or 200 with the
/// original command for a repeat.
async fn accept(
    v1: &V1,
    pending: Pending<'_>,
    ids: impl FnOnce(&Command) -> Accepted,
) -> Result<(Command, Response), Problem> {
    let outcome = v1
        .deps
        .outbox
        .enqueue(NewCommand {
            tenant: pending.principal.subject.clone(),
            command_type: pending.command_type.to_owned(),
            request_id: pending.request_id,
            partition_key: pending.partition_key,
            extra_partition_keys: pending.extra_partition_keys,
            payload: pending.payload,
        })
        .await
        .map_err(|e| storage_problem(&e))?;
    let command = outcome.command;
    if command.command_type != pending.command_type {
        // Same key, same payload digest, another type cannot happen (the digest covers the
        // type); kept as a guard.
        return Err(Problem::new(ErrorCode::Conflict)
            .with_detail("this idempotency key was used for another kind of command"));
    }
    let body = ids(&command);
    let status = if outcome.created {
        if let Some(wake) = &v1.deps.on_enqueue {
            wake();
        }
        tracing::info!(command_id = %command.id, command_type = %command.command_type, "command accepted");
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    let mut response = (status, Json(&body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&body.status_url) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    Ok((command, response))
}

/// The `Accepted` body of a command.
pub(crate) fn accepted(command: &Command) -> Accepted {
    Accepted {
        command_id: command.id.to_string(),
        status: "accepted".to_owned(),
        status_url: format!("/api/v1/commands/{}", command.id),
        user_id: None,
        wallet_id: None,
        transfer_id: None,
        proposal_id: None,
    }
}

fn fresh_key() -> String {
    format!("auto-{}", CommandId::new_v7())
}

async fn wallet(v1: &V1, id: &str) -> Result<Option<WalletRow>, Problem> {
    v1.wallet(id).await.map_err(|e| pg_problem(&e))
}

fn owns(wallet: &WalletRow, subject: &str) -> bool {
    wallet.owners.iter().any(|o| o == subject)
}

fn forbidden(detail: impl Into<String>) -> Problem {
    Problem::new(ErrorCode::Forbidden).with_detail(detail)
}

fn conflict(detail: impl Into<String>) -> Problem {
    Problem::new(ErrorCode::Conflict).with_detail(detail)
}

/// Bootstrap the GX system: the treasury wallet and the initial supply (admins, once).
#[utoipa::path(
    post,
    path = "/api/v1/admin/bootstrap",
    tag = "commands",
    request_body = BootstrapRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Idempotency key (1–200 visible ASCII characters)")),
    responses(
        (status = 202, description = "Accepted (durable)", body = Accepted),
        (status = 200, description = "A repeat of an accepted request: the original command", body = Accepted),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn bootstrap(
    State(state): State<ApiState>,
    AdminPrincipal(principal): AdminPrincipal,
    headers: HeaderMap,
    ApiJson(req): ApiJson<BootstrapRequest>,
) -> Result<Response, Problem> {
    let v1 = v1(&state)?;
    let key = client_key(&headers, req.request_id.as_deref())?;
    let mut errors = FieldErrors::new();
    errors.check("treasuryWalletId", validate::id(&req.treasury_wallet_id));
    errors.check(
        "initialSupply",
        validate::amount(&req.initial_supply).map(drop),
    );
    errors.into_result()?;
    if known(v1, &principal, key.as_deref())?.is_none()
        && wallet(v1, &req.treasury_wallet_id).await?.is_some()
    {
        return Err(conflict(format!(
            "wallet {} already exists",
            req.treasury_wallet_id
        )));
    }
    let payload = encode(&gx::BootstrapSystem {
        treasury_wallet_id: req.treasury_wallet_id.clone(),
        initial_supply: req.initial_supply,
    })?;
    let (_, response) = accept(
        v1,
        Pending {
            principal: &principal,
            command_type: command_type::BOOTSTRAP_SYSTEM,
            request_id: key.unwrap_or_else(fresh_key),
            partition_key: req.treasury_wallet_id.clone(),
            extra_partition_keys: Vec::new(),
            payload,
        },
        |c| Accepted {
            wallet_id: Some(req.treasury_wallet_id.clone()),
            ..accepted(c)
        },
    )
    .await?;
    Ok(response)
}

/// The profile as canonical JSON: compact, object keys sorted at every level (what the
/// commitment is computed over, and how two profiles are compared).
pub(crate) fn canonical_json(value: &serde_json::Value) -> String {
    fn write(v: &serde_json::Value, out: &mut String) {
        match v {
            serde_json::Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                out.push('{');
                for (i, k) in keys.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&serde_json::Value::String(k.clone()).to_string());
                    out.push(':');
                    if let Some(v) = map.get(k) {
                        write(v, out);
                    }
                }
                out.push('}');
            }
            serde_json::Value::Array(items) => {
                out.push('[');
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write(v, out);
                }
                out.push(']');
            }
            other => out.push_str(&other.to_string()),
        }
    }
    let mut out = String::new();
    write(value, &mut out);
    out
}

/// Hex SHA-256(salt ‖ canonical profile JSON).
pub(crate) fn commitment(salt: &[u8], canonical_profile: &str) -> String {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(canonical_profile.as_bytes());
    hex::encode(h.finalize())
}

/// A new profile row with a random salt and a reservation id in place of the command id.
fn new_profile_row(user_id: &str, canonical: &str) -> ProfileRow {
    let salt: [u8; 16] = rand::random();
    ProfileRow {
        user_id: user_id.to_owned(),
        profile_json: canonical.to_owned(),
        salt: salt.to_vec(),
        commitment: commitment(&salt, canonical),
        command_id: CommandId::new_v7(),
    }
}

fn same_profile(row: &ProfileRow, canonical: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(&row.profile_json)
        .is_ok_and(|v| canonical_json(&v) == canonical)
}

/// Create a user and its wallet (admins, or the token's own subject). The profile stays in
/// this organization's database; the ledger gets the user id, the country and a salted
/// commitment to the profile.
///
/// Two writes, made safe by their order and keys: (1) the profile row is stored first
/// (keyed by user id; a repeat with the same profile reuses the stored salt, so the
/// commitment and hence the command's payload are the same), (2) the command is enqueued
/// (idempotent by (subject, request id)), (3) the row is linked to the command id. A crash
/// after (1) leaves a profile that the retry reuses; after (2) a command whose commitment
/// matches the stored profile (the link is bookkeeping, redone by the retry).
#[utoipa::path(
    post,
    path = "/api/v1/users",
    tag = "commands",
    request_body = CreateUserRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Idempotency key")),
    responses(
        (status = 202, description = "Accepted (durable)", body = Accepted),
        (status = 200, description = "A repeat: the original command", body = Accepted),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn create_user(
    State(state): State<ApiState>,
    principal: Principal,
    headers: HeaderMap,
    ApiJson(req): ApiJson<CreateUserRequest>,
) -> Result<Response, Problem> {
    let v1 = v1(&state)?;
    let key = client_key(&headers, req.request_id.as_deref())?;
    let profile = serde_json::Value::Object(req.profile);
    let canonical = canonical_json(&profile);
    let mut errors = FieldErrors::new();
    errors.check("userId", validate::id(&req.user_id));
    errors.check("country", validate::country(&req.country));
    errors.check("profile", validate::profile(&profile));
    if canonical.len() > validate::MAX_PROFILE_BYTES {
        errors.add(
            "profile",
            format!(
                "must be at most {} bytes as JSON",
                validate::MAX_PROFILE_BYTES
            ),
        );
    }
    errors.into_result()?;
    if !principal.is_admin() && principal.subject != req.user_id {
        return Err(forbidden(
            "a user may create only itself (userId = the token's subject)",
        ));
    }
    let pool = &v1.deps.pool;
    let is_known = known(v1, &principal, key.as_deref())?.is_some();
    if !is_known {
        let view = read_models::user_view(pool, &req.user_id)
            .await
            .map_err(|e| pg_problem(&e))?;
        if view.is_some_and(|u| u.on_ledger) {
            return Err(conflict(format!("user {} already exists", req.user_id)));
        }
    }
    // (1) The profile row: the stored one if it holds this profile.
    let existing = read_models::profile(pool, &req.user_id)
        .await
        .map_err(|e| pg_problem(&e))?;
    let row = match existing {
        Some(row) if same_profile(&row, &canonical) => {
            // Under a new key, a creation already on its way is not started twice.
            if !is_known
                && let Ok(c) = v1.deps.outbox.get(row.command_id)
                && c.status != Status::Failed
            {
                return Err(conflict(format!(
                    "user {} is being created by command {}",
                    req.user_id, c.id
                ))
                .with_extension("commandId", serde_json::json!(c.id.to_string())));
            }
            row
        }
        Some(row) => {
            // Another profile: replaceable only if its creation failed for good.
            let failed = match v1.deps.outbox.get(row.command_id) {
                Ok(c) => c.status == Status::Failed,
                Err(StorageError::NotFound { .. }) => false,
                Err(e) => return Err(storage_problem(&e)),
            };
            let replacement = new_profile_row(&req.user_id, &canonical);
            if !failed
                || !read_models::replace_profile(pool, row.command_id, &replacement)
                    .await
                    .map_err(|e| pg_problem(&e))?
            {
                return Err(conflict(format!(
                    "user {} has another profile on its way to the ledger",
                    req.user_id
                )));
            }
            replacement
        }
        None => {
            let stored =
                read_models::reserve_profile(pool, &new_profile_row(&req.user_id, &canonical))
                    .await
                    .map_err(|e| pg_problem(&e))?;
            if !same_profile(&stored, &canonical) {
                return Err(conflict(format!(
                    "user {} has another profile on its way to the ledger",
                    req.user_id
                )));
            }
            stored
        }
    };
    // (2) The command.
    let payload = encode(&gx::CreateUser {
        user_id: req.user_id.clone(),
        country: req.country,
        profile_commitment: row.commitment.clone(),
    })?;
    let (command, response) = accept(
        v1,
        Pending {
            principal: &principal,
            command_type: command_type::CREATE_USER,
            request_id: key.unwrap_or_else(fresh_key),
            partition_key: req.user_id.clone(),
            extra_partition_keys: Vec::new(),
            payload,
        },
        |c| Accepted {
            user_id: Some(req.user_id.clone()),
            wallet_id: Some(req.user_id.clone()),
            ..accepted(c)
        },
    )
    .await?;
    // (3) The link (bookkeeping: the command is durable, the profile stored).
    if let Err(e) =
        read_models::link_profile_command(pool, &req.user_id, &row.commitment, command.id).await
    {
        tracing::warn!(error = %e, command_id = %command.id, "could not link the profile to its command");
    }
    Ok(response)
}

/// Validates a transfer or proposal body; returns the source wallet after the caller's
/// right to spend from it (`may_spend`) is checked.
async fn checked_transfer(
    v1: &V1,
    req: &TransferRequest,
    may_spend: impl Fn(&WalletRow) -> Result<(), Problem>,
) -> Result<WalletRow, Problem> {
    let mut errors = FieldErrors::new();
    errors.check("fromWalletId", validate::id(&req.from_wallet_id));
    errors.check("toWalletId", validate::id(&req.to_wallet_id));
    errors.check("amount", validate::amount(&req.amount).map(drop));
    if let Some(m) = &req.memo {
        errors.check("memo", validate::memo(m));
    }
    errors.into_result()?;
    let Some(from) = wallet(v1, &req.from_wallet_id).await? else {
        return Err(invalid("fromWalletId", "no such wallet"));
    };
    may_spend(&from)?;
    if wallet(v1, &req.to_wallet_id).await?.is_none() {
        return Err(invalid("toWalletId", "no such wallet"));
    }
    Ok(from)
}

/// Move tokens from a wallet the caller owns (admins: also from the treasury).
#[utoipa::path(
    post,
    path = "/api/v1/transfers",
    tag = "commands",
    request_body = TransferRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Idempotency key")),
    responses(
        (status = 202, description = "Accepted (durable); `transferId` is the ledger's id", body = Accepted),
        (status = 200, description = "A repeat: the original command", body = Accepted),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn create_transfer(
    State(state): State<ApiState>,
    principal: Principal,
    headers: HeaderMap,
    ApiJson(req): ApiJson<TransferRequest>,
) -> Result<Response, Problem> {
    let v1 = v1(&state)?;
    let key = client_key(&headers, req.request_id.as_deref())?;
    let from = checked_transfer(v1, &req, |w| {
        let treasury = w.kind == "treasury" && principal.is_admin();
        if !owns(w, &principal.subject) && !treasury {
            return Err(forbidden(format!(
                "only an owner may spend from wallet {}",
                w.wallet_id
            )));
        }
        if w.kind == "multisig" {
            return Err(invalid(
                "fromWalletId",
                "is a multisig wallet: propose the transfer (POST /api/v1/proposals)",
            ));
        }
        Ok(())
    })
    .await?;
    let payee = req.to_wallet_id.clone();
    let payload = encode(&gx::Transfer {
        from_wallet_id: req.from_wallet_id.clone(),
        to_wallet_id: req.to_wallet_id,
        amount: req.amount,
        memo: req.memo,
    })?;
    let (_, response) = accept(
        v1,
        Pending {
            principal: &principal,
            command_type: command_type::TRANSFER_TOKENS,
            request_id: key.unwrap_or_else(fresh_key),
            partition_key: from.wallet_id,
            extra_partition_keys: vec![payee],
            payload,
        },
        |c| Accepted {
            transfer_id: Some(gx::ledger_id(c.id)),
            ..accepted(c)
        },
    )
    .await?;
    Ok(response)
}

/// Create a multi-signature wallet; the caller must be among its owners.
#[utoipa::path(
    post,
    path = "/api/v1/multisig-wallets",
    tag = "commands",
    request_body = CreateMultisigWalletRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Idempotency key")),
    responses(
        (status = 202, description = "Accepted (durable)", body = Accepted),
        (status = 200, description = "A repeat: the original command", body = Accepted),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn create_multisig_wallet(
    State(state): State<ApiState>,
    principal: Principal,
    headers: HeaderMap,
    ApiJson(req): ApiJson<CreateMultisigWalletRequest>,
) -> Result<Response, Problem> {
    let v1 = v1(&state)?;
    let key = client_key(&headers, req.request_id.as_deref())?;
    let mut errors = FieldErrors::new();
    errors.check("walletId", validate::id(&req.wallet_id));
    if req.owners.is_empty() || req.owners.len() > validate::MAX_OWNERS {
        errors.add(
            "owners",
            format!("must list 1 to {} owners", validate::MAX_OWNERS),
        );
    }
    for (i, owner) in req.owners.iter().enumerate() {
        let field = format!("owners[{i}]");
        errors.check(&field, validate::id(owner));
        if req.owners[..i].contains(owner) {
            errors.add(field, "is listed twice");
        }
    }
    if req.threshold == 0 || req.threshold as usize > req.owners.len().max(1) {
        errors.add("threshold", "must be between 1 and the number of owners");
    }
    errors.into_result()?;
    if !principal.is_admin() && !req.owners.contains(&principal.subject) {
        return Err(forbidden("the caller must be one of the owners"));
    }
    if known(v1, &principal, key.as_deref())?.is_none() {
        if wallet(v1, &req.wallet_id).await?.is_some() {
            return Err(conflict(format!("wallet {} already exists", req.wallet_id)));
        }
        let existing = read_models::existing_users(&v1.deps.pool, &req.owners)
            .await
            .map_err(|e| pg_problem(&e))?;
        let unknown: Vec<&str> = req
            .owners
            .iter()
            .filter(|o| !existing.contains(o))
            .map(String::as_str)
            .collect();
        if !unknown.is_empty() {
            return Err(invalid(
                "owners",
                format!("not users (yet): {}", unknown.join(", ")),
            ));
        }
    }
    let payload = encode(&gx::CreateMultisigWallet {
        wallet_id: req.wallet_id.clone(),
        owners: req.owners,
        threshold: req.threshold,
    })?;
    let (_, response) = accept(
        v1,
        Pending {
            principal: &principal,
            command_type: command_type::CREATE_MULTISIG_WALLET,
            request_id: key.unwrap_or_else(fresh_key),
            partition_key: req.wallet_id.clone(),
            extra_partition_keys: Vec::new(),
            payload,
        },
        |c| Accepted {
            wallet_id: Some(req.wallet_id.clone()),
            ..accepted(c)
        },
    )
    .await?;
    Ok(response)
}

/// Propose a transfer from a multisig wallet the caller co-owns.
#[utoipa::path(
    post,
    path = "/api/v1/proposals",
    tag = "commands",
    request_body = TransferRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Idempotency key")),
    responses(
        (status = 202, description = "Accepted (durable); `proposalId` is the ledger's id", body = Accepted),
        (status = 200, description = "A repeat: the original command", body = Accepted),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn create_proposal(
    State(state): State<ApiState>,
    principal: Principal,
    headers: HeaderMap,
    ApiJson(req): ApiJson<TransferRequest>,
) -> Result<Response, Problem> {
    let v1 = v1(&state)?;
    let key = client_key(&headers, req.request_id.as_deref())?;
    let from = checked_transfer(v1, &req, |w| {
        if w.kind != "multisig" {
            return Err(invalid("fromWalletId", "is not a multisig wallet"));
        }
        if !owns(w, &principal.subject) {
            return Err(forbidden(format!(
                "only an owner may propose transfers from wallet {}",
                w.wallet_id
            )));
        }
        Ok(())
    })
    .await?;
    let payee = req.to_wallet_id.clone();
    let payload = encode(&gx::Transfer {
        from_wallet_id: req.from_wallet_id.clone(),
        to_wallet_id: req.to_wallet_id,
        amount: req.amount,
        memo: req.memo,
    })?;
    let (_, response) = accept(
        v1,
        Pending {
            principal: &principal,
            command_type: command_type::PROPOSE_TRANSFER,
            request_id: key.unwrap_or_else(fresh_key),
            partition_key: from.wallet_id,
            extra_partition_keys: vec![payee],
            payload,
        },
        |c| Accepted {
            proposal_id: Some(gx::ledger_id(c.id)),
            ..accepted(c)
        },
    )
    .await?;
    Ok(response)
}

async fn decide(
    state: ApiState,
    principal: Principal,
    headers: HeaderMap,
    proposal_id: String,
    approve: bool,
) -> Result<Response, Problem> {
    let v1 = v1(&state)?;
    validate::id(&proposal_id).map_err(|m| invalid("id", m))?;
    let (verb, ty) = if approve {
        ("approve", command_type::APPROVE_TRANSFER)
    } else {
        ("reject", command_type::REJECT_TRANSFER)
    };
    // Without a key, one decision per (caller, proposal): a repeat is the same command.
    let key = client_key(&headers, None)?.unwrap_or_else(|| format!("{verb}:{proposal_id}"));
    let Some(p) = read_models::proposal_view(&v1.deps.pool, &proposal_id)
        .await
        .map_err(|e| pg_problem(&e))?
    else {
        return Err(Problem::new(ErrorCode::NotFound).with_detail(format!(
            "no proposal {proposal_id} (yet) in the read models"
        )));
    };
    if !p.owners.contains(&principal.subject) {
        return Err(forbidden(format!(
            "only an owner of wallet {} may decide on its proposals",
            p.wallet_id
        )));
    }
    if known(v1, &principal, Some(&key))?.is_none() {
        if p.state != "pending" {
            return Err(conflict(format!(
                "proposal {proposal_id} is no longer pending ({})",
                p.state
            )));
        }
        if p.decisions
            .iter()
            .any(|d| d.approver_id == principal.subject)
        {
            return Err(conflict(format!(
                "{} has already decided on proposal {proposal_id}",
                principal.subject
            )));
        }
    }
    let payload = encode(&gx::Decision {
        proposal_id: proposal_id.clone(),
        approver_id: principal.subject.clone(),
    })?;
    let (_, response) = accept(
        v1,
        Pending {
            principal: &principal,
            command_type: ty,
            request_id: key,
            partition_key: p.wallet_id.clone(),
            extra_partition_keys: vec![p.to_wallet_id.clone()],
            payload,
        },
        |c| Accepted {
            proposal_id: Some(proposal_id.clone()),
            ..accepted(c)
        },
    )
    .await?;
    Ok(response)
}

/// Approve a pending proposal (an owner of its wallet who has not decided); the approval
/// that reaches the threshold executes the transfer.
#[utoipa::path(
    post,
    path = "/api/v1/proposals/{id}/approve",
    tag = "commands",
    params(
        ("id" = String, Path, description = "The proposal id"),
        ("Idempotency-Key" = Option<String>, Header, description = "Idempotency key (default: one decision per caller and proposal)"),
    ),
    responses(
        (status = 202, description = "Accepted (durable)", body = Accepted),
        (status = 200, description = "A repeat: the original command", body = Accepted),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn approve_proposal(
    State(state): State<ApiState>,
    principal: Principal,
    headers: HeaderMap,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, Problem> {
    decide(state, principal, headers, id, true).await
}

/// Reject a pending proposal (an owner of its wallet who has not decided).
#[utoipa::path(
    post,
    path = "/api/v1/proposals/{id}/reject",
    tag = "commands",
    params(
        ("id" = String, Path, description = "The proposal id"),
        ("Idempotency-Key" = Option<String>, Header, description = "Idempotency key (default: one decision per caller and proposal)"),
    ),
    responses(
        (status = 202, description = "Accepted (durable)", body = Accepted),
        (status = 200, description = "A repeat: the original command", body = Accepted),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn reject_proposal(
    State(state): State<ApiState>,
    principal: Principal,
    headers: HeaderMap,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, Problem> {
    decide(state, principal, headers, id, false).await
}

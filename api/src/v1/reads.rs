//! The read routes: command status (outbox), wallets, history, users and proposals
//! (PostgreSQL read models). A user sees only its own commands, the wallets it owns, its
//! own user record and the proposals of its wallets; admins see everything.

use axum::Json;
use axum::extract::State;
use gxd_storage::StorageError;
use gxd_storage::outbox::{Command, CommandId, Status};
use gxd_storage::pg::read_models::{self, HistoryCursor};

use super::json::{ApiPath, ApiQuery};
use super::types::{
    CommandErrorView, CommandStatus, CommandView, DecisionItem, Direction, PageQuery, ProposalList,
    ProposalQuery, ProposalView, UserView, WalletTransactionView, WalletTransactionsPage,
    WalletView,
};
use super::validate::{self, invalid};
use super::{V1, pg_problem, v1};
use crate::ApiState;
use crate::auth::Principal;
use crate::problem::{ErrorCode, Problem};

/// The API's status of a command: the outbox's, with `projected` once its transaction is
/// in the read models. The one place the mapping lives.
pub(crate) fn api_status(status: Status, projected: bool) -> CommandStatus {
    match status {
        Status::Pending => CommandStatus::Accepted,
        Status::Prepared | Status::Submitted => CommandStatus::Submitted,
        Status::Committed if projected => CommandStatus::Projected,
        Status::Committed => CommandStatus::Committed,
        Status::Projected => CommandStatus::Projected,
        Status::Failed => CommandStatus::Failed,
    }
}

/// Whether a committed command's transaction has been applied to the read models.
async fn is_projected(v1: &V1, command: &Command) -> Result<bool, Problem> {
    match (&command.status, &command.txid) {
        (Status::Committed, Some(tx)) => {
            read_models::transaction_projected(&v1.deps.pool, &v1.deps.channel, tx)
                .await
                .map_err(|e| pg_problem(&e))
        }
        _ => Ok(false),
    }
}

/// The view of a command with the status it has now.
pub(crate) async fn command_view(v1: &V1, command: &Command) -> Result<CommandView, Problem> {
    let projected = is_projected(v1, command).await?;
    Ok(view_with(command, projected))
}

pub(crate) fn view_with(command: &Command, projected: bool) -> CommandView {
    CommandView {
        command_id: command.id.to_string(),
        command_type: command.command_type.clone(),
        status: api_status(command.status, projected),
        tx_id: command.txid.clone(),
        block_number: command.block_number,
        error: command.last_error.as_ref().map(|e| CommandErrorView {
            stage: e.stage.clone(),
            code: e.code.clone(),
            message: e.message.clone(),
        }),
        created_at: command.created_at,
        updated_at: command.updated_at,
    }
}

/// The command `id` if the caller may see it (its own, or any for admins); 404 otherwise
/// (another caller's command is not acknowledged to exist).
pub(crate) fn visible_command(
    v1: &V1,
    principal: &Principal,
    id: &str,
) -> Result<Command, Problem> {
    let not_found = || Problem::new(ErrorCode::NotFound).with_detail(format!("no command {id}"));
    let command_id: CommandId = id.parse().map_err(|_| not_found())?;
    let command = match v1.deps.outbox.get(command_id) {
        Ok(c) => c,
        Err(StorageError::NotFound { .. }) => return Err(not_found()),
        Err(e) => return Err(Problem::from(&e)),
    };
    if !principal.is_admin() && command.tenant != principal.subject {
        return Err(not_found());
    }
    Ok(command)
}

/// A command's status.
#[utoipa::path(
    get,
    path = "/api/v1/commands/{id}",
    tag = "reads",
    params(("id" = String, Path, description = "The command id (from the 202)")),
    responses((status = 200, description = "The command", body = CommandView)),
    security(("bearer" = [])),
)]
pub(crate) async fn get_command(
    State(state): State<ApiState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<CommandView>, Problem> {
    let v1 = v1(&state)?;
    let command = visible_command(v1, &principal, &id)?;
    Ok(Json(command_view(v1, &command).await?))
}

/// The wallet `id` if the caller may see it: 404 if it does not exist, 403 if it is not
/// the caller's (admins see all).
async fn visible_wallet(
    v1: &V1,
    principal: &Principal,
    id: &str,
) -> Result<read_models::WalletRow, Problem> {
    validate::id(id).map_err(|m| invalid("id", m))?;
    let Some(w) = v1.wallet(id).await.map_err(|e| pg_problem(&e))? else {
        return Err(Problem::new(ErrorCode::NotFound).with_detail(format!("no wallet {id}")));
    };
    if !principal.is_admin() && !w.owners.contains(&principal.subject) {
        return Err(Problem::new(ErrorCode::Forbidden)
            .with_detail(format!("wallet {id} is not one of the caller's")));
    }
    Ok(w)
}

/// A wallet: balance, owners, threshold.
#[utoipa::path(
    get,
    path = "/api/v1/wallets/{id}",
    tag = "reads",
    params(("id" = String, Path, description = "The wallet id")),
    responses((status = 200, description = "The wallet", body = WalletView)),
    security(("bearer" = [])),
)]
pub(crate) async fn get_wallet(
    State(state): State<ApiState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<WalletView>, Problem> {
    let v1 = v1(&state)?;
    let w = visible_wallet(v1, &principal, &id).await?;
    Ok(Json(WalletView {
        wallet_id: w.wallet_id,
        kind: w.kind,
        balance: w.balance,
        owners: w.owners,
        threshold: w.threshold,
        updated_at: w.updated_at,
    }))
}

/// The opaque cursor of a history position (hex of `block:index:direction`).
fn encode_cursor(c: &HistoryCursor) -> String {
    hex::encode(format!("{}:{}:{}", c.block_number, c.tx_index, c.direction))
}

fn decode_cursor(s: &str) -> Option<HistoryCursor> {
    let text = String::from_utf8(hex::decode(s).ok()?).ok()?;
    let mut parts = text.splitn(3, ':');
    let block_number = parts.next()?.parse::<i64>().ok()?;
    let tx_index = parts.next()?.parse::<i32>().ok()?;
    let direction = parts.next()?;
    if block_number < 0 || tx_index < 0 || !matches!(direction, "debit" | "credit") {
        return None;
    }
    Some(HistoryCursor {
        block_number,
        tx_index,
        direction: direction.to_owned(),
    })
}

/// A wallet's transactions, newest first (a total order: block, index in the block,
/// direction), a page at a time.
#[utoipa::path(
    get,
    path = "/api/v1/wallets/{id}/transactions",
    tag = "reads",
    params(("id" = String, Path, description = "The wallet id"), PageQuery),
    responses((status = 200, description = "A page of the history", body = WalletTransactionsPage)),
    security(("bearer" = [])),
)]
pub(crate) async fn wallet_transactions(
    State(state): State<ApiState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Json<WalletTransactionsPage>, Problem> {
    let v1 = v1(&state)?;
    let limit = validate::limit(q.limit)?;
    let after = match q.cursor.as_deref() {
        None => None,
        Some(c) => {
            Some(decode_cursor(c).ok_or_else(|| invalid("cursor", "not a cursor of this API"))?)
        }
    };
    let w = visible_wallet(v1, &principal, &id).await?;
    let mut rows =
        read_models::wallet_transactions(&v1.deps.pool, &w.wallet_id, after.as_ref(), limit + 1)
            .await
            .map_err(|e| pg_problem(&e))?;
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let next_cursor = if more {
        rows.last().map(|r| encode_cursor(&r.cursor()))
    } else {
        None
    };
    Ok(Json(WalletTransactionsPage {
        items: rows
            .into_iter()
            .map(|r| WalletTransactionView {
                tx_id: r.tx_id,
                block_number: r.block_number,
                timestamp: r.tx_timestamp,
                direction: if r.direction == "credit" {
                    Direction::In
                } else {
                    Direction::Out
                },
                counterparty_wallet_id: r.counterparty_wallet_id,
                amount: r.amount,
                memo: r.memo,
                transfer_id: r.transfer_id,
            })
            .collect(),
        next_cursor,
    }))
}

/// A user with its profile (the user itself, or admins).
#[utoipa::path(
    get,
    path = "/api/v1/users/{id}",
    tag = "reads",
    params(("id" = String, Path, description = "The user id")),
    responses((status = 200, description = "The user", body = UserView)),
    security(("bearer" = [])),
)]
pub(crate) async fn get_user(
    State(state): State<ApiState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<UserView>, Problem> {
    let v1 = v1(&state)?;
    validate::id(&id).map_err(|m| invalid("id", m))?;
    if !principal.is_admin() && principal.subject != id {
        return Err(Problem::new(ErrorCode::Forbidden).with_detail("a user may read only itself"));
    }
    let Some(u) = read_models::user_view(&v1.deps.pool, &id)
        .await
        .map_err(|e| pg_problem(&e))?
    else {
        return Err(Problem::new(ErrorCode::NotFound).with_detail(format!("no user {id}")));
    };
    Ok(Json(UserView {
        wallet_id: u.user_id.clone(),
        user_id: u.user_id,
        on_ledger: u.on_ledger,
        country: u.country,
        profile_commitment: u.profile_commitment,
        profile: u.profile_json.and_then(|p| serde_json::from_str(&p).ok()),
        created_at: u.created_at,
    }))
}

fn proposal_item(p: read_models::ProposalView) -> ProposalView {
    ProposalView {
        proposal_id: p.proposal_id,
        wallet_id: p.wallet_id,
        to_wallet_id: p.to_wallet_id,
        amount: p.amount,
        memo: p.memo,
        state: p.state,
        threshold: p.threshold,
        approvals: p.approval_count,
        rejections: p.rejection_count,
        owners: p.owners,
        created_at: p.created_at,
        closed_at: p.closed_at,
        decisions: p
            .decisions
            .into_iter()
            .map(|d| DecisionItem {
                approver_id: d.approver_id,
                decision: d.decision,
                tx_id: d.tx_id,
                block_number: d.block_number,
                timestamp: d.tx_timestamp,
            })
            .collect(),
    }
}

/// Proposals an owner may decide on: by default the caller's pending, undecided ones.
#[utoipa::path(
    get,
    path = "/api/v1/proposals",
    tag = "reads",
    params(ProposalQuery),
    responses((status = 200, description = "Proposals, newest first", body = ProposalList)),
    security(("bearer" = [])),
)]
pub(crate) async fn list_proposals(
    State(state): State<ApiState>,
    principal: Principal,
    ApiQuery(q): ApiQuery<ProposalQuery>,
) -> Result<Json<ProposalList>, Problem> {
    let v1 = v1(&state)?;
    let limit = validate::limit(q.limit)?;
    let approver = q.approver.unwrap_or_else(|| principal.subject.clone());
    validate::id(&approver).map_err(|m| invalid("approver", m))?;
    if !principal.is_admin() && approver != principal.subject {
        return Err(Problem::new(ErrorCode::Forbidden)
            .with_detail("a user may list only its own proposals (approver = the caller)"));
    }
    let (state_filter, undecided) = match q.status.as_deref().unwrap_or("pending") {
        "pending" => (Some("pending"), true),
        "executed" => (Some("executed"), false),
        "rejected" => (Some("rejected"), false),
        "all" => (None, false),
        _ => {
            return Err(invalid(
                "status",
                "must be pending, executed, rejected or all",
            ));
        }
    };
    let rows = read_models::proposals_for_approver(
        &v1.deps.pool,
        &approver,
        state_filter,
        undecided,
        limit,
    )
    .await
    .map_err(|e| pg_problem(&e))?;
    Ok(Json(ProposalList {
        items: rows.into_iter().map(proposal_item).collect(),
    }))
}

/// A proposal with its decisions (owners of its wallet, or admins).
#[utoipa::path(
    get,
    path = "/api/v1/proposals/{id}",
    tag = "reads",
    params(("id" = String, Path, description = "The proposal id")),
    responses((status = 200, description = "The proposal", body = ProposalView)),
    security(("bearer" = [])),
)]
pub(crate) async fn get_proposal(
    State(state): State<ApiState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<ProposalView>, Problem> {
    let v1 = v1(&state)?;
    validate::id(&id).map_err(|m| invalid("id", m))?;
    let Some(p) = read_models::proposal_view(&v1.deps.pool, &id)
        .await
        .map_err(|e| pg_problem(&e))?
    else {
        return Err(Problem::new(ErrorCode::NotFound).with_detail(format!("no proposal {id}")));
    };
    if !principal.is_admin() && !p.owners.contains(&principal.subject) {
        return Err(Problem::new(ErrorCode::Forbidden).with_detail(format!(
            "proposal {id} is not on one of the caller's wallets"
        )));
    }
    Ok(Json(proposal_item(p)))
}

//! Operator routes (admin role): the outbox's commands by status (dead letters first of
//! all), requeueing a dead letter, the counts per status, the projector's position.

use axum::Json;
use axum::extract::State;
use gxd_storage::StorageError;
use gxd_storage::outbox::{Command, CommandId, Status};

use super::json::{ApiPath, ApiQuery};
use super::reads::view_with;
use super::types::{OutboxCommand, OutboxCounts, OutboxPage, OutboxQuery, ProjectorSnapshot};
use super::v1;
use super::validate::{self, invalid};
use crate::ApiState;
use crate::auth::AdminPrincipal;
use crate::problem::{ErrorCode, Problem};

fn outbox_command(c: &Command) -> OutboxCommand {
    OutboxCommand {
        // The outbox listing does not ask the read models: committed stays committed here.
        command: view_with(c, false),
        outbox_status: c.status.as_str().to_owned(),
        tenant: c.tenant.clone(),
        request_id: c.request_id.clone(),
        partition_key: c.partition_key.clone(),
        partition_keys: c.partition_keys().map(str::to_owned).collect(),
        attempts: c.attempts,
        requeues: c.requeues,
        payload: serde_json::from_slice(&c.payload)
            .unwrap_or_else(|_| serde_json::Value::String(hex::encode(&c.payload))),
    }
}

/// Commands of one status, oldest first (default: the dead letters).
#[utoipa::path(
    get,
    path = "/api/v1/admin/outbox",
    tag = "operators",
    params(OutboxQuery),
    responses((status = 200, description = "A page of commands", body = OutboxPage)),
    security(("bearer" = [])),
)]
pub(crate) async fn list_outbox(
    State(state): State<ApiState>,
    _admin: AdminPrincipal,
    ApiQuery(q): ApiQuery<OutboxQuery>,
) -> Result<Json<OutboxPage>, Problem> {
    let v1 = v1(&state)?;
    let status: Status = q
        .status
        .as_deref()
        .unwrap_or("failed")
        .parse()
        .map_err(|_| {
            invalid(
                "status",
                "must be pending, prepared, submitted, committed, projected or failed",
            )
        })?;
    let limit = validate::limit(q.limit)?;
    let cursor = match q.cursor.as_deref() {
        None => None,
        Some(c) => Some(
            c.parse::<CommandId>()
                .map_err(|_| invalid("cursor", "not a cursor of this API"))?,
        ),
    };
    let page = v1
        .deps
        .outbox
        .list_by_status(status, cursor, limit as usize)
        .map_err(|e| Problem::from(&e))?;
    Ok(Json(OutboxPage {
        items: page.commands.iter().map(outbox_command).collect(),
        next_cursor: page.next_cursor.map(|c| c.to_string()),
    }))
}

/// Sends a dead-lettered command again (to the tail of its partition queues).
#[utoipa::path(
    post,
    path = "/api/v1/admin/outbox/{id}/requeue",
    tag = "operators",
    params(("id" = String, Path, description = "The command id")),
    responses((status = 200, description = "The requeued command", body = OutboxCommand)),
    security(("bearer" = [])),
)]
pub(crate) async fn requeue(
    State(state): State<ApiState>,
    AdminPrincipal(admin): AdminPrincipal,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<OutboxCommand>, Problem> {
    let v1 = v1(&state)?;
    let not_found = || Problem::new(ErrorCode::NotFound).with_detail(format!("no command {id}"));
    let command_id: CommandId = id.parse().map_err(|_| not_found())?;
    match v1.deps.outbox.requeue(command_id).await {
        Ok(c) => {
            tracing::info!(command_id = %c.id, by = %admin.subject, "command requeued");
            Ok(Json(outbox_command(&c)))
        }
        Err(StorageError::NotFound { .. }) => Err(not_found()),
        Err(StorageError::IllegalTransition { from, .. }) => Err(Problem::new(ErrorCode::Conflict)
            .with_detail(format!(
                "only a FAILED command can be requeued; command {id} is {from}"
            ))),
        Err(e) => Err(Problem::from(&e)),
    }
}

/// Commands per outbox status.
#[utoipa::path(
    get,
    path = "/api/v1/admin/outbox/counts",
    tag = "operators",
    responses((status = 200, description = "Counts", body = OutboxCounts)),
    security(("bearer" = [])),
)]
pub(crate) async fn outbox_counts(
    State(state): State<ApiState>,
    _admin: AdminPrincipal,
) -> Result<Json<OutboxCounts>, Problem> {
    let v1 = v1(&state)?;
    let c = v1.deps.outbox.counts().map_err(|e| Problem::from(&e))?;
    Ok(Json(OutboxCounts {
        pending: c.pending,
        prepared: c.prepared,
        submitted: c.submitted,
        committed: c.committed,
        projected: c.projected,
        failed: c.failed,
        total: c.total(),
    }))
}

/// The projector: its state, position, the ledger's height and the lag.
#[utoipa::path(
    get,
    path = "/api/v1/admin/projector",
    tag = "operators",
    responses((status = 200, description = "The projector's status", body = ProjectorSnapshot)),
    security(("bearer" = [])),
)]
pub(crate) async fn projector(
    State(state): State<ApiState>,
    _admin: AdminPrincipal,
) -> Result<Json<ProjectorSnapshot>, Problem> {
    let v1 = v1(&state)?;
    match &v1.deps.projector {
        Some(view) => Ok(Json(view.snapshot())),
        None => Err(Problem::new(ErrorCode::Unavailable)
            .with_detail("the projector does not run on this server (no [fabric] section)")),
    }
}

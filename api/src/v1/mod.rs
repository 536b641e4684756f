//! The `/api/v1` REST routes for wallets and operators (see README "API").
//!
//! - Commands (`POST`) are validated, authorized against the read models, then accepted
//!   into the outbox; the answer (202 `{commandId, status: "accepted", statusUrl, …}`)
//!   leaves only once the command is durable (the outbox's enqueue returns after the WAL
//!   fsync). `commands.rs`.
//! - Reads (`GET`) come from the outbox (command status) and the PostgreSQL read models
//!   (wallet rows through the [`cache`] between blocks when the daemon wires one). `reads.rs`, `events.rs` (server-sent status events), `admin.rs` (operators).
//! - Every route is declared once, with its OpenAPI description (`utoipa`), in
//!   [`openapi_router`]: the router and `GET /api/v1/openapi.json` come from the same list,
//!   so the document cannot drift from the routes.
//!
//! Idempotency: the outbox's (tenant, request id) key, with the tenant = the caller's token
//! subject (keys are per caller) and the request id = the `Idempotency-Key` header or the
//! body's `requestId`. Without either, each request is a new command.

pub(crate) mod admin;
pub mod cache;
pub(crate) mod commands;
pub(crate) mod events;
pub(crate) mod json;
pub(crate) mod reads;
pub mod types;
pub(crate) mod validate;

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use gxd_storage::outbox::Outbox;
use gxd_storage::pg::Pool;
use gxd_storage::pg::projection::ProjectionError;
use tokio::sync::Semaphore;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::ApiState;
use crate::problem::{ErrorCode, PROBLEM_JSON, Problem};
pub use cache::ReadCache;
pub use types::ProjectorSnapshot;

/// Most concurrent `…/events` streams; more answer 503 with `Retry-After`.
pub const MAX_EVENT_STREAMS: usize = 512;

/// What `GET /api/v1/admin/projector` shows: the daemon implements it over the projector's
/// status watch. Must be cheap and must not block.
pub trait ProjectorView: Send + Sync + 'static {
    fn snapshot(&self) -> ProjectorSnapshot;
}

/// What the `/api/v1` handlers need: the outbox, the read models' pool, the channel whose
/// transactions the projector applies, and (when the engine runs) the projector's status.
#[derive(Clone)]
pub struct V1Deps {
    pub outbox: Outbox,
    pub pool: Pool,
    /// The Fabric channel (`fabric.channel`): where a committed command's tx id is looked
    /// up among the projected transactions.
    pub channel: String,
    pub projector: Option<Arc<dyn ProjectorView>>,
    /// Called after a command was durably accepted (the daemon wakes the submitter with
    /// it, so a new command does not wait for the submitter's idle poll).
    pub on_enqueue: Option<Arc<dyn Fn() + Send + Sync>>,
    /// Wallet reads served from memory between blocks ([`cache`]); only sound when the
    /// projector writing `pool`'s read models calls [`ReadCache::invalidate`] after each
    /// block (the daemon wires [`ReadCache::invalidator`] into it). `None`: every read goes
    /// to PostgreSQL.
    pub read_cache: Option<Arc<ReadCache>>,
}

/// [`V1Deps`] with the API's own shared resources.
pub(crate) struct V1 {
    pub deps: V1Deps,
    pub event_streams: Arc<Semaphore>,
}

impl V1 {
    /// A wallet row, through the read cache when there is one.
    pub(crate) async fn wallet(
        &self,
        id: &str,
    ) -> Result<Option<gxd_storage::pg::read_models::WalletRow>, ProjectionError> {
        match &self.deps.read_cache {
            Some(cache) => Ok(cache
                .wallet(&self.deps.pool, id)
                .await?
                .map(|w| (*w).clone())),
            None => gxd_storage::pg::read_models::wallet(&self.deps.pool, id).await,
        }
    }

    pub(crate) fn new(deps: V1Deps) -> Self {
        V1 {
            deps,
            event_streams: Arc::new(Semaphore::new(MAX_EVENT_STREAMS)),
        }
    }
}

/// The v1 dependencies, or 503 when the daemon runs without them.
pub(crate) fn v1(state: &ApiState) -> Result<&V1, Problem> {
    state.v1().ok_or_else(|| {
        Problem::new(ErrorCode::Unavailable)
            .with_detail("the REST API is not configured on this server")
    })
}

/// A read-model failure: the database is unreachable or refused (logged here, once).
pub(crate) fn pg_problem(e: &ProjectionError) -> Problem {
    tracing::warn!(error = %e, "read-model query failed");
    Problem::from(e)
}

/// Every `/api/v1` route with its OpenAPI operation.
pub(crate) fn openapi_router() -> OpenApiRouter<ApiState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(commands::bootstrap))
        .routes(routes!(commands::create_user))
        .routes(routes!(commands::create_transfer))
        .routes(routes!(commands::create_multisig_wallet))
        .routes(routes!(commands::create_proposal, reads::list_proposals))
        .routes(routes!(commands::approve_proposal))
        .routes(routes!(commands::reject_proposal))
        .routes(routes!(reads::get_command))
        .routes(routes!(events::command_events))
        .routes(routes!(reads::get_wallet))
        .routes(routes!(reads::wallet_transactions))
        .routes(routes!(reads::get_user))
        .routes(routes!(reads::get_proposal))
        .routes(routes!(admin::list_outbox))
        .routes(routes!(admin::requeue))
        .routes(routes!(admin::outbox_counts))
        .routes(routes!(admin::projector))
        .routes(routes!(openapi_json))
}

/// The OpenAPI document of every `/api/v1` route.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = openapi_router().into_openapi();
    // After the routes are collected: the common problems go on every operation.
    Common.modify(&mut doc);
    doc
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "gxd REST API",
        description = "Wallets and operators of a GX organization: commands are accepted \
                       durably (202) and reach the Fabric ledger exactly once; reads come from \
                       read models projected from committed blocks. Errors are RFC 9457 \
                       application/problem+json.",
    ),
    components(schemas(types::ProblemDoc, types::FieldError)),
    tags(
        (name = "commands", description = "State changes: accepted into the outbox, then submitted to the ledger"),
        (name = "reads", description = "Command status, wallets, users, proposals"),
        (name = "operators", description = "Admin routes: the outbox's dead letters, the projector"),
    )
)]
struct ApiDoc;

/// Problem responses every operation may give, and the bearer-token security scheme.
struct Common;

/// (status, when) of the problem responses documented on every operation.
const PROBLEM_RESPONSES: &[(&str, &str)] = &[
    (
        "400",
        "Malformed request: bad JSON, a wrong type, a missing or unknown field",
    ),
    ("401", "No or invalid bearer token"),
    ("403", "Not allowed for this caller"),
    ("404", "No such resource"),
    (
        "409",
        "Conflicts with the current state or with an earlier request of the same idempotency key",
    ),
    ("413", "Body too large"),
    ("415", "Body is not application/json"),
    ("422", "A field's value is invalid"),
    ("429", "Rate limit exceeded (see Retry-After)"),
    ("503", "A dependency is unavailable (see Retry-After)"),
];

impl Modify for Common {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
        for item in openapi.paths.paths.values_mut() {
            for op in [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.delete,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                for (status, description) in PROBLEM_RESPONSES {
                    op.responses
                        .responses
                        .entry((*status).to_owned())
                        .or_insert_with(|| {
                            ResponseBuilder::new()
                                .description(*description)
                                .content(
                                    PROBLEM_JSON,
                                    ContentBuilder::new()
                                        .schema(Some(Ref::from_schema_name("ProblemDoc")))
                                        .build(),
                                )
                                .build()
                                .into()
                        });
                }
            }
        }
    }
}

/// The OpenAPI 3.1 document of this API.
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = "reads",
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json")),
)]
pub(crate) async fn openapi_json(State(_state): State<ApiState>) -> Json<serde_json::Value> {
    static DOC: std::sync::OnceLock<serde_json::Value> = std::sync::OnceLock::new();
    Json(
        DOC.get_or_init(|| serde_json::to_value(openapi()).unwrap_or(serde_json::Value::Null))
            .clone(),
    )
}

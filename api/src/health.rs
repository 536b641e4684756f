//! Liveness and readiness.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Serialize;

use crate::ApiState;

/// One condition for readiness (e.g. "PostgreSQL answers and its schema is current").
#[async_trait::async_trait]
pub trait ReadinessCheck: Send + Sync + 'static {
    /// Short stable name, shown in `/readyz`.
    fn name(&self) -> &'static str;
    /// `Ok(())` when ready; otherwise why not (shown to operators: no secrets).
    async fn check(&self) -> Result<(), String>;
}

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckOutcome {
    pub name: &'static str,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// The `/readyz` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Readiness {
    /// `ready` or `not_ready`.
    pub status: &'static str,
    pub checks: Vec<CheckOutcome>,
}

impl Readiness {
    pub fn is_ready(&self) -> bool {
        self.status == "ready"
    }
}

pub(crate) async fn evaluate(
    checks: &[Arc<dyn ReadinessCheck>],
    timeout: Duration,
    draining: bool,
) -> Readiness {
    let mut outcomes: Vec<CheckOutcome> =
        futures::future::join_all(checks.iter().map(|c| async move {
            let result = match tokio::time::timeout(timeout, c.check()).await {
                Ok(r) => r,
                Err(_) => Err(format!("no answer within {timeout:?}")),
            };
            CheckOutcome {
                name: c.name(),
                ok: result.is_ok(),
                detail: result.err(),
            }
        }))
        .await;
    if draining {
        outcomes.push(CheckOutcome {
            name: "shutdown",
            ok: false,
            detail: Some("shutting down".to_owned()),
        });
    }
    let ready = outcomes.iter().all(|o| o.ok);
    Readiness {
        status: if ready { "ready" } else { "not_ready" },
        checks: outcomes,
    }
}

/// Liveness: the process is up and serving HTTP.
pub(crate) async fn healthz() -> impl IntoResponse {
    Json(serde_json::json!({ "status": "ok" }))
}

/// Readiness: 200 when all checks pass, 503 otherwise.
pub(crate) async fn readyz(State(state): State<ApiState>) -> impl IntoResponse {
    let readiness = state.readiness().await;
    let status = if readiness.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(readiness))
}

//! gxd's HTTP API (axum): the `/api/v1` REST routes for wallets and operators
//! ([`v1`]), health, readiness, Prometheus metrics.
//!
//! - `GET /livez` (and its older alias `GET /healthz`): liveness; 200 while the
//!   process serves HTTP (container and Kubernetes liveness probes use `/livez`).
//! - `GET /readyz`: readiness; 200 when every [`ReadinessCheck`] passes, 503
//!   otherwise (and while shutting down), with a JSON body naming each check.
//! - `GET /metrics`: the daemon's Prometheus registry in the text format.
//! - every error is an RFC 9457 `application/problem+json` [`Problem`], including
//!   the 404 for unknown routes and the 405 for a wrong method.
//!
//! HTTP metrics: `gxd_api_requests_total{route,status}` and
//! `gxd_api_request_duration_seconds{route}`, labelled by the matched route
//! template (never the raw path), `unmatched` for unknown routes.

pub mod auth;
mod health;
pub mod jwt;
pub mod limits;
mod metrics;
pub mod problem;
pub mod v1;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::routing::get;

pub use auth::{AdminPrincipal, AuthError, Authenticator, Principal, Role};
pub use health::{CheckOutcome, Readiness, ReadinessCheck};
pub use jwt::{JwtAuthenticator, JwtSettings};
pub use limits::{ApiLimits, RateLimit, RateLimiter};
pub use problem::{ErrorCode, PROBLEM_JSON, Problem};
pub use v1::{ProjectorSnapshot, ProjectorView, ReadCache, V1Deps};

/// How long one readiness check may take before it counts as failing.
pub const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// Shared state of the API: the daemon's metrics registry and readiness checks.
/// Cheap to clone.
#[derive(Clone)]
pub struct ApiState {
    inner: Arc<Inner>,
}

struct Inner {
    registry: prometheus::Registry,
    http: metrics::HttpMetrics,
    checks: Vec<Arc<dyn ReadinessCheck>>,
    check_timeout: Duration,
    draining: AtomicBool,
    /// Verifies bearer tokens; `None` closes every authenticated route (401).
    authenticator: Option<Arc<dyn Authenticator>>,
    /// Body size, request timeout (router layers) and rate limit (the `Principal` extractor).
    limits: ApiLimits,
    rate_limiter: Option<RateLimiter>,
    /// The outbox and read models of `/api/v1`; `None` answers those routes 503.
    v1: Option<v1::V1>,
}

impl ApiState {
    /// Registers the HTTP metrics in `registry` (the daemon's one registry) and
    /// keeps it for `/metrics`.
    pub fn new(
        registry: &prometheus::Registry,
        checks: Vec<Arc<dyn ReadinessCheck>>,
    ) -> Result<Self, prometheus::Error> {
        Ok(Self {
            inner: Arc::new(Inner {
                registry: registry.clone(),
                http: metrics::HttpMetrics::register(registry)?,
                checks,
                check_timeout: DEFAULT_CHECK_TIMEOUT,
                draining: AtomicBool::new(false),
                authenticator: None,
                limits: ApiLimits::default(),
                rate_limiter: None,
                v1: None,
            }),
        })
    }

    /// Sets the bearer-token verifier of the authenticated routes. Call before the state
    /// is cloned into a router.
    pub fn with_authenticator(mut self, authenticator: Arc<dyn Authenticator>) -> Self {
        match Arc::get_mut(&mut self.inner) {
            Some(inner) => inner.authenticator = Some(authenticator),
            None => tracing::error!("with_authenticator called on a shared ApiState; ignored"),
        }
        self
    }

    /// Sets the request limits (body size, timeout, rate per subject). Call before the
    /// state is cloned into a router.
    pub fn with_limits(mut self, limits: ApiLimits) -> Self {
        match Arc::get_mut(&mut self.inner) {
            Some(inner) => {
                inner.rate_limiter = limits.rate_limit.map(RateLimiter::new);
                inner.limits = limits;
            }
            None => tracing::error!("with_limits called on a shared ApiState; ignored"),
        }
        self
    }

    /// Gives `/api/v1` its outbox, read models and projector view. Call before the state
    /// is cloned into a router.
    pub fn with_v1(mut self, deps: V1Deps) -> Self {
        match Arc::get_mut(&mut self.inner) {
            Some(inner) => inner.v1 = Some(v1::V1::new(deps)),
            None => tracing::error!("with_v1 called on a shared ApiState; ignored"),
        }
        self
    }

    /// The request limits.
    pub fn limits(&self) -> &ApiLimits {
        &self.inner.limits
    }

    /// The per-subject rate limiter, when a rate limit is configured.
    pub fn rate_limiter(&self) -> Option<&RateLimiter> {
        self.inner.rate_limiter.as_ref()
    }

    pub(crate) fn v1(&self) -> Option<&v1::V1> {
        self.inner.v1.as_ref()
    }

    /// The bearer-token verifier, if one is configured.
    pub fn authenticator(&self) -> Option<&dyn Authenticator> {
        self.inner.authenticator.as_deref()
    }

    /// Marks the daemon as shutting down: `/readyz` answers 503 from now on, so
    /// load balancers stop sending traffic while in-flight requests finish.
    pub fn set_draining(&self) {
        self.inner.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::SeqCst)
    }

    /// The registry `/metrics` exposes.
    pub fn registry(&self) -> &prometheus::Registry {
        &self.inner.registry
    }

    /// Runs every readiness check (concurrently, each bounded by a timeout).
    pub async fn readiness(&self) -> Readiness {
        health::evaluate(
            &self.inner.checks,
            self.inner.check_timeout,
            self.is_draining(),
        )
        .await
    }
}

/// Serves `router` on `listener` until `shutdown` resolves, then lets in-flight requests
/// finish (the caller bounds that drain).
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

/// The API router. Serve it with [`serve`].
pub fn router(state: ApiState) -> Router {
    let (api, _) = v1::openapi_router().split_for_parts();
    let app = Router::new()
        .merge(api)
        .route("/livez", get(health::healthz))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(metrics::metrics));
    // Request limits (body size, timeout) on every route above: keep this after the last
    // route and inside the metrics layer, so a 413 or a timeout is counted by route.
    let app = limits::apply(app, &state);
    app.route_layer(axum::middleware::from_fn_with_state(
        state.clone(),
        metrics::track,
    ))
    .fallback(metrics::not_found)
    .method_not_allowed_fallback(metrics::method_not_allowed)
    .layer(tower_http::catch_panic::CatchPanicLayer::custom(
        metrics::panic_response,
    ))
    // A 5xx is logged at WARN, not ERROR: most are `/readyz` saying "not ready yet" or a
    // dependency's 503, which their own checks and handlers already log with the cause.
    .layer(
        tower_http::trace::TraceLayer::new_for_http()
            .on_failure(tower_http::trace::DefaultOnFailure::new().level(tracing::Level::WARN)),
    )
    .with_state(state)
}

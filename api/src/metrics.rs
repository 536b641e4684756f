//! HTTP metrics, `/metrics`, and the fallback handlers.

use std::any::Any;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus::{Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, TextEncoder};

use crate::ApiState;
use crate::problem::{ErrorCode, Problem};

/// Route label of requests that matched no route.
pub(crate) const UNMATCHED: &str = "unmatched";

pub(crate) struct HttpMetrics {
    requests: IntCounterVec,
    duration: HistogramVec,
}

impl HttpMetrics {
    pub(crate) fn register(registry: &prometheus::Registry) -> Result<Self, prometheus::Error> {
        let requests = IntCounterVec::new(
            Opts::new(
                "gxd_api_requests_total",
                "HTTP requests answered, by matched route template and status code.",
            ),
            &["route", "status"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "gxd_api_request_duration_seconds",
                "HTTP request handling time, by matched route template.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["route"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        Ok(Self { requests, duration })
    }

    /// `status` is a three-digit code: a bounded label value.
    fn observe(&self, route: &str, status: StatusCode, seconds: f64) {
        self.requests
            .with_label_values(&[route, status.as_str()])
            .inc();
        self.duration.with_label_values(&[route]).observe(seconds);
    }
}

/// Middleware on matched routes: counts and times each request.
pub(crate) async fn track(State(state): State<ApiState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| UNMATCHED.to_owned());
    let start = Instant::now();
    let response = next.run(req).await;
    state
        .inner
        .http
        .observe(&route, response.status(), start.elapsed().as_secs_f64());
    response
}

/// `GET /metrics`: the registry in the Prometheus text format.
pub(crate) async fn metrics(State(state): State<ApiState>) -> Response {
    let encoder = TextEncoder::new();
    let mut buf = Vec::new();
    if let Err(e) = encoder.encode(&state.registry().gather(), &mut buf) {
        tracing::error!(error = %e, "cannot encode metrics");
        return Problem::new(ErrorCode::Internal).into_response();
    }
    let mut response = Response::new(Body::from(buf));
    if let Ok(v) = HeaderValue::from_str(encoder.format_type()) {
        response.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    response
}

/// Fallback for unknown routes: 404 problem, counted under `route="unmatched"`.
pub(crate) async fn not_found(State(state): State<ApiState>, method: Method, uri: Uri) -> Response {
    let start = Instant::now();
    let response = Problem::new(ErrorCode::NotFound)
        .with_detail(format!("no route for {method} {}", uri.path()))
        .with_instance(uri.path().to_owned())
        .into_response();
    state.inner.http.observe(
        UNMATCHED,
        StatusCode::NOT_FOUND,
        start.elapsed().as_secs_f64(),
    );
    response
}

/// Fallback for a known route with the wrong method: 405 problem.
pub(crate) async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    Problem::new(ErrorCode::MethodNotAllowed)
        .with_detail(format!("{method} is not allowed on {}", uri.path()))
        .with_instance(uri.path().to_owned())
        .into_response()
}

/// A panicking handler answers 500 (the panic itself is logged by the panic hook).
pub(crate) fn panic_response(_panic: Box<dyn Any + Send + 'static>) -> Response {
    Problem::new(ErrorCode::Internal).into_response()
}

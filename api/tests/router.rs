#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The API router, exercised in-process with tower's `oneshot`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use gxd_api::{ApiState, PROBLEM_JSON, ReadinessCheck, router};
use http_body_util::BodyExt;
use tower::ServiceExt;

struct Flag {
    name: &'static str,
    ok: Arc<AtomicBool>,
}

#[async_trait::async_trait]
impl ReadinessCheck for Flag {
    fn name(&self) -> &'static str {
        self.name
    }
    async fn check(&self) -> Result<(), String> {
        if self.ok.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err(format!("{} is down", self.name))
        }
    }
}

struct Hangs;

#[async_trait::async_trait]
impl ReadinessCheck for Hangs {
    fn name(&self) -> &'static str {
        "hangs"
    }
    async fn check(&self) -> Result<(), String> {
        std::future::pending().await
    }
}

async fn get(state: &ApiState, uri: &str) -> (StatusCode, String, String) {
    send(state, Request::get(uri).body(Body::empty()).unwrap()).await
}

async fn send(state: &ApiState, req: Request<Body>) -> (StatusCode, String, String) {
    let response = router(state.clone()).oneshot(req).await.unwrap();
    let status = response.status();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        content_type,
        String::from_utf8(body.to_vec()).unwrap(),
    )
}

fn state_with(flag: Arc<AtomicBool>) -> ApiState {
    let registry = prometheus::Registry::new();
    ApiState::new(
        &registry,
        vec![Arc::new(Flag {
            name: "postgres",
            ok: flag,
        })],
    )
    .unwrap()
}

#[tokio::test]
async fn healthz_is_ok() {
    let state = state_with(Arc::new(AtomicBool::new(false)));
    let (status, _, body) = get(&state, "/healthz").await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("ok"));
}

#[tokio::test]
async fn livez_is_ok_even_when_not_ready() {
    // Liveness must not follow readiness: a daemon waiting for its peer is alive.
    let state = state_with(Arc::new(AtomicBool::new(false)));
    let (status, ct, body) = get(&state, "/livez").await;
    assert_eq!(status, StatusCode::OK);
    assert!(ct.contains("application/json"), "{ct}");
    assert!(body.contains(r#""status":"ok""#), "{body}");
    let (status, _, _) = get(&state, "/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn readyz_follows_checks_and_names_them() {
    let flag = Arc::new(AtomicBool::new(false));
    let state = state_with(flag.clone());

    let (status, ct, body) = get(&state, "/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(ct.starts_with("application/json"));
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "not_ready");
    assert_eq!(v["checks"][0]["name"], "postgres");
    assert_eq!(v["checks"][0]["ok"], false);
    assert_eq!(v["checks"][0]["detail"], "postgres is down");

    flag.store(true, Ordering::SeqCst);
    let (status, _, body) = get(&state, "/readyz").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "ready");

    state.set_draining();
    let (status, _, body) = get(&state, "/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("shutdown"), "{body}");
}

#[tokio::test(start_paused = true)]
async fn a_hanging_check_fails_after_its_timeout() {
    let registry = prometheus::Registry::new();
    let state = ApiState::new(&registry, vec![Arc::new(Hangs)]).unwrap();
    let readiness = state.readiness().await;
    assert!(!readiness.is_ready());
    assert_eq!(readiness.checks[0].name, "hangs");
    assert!(
        readiness.checks[0]
            .detail
            .as_deref()
            .unwrap()
            .contains("no answer")
    );
}

#[tokio::test]
async fn unknown_route_is_a_problem_404() {
    let state = state_with(Arc::new(AtomicBool::new(true)));
    let (status, ct, body) = get(&state, "/no/such/thing").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(ct, PROBLEM_JSON);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], 404);
    assert_eq!(v["type"], "urn:gxd:problem:not-found");
    assert_eq!(v["instance"], "/no/such/thing");
}

#[tokio::test]
async fn wrong_method_is_a_problem_405() {
    let state = state_with(Arc::new(AtomicBool::new(true)));
    let req = Request::post("/healthz").body(Body::empty()).unwrap();
    let (status, ct, _) = send(&state, req).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(ct, PROBLEM_JSON);
}

#[tokio::test]
async fn metrics_count_requests_by_route_template_not_raw_path() {
    let state = state_with(Arc::new(AtomicBool::new(true)));
    get(&state, "/healthz").await;
    get(&state, "/healthz").await;
    get(&state, "/secret-looking/path/12345").await;
    let (status, ct, body) = get(&state, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert!(ct.starts_with("text/plain"), "{ct}");
    assert!(
        body.contains(r#"gxd_api_requests_total{route="/healthz",status="200"} 2"#),
        "{body}"
    );
    assert!(
        body.contains(r#"gxd_api_requests_total{route="unmatched",status="404"} 1"#),
        "{body}"
    );
    assert!(body.contains("gxd_api_request_duration_seconds_bucket"));
    assert!(
        !body.contains("secret-looking"),
        "raw paths must not become labels"
    );
}

#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Request limits through the router: 413 for an oversize body, 503 + Retry-After for a
//! request past the timeout, 429 + Retry-After past a subject's burst.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{Request, StatusCode, header};
use axum::routing::{get, post};
use gxd_api::jwt::{JwtAlgorithm, JwtKey, JwtSettings, MintRequest, SigningKey, mint};
use gxd_api::{ApiLimits, ApiState, JwtAuthenticator, PROBLEM_JSON, Principal, RateLimit, Role};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

const SECRET: &[u8] = b"limits-test-secret-of-32-bytes-or-more";

fn state(limits: ApiLimits) -> ApiState {
    let auth = JwtAuthenticator::new(&JwtSettings {
        issuer: "iss".into(),
        audience: "aud".into(),
        leeway: Duration::from_secs(30),
        role_claim: "role".into(),
        keys: vec![JwtKey {
            kid: None,
            algorithm: JwtAlgorithm::Hs256,
            material: SECRET.to_vec(),
            source: PathBuf::from("secret"),
        }],
    })
    .unwrap();
    ApiState::new(&prometheus::Registry::new(), vec![])
        .unwrap()
        .with_authenticator(Arc::new(auth))
        .with_limits(limits)
}

fn token(sub: &str) -> String {
    mint(
        &SigningKey {
            kid: None,
            algorithm: JwtAlgorithm::Hs256,
            material: SECRET.to_vec(),
            source: PathBuf::from("secret"),
        },
        &MintRequest {
            issuer: "iss".into(),
            audience: "aud".into(),
            subject: sub.into(),
            role: Role::User,
            role_claim: "role".into(),
            ttl: Duration::from_secs(300),
        },
    )
    .unwrap()
}

/// Test routes behind the same limit layers as the API's own routes.
fn app(state: ApiState) -> Router {
    let routes = Router::new()
        .route(
            "/echo",
            post(|body: Bytes| async move { body.len().to_string() }),
        )
        .route("/slow", get(std::future::pending::<String>))
        .route("/me", get(|p: Principal| async move { p.subject }));
    gxd_api::limits::apply(routes, &state).with_state(state)
}

async fn send(app: Router, req: Request<Body>) -> (StatusCode, Option<String>, Value) {
    let response = app.oneshot(req).await.unwrap();
    let status = response.status();
    let retry_after = response
        .headers()
        .get(header::RETRY_AFTER)
        .map(|v| v.to_str().unwrap().to_owned());
    if !status.is_success() {
        assert_eq!(response.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
    }
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&body)
        .unwrap_or(Value::String(String::from_utf8_lossy(&body).into_owned()));
    (status, retry_after, json)
}

#[tokio::test]
async fn an_oversize_body_is_413_declared_or_streamed() {
    let limits = ApiLimits {
        max_body_bytes: 1024,
        ..ApiLimits::default()
    };
    let app = app(state(limits));
    // At the limit: passes whole.
    let (status, _, body) = send(
        app.clone(),
        Request::post("/echo")
            .body(Body::from(vec![b'x'; 1024]))
            .unwrap(),
    )
    .await;
    assert_eq!((status, body), (StatusCode::OK, Value::from(1024)));
    // Over it, with Content-Length.
    let (status, _, body) = send(
        app.clone(),
        Request::post("/echo")
            .body(Body::from(vec![b'x'; 1025]))
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(body["code"], "payload-too-large");
    // Over it, streamed without Content-Length (chunks).
    let chunks = futures::stream::iter(
        (0..8).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![b'y'; 200]))),
    );
    let (status, _, _) = send(
        app.clone(),
        Request::post("/echo")
            .body(Body::from_stream(chunks))
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);

    // Unknown routes are 404 without reading the body.
    let router = gxd_api::router(state(limits));
    let (status, _, _) = send(
        router.clone(),
        Request::post("/api/v1/nowhere")
            .body(Body::from(vec![b'x'; 4096]))
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // The API's own routes are behind the limit too: a declared oversize body on /healthz
    // is 413 before its handler runs.
    let (status, _, _) = send(
        router.clone(),
        Request::get("/healthz")
            .header(header::CONTENT_LENGTH, "4096")
            .body(Body::from(vec![b'x'; 4096]))
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    // ... and counted by route and status.
    let (status, _, metrics) = send(
        router,
        Request::get("/metrics").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let text = metrics.as_str().unwrap();
    assert!(
        text.lines().any(|l| l.starts_with("gxd_api_requests_total")
            && l.contains("route=\"/healthz\"")
            && l.contains("status=\"413\"")
            && l.ends_with(" 1")),
        "{text}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_request_past_the_timeout_is_503_with_retry_after() {
    let limits = ApiLimits {
        request_timeout: Duration::from_secs(2),
        ..ApiLimits::default()
    };
    let app = app(state(limits));
    let (status, retry_after, body) = send(
        app.clone(),
        Request::get("/slow").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(retry_after.as_deref(), Some("1"));
    assert!(
        body["detail"].as_str().unwrap().contains("2000 ms"),
        "{body}"
    );
    // A quick request is untouched.
    let (status, _, _) = send(app, Request::post("/echo").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn past_the_burst_a_subject_gets_429_with_retry_after() {
    let limits = ApiLimits {
        rate_limit: Some(RateLimit {
            per_second: 1,
            burst: 3,
        }),
        ..ApiLimits::default()
    };
    let app = app(state(limits));
    let me = |sub: &str| {
        Request::get("/me")
            .header(header::AUTHORIZATION, format!("Bearer {}", token(sub)))
            .body(Body::empty())
            .unwrap()
    };
    for i in 0..3 {
        let (status, _, body) = send(app.clone(), me("alice")).await;
        assert_eq!(status, StatusCode::OK, "request {i}: {body}");
    }
    // The bucket refills at 1/s: within a few more requests (even on a slow machine) one
    // is refused.
    let mut refused = None;
    for _ in 0..10 {
        let (status, retry_after, body) = send(app.clone(), me("alice")).await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            refused = Some((retry_after, body));
            break;
        }
    }
    let (retry_after, body) = refused.expect("no 429 after the burst");
    assert_eq!(retry_after.as_deref(), Some("1"));
    assert_eq!(body["code"], "rate-limited");
    // Keyed on the subject: bob has his own bucket.
    let (status, _, _) = send(app.clone(), me("bob")).await;
    assert_eq!(status, StatusCode::OK);
    // An unauthenticated request is 401 (and takes no token from anyone's bucket).
    let (status, _, _) = send(app, Request::get("/me").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

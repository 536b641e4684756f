#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The JWT authenticator, table-driven: on the authenticator itself and through a router
//! with an authenticated probe route (`Principal`) and an admin one (`AdminPrincipal`).
//! Keys: committed test fixtures (tests/fixtures, made with openssl: RSA 2048, P-256).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use axum::routing::get;
use base64::Engine as _;
use gxd_api::jwt::{JwtAlgorithm, JwtKey, JwtSettings, MintRequest, SigningKey, mint};
use gxd_api::{
    AdminPrincipal, ApiState, Authenticator, JwtAuthenticator, PROBLEM_JSON, Principal, Role,
};
use http_body_util::BodyExt;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tower::ServiceExt;

const ISS: &str = "https://auth.test";
const AUD: &str = "gxd-test";
const HS_SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-hs";
const OTHER_SECRET: &[u8] = b"another-secret-that-is-long-enough!!";
const RSA_PRIV: &[u8] = include_bytes!("fixtures/rsa.key.pem");
const RSA_PUB: &[u8] = include_bytes!("fixtures/rsa.pub.pem");
const EC_PRIV: &[u8] = include_bytes!("fixtures/ec.key.pem");
const EC_PUB: &[u8] = include_bytes!("fixtures/ec.pub.pem");
const EC2_PRIV: &[u8] = include_bytes!("fixtures/ec2.key.pem");
const EC2_PUB: &[u8] = include_bytes!("fixtures/ec2.pub.pem");

fn key(kid: Option<&str>, algorithm: JwtAlgorithm, material: &[u8]) -> JwtKey {
    JwtKey {
        kid: kid.map(str::to_owned),
        algorithm,
        material: material.to_vec(),
        source: PathBuf::from(format!("fixture-{}", kid.unwrap_or("nokid"))),
    }
}

fn settings(keys: Vec<JwtKey>) -> JwtSettings {
    JwtSettings {
        issuer: ISS.into(),
        audience: AUD.into(),
        leeway: Duration::from_secs(30),
        role_claim: "role".into(),
        keys,
    }
}

/// hs1 (HS256), rs1 (RS256), es1 and es2 (ES256: a rotation pair).
fn all_keys() -> JwtAuthenticator {
    JwtAuthenticator::new(&settings(vec![
        key(Some("hs1"), JwtAlgorithm::Hs256, HS_SECRET),
        key(Some("rs1"), JwtAlgorithm::Rs256, RSA_PUB),
        key(Some("es1"), JwtAlgorithm::Es256, EC_PUB),
        key(Some("es2"), JwtAlgorithm::Es256, EC2_PUB),
    ]))
    .unwrap()
}

fn now() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap()
}

fn claims(sub: &str, role: Value) -> Value {
    let t = now();
    json!({ "iss": ISS, "aud": AUD, "sub": sub, "role": role, "iat": t, "nbf": t, "exp": t + 300 })
}

fn with(mut c: Value, field: &str, v: Value) -> Value {
    c[field] = v;
    c
}

fn without(mut c: Value, field: &str) -> Value {
    c.as_object_mut().unwrap().remove(field);
    c
}

fn sign(alg: Algorithm, kid: Option<&str>, material: &[u8], claims: &Value) -> String {
    let key = match alg {
        Algorithm::HS256 => EncodingKey::from_secret(material),
        Algorithm::RS256 => EncodingKey::from_rsa_pem(material).unwrap(),
        Algorithm::ES256 => EncodingKey::from_ec_pem(material).unwrap(),
        other => panic!("{other:?}"),
    };
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

fn b64(v: &Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

fn hs(c: &Value) -> String {
    sign(Algorithm::HS256, Some("hs1"), HS_SECRET, c)
}

fn es(c: &Value) -> String {
    sign(Algorithm::ES256, Some("es1"), EC_PRIV, c)
}

/// Each case: a token and the expected outcome (`Ok(role)` or an error naming the check).
fn cases() -> Vec<(&'static str, String, Result<Role, &'static str>)> {
    let user = claims("alice", json!("user"));
    let admin = claims("root", json!("admin"));
    let t = now();
    vec![
        ("HS256 user OK", hs(&user), Ok(Role::User)),
        ("HS256 admin OK", hs(&admin), Ok(Role::Admin)),
        (
            "RS256 OK",
            sign(Algorithm::RS256, Some("rs1"), RSA_PRIV, &user),
            Ok(Role::User),
        ),
        ("ES256 OK", es(&user), Ok(Role::User)),
        (
            "rotation: the second ES256 key",
            sign(Algorithm::ES256, Some("es2"), EC2_PRIV, &admin),
            Ok(Role::Admin),
        ),
        (
            "role array: admin wins",
            hs(&with(user.clone(), "role", json!(["user", "admin"]))),
            Ok(Role::Admin),
        ),
        (
            "role array: user",
            hs(&with(user.clone(), "role", json!(["user"]))),
            Ok(Role::User),
        ),
        (
            "expired",
            hs(&with(user.clone(), "exp", json!(t - 120))),
            Err("expired"),
        ),
        (
            "expired within leeway OK",
            hs(&with(user.clone(), "exp", json!(t - 10))),
            Ok(Role::User),
        ),
        (
            "not yet valid",
            hs(&with(user.clone(), "nbf", json!(t + 120))),
            Err("not valid yet"),
        ),
        (
            "not yet valid within leeway OK",
            hs(&with(user.clone(), "nbf", json!(t + 10))),
            Ok(Role::User),
        ),
        ("no exp", hs(&without(user.clone(), "exp")), Err("exp")),
        (
            "wrong issuer",
            hs(&with(user.clone(), "iss", json!("https://evil.test"))),
            Err("issuer"),
        ),
        ("no issuer", hs(&without(user.clone(), "iss")), Err("iss")),
        (
            "wrong audience",
            hs(&with(user.clone(), "aud", json!("other-api"))),
            Err("audience"),
        ),
        (
            "forged HS256 (another secret)",
            sign(Algorithm::HS256, Some("hs1"), OTHER_SECRET, &user),
            Err("signature"),
        ),
        (
            "forged ES256 (another key under es1)",
            sign(Algorithm::ES256, Some("es1"), EC2_PRIV, &user),
            Err("signature"),
        ),
        (
            "tampered payload",
            {
                let token = es(&user);
                let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
                parts[1] = b64(&admin);
                parts.join(".")
            },
            Err("signature"),
        ),
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(&json!({"alg": "none", "typ": "JWT", "kid": "hs1"})),
                b64(&admin)
            ),
            Err("algorithm"),
        ),
        (
            "alg none, no kid",
            format!("{}.{}.", b64(&json!({"alg": "none"})), b64(&admin)),
            Err("algorithm"),
        ),
        (
            "HS256 signed with the RS256 public key",
            sign(Algorithm::HS256, Some("rs1"), RSA_PUB, &admin),
            Err("not accepted"),
        ),
        (
            "HS256 signed with the ES256 public key",
            sign(Algorithm::HS256, Some("es1"), EC_PUB, &admin),
            Err("not accepted"),
        ),
        (
            "RS256 header on the HS256 key",
            sign(Algorithm::RS256, Some("hs1"), RSA_PRIV, &user),
            Err("not accepted"),
        ),
        (
            "unknown kid",
            sign(Algorithm::HS256, Some("hs9"), HS_SECRET, &user),
            Err("unknown key id"),
        ),
        (
            "no kid with several keys",
            sign(Algorithm::HS256, None, HS_SECRET, &user),
            Err("several keys"),
        ),
        ("missing sub", hs(&without(user.clone(), "sub")), Err("sub")),
        (
            "empty sub",
            hs(&with(user.clone(), "sub", json!(""))),
            Err("sub"),
        ),
        (
            "sub not a string",
            hs(&with(user.clone(), "sub", json!(42))),
            Err("sub"),
        ),
        (
            "unknown role",
            hs(&with(user.clone(), "role", json!("root"))),
            Err("unknown role"),
        ),
        (
            "unknown role in an array",
            hs(&with(user.clone(), "role", json!(["admin", "god"]))),
            Err("unknown role"),
        ),
        (
            "empty role array",
            hs(&with(user.clone(), "role", json!([]))),
            Err("role"),
        ),
        (
            "missing role",
            hs(&without(user.clone(), "role")),
            Err("role claim is missing"),
        ),
        (
            "role not a string",
            hs(&with(user.clone(), "role", json!(1))),
            Err("role"),
        ),
        ("not a JWT", "not-a-token".to_owned(), Err("malformed")),
        ("garbage segments", "a.b.c".to_owned(), Err("malformed")),
    ]
}

#[test]
fn the_authenticator_accepts_and_refuses_as_the_table_says() {
    let auth = all_keys();
    for (name, token, expected) in cases() {
        let got = auth.authenticate(&token);
        match (&got, &expected) {
            (Ok(p), Ok(role)) => {
                assert_eq!(p.role, *role, "{name}");
                assert!(!p.subject.is_empty(), "{name}");
            }
            (Err(e), Err(needle)) => {
                assert!(
                    e.to_string().contains(needle),
                    "{name}: {e} should mention {needle:?}"
                );
            }
            _ => panic!("{name}: got {got:?}, expected {expected:?}"),
        }
    }
}

#[test]
fn one_key_accepts_tokens_without_kid_but_not_other_algorithms() {
    // Only the RSA key, no kid: an HS256 token "signed" with its public PEM must fail.
    let rsa_only =
        JwtAuthenticator::new(&settings(vec![key(None, JwtAlgorithm::Rs256, RSA_PUB)])).unwrap();
    let admin = claims("root", json!("admin"));
    let ok = rsa_only
        .authenticate(&sign(Algorithm::RS256, None, RSA_PRIV, &admin))
        .unwrap();
    assert_eq!(ok.role, Role::Admin);
    let e = rsa_only
        .authenticate(&sign(Algorithm::HS256, None, RSA_PUB, &admin))
        .unwrap_err();
    assert!(e.to_string().contains("not accepted"), "{e}");
    // One key with a kid: tokens with that kid and without one both work.
    let one = JwtAuthenticator::new(&settings(vec![key(
        Some("k"),
        JwtAlgorithm::Hs256,
        HS_SECRET,
    )]))
    .unwrap();
    one.authenticate(&sign(Algorithm::HS256, Some("k"), HS_SECRET, &admin))
        .unwrap();
    one.authenticate(&sign(Algorithm::HS256, None, HS_SECRET, &admin))
        .unwrap();
}

#[test]
fn bad_key_configuration_is_refused_naming_the_file() {
    for (keys, needle) in [
        (
            vec![key(Some("a"), JwtAlgorithm::Hs256, b"short")],
            "at least 32 bytes",
        ),
        (
            vec![key(Some("a"), JwtAlgorithm::Rs256, b"not pem")],
            "fixture-a",
        ),
        (vec![key(Some("a"), JwtAlgorithm::Es256, RSA_PUB)], "P-256"),
        (
            vec![key(
                Some("a"),
                JwtAlgorithm::Es256,
                include_bytes!("fixtures/p384.pub.pem"),
            )],
            "another key type or curve",
        ),
        (
            vec![key(Some("a"), JwtAlgorithm::Rs256, EC_PUB)],
            "another key type",
        ),
        (
            vec![key(Some("a"), JwtAlgorithm::Es256, EC_PRIV)],
            "\"PRIVATE KEY\" block",
        ),
        (
            vec![
                key(Some("a"), JwtAlgorithm::Hs256, HS_SECRET),
                key(None, JwtAlgorithm::Es256, EC_PUB),
            ],
            "needs a kid",
        ),
        (
            vec![
                key(Some("a"), JwtAlgorithm::Hs256, HS_SECRET),
                key(Some("a"), JwtAlgorithm::Es256, EC_PUB),
            ],
            "twice",
        ),
        (vec![], "no keys"),
        (
            vec![key(Some("a"), JwtAlgorithm::Hs256, HS_SECRET)],
            "__role_sub__",
        ),
    ] {
        let mut s = settings(keys);
        let needle = if needle == "__role_sub__" {
            s.role_claim = "sub".into();
            "registered claim"
        } else {
            needle
        };
        let e = JwtAuthenticator::new(&s).unwrap_err();
        assert!(
            e.to_string().contains(needle),
            "{e} should mention {needle:?}"
        );
    }
}

#[test]
fn minted_tokens_verify_with_each_algorithm() {
    let auth = all_keys();
    for (kid, algorithm, material) in [
        ("hs1", JwtAlgorithm::Hs256, HS_SECRET),
        ("rs1", JwtAlgorithm::Rs256, RSA_PRIV),
        ("es1", JwtAlgorithm::Es256, EC_PRIV),
    ] {
        let token = mint(
            &SigningKey {
                kid: Some(kid.into()),
                algorithm,
                material: material.to_vec(),
                source: PathBuf::from(kid),
            },
            &MintRequest {
                issuer: ISS.into(),
                audience: AUD.into(),
                subject: "alice".into(),
                role: Role::User,
                role_claim: "role".into(),
                ttl: Duration::from_secs(60),
            },
        )
        .unwrap();
        let p = auth.authenticate(&token).unwrap();
        assert_eq!((p.subject.as_str(), p.role), ("alice", Role::User), "{kid}");
    }
}

fn probe_router(state: ApiState) -> Router {
    Router::new()
        .route(
            "/probe",
            get(|p: Principal| async move { format!("{} {}", p.subject, p.role) }),
        )
        .route(
            "/admin",
            get(|AdminPrincipal(p): AdminPrincipal| async move { p.subject }),
        )
        .with_state(state)
}

async fn call(app: &Router, uri: &str, authorization: Option<&str>) -> (StatusCode, String, Value) {
    let mut req = Request::get(uri);
    if let Some(a) = authorization {
        req = req.header(header::AUTHORIZATION, a);
    }
    let response = app
        .clone()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8(body.to_vec()).unwrap();
    let json = serde_json::from_str(&text).unwrap_or(Value::Null);
    if !status.is_success() {
        assert_eq!(content_type, PROBLEM_JSON, "{uri}: {status} {text}");
    }
    (status, text, json)
}

#[tokio::test]
async fn through_a_router_every_refusal_is_a_401_problem() {
    let state = ApiState::new(&prometheus::Registry::new(), vec![])
        .unwrap()
        .with_authenticator(Arc::new(all_keys()));
    let app = probe_router(state);
    for (name, token, expected) in cases() {
        let (status, text, body) = call(&app, "/probe", Some(&format!("Bearer {token}"))).await;
        match expected {
            Ok(role) => {
                assert_eq!(status, StatusCode::OK, "{name}: {text}");
                assert!(text.ends_with(role.as_str()), "{name}: {text}");
            }
            Err(needle) => {
                assert_eq!(status, StatusCode::UNAUTHORIZED, "{name}: {text}");
                assert_eq!(body["code"], "unauthenticated", "{name}");
                assert!(
                    body["detail"].as_str().unwrap().contains(needle),
                    "{name}: {text}"
                );
            }
        }
    }
    let user = hs(&claims("alice", json!("user")));
    for (name, header_value, needle) in [
        ("no token", None, "missing bearer token"),
        ("malformed header", Some(user.clone()), "Bearer"),
        ("wrong scheme", Some(format!("Basic {user}")), "Bearer"),
        ("empty bearer", Some("Bearer ".to_owned()), "Bearer"),
    ] {
        let (status, text, body) = call(&app, "/probe", header_value.as_deref()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{name}: {text}");
        assert!(
            body["detail"].as_str().unwrap().contains(needle),
            "{name}: {text}"
        );
    }
    // Role: a user is 403 on an admin route; an admin passes.
    let (status, _, body) = call(&app, "/admin", Some(&format!("Bearer {user}"))).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["code"], "forbidden");
    let admin = es(&claims("root", json!("admin")));
    let (status, text, _) = call(&app, "/admin", Some(&format!("Bearer {admin}"))).await;
    assert_eq!((status, text.as_str()), (StatusCode::OK, "root"));
    // A bad token on an admin route is 401, not 403.
    let (status, _, _) = call(&app, "/admin", Some("Bearer x.y.z")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn without_an_authenticator_the_routes_are_closed() {
    let state = ApiState::new(&prometheus::Registry::new(), vec![]).unwrap();
    let app = probe_router(state);
    let token = hs(&claims("root", json!("admin")));
    let (status, text, _) = call(&app, "/probe", Some(&format!("Bearer {token}"))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(text.contains("not configured"), "{text}");
}

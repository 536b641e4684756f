#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The `/api/v1` routes in-process (tower `oneshot`) against a real PostgreSQL (the read
//! models, migrated) and a real RocksDB outbox in a temporary directory. Tokens are
//! verified by a test double of the authentication seam: `user:<id>` and `admin:<id>`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use gxd_api::{
    ApiState, AuthError, Authenticator, PROBLEM_JSON, Principal, ProjectorSnapshot, ProjectorView,
    Role, V1Deps, router,
};
use gxd_storage::outbox::{CommandError, CommandId, Outbox, OutboxOptions, Status};
use gxd_storage::pg::testing::TestDb;
use gxd_storage::pg::{self, Pool};
use gxd_storage::{Db, DbOptions};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tower::ServiceExt;

const CHANNEL: &str = "gxchannel";

/// `user:<id>` / `admin:<id>`; anything else is refused.
struct TestTokens;

impl Authenticator for TestTokens {
    fn authenticate(&self, token: &str) -> Result<Principal, AuthError> {
        let (role, subject) = token
            .split_once(':')
            .ok_or_else(|| AuthError::Invalid("not a test token".into()))?;
        let role = Role::parse(role).ok_or_else(|| AuthError::Invalid("bad role".into()))?;
        Ok(Principal {
            subject: subject.to_owned(),
            role,
        })
    }
}

struct FixedProjector(Mutex<ProjectorSnapshot>);

impl ProjectorView for FixedProjector {
    fn snapshot(&self) -> ProjectorSnapshot {
        self.0.lock().unwrap().clone()
    }
}

struct Harness {
    state: ApiState,
    outbox: Outbox,
    pool: Pool,
    db: TestDb,
    _dir: tempfile::TempDir,
}

/// Read models: treasury (1000), users alice, bob, carol (wallets of their own), a
/// multisig wallet `vault` owned by alice and bob (threshold 2, balance 300) with a pending
/// proposal `p1`, and alice's history.
const SEED: &str = r#"
INSERT INTO wallets (wallet_id, kind, balance, threshold, channel, created_tx_id, created_block, created_at, updated_block, updated_at) VALUES
  ('treasury', 'treasury', 1000, NULL, 'gxchannel', 't0', 1, '2026-01-01T00:00:00Z', 1, '2026-01-01T00:00:00Z'),
  ('alice', 'user', 50, NULL, 'gxchannel', 't1', 2, '2026-01-01T00:00:01Z', 5, '2026-01-01T00:00:05Z'),
  ('bob', 'user', 20, NULL, 'gxchannel', 't2', 2, '2026-01-01T00:00:01Z', 2, '2026-01-01T00:00:01Z'),
  ('carol', 'user', 0, NULL, 'gxchannel', 't3', 2, '2026-01-01T00:00:01Z', 2, '2026-01-01T00:00:01Z'),
  ('vault', 'multisig', 300, 2, 'gxchannel', 't4', 3, '2026-01-01T00:00:02Z', 3, '2026-01-01T00:00:02Z');
INSERT INTO wallet_owners (wallet_id, owner_id) VALUES
  ('alice', 'alice'), ('bob', 'bob'), ('carol', 'carol'), ('vault', 'alice'), ('vault', 'bob');
INSERT INTO users (user_id, country, profile_commitment, channel, created_tx_id, created_block, created_at) VALUES
  ('alice', 'DE', 'aa', 'gxchannel', 't1', 2, '2026-01-01T00:00:01Z'),
  ('bob', 'FR', 'bb', 'gxchannel', 't2', 2, '2026-01-01T00:00:01Z'),
  ('carol', 'IT', 'cc', 'gxchannel', 't3', 2, '2026-01-01T00:00:01Z');
INSERT INTO proposals (proposal_id, wallet_id, to_wallet_id, amount, memo, state, threshold, channel, created_tx_id, created_block, created_at) VALUES
  ('p1', 'vault', 'carol', 100, 'rent', 'pending', 2, 'gxchannel', 't5', 4, '2026-01-01T00:00:03Z');
INSERT INTO proposals (proposal_id, wallet_id, to_wallet_id, amount, memo, state, threshold, approval_count, channel, created_tx_id, created_block, created_at, closed_tx_id, closed_block, closed_at) VALUES
  ('p0', 'vault', 'bob', 10, NULL, 'executed', 2, 2, 'gxchannel', 't9', 3, '2026-01-01T00:00:02Z', 't10', 4, '2026-01-01T00:00:03Z');
INSERT INTO proposal_decisions (proposal_id, approver_id, decision, channel, tx_id, block_number, tx_timestamp) VALUES
  ('p0', 'alice', 'approve', 'gxchannel', 't10a', 3, '2026-01-01T00:00:02Z'),
  ('p0', 'bob', 'approve', 'gxchannel', 't10', 4, '2026-01-01T00:00:03Z');
INSERT INTO transfers (channel, tx_id, transfer_id, kind, from_wallet_id, to_wallet_id, amount, memo, block_number, tx_index, tx_timestamp) VALUES
  ('gxchannel', 'x1', 'tr1', 'transfer', 'treasury', 'alice', 30, 'one', 4, 0, '2026-01-01T00:00:03Z'),
  ('gxchannel', 'x2', 'tr2', 'transfer', 'treasury', 'alice', 30, 'two', 4, 1, '2026-01-01T00:00:03Z'),
  ('gxchannel', 'x3', 'tr3', 'transfer', 'alice', 'alice', 5, 'self', 5, 0, '2026-01-01T00:00:04Z'),
  ('gxchannel', 'x4', 'tr4', 'transfer', 'alice', 'bob', 10, 'four', 5, 2, '2026-01-01T00:00:04Z');
INSERT INTO wallet_history (wallet_id, channel, tx_id, direction, counterparty_wallet_id, amount, memo, block_number, tx_index, tx_timestamp) VALUES
  ('alice', 'gxchannel', 'x1', 'credit', 'treasury', 30, 'one', 4, 0, '2026-01-01T00:00:03Z'),
  ('alice', 'gxchannel', 'x2', 'credit', 'treasury', 30, 'two', 4, 1, '2026-01-01T00:00:03Z'),
  ('alice', 'gxchannel', 'x3', 'debit', 'alice', 5, 'self', 5, 0, '2026-01-01T00:00:04Z'),
  ('alice', 'gxchannel', 'x3', 'credit', 'alice', 5, 'self', 5, 0, '2026-01-01T00:00:04Z'),
  ('alice', 'gxchannel', 'x4', 'debit', 'bob', 10, 'four', 5, 2, '2026-01-01T00:00:04Z'),
  ('bob', 'gxchannel', 'x4', 'credit', 'alice', 10, 'four', 5, 2, '2026-01-01T00:00:04Z');
"#;

impl Harness {
    async fn new() -> Harness {
        Self::with_projector(None).await
    }

    async fn with_projector(projector: Option<Arc<dyn ProjectorView>>) -> Harness {
        let db = TestDb::new().await.unwrap();
        let pool = pg::connect_pool(&db.settings("gxd-api-test"))
            .await
            .unwrap();
        pg::migrate::migrate_pool(&pool).await.unwrap();
        db.connect()
            .await
            .unwrap()
            .batch_execute(SEED)
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let rocks = Db::open(Db::path_in(dir.path()), &DbOptions::default()).unwrap();
        let outbox = Outbox::new(rocks, OutboxOptions::default()).unwrap();
        let state = ApiState::new(&prometheus::Registry::new(), Vec::new())
            .unwrap()
            .with_authenticator(Arc::new(TestTokens))
            .with_v1(V1Deps {
                outbox: outbox.clone(),
                pool: pool.clone(),
                channel: CHANNEL.to_owned(),
                projector,
                on_enqueue: None,
                read_cache: None,
            });
        Harness {
            state,
            outbox,
            pool,
            db,
            _dir: dir,
        }
    }

    async fn send(&self, req: Request<Body>) -> Reply {
        let response = router(self.state.clone()).oneshot(req).await.unwrap();
        let status = response.status();
        let headers = response
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
            .collect();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Reply {
            status,
            headers,
            text,
            json,
        }
    }

    async fn call(
        &self,
        method: &str,
        uri: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> Reply {
        let mut b = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = match body {
            Some(v) => b
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(v.to_string()))
                .unwrap(),
            None => b.body(Body::empty()).unwrap(),
        };
        self.send(req).await
    }

    async fn post(&self, uri: &str, token: &str, body: Value) -> Reply {
        self.call("POST", uri, Some(token), &[], Some(body)).await
    }

    async fn get(&self, uri: &str, token: &str) -> Reply {
        self.call("GET", uri, Some(token), &[], None).await
    }

    fn total(&self) -> u64 {
        self.outbox.counts().unwrap().total()
    }
}

#[derive(Debug)]
struct Reply {
    status: StatusCode,
    headers: BTreeMap<String, String>,
    text: String,
    json: Value,
}

impl Reply {
    fn assert_problem(&self, status: u16) {
        assert_eq!(self.status.as_u16(), status, "{}", self.text);
        assert_eq!(
            self.headers.get("content-type").map(String::as_str),
            Some(PROBLEM_JSON),
            "{}",
            self.text
        );
        assert_eq!(self.json["status"], status, "{}", self.text);
    }

    fn fields(&self) -> Vec<String> {
        self.json["errors"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|e| e["field"].as_str().unwrap().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn transfer(from: &str, to: &str, amount: Value) -> Value {
    json!({"fromWalletId": from, "toWalletId": to, "amount": amount})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_problem_and_changes_nothing() {
    let h = Harness::new().await;
    let alice = "user:alice";
    struct Case {
        name: &'static str,
        method: &'static str,
        uri: &'static str,
        token: Option<&'static str>,
        content_type: Option<&'static str>,
        body: String,
        status: u16,
        field: Option<&'static str>,
    }
    let c = |name, uri, body: Value, status, field| Case {
        name,
        method: "POST",
        uri,
        token: Some(alice),
        content_type: Some("application/json"),
        body: body.to_string(),
        status,
        field,
    };
    let t = |a: Value| transfer("alice", "bob", a);
    let mut cases = vec![
        Case {
            body: r#"{"fromWalletId": "alice", "#.into(),
            ..c("malformed JSON", "/api/v1/transfers", json!(null), 400, None)
        },
        Case {
            body: r#"{"fromWalletId":"alice","toWalletId":"bob","amount":"1"} trailing"#.into(),
            ..c("trailing garbage", "/api/v1/transfers", json!(null), 400, None)
        },
        c("number instead of a string", "/api/v1/transfers", t(json!(5)), 400, Some("amount")),
        c("wrong type", "/api/v1/transfers", json!({"fromWalletId": 1, "toWalletId": "bob", "amount": "1"}), 400, Some("fromWalletId")),
        c("missing field", "/api/v1/transfers", json!({"fromWalletId": "alice", "toWalletId": "bob"}), 400, Some("amount")),
        c("unknown field", "/api/v1/transfers", json!({"fromWalletId": "alice", "toWalletId": "bob", "amount": "1", "fee": "1"}), 400, Some("fee")),
        c("not an object", "/api/v1/transfers", json!(["alice"]), 400, None),
        c("negative amount", "/api/v1/transfers", t(json!("-5")), 422, Some("amount")),
        c("zero amount", "/api/v1/transfers", t(json!("0")), 422, Some("amount")),
        c("huge amount", "/api/v1/transfers", t(json!("340282366920938463463374607431768211456")), 422, Some("amount")),
        c("decimal amount", "/api/v1/transfers", t(json!("1.5")), 422, Some("amount")),
        c("exponent amount", "/api/v1/transfers", t(json!("1e3")), 422, Some("amount")),
        c("leading zero", "/api/v1/transfers", t(json!("05")), 422, Some("amount")),
        c("empty amount", "/api/v1/transfers", t(json!("")), 422, Some("amount")),
        c("unknown destination", "/api/v1/transfers", transfer("alice", "nobody", json!("1")), 422, Some("toWalletId")),
        c("unknown source", "/api/v1/transfers", transfer("ghost", "bob", json!("1")), 422, Some("fromWalletId")),
        c("bad id charset", "/api/v1/transfers", transfer("alice", "b o b", json!("1")), 422, Some("toWalletId")),
        c("memo too long", "/api/v1/transfers", json!({"fromWalletId": "alice", "toWalletId": "bob", "amount": "1", "memo": "m".repeat(513)}), 422, Some("memo")),
        c("multisig source for a transfer", "/api/v1/transfers", transfer("vault", "bob", json!("1")), 422, Some("fromWalletId")),
        c("threshold zero", "/api/v1/multisig-wallets", json!({"walletId": "v2", "owners": ["alice", "bob"], "threshold": 0}), 422, Some("threshold")),
        c("threshold above owners", "/api/v1/multisig-wallets", json!({"walletId": "v2", "owners": ["alice", "bob"], "threshold": 3}), 422, Some("threshold")),
        c("threshold as a string", "/api/v1/multisig-wallets", json!({"walletId": "v2", "owners": ["alice"], "threshold": "1"}), 400, Some("threshold")),
        c("negative threshold", "/api/v1/multisig-wallets", json!({"walletId": "v2", "owners": ["alice"], "threshold": -1}), 400, Some("threshold")),
        c("owner twice", "/api/v1/multisig-wallets", json!({"walletId": "v2", "owners": ["alice", "alice"], "threshold": 1}), 422, Some("owners[1]")),
        c("no owners", "/api/v1/multisig-wallets", json!({"walletId": "v2", "owners": [], "threshold": 1}), 422, Some("owners")),
        c("owner not a user", "/api/v1/multisig-wallets", json!({"walletId": "v2", "owners": ["alice", "zed"], "threshold": 1}), 422, Some("owners")),
        c("existing wallet", "/api/v1/multisig-wallets", json!({"walletId": "vault", "owners": ["alice"], "threshold": 1}), 409, None),
        c("country not a code", "/api/v1/users", json!({"userId": "alice2", "country": "Germany", "profile": {}}), 422, Some("country")),
        c("profile not an object", "/api/v1/users", json!({"userId": "alice", "country": "DE", "profile": "x"}), 400, Some("profile")),
        c("profile with a NUL", "/api/v1/users", json!({"userId": "alice", "country": "DE", "profile": {"name": "a\u{0}b"}}), 422, Some("profile")),
        c("profile with a float", "/api/v1/users", json!({"userId": "alice", "country": "DE", "profile": {"height": -6.1255330380885304e16}}), 422, Some("profile")),
        c("proposal from a user wallet", "/api/v1/proposals", transfer("alice", "bob", json!("1")), 422, Some("fromWalletId")),
        c("requestId too long", "/api/v1/transfers", json!({"fromWalletId": "alice", "toWalletId": "bob", "amount": "1", "requestId": "k".repeat(201)}), 422, Some("requestId")),
        Case {
            body: json!({"fromWalletId": "alice", "toWalletId": "bob", "amount": "1", "memo": "m".repeat(70 * 1024)}).to_string(),
            ..c("oversize body", "/api/v1/transfers", json!(null), 413, None)
        },
        Case {
            content_type: Some("text/plain"),
            ..c("wrong content type", "/api/v1/transfers", t(json!("1")), 415, None)
        },
        Case {
            content_type: None,
            ..c("no content type", "/api/v1/transfers", t(json!("1")), 415, None)
        },
        Case {
            token: None,
            ..c("no token", "/api/v1/transfers", t(json!("1")), 401, None)
        },
        Case {
            token: Some("forged"),
            ..c("invalid token", "/api/v1/transfers", t(json!("1")), 401, None)
        },
        c("bootstrap by a user", "/api/v1/admin/bootstrap", json!({"treasuryWalletId": "t2", "initialSupply": "5"}), 403, None),
        Case {
            token: Some("admin:root"),
            ..c("bootstrap of an existing wallet", "/api/v1/admin/bootstrap", json!({"treasuryWalletId": "treasury", "initialSupply": "5"}), 409, None)
        },
        Case {
            token: Some("admin:root"),
            ..c("bootstrap supply as a number", "/api/v1/admin/bootstrap", json!({"treasuryWalletId": "t2", "initialSupply": 5}), 400, Some("initialSupply"))
        },
        c("unknown route", "/api/v1/nope", json!({}), 404, None),
        c("approve an unknown proposal", "/api/v1/proposals/nope/approve", json!(null), 404, None),
        c("approve a closed proposal", "/api/v1/proposals/p0/approve", json!(null), 409, None),
        Case {
            method: "DELETE",
            ..c("wrong method", "/api/v1/transfers", json!(null), 405, None)
        },
        Case {
            method: "GET",
            ..c("bad cursor", "/api/v1/wallets/alice/transactions?cursor=zz", json!(null), 422, Some("cursor"))
        },
        Case {
            method: "GET",
            ..c("limit zero", "/api/v1/wallets/alice/transactions?limit=0", json!(null), 422, Some("limit"))
        },
        Case {
            method: "GET",
            ..c("limit not a number", "/api/v1/wallets/alice/transactions?limit=ten", json!(null), 400, None)
        },
        Case {
            method: "GET",
            ..c("unknown query parameter", "/api/v1/wallets/alice/transactions?page=2", json!(null), 400, None)
        },
        Case {
            method: "GET",
            ..c("unknown wallet", "/api/v1/wallets/ghost", json!(null), 404, None)
        },
        Case {
            method: "GET",
            ..c("not a command id", "/api/v1/commands/not-a-uuid", json!(null), 404, None)
        },
        Case {
            method: "GET",
            ..c("unknown proposal status", "/api/v1/proposals?status=maybe", json!(null), 422, Some("status"))
        },
    ];
    // Idempotency-Key header that is not visible ASCII.
    cases.push(c(
        "idempotency key with a space",
        "/api/v1/transfers",
        t(json!("1")),
        422,
        Some("Idempotency-Key"),
    ));
    let before = h.outbox.counts().unwrap();
    let n = cases.len();
    for case in cases {
        let mut b = Request::builder().method(case.method).uri(case.uri);
        if let Some(tok) = case.token {
            b = b.header(header::AUTHORIZATION, format!("Bearer {tok}"));
        }
        if let Some(ct) = case.content_type {
            b = b.header(header::CONTENT_TYPE, ct);
        }
        if case.name == "idempotency key with a space" {
            b = b.header("Idempotency-Key", "a b");
        }
        let body = if case.body == "null" {
            Body::empty()
        } else {
            Body::from(case.body.clone())
        };
        let reply = h.send(b.body(body).unwrap()).await;
        assert_eq!(
            reply.status.as_u16(),
            case.status,
            "{}: {}",
            case.name,
            reply.text
        );
        reply.assert_problem(case.status);
        if let Some(f) = case.field {
            assert!(
                reply.fields().iter().any(|x| x == f),
                "{}: expected field {f}, got {}",
                case.name,
                reply.text
            );
        }
    }
    assert_eq!(h.outbox.counts().unwrap(), before, "nothing enqueued");
    assert!(n >= 40, "{n} cases");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_read_and_move_only_what_is_theirs() {
    let h = Harness::new().await;
    // Spending from another user's wallet, from the treasury as a user, proposing from a
    // wallet one does not own, deciding as a non-owner, creating another user, a multisig
    // wallet without the caller among its owners: 403, nothing enqueued.
    for (uri, token, body) in [
        (
            "/api/v1/transfers",
            "user:alice",
            transfer("bob", "alice", json!("1")),
        ),
        (
            "/api/v1/transfers",
            "user:alice",
            transfer("treasury", "alice", json!("1")),
        ),
        (
            "/api/v1/transfers",
            "admin:root",
            transfer("bob", "alice", json!("1")),
        ),
        (
            "/api/v1/proposals",
            "user:carol",
            transfer("vault", "carol", json!("1")),
        ),
        (
            "/api/v1/users",
            "user:alice",
            json!({"userId": "mallory", "country": "DE", "profile": {}}),
        ),
        (
            "/api/v1/multisig-wallets",
            "user:carol",
            json!({"walletId": "v9", "owners": ["alice", "bob"], "threshold": 1}),
        ),
        (
            "/api/v1/admin/bootstrap",
            "user:alice",
            json!({"treasuryWalletId": "t9", "initialSupply": "1"}),
        ),
    ] {
        let r = h.post(uri, token, body.clone()).await;
        r.assert_problem(403);
        assert_eq!(h.total(), 0, "{uri} {token} {body}");
    }
    let r = h
        .call(
            "POST",
            "/api/v1/proposals/p1/approve",
            Some("user:carol"),
            &[],
            None,
        )
        .await;
    r.assert_problem(403);
    let r = h
        .call(
            "POST",
            "/api/v1/proposals/p1/reject",
            Some("user:carol"),
            &[],
            None,
        )
        .await;
    r.assert_problem(403);
    assert_eq!(h.total(), 0);

    // Reads: another user's wallet, history, user record, proposal, proposal list.
    for uri in [
        "/api/v1/wallets/bob",
        "/api/v1/wallets/bob/transactions",
        "/api/v1/users/bob",
        "/api/v1/proposals/p1",
        "/api/v1/proposals?approver=alice",
    ] {
        h.get(uri, "user:carol").await.assert_problem(403);
    }
    // Operators' routes need the admin role.
    for uri in [
        "/api/v1/admin/outbox",
        "/api/v1/admin/outbox/counts",
        "/api/v1/admin/projector",
    ] {
        h.get(uri, "user:alice").await.assert_problem(403);
    }

    // The admin may spend from the treasury; alice from her own wallet.
    let r = h
        .post(
            "/api/v1/transfers",
            "admin:root",
            transfer("treasury", "alice", json!("7")),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let r = h
        .post(
            "/api/v1/transfers",
            "user:alice",
            transfer("alice", "bob", json!("3")),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let alice_cmd = r.json["commandId"].as_str().unwrap().to_owned();
    // A command is visible to its caller and admins only (404 to others).
    let uri = format!("/api/v1/commands/{alice_cmd}");
    assert_eq!(h.get(&uri, "user:alice").await.status, StatusCode::OK);
    assert_eq!(h.get(&uri, "admin:root").await.status, StatusCode::OK);
    h.get(&uri, "user:bob").await.assert_problem(404);
    h.get(&format!("{uri}/events"), "user:bob")
        .await
        .assert_problem(404);
    // Bob, an owner of the vault, may approve; carol still may not.
    let r = h
        .call(
            "POST",
            "/api/v1/proposals/p1/approve",
            Some("user:bob"),
            &[],
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    assert_eq!(h.total(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accepted_command_is_durable_and_idempotent() {
    let h = Harness::new().await;
    let body =
        json!({"fromWalletId": "alice", "toWalletId": "bob", "amount": "12", "memo": "lunch"});
    let key = [("Idempotency-Key", "k-1")];
    let first = h
        .call(
            "POST",
            "/api/v1/transfers",
            Some("user:alice"),
            &key,
            Some(body.clone()),
        )
        .await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{}", first.text);
    assert_eq!(first.json["status"], "accepted");
    let id = first.json["commandId"].as_str().unwrap().to_owned();
    assert_eq!(first.json["statusUrl"], format!("/api/v1/commands/{id}"));
    assert_eq!(first.headers["location"], format!("/api/v1/commands/{id}"));
    // The transfer id on the ledger is the command id.
    assert_eq!(first.json["transferId"], id);
    // Durable: in the outbox, partitioned by payer and payee, with the GX payload.
    let c = h.outbox.get(id.parse::<CommandId>().unwrap()).unwrap();
    assert_eq!(c.status, Status::Pending);
    assert_eq!(c.tenant, "alice");
    assert_eq!(c.request_id, "k-1");
    assert_eq!(c.partition_key, "alice");
    assert_eq!(c.extra_partition_keys, ["bob"]);
    assert_eq!(c.command_type, "TRANSFER_TOKENS");
    let payload: Value = serde_json::from_slice(&c.payload).unwrap();
    assert_eq!(
        payload,
        json!({"fromWalletId": "alice", "toWalletId": "bob", "amount": "12", "memo": "lunch"})
    );

    // Same key, same payload: 200 with the original.
    let again = h
        .call(
            "POST",
            "/api/v1/transfers",
            Some("user:alice"),
            &key,
            Some(body.clone()),
        )
        .await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.text);
    assert_eq!(again.json["commandId"], id);
    // The key in the body works the same.
    let mut with_body_key = body.clone();
    with_body_key["requestId"] = json!("k-1");
    let again = h
        .post("/api/v1/transfers", "user:alice", with_body_key)
        .await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.text);
    assert_eq!(again.json["commandId"], id);
    // Same key, another payload: 409 naming the original.
    let other = json!({"fromWalletId": "alice", "toWalletId": "bob", "amount": "13"});
    let r = h
        .call(
            "POST",
            "/api/v1/transfers",
            Some("user:alice"),
            &key,
            Some(other),
        )
        .await;
    r.assert_problem(409);
    assert_eq!(r.json["commandId"], id);
    // Header and body keys that differ: 422.
    let mut mismatch = body.clone();
    mismatch["requestId"] = json!("k-2");
    let r = h
        .call(
            "POST",
            "/api/v1/transfers",
            Some("user:alice"),
            &key,
            Some(mismatch),
        )
        .await;
    r.assert_problem(422);
    assert_eq!(r.fields(), ["requestId"]);
    assert_eq!(h.total(), 1);
    // Keys are per caller: the admin's k-1 is another command.
    let r = h
        .call(
            "POST",
            "/api/v1/transfers",
            Some("admin:root"),
            &key,
            Some(transfer("treasury", "bob", json!("12"))),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    assert_ne!(r.json["commandId"], id);
    // Without a key every request is a new command.
    for _ in 0..2 {
        let r = h
            .post(
                "/api/v1/transfers",
                "user:alice",
                transfer("alice", "bob", json!("1")),
            )
            .await;
        assert_eq!(r.status, StatusCode::ACCEPTED);
    }
    assert_eq!(h.total(), 4);
    // A decision without a key is one per caller and proposal.
    let a = h
        .call(
            "POST",
            "/api/v1/proposals/p1/approve",
            Some("user:alice"),
            &[],
            None,
        )
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.text);
    let b = h
        .call(
            "POST",
            "/api/v1/proposals/p1/approve",
            Some("user:alice"),
            &[],
            None,
        )
        .await;
    assert_eq!(b.status, StatusCode::OK, "{}", b.text);
    assert_eq!(a.json["commandId"], b.json["commandId"]);
    assert_eq!(a.json["proposalId"], "p1");
    let c = h
        .outbox
        .get(a.json["commandId"].as_str().unwrap().parse().unwrap())
        .unwrap();
    // The proposal's wallet and its payee (the approval that executes pays carol).
    assert_eq!(c.partition_key, "vault");
    assert_eq!(c.extra_partition_keys, ["carol"]);
    assert_eq!(
        serde_json::from_slice::<Value>(&c.payload).unwrap(),
        json!({"proposalId": "p1", "approverId": "alice"})
    );
    // A proposal: the multisig wallet and its payee.
    let p = h
        .post(
            "/api/v1/proposals",
            "user:alice",
            transfer("vault", "bob", json!("5")),
        )
        .await;
    assert_eq!(p.status, StatusCode::ACCEPTED, "{}", p.text);
    let c = h
        .outbox
        .get(p.json["commandId"].as_str().unwrap().parse().unwrap())
        .unwrap();
    assert_eq!(c.partition_keys().collect::<Vec<_>>(), ["vault", "bob"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_user_s_profile_stays_off_the_ledger() {
    let h = Harness::new().await;
    let profile = json!({"name": "Dave Example", "email": "dave@example.com", "address": {"city": "Berlin", "zip": "10115"}});
    let body = json!({"userId": "dave", "country": "DE", "profile": profile, "requestId": "u-1"});
    let r = h.post("/api/v1/users", "user:dave", body.clone()).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    assert_eq!(r.json["userId"], "dave");
    let id: CommandId = r.json["commandId"].as_str().unwrap().parse().unwrap();
    let c = h.outbox.get(id).unwrap();
    assert_eq!(c.command_type, "CREATE_USER");
    let payload: Value = serde_json::from_slice(&c.payload).unwrap();
    let text = String::from_utf8(c.payload.clone()).unwrap();
    assert!(!text.contains("Dave") && !text.contains("example.com") && !text.contains("Berlin"));
    assert_eq!(payload["userId"], "dave");
    assert_eq!(payload["country"], "DE");
    // The profile row: salted SHA-256 over the canonical profile, linked to the command.
    let row = h
        .db
        .connect()
        .await
        .unwrap()
        .query_one(
            "SELECT profile::text, salt, commitment, command_id::text FROM user_profiles WHERE user_id = 'dave'",
            &[],
        )
        .await
        .unwrap();
    let stored: Value = serde_json::from_str(row.get::<_, &str>(0)).unwrap();
    assert_eq!(stored, profile);
    let salt: Vec<u8> = row.get(1);
    assert_eq!(salt.len(), 16);
    let canonical = r#"{"address":{"city":"Berlin","zip":"10115"},"email":"dave@example.com","name":"Dave Example"}"#;
    let mut hasher = Sha256::new();
    hasher.update(&salt);
    hasher.update(canonical.as_bytes());
    let expected = hex::encode(hasher.finalize());
    assert_eq!(row.get::<_, &str>(2), expected);
    assert_eq!(payload["profileCommitment"], expected);
    assert_eq!(row.get::<_, &str>(3), id.to_string());

    // A retry (same key, same profile) keeps the salt: the same command.
    let again = h.post("/api/v1/users", "user:dave", body.clone()).await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.text);
    assert_eq!(again.json["commandId"], id.to_string());
    // Another profile under the same key: 409; a new key with another profile while the
    // first creation is on its way: 409; the profile is unchanged.
    let mut other = body.clone();
    other["profile"] = json!({"name": "Eve"});
    h.post("/api/v1/users", "user:dave", other.clone())
        .await
        .assert_problem(409);
    other["requestId"] = json!("u-2");
    h.post("/api/v1/users", "user:dave", other)
        .await
        .assert_problem(409);
    // The same profile under a new key: the creation on its way is named, not repeated.
    let mut same = body.clone();
    same["requestId"] = json!("u-3");
    let r = h.post("/api/v1/users", "user:dave", same).await;
    r.assert_problem(409);
    assert_eq!(r.json["commandId"], id.to_string());
    assert_eq!(h.total(), 1);
    // An admin may create any user; a user on the ledger already is 409.
    h.post(
        "/api/v1/users",
        "admin:root",
        json!({"userId": "alice", "country": "DE", "profile": {}}),
    )
    .await
    .assert_problem(409);
    // The user reads itself, profile joined (not yet on the ledger).
    let me = h.get("/api/v1/users/dave", "user:dave").await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.text);
    assert_eq!(me.json["onLedger"], false);
    assert_eq!(me.json["profile"], profile);
    assert_eq!(me.json["profileCommitment"], expected);
    h.get("/api/v1/users/dave", "user:alice")
        .await
        .assert_problem(403);
    assert_eq!(
        h.get("/api/v1/users/dave", "admin:root").await.status,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_come_from_the_read_models() {
    let h = Harness::new().await;
    let w = h.get("/api/v1/wallets/alice", "user:alice").await;
    assert_eq!(w.status, StatusCode::OK, "{}", w.text);
    assert_eq!(w.json["walletId"], "alice");
    assert_eq!(w.json["kind"], "user");
    assert_eq!(w.json["balance"], "50");
    assert_eq!(w.json["owners"], json!(["alice"]));
    let v = h.get("/api/v1/wallets/vault", "user:bob").await;
    assert_eq!(v.json["threshold"], 2);
    assert_eq!(v.json["owners"], json!(["alice", "bob"]));
    assert_eq!(
        h.get("/api/v1/wallets/vault", "admin:root").await.status,
        StatusCode::OK
    );

    // History: newest first, a total order (the self-transfer's two rows), pages of 2.
    let mut seen = Vec::new();
    let mut uri = "/api/v1/wallets/alice/transactions?limit=2".to_owned();
    loop {
        let page = h.get(&uri, "user:alice").await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.text);
        for item in page.json["items"].as_array().unwrap() {
            seen.push((
                item["txId"].as_str().unwrap().to_owned(),
                item["direction"].as_str().unwrap().to_owned(),
                item["amount"].as_str().unwrap().to_owned(),
                item["transferId"].as_str().unwrap().to_owned(),
            ));
        }
        match page.json["nextCursor"].as_str() {
            Some(c) => uri = format!("/api/v1/wallets/alice/transactions?limit=2&cursor={c}"),
            None => break,
        }
    }
    let s = |a: &str, b: &str, c: &str, d: &str| (a.into(), b.into(), c.into(), d.into());
    assert_eq!(
        seen,
        vec![
            s("x4", "out", "10", "tr4"),
            s("x3", "out", "5", "tr3"),
            s("x3", "in", "5", "tr3"),
            s("x2", "in", "30", "tr2"),
            s("x1", "in", "30", "tr1"),
        ]
    );
    let all = h
        .get("/api/v1/wallets/alice/transactions", "user:alice")
        .await;
    assert_eq!(all.json["items"].as_array().unwrap().len(), 5);
    assert_eq!(
        all.json["nextCursor"],
        serde_json::Value::Null,
        "present, null at the end"
    );
    assert!(all.json.get("nextCursor").is_some());
    assert_eq!(all.json["items"][0]["counterpartyWalletId"], "bob");
    assert_eq!(all.json["items"][0]["memo"], "four");
    assert_eq!(all.json["items"][0]["blockNumber"], 5);

    // Proposals: bob's pending undecided ones; the executed one with its decisions.
    let list = h.get("/api/v1/proposals", "user:bob").await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.text);
    let ids: Vec<&str> = list.json["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["proposalId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["p1"]);
    let all = h
        .get("/api/v1/proposals?approver=bob&status=all", "admin:root")
        .await;
    assert_eq!(all.json["items"].as_array().unwrap().len(), 2);
    let carol = h.get("/api/v1/proposals", "user:carol").await;
    assert_eq!(carol.json["items"], json!([]));
    let p0 = h.get("/api/v1/proposals/p0", "user:alice").await;
    assert_eq!(p0.status, StatusCode::OK, "{}", p0.text);
    assert_eq!(p0.json["state"], "executed");
    assert_eq!(p0.json["approvals"], 2);
    assert_eq!(p0.json["amount"], "10");
    let decisions: Vec<&str> = p0.json["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["approverId"].as_str().unwrap())
        .collect();
    assert_eq!(decisions, ["alice", "bob"]);
    let p1 = h.get("/api/v1/proposals/p1", "user:bob").await;
    assert_eq!(p1.json["state"], "pending");
    assert_eq!(p1.json["memo"], "rent");
    // A user on the ledger reads itself (no profile row: profile absent).
    let u = h.get("/api/v1/users/alice", "user:alice").await;
    assert_eq!(u.status, StatusCode::OK, "{}", u.text);
    assert_eq!(u.json["onLedger"], true);
    assert_eq!(u.json["country"], "DE");
    assert_eq!(u.json["walletId"], "alice");
    h.get("/api/v1/users/nobody", "admin:root")
        .await
        .assert_problem(404);
}

/// Reads every `status` event of an SSE body until it ends.
fn sse_statuses(text: &str) -> Vec<String> {
    text.split("\n\n")
        .filter(|e| e.contains("event: status"))
        .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
        .map(|d| {
            serde_json::from_str::<Value>(d).unwrap()["status"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_status_follows_the_outbox_and_the_read_models() {
    let h = Harness::new().await;
    let r = h
        .post(
            "/api/v1/transfers",
            "user:alice",
            transfer("alice", "bob", json!("2")),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let id_text = r.json["commandId"].as_str().unwrap().to_owned();
    let id: CommandId = id_text.parse().unwrap();
    let uri = format!("/api/v1/commands/{id_text}");
    let status = |r: &Reply| r.json["status"].as_str().unwrap().to_owned();
    let v = h.get(&uri, "user:alice").await;
    assert_eq!(status(&v), "accepted");
    assert_eq!(v.json["type"], "TRANSFER_TOKENS");
    assert!(v.json.get("txId").is_none());

    // The event stream, read to its end while the command moves along.
    let events = {
        let state = h.state.clone();
        let uri = format!("{uri}/events");
        tokio::spawn(async move {
            let req = Request::get(&uri)
                .header(header::AUTHORIZATION, "Bearer user:alice")
                .body(Body::empty())
                .unwrap();
            let response = router(state).oneshot(req).await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(
                response.headers()[header::CONTENT_TYPE],
                "text/event-stream"
            );
            let bytes =
                tokio::time::timeout(Duration::from_secs(60), response.into_body().collect())
                    .await
                    .expect("the stream ends at projected")
                    .unwrap()
                    .to_bytes();
            String::from_utf8(bytes.to_vec()).unwrap()
        })
    };
    // Wait for a condition with a deadline: the stream has sent its first event once a
    // status read by the API matches; transitions follow.
    h.outbox
        .mark_prepared(id, "tx-abc".into(), vec![1, 2, 3])
        .await
        .unwrap();
    let v = h.get(&uri, "user:alice").await;
    assert_eq!(status(&v), "submitted");
    assert_eq!(v.json["txId"], "tx-abc");
    h.outbox.mark_submitted(id).await.unwrap();
    h.outbox.mark_committed(id, 9).await.unwrap();
    let v = h.get(&uri, "user:alice").await;
    assert_eq!(status(&v), "committed");
    assert_eq!(v.json["blockNumber"], 9);
    // The projector applies block 9 (a valid transaction with this tx id).
    h.db
        .connect()
        .await
        .unwrap()
        .batch_execute(
            "INSERT INTO applied_transactions (channel, tx_id, block_number, tx_index, validation_code, event_name, tx_timestamp) \
             VALUES ('gxchannel', 'tx-abc', 9, 0, 0, 'TokensTransferred', now())",
        )
        .await
        .unwrap();
    let v = h.get(&uri, "user:alice").await;
    assert_eq!(status(&v), "projected");
    let text = events.await.unwrap();
    let seen = sse_statuses(&text);
    assert_eq!(seen.last().map(String::as_str), Some("projected"), "{text}");
    // Every change in order, none repeated (a fast run may merge some).
    let order = ["accepted", "submitted", "committed", "projected"];
    let positions: Vec<usize> = seen
        .iter()
        .map(|s| order.iter().position(|o| o == s).unwrap())
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{seen:?}");

    // A failed command: status failed with its error; its stream is one event.
    let r = h
        .post(
            "/api/v1/transfers",
            "user:alice",
            transfer("alice", "bob", json!("3")),
        )
        .await;
    let id2: CommandId = r.json["commandId"].as_str().unwrap().parse().unwrap();
    h.outbox
        .mark_failed(
            id2,
            CommandError {
                stage: "endorse".into(),
                code: "chaincode".into(),
                message: "insufficient funds".into(),
            },
        )
        .await
        .unwrap();
    let v = h
        .get(&format!("/api/v1/commands/{id2}"), "user:alice")
        .await;
    assert_eq!(status(&v), "failed");
    assert_eq!(
        v.json["error"],
        json!({"stage": "endorse", "code": "chaincode", "message": "insufficient funds"})
    );
    let ev = h
        .get(&format!("/api/v1/commands/{id2}/events"), "user:alice")
        .await;
    assert_eq!(sse_statuses(&ev.text), ["failed"]);
    let _ = &h.pool;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_list_requeue_and_count() {
    let projector = Arc::new(FixedProjector(Mutex::new(ProjectorSnapshot {
        state: "running".into(),
        projected_block: Some(41),
        checkpoint_height: Some(41),
        ..Default::default()
    })));
    let h = Harness::with_projector(Some(projector)).await;
    let mut failed = Vec::new();
    for i in 0..3 {
        let r = h
            .post(
                "/api/v1/transfers",
                "user:alice",
                transfer("alice", "bob", json!((i + 1).to_string())),
            )
            .await;
        let id: CommandId = r.json["commandId"].as_str().unwrap().parse().unwrap();
        h.outbox
            .mark_failed(
                id,
                CommandError {
                    stage: "endorse".into(),
                    code: "x".into(),
                    message: "no".into(),
                },
            )
            .await
            .unwrap();
        failed.push(id.to_string());
    }
    h.post(
        "/api/v1/transfers",
        "user:bob",
        transfer("bob", "alice", json!("1")),
    )
    .await;
    let counts = h.get("/api/v1/admin/outbox/counts", "admin:root").await;
    assert_eq!(counts.status, StatusCode::OK, "{}", counts.text);
    assert_eq!(counts.json["failed"], 3);
    assert_eq!(counts.json["pending"], 1);
    assert_eq!(counts.json["total"], 4);
    // Dead letters, a page of two then the rest.
    let p1 = h.get("/api/v1/admin/outbox?limit=2", "admin:root").await;
    assert_eq!(p1.status, StatusCode::OK, "{}", p1.text);
    let items = p1.json["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["commandId"], failed[0]);
    assert_eq!(items[0]["outboxStatus"], "FAILED");
    assert_eq!(items[0]["status"], "failed");
    assert_eq!(items[0]["tenant"], "alice");
    assert_eq!(items[0]["payload"]["amount"], "1");
    assert_eq!(items[0]["partitionKey"], "alice");
    assert_eq!(items[0]["partitionKeys"], json!(["alice", "bob"]));
    let cursor = p1.json["nextCursor"].as_str().unwrap();
    let p2 = h
        .get(
            &format!("/api/v1/admin/outbox?limit=2&cursor={cursor}"),
            "admin:root",
        )
        .await;
    let items = p2.json["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["commandId"], failed[2]);
    let pending = h
        .get("/api/v1/admin/outbox?status=pending", "admin:root")
        .await;
    assert_eq!(pending.json["items"].as_array().unwrap().len(), 1);
    h.get("/api/v1/admin/outbox?status=lost", "admin:root")
        .await
        .assert_problem(422);
    // Requeue one: PENDING again; a second requeue is a conflict; an unknown id 404.
    let uri = format!("/api/v1/admin/outbox/{}/requeue", failed[1]);
    let r = h.call("POST", &uri, Some("admin:root"), &[], None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["outboxStatus"], "PENDING");
    assert_eq!(r.json["requeues"], 1);
    h.call("POST", &uri, Some("admin:root"), &[], None)
        .await
        .assert_problem(409);
    h.call("POST", &uri, Some("user:alice"), &[], None)
        .await
        .assert_problem(403);
    h.call(
        "POST",
        &format!("/api/v1/admin/outbox/{}/requeue", CommandId::new_v7()),
        Some("admin:root"),
        &[],
        None,
    )
    .await
    .assert_problem(404);
    let counts = h.get("/api/v1/admin/outbox/counts", "admin:root").await;
    assert_eq!(counts.json["failed"], 2);
    assert_eq!(counts.json["pending"], 2);
    // The projector's status.
    let p = h.get("/api/v1/admin/projector", "admin:root").await;
    assert_eq!(p.status, StatusCode::OK, "{}", p.text);
    assert_eq!(p.json["state"], "running");
    assert_eq!(p.json["projectedBlock"], 41);
    // Without a projector: 503.
    let bare = Harness::new().await;
    bare.get("/api/v1/admin/projector", "admin:root")
        .await
        .assert_problem(503);
}

/// The issue's route table: every route is in the OpenAPI document and served.
const ROUTES: &[(&str, &str)] = &[
    ("post", "/api/v1/admin/bootstrap"),
    ("post", "/api/v1/users"),
    ("post", "/api/v1/transfers"),
    ("post", "/api/v1/multisig-wallets"),
    ("post", "/api/v1/proposals"),
    ("post", "/api/v1/proposals/{id}/approve"),
    ("post", "/api/v1/proposals/{id}/reject"),
    ("get", "/api/v1/commands/{id}"),
    ("get", "/api/v1/commands/{id}/events"),
    ("get", "/api/v1/wallets/{id}"),
    ("get", "/api/v1/wallets/{id}/transactions"),
    ("get", "/api/v1/users/{id}"),
    ("get", "/api/v1/proposals"),
    ("get", "/api/v1/proposals/{id}"),
    ("get", "/api/v1/admin/outbox"),
    ("post", "/api/v1/admin/outbox/{id}/requeue"),
    ("get", "/api/v1/admin/outbox/counts"),
    ("get", "/api/v1/admin/projector"),
    ("get", "/api/v1/openapi.json"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_matches_the_routes() {
    let projector = Arc::new(FixedProjector(Mutex::new(ProjectorSnapshot::default())));
    let h = Harness::with_projector(Some(projector)).await;
    let r = h.call("GET", "/api/v1/openapi.json", None, &[], None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let doc = r.json;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"), "{doc}");
    let mut documented = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if !["get", "post", "put", "delete", "patch"].contains(&method.as_str()) {
                continue;
            }
            documented.push((method.clone(), path.clone()));
            // Every operation documents its problems with the problem schema.
            for status in ["400", "401", "403", "404", "422", "503"] {
                let content = &op["responses"][status]["content"][PROBLEM_JSON];
                assert!(content.is_object(), "{method} {path} lacks {status}");
            }
        }
    }
    documented.sort();
    let mut expected: Vec<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    expected.sort();
    assert_eq!(
        documented, expected,
        "the document and the route table drifted"
    );
    // Every documented route is served: not the router's fallback 404/405.
    for (method, path) in &expected {
        let uri = path.replace("{id}", "x");
        let r = h
            .call(&method.to_uppercase(), &uri, Some("admin:root"), &[], None)
            .await;
        let fallback = r.json["detail"]
            .as_str()
            .is_some_and(|d| d.starts_with("no route for"));
        assert!(
            !fallback && r.status != StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}: {} {}",
            r.status,
            r.text
        );
        assert!(!r.status.is_server_error(), "{method} {path}: {}", r.text);
    }
    // Schemas of the bodies and the problem type are in the document.
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    for name in [
        "TransferRequest",
        "CreateUserRequest",
        "CreateMultisigWalletRequest",
        "BootstrapRequest",
        "Accepted",
        "CommandView",
        "WalletView",
        "WalletTransactionsPage",
        "UserView",
        "ProposalView",
        "OutboxPage",
        "OutboxCounts",
        "ProjectorSnapshot",
        "ProblemDoc",
    ] {
        assert!(schemas.contains_key(name), "schema {name} missing");
    }
    assert_eq!(
        schemas["TransferRequest"]["properties"]["amount"]["type"],
        "string"
    );
}

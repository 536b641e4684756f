#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The REST API end to end, over real HTTP, as a wallet app meets it: the `gxd run` binary
//! on the config an operator writes (an `[auth]` HS256 key from a file included), with
//! PostgreSQL and an in-process devnet over real gRPC/TLS; every request carries a real
//! JWT minted by `gxd token issue` from that config. Bootstrap, users, funding from the
//! treasury, a transfer, balances and history, a multisig proposal approved to execution
//! and one rejected, the status of every command reaching `projected` (also through the
//! SSE stream), and the sum of all balances equal to the supply.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

/// Real tokens: `gxd token issue` on the daemon's config, one per (role, subject), leaked
/// to `'static` (a handful per test).
struct Tokens {
    config: std::path::PathBuf,
    minted: std::sync::Mutex<BTreeMap<String, &'static str>>,
}

impl Tokens {
    fn get(&self, spec: &str) -> &'static str {
        let mut minted = self.minted.lock().unwrap();
        if let Some(t) = minted.get(spec) {
            return t;
        }
        let (role, sub) = spec.split_once(':').unwrap();
        let token: &'static str = Box::leak(issue_token(&self.config, sub, role).into_boxed_str());
        assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
        minted.insert(spec.to_owned(), token);
        token
    }
}

static TOKENS: std::sync::OnceLock<Tokens> = std::sync::OnceLock::new();

/// The token for `role:subject` (e.g. `user:alice`, `admin:ops`).
fn tok(spec: &str) -> &'static str {
    TOKENS.get().expect("tokens configured").get(spec)
}

/// One HTTP request (blocking client on a blocking thread): status and JSON body.
async fn call(
    api: SocketAddr,
    method: &'static str,
    path: String,
    token: &'static str,
    body: Option<Value>,
) -> (u16, Value) {
    tokio::task::spawn_blocking(move || {
        let auth = format!("Bearer {token}");
        let mut headers = BTreeMap::new();
        headers.insert("Authorization", auth.as_str());
        if body.is_some() {
            headers.insert("Content-Type", "application/json");
        }
        let text = body.map(|b| b.to_string()).unwrap_or_default();
        let (status, _, body) = http_request(api, method, &path, headers, &text).unwrap();
        (status, serde_json::from_str(&body).unwrap_or(Value::Null))
    })
    .await
    .unwrap()
}

/// POSTs a command; returns its body (asserting 202).
async fn command(api: SocketAddr, path: &str, token: &'static str, body: Option<Value>) -> Value {
    let (status, reply) = call(api, "POST", path.to_owned(), token, body).await;
    assert_eq!(status, 202, "{path}: {reply}");
    assert_eq!(reply["status"], "accepted");
    reply
}

/// Polls the command's status until `projected` (fails on `failed` or the deadline).
async fn projected(api: SocketAddr, accepted: &Value, token: &'static str) -> Value {
    let url = accepted["statusUrl"].as_str().unwrap().to_owned();
    let end = Instant::now() + Duration::from_secs(90);
    loop {
        let (status, view) = call(api, "GET", url.clone(), token, None).await;
        assert_eq!(status, 200, "{view}");
        match view["status"].as_str().unwrap() {
            "projected" => return view,
            "failed" => panic!("command failed: {view}"),
            _ => {}
        }
        assert!(Instant::now() < end, "not projected in time: {view}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn balance(api: SocketAddr, wallet: &str) -> u128 {
    let (status, w) = call(
        api,
        "GET",
        format!("/api/v1/wallets/{wallet}"),
        tok("admin:ops"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{w}");
    w["balance"].as_str().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wallets_through_the_rest_api_end_to_end() {
    let db = TestDb::new().await.unwrap();
    let dir = traversable_tempdir();
    let devnet =
        gxd_devnet::start(local_devnet(dir.path()).with_batch(20, Duration::from_millis(20)))
            .await
            .unwrap();

    // The operator's config: the devnet's peer, signing as the org's admin (Bootstrap
    // needs an admin identity; every other GX function accepts it too).
    let mut settings = Settings::new(&db, free_port());
    let admin_msp = devnet.paths().user_msp("org1.example.com", "Admin");
    settings.extra_toml = devnet_fabric_toml(&devnet).replace(
        devnet
            .paths()
            .user_msp("org1.example.com", "User1")
            .to_str()
            .unwrap(),
        admin_msp.to_str().unwrap(),
    );
    let secret = dir.path().join("jwt.secret");
    write_secret(&secret, "an-hs256-secret-of-at-least-32-bytes-for-the-test");
    settings.extra_toml += &format!(
        "[auth]\nissuer = \"https://login.test/\"\naudience = \"gxd\"\n[[auth.keys]]\nalgorithm = \"HS256\"\nsecret_file = {}\n",
        toml_string(secret.to_str().unwrap())
    );
    let path = write_config(dir.path(), &settings);
    assert!(
        TOKENS
            .set(Tokens {
                config: path.clone(),
                minted: Default::default(),
            })
            .is_ok()
    );
    let mut gxd = Gxd::spawn_with_api(
        &["run", "--config", path.to_str().unwrap()],
        &[],
        settings.api_port,
    );
    gxd.wait_ready(Duration::from_secs(90)).unwrap();
    let api = gxd.api.unwrap();

    const SUPPLY: u128 = 1_000_000;
    // Bootstrap.
    let boot = command(
        api,
        "/api/v1/admin/bootstrap",
        tok("admin:ops"),
        Some(json!({"treasuryWalletId": "treasury", "initialSupply": SUPPLY.to_string()})),
    )
    .await;
    let view = projected(api, &boot, tok("admin:ops")).await;
    assert_eq!(view["type"], "BOOTSTRAP_SYSTEM");
    assert!(
        view["txId"].is_string() && view["blockNumber"].is_u64(),
        "{view}"
    );

    // Users: created by an admin, and one by itself.
    let mut pending = Vec::new();
    for (user, token, country) in [
        ("alice", tok("admin:ops"), "DE"),
        ("bob", tok("user:bob"), "FR"),
        ("carol", tok("admin:ops"), "IT"),
    ] {
        let body = json!({"userId": user, "country": country, "profile": {"name": user.to_uppercase(), "email": format!("{user}@example.com")}});
        pending.push((
            command(api, "/api/v1/users", token, Some(body)).await,
            token,
        ));
    }
    for (c, token) in &pending {
        projected(api, c, token).await;
    }
    let (status, alice) = call(
        api,
        "GET",
        "/api/v1/users/alice".into(),
        tok("user:alice"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{alice}");
    assert_eq!(alice["onLedger"], true);
    assert_eq!(alice["country"], "DE");
    assert_eq!(alice["profile"]["email"], "alice@example.com");

    // Funding from the treasury (admins), then alice pays bob.
    for (to, amount) in [("alice", "1000"), ("bob", "500")] {
        let c = command(
            api,
            "/api/v1/transfers",
            tok("admin:ops"),
            Some(json!({"fromWalletId": "treasury", "toWalletId": to, "amount": amount, "memo": "welcome"})),
        )
        .await;
        projected(api, &c, tok("admin:ops")).await;
    }
    // The SSE stream of the next command, opened right after it is accepted, ends at
    // projected.
    let pay = command(
        api,
        "/api/v1/transfers",
        tok("user:alice"),
        Some(
            json!({"fromWalletId": "alice", "toWalletId": "bob", "amount": "100", "memo": "rent"}),
        ),
    )
    .await;
    let events_path = format!("{}/events", pay["statusUrl"].as_str().unwrap());
    let bearer = format!("Bearer {}", tok("user:alice"));
    let sse = tokio::task::spawn_blocking(move || {
        let mut headers = BTreeMap::new();
        headers.insert("Authorization", bearer.as_str());
        http_request(api, "GET", &events_path, headers, "").unwrap()
    })
    .await
    .unwrap();
    assert_eq!(sse.0, 200, "{}", sse.2);
    assert_eq!(sse.1["content-type"], "text/event-stream");
    let statuses: Vec<String> = sse
        .2
        .split("\n\n")
        .filter(|e| e.contains("event: status"))
        .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
        .map(|d| {
            serde_json::from_str::<Value>(d).unwrap()["status"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        statuses.last().map(String::as_str),
        Some("projected"),
        "{}",
        sse.2
    );
    let done = projected(api, &pay, tok("user:alice")).await;
    assert_eq!(done["status"], "projected");

    assert_eq!(balance(api, "alice").await, 900);
    assert_eq!(balance(api, "bob").await, 600);
    let (status, history) = call(
        api,
        "GET",
        "/api/v1/wallets/alice/transactions?limit=1".into(),
        tok("user:alice"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{history}");
    let first = &history["items"][0];
    assert_eq!(first["direction"], "out");
    assert_eq!(first["amount"], "100");
    assert_eq!(first["counterpartyWalletId"], "bob");
    assert_eq!(first["transferId"], pay["transferId"]);
    assert_eq!(first["txId"], done["txId"]);
    let cursor = history["nextCursor"].as_str().unwrap().to_owned();
    let (_, older) = call(
        api,
        "GET",
        format!("/api/v1/wallets/alice/transactions?limit=10&cursor={cursor}"),
        tok("user:alice"),
        None,
    )
    .await;
    let items = older["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{older}");
    assert_eq!(items[0]["direction"], "in");
    assert_eq!(items[0]["amount"], "1000");
    assert_eq!(items[0]["counterpartyWalletId"], "treasury");
    assert!(
        older.get("nextCursor").is_some_and(Value::is_null),
        "{older}"
    );
    // Alice may not read bob's wallet, nor spend from it.
    let (status, _) = call(
        api,
        "GET",
        "/api/v1/wallets/bob".into(),
        tok("user:alice"),
        None,
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = call(
        api,
        "POST",
        "/api/v1/transfers".into(),
        tok("user:alice"),
        Some(json!({"fromWalletId": "bob", "toWalletId": "alice", "amount": "1"})),
    )
    .await;
    assert_eq!(status, 403);

    // A multisig wallet of the three, threshold 2, funded by the treasury.
    let vault = command(
        api,
        "/api/v1/multisig-wallets",
        tok("user:alice"),
        Some(json!({"walletId": "vault", "owners": ["alice", "bob", "carol"], "threshold": 2})),
    )
    .await;
    projected(api, &vault, tok("user:alice")).await;
    let fund = command(
        api,
        "/api/v1/transfers",
        tok("admin:ops"),
        Some(json!({"fromWalletId": "treasury", "toWalletId": "vault", "amount": "300"})),
    )
    .await;
    projected(api, &fund, tok("admin:ops")).await;

    // Proposal 1: alice proposes 120 to carol; alice and bob approve → executed.
    let p1 = command(
        api,
        "/api/v1/proposals",
        tok("user:alice"),
        Some(json!({"fromWalletId": "vault", "toWalletId": "carol", "amount": "120", "memo": "design work"})),
    )
    .await;
    projected(api, &p1, tok("user:alice")).await;
    let p1_id = p1["proposalId"].as_str().unwrap().to_owned();
    assert_eq!(p1_id, p1["commandId"].as_str().unwrap());
    let (_, list) = call(
        api,
        "GET",
        "/api/v1/proposals".into(),
        tok("user:bob"),
        None,
    )
    .await;
    assert!(
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["proposalId"] == p1_id.as_str()),
        "{list}"
    );
    // Dave is no owner: 403.
    let (status, _) = call(
        api,
        "POST",
        format!("/api/v1/proposals/{p1_id}/approve"),
        tok("user:dave"),
        None,
    )
    .await;
    assert_eq!(status, 403);
    for token in [tok("user:alice"), tok("user:bob")] {
        let c = command(
            api,
            &format!("/api/v1/proposals/{p1_id}/approve"),
            token,
            None,
        )
        .await;
        projected(api, &c, token).await;
    }
    let (_, p) = call(
        api,
        "GET",
        format!("/api/v1/proposals/{p1_id}"),
        tok("user:carol"),
        None,
    )
    .await;
    assert_eq!(p["state"], "executed", "{p}");
    assert_eq!(p["decisions"].as_array().unwrap().len(), 2);
    assert_eq!(balance(api, "carol").await, 120);
    assert_eq!(balance(api, "vault").await, 180);

    // Proposal 2: bob proposes 50 to himself; alice and carol reject → rejected.
    let p2 = command(
        api,
        "/api/v1/proposals",
        tok("user:bob"),
        Some(json!({"fromWalletId": "vault", "toWalletId": "bob", "amount": "50"})),
    )
    .await;
    projected(api, &p2, tok("user:bob")).await;
    let p2_id = p2["proposalId"].as_str().unwrap().to_owned();
    for token in [tok("user:alice"), tok("user:carol")] {
        let c = command(
            api,
            &format!("/api/v1/proposals/{p2_id}/reject"),
            token,
            None,
        )
        .await;
        projected(api, &c, token).await;
    }
    let (_, p) = call(
        api,
        "GET",
        format!("/api/v1/proposals/{p2_id}"),
        tok("admin:ops"),
        None,
    )
    .await;
    assert_eq!(p["state"], "rejected", "{p}");
    assert_eq!(p["rejections"], 2);
    assert_eq!(balance(api, "vault").await, 180);
    assert_eq!(balance(api, "bob").await, 600);

    // Nothing created or destroyed: the balances add up to the supply.
    let mut sum = 0u128;
    for w in ["treasury", "alice", "bob", "carol", "vault"] {
        sum += balance(api, w).await;
    }
    assert_eq!(sum, SUPPLY);
    let total: String = db
        .connect()
        .await
        .unwrap()
        .query_one("SELECT sum(balance)::text FROM wallets", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(total, SUPPLY.to_string());

    // Operators: nothing dead-lettered, the projector running past every block.
    let (_, counts) = call(
        api,
        "GET",
        "/api/v1/admin/outbox/counts".into(),
        tok("admin:ops"),
        None,
    )
    .await;
    assert_eq!(counts["failed"], 0, "{counts}");
    // Every command has reached the ledger; those whose block is projected say so.
    assert_eq!(
        counts["committed"].as_u64().unwrap() + counts["projected"].as_u64().unwrap(),
        counts["total"].as_u64().unwrap(),
        "{counts}"
    );
    let (status, proj) = call(
        api,
        "GET",
        "/api/v1/admin/projector".into(),
        tok("admin:ops"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{proj}");
    assert_eq!(proj["state"], "running");
    assert!(proj["projectedBlock"].as_u64().unwrap() >= done["blockNumber"].as_u64().unwrap());

    gxd.stop();
    assert!(gxd.error_lines().is_empty(), "{:?}", gxd.error_lines());
    devnet.shutdown().await.unwrap();
}

/// The daemon serves `/api/v1`: the OpenAPI document without a token, and problem+json
/// 401s for commands and reads without one (the JWT authenticator is configured by
/// `[auth]`; without it every authenticated route is closed).
#[test]
fn the_daemon_serves_the_api_and_closes_it_without_credentials() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = rt.block_on(TestDb::new()).unwrap();
    let dir = traversable_tempdir();
    let settings = Settings::new(&db, free_port());
    let config = write_config(dir.path(), &settings);
    let mut gxd = Gxd::spawn_with_api(
        &["run", "--config", config.to_str().unwrap()],
        &[],
        settings.api_port,
    );
    gxd.wait_ready(Duration::from_secs(60)).unwrap();
    let api = gxd.api.unwrap();
    let (status, doc) = http_get(api, "/api/v1/openapi.json").unwrap();
    assert_eq!(status, 200);
    let doc: Value = serde_json::from_str(&doc).unwrap();
    assert!(doc["paths"]["/api/v1/transfers"]["post"].is_object());
    let mut headers = BTreeMap::new();
    headers.insert("Content-Type", "application/json");
    let (status, h, body) = http_request(
        api,
        "POST",
        "/api/v1/transfers",
        headers,
        r#"{"fromWalletId":"a","toWalletId":"b","amount":"1"}"#,
    )
    .unwrap();
    assert_eq!(status, 401, "{body}");
    assert_eq!(h["content-type"], "application/problem+json");
    let (status, _) = http_get(api, "/api/v1/wallets/a").unwrap();
    assert_eq!(status, 401);
    gxd.stop();
    assert!(gxd.error_lines().is_empty(), "{:?}", gxd.error_lines());
}

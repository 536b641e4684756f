//! REST API throughput and latency, over real HTTP on loopback (the load generator in this
//! process: keep-alive HTTP/1.1 connections, one request in flight each):
//!
//! - `GET /api/v1/wallets/{id}` (a read-model row with its owners), and beside it the same
//!   row read straight from PostgreSQL with a prepared statement, same concurrency;
//! - `POST /api/v1/transfers` answered 202 once durable (outbox fsync, group commit).
//!
//! Every request carries a real HS256 JWT, verified by the daemon's `JwtAuthenticator`.
//!
//! Prints requests/s, p50 and p99. `GXD_BENCH_QUICK=1` for a short run;
//! `GXD_BENCH_CONCURRENCY` (default 32); PostgreSQL from `GXD_TEST_DATABASE_URL` or a
//! private cluster. Run: `cargo bench --workspace --bench api`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use gxd_api::jwt::{JwtAlgorithm, JwtKey, MintRequest, SigningKey, mint};
use gxd_api::v1::cache;
use gxd_api::{ApiState, JwtAuthenticator, JwtSettings, ReadCache, Role, V1Deps};
use gxd_storage::outbox::{Outbox, OutboxOptions};
use gxd_storage::pg::{self, testing::TestDb};
use gxd_storage::{Db, DbOptions};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// The daemon's JWT verification (HS256, as `gxd dev` configures it) and a token minted
/// with the same key: every request pays for a real signature check.
fn jwt() -> (JwtAuthenticator, String) {
    let secret = b"an-hs256-secret-of-at-least-32-bytes-for-the-bench".to_vec();
    let auth = JwtAuthenticator::new(&JwtSettings {
        issuer: "https://login.bench/".into(),
        audience: "gxd".into(),
        leeway: Duration::from_secs(30),
        role_claim: "role".into(),
        keys: vec![JwtKey {
            kid: None,
            algorithm: JwtAlgorithm::Hs256,
            material: secret.clone(),
            source: "bench".into(),
        }],
    })
    .unwrap();
    let token = mint(
        &SigningKey {
            kid: None,
            algorithm: JwtAlgorithm::Hs256,
            material: secret,
            source: "bench".into(),
        },
        &MintRequest {
            issuer: "https://login.bench/".into(),
            audience: "gxd".into(),
            subject: "alice".into(),
            role: Role::User,
            role_claim: "role".into(),
            ttl: Duration::from_secs(3600),
        },
    )
    .unwrap();
    (auth, token)
}

const SEED: &str = r#"
INSERT INTO wallets (wallet_id, kind, balance, threshold, channel, created_tx_id, created_block, created_at, updated_block, updated_at) VALUES
  ('alice', 'user', 5000000, NULL, 'gxchannel', 't1', 2, now(), 2, now()),
  ('bob', 'user', 0, NULL, 'gxchannel', 't2', 2, now(), 2, now());
INSERT INTO wallet_owners (wallet_id, owner_id) VALUES ('alice', 'alice'), ('bob', 'bob');
"#;

/// One keep-alive HTTP/1.1 connection.
struct Conn {
    stream: BufReader<TcpStream>,
}

impl Conn {
    async fn new(addr: std::net::SocketAddr) -> Conn {
        let s = TcpStream::connect(addr).await.unwrap();
        s.set_nodelay(true).unwrap();
        Conn {
            stream: BufReader::new(s),
        }
    }

    /// Sends a request, reads the response; returns the status.
    async fn request(&mut self, raw: &[u8]) -> u16 {
        self.stream.get_mut().write_all(raw).await.unwrap();
        let mut line = String::new();
        self.stream.read_line(&mut line).await.unwrap();
        let status: u16 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        let mut length = 0usize;
        loop {
            line.clear();
            self.stream.read_line(&mut line).await.unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some((k, v)) = line.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        self.stream.read_exact(&mut body).await.unwrap();
        status
    }
}

type BoxFut = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;
/// One worker's request function.
type Call = Box<dyn FnMut() -> BoxFut + Send>;

struct Figures {
    requests: usize,
    elapsed: Duration,
    latencies_us: Vec<u64>,
}

impl Figures {
    fn print(&mut self, name: &str) {
        self.latencies_us.sort_unstable();
        let q = |p: f64| {
            let i = ((self.latencies_us.len() as f64) * p) as usize;
            self.latencies_us[i.min(self.latencies_us.len() - 1)] as f64 / 1000.0
        };
        eprintln!(
            "{name:<44} {:>9.0} req/s   p50 {:>6.2} ms   p99 {:>6.2} ms   ({} requests)",
            self.requests as f64 / self.elapsed.as_secs_f64(),
            q(0.50),
            q(0.99),
            self.requests
        );
    }
}

/// Runs `concurrency` workers for `duration`, each calling `step` in a loop.
async fn run<F, Fut>(concurrency: usize, duration: Duration, step: F) -> Figures
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Call> + Send,
{
    let step = Arc::new(step);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let step = step.clone();
        tasks.push(tokio::spawn(async move {
            let mut call = step(w).await;
            let mut lat = Vec::new();
            let end = Instant::now() + duration;
            while Instant::now() < end {
                let t = Instant::now();
                call().await;
                lat.push(t.elapsed().as_micros() as u64);
            }
            lat
        }));
    }
    let mut latencies_us = Vec::new();
    for t in tasks {
        latencies_us.extend(t.await.unwrap());
    }
    Figures {
        requests: latencies_us.len(),
        elapsed: start.elapsed(),
        latencies_us,
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let quick = std::env::var("GXD_BENCH_QUICK").is_ok_and(|v| v == "1");
    let duration = Duration::from_secs(if quick { 2 } else { 8 });
    let concurrency: usize = std::env::var("GXD_BENCH_CONCURRENCY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32);

    let db = Arc::new(TestDb::new().await.unwrap());
    let mut settings = db.settings("gxd-bench");
    settings.pool_max_size = concurrency;
    let pool = pg::connect_pool(&settings).await.unwrap();
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
    let (authenticator, token) = jwt();
    let authenticator = Arc::new(authenticator);
    // Two servers on the same database and outbox: as `gxd run` serves (with the wallet read
    // cache the projector invalidates after each block; no blocks here, so entries live
    // their TTL), and with every read going to PostgreSQL.
    let registry = prometheus::Registry::new();
    let cache =
        Arc::new(ReadCache::new(&registry, cache::DEFAULT_TTL, cache::DEFAULT_CAPACITY).unwrap());
    let mut addrs = Vec::new();
    for read_cache in [Some(cache), None] {
        let state = ApiState::new(&prometheus::Registry::new(), Vec::new())
            .unwrap()
            .with_authenticator(authenticator.clone())
            .with_v1(V1Deps {
                outbox: outbox.clone(),
                pool: pool.clone(),
                channel: "gxchannel".to_owned(),
                projector: None,
                on_enqueue: None,
                read_cache,
            });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        addrs.push(listener.local_addr().unwrap());
        tokio::spawn(gxd_api::serve(
            listener,
            gxd_api::router(state),
            std::future::pending(),
        ));
    }
    let addr = addrs[0];
    eprintln!(
        "api bench: {concurrency} connections, {} s per case, loopback, {} cores",
        duration.as_secs(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    for (addr, name) in [
        (addrs[0], "GET /api/v1/wallets/{id} (HTTP, read cache)"),
        (addrs[1], "GET /api/v1/wallets/{id} (HTTP, no cache)"),
    ] {
        let get = format!(
            "GET /api/v1/wallets/alice HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\r\n"
        );
        let get = Arc::new(get.into_bytes());
        let mut f = run(concurrency, duration, move |_| {
            let get = get.clone();
            async move {
                let conn = Arc::new(tokio::sync::Mutex::new(Conn::new(addr).await));
                Box::new(move || {
                    let conn = conn.clone();
                    let get = get.clone();
                    Box::pin(async move {
                        let status = conn.lock().await.request(&get).await;
                        assert_eq!(status, 200);
                    }) as BoxFut
                }) as Call
            }
        })
        .await;
        f.print(name);
    }

    let db2 = db.clone();
    let mut f = run(concurrency, duration, move |_| {
        let db = db2.clone();
        async move {
            let client = Arc::new(db.connect().await.unwrap());
            let stmt = client
                .prepare(
                    "SELECT w.wallet_id, w.kind, w.balance::text, w.threshold, w.msp_id, \
                     COALESCE(array_agg(o.owner_id ORDER BY o.owner_id) \
                     FILTER (WHERE o.owner_id IS NOT NULL), '{}'), w.updated_block, w.updated_at \
                     FROM wallets w LEFT JOIN wallet_owners o ON o.wallet_id = w.wallet_id \
                     WHERE w.wallet_id = $1 GROUP BY w.wallet_id",
                )
                .await
                .unwrap();
            Box::new(move || {
                let client = client.clone();
                let stmt = stmt.clone();
                Box::pin(async move {
                    let row = client.query_one(&stmt, &[&"alice"]).await.unwrap();
                    let _: String = row.get(2);
                }) as BoxFut
            }) as Call
        }
    })
    .await;
    f.print("same row, prepared statement, PostgreSQL");

    let body = r#"{"fromWalletId":"alice","toWalletId":"bob","amount":"1"}"#;
    let post = format!(
        "POST /api/v1/transfers HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let post = Arc::new(post.into_bytes());
    let mut f = run(concurrency, duration, move |_| {
        let post = post.clone();
        async move {
            let conn = Arc::new(tokio::sync::Mutex::new(Conn::new(addr).await));
            Box::new(move || {
                let conn = conn.clone();
                let post = post.clone();
                Box::pin(async move {
                    let status = conn.lock().await.request(&post).await;
                    assert_eq!(status, 202);
                }) as BoxFut
            }) as Call
        }
    })
    .await;
    f.print("POST /api/v1/transfers (durable 202)");
    eprintln!(
        "outbox: {} commands accepted",
        outbox.counts().unwrap().total()
    );
}

//! Durable enqueue benchmark: gxd's RocksDB outbox against the classic PostgreSQL outbox
//! table, side by side in one run, at 1, 16 and 256 concurrent producers.
//!
//! ```text
//! cargo bench -p gxd-storage --bench outbox                      # release, ~1-2 min
//! GXD_BENCH_QUICK=1 cargo bench -p gxd-storage --bench outbox --profile dev   # CI smoke
//! ```
//! Knobs: `GXD_BENCH_SECONDS` (measured seconds per case, default 6; quick: 1),
//! `GXD_BENCH_PRODUCERS` (comma list, default `1,16,256`), `GXD_BENCH_DATABASE_URL`
//! (PostgreSQL to use; default: a throwaway durable local cluster), `GXD_BENCH_PG_POOL`
//! (largest PostgreSQL pool, default 256), `GXD_BENCH_SKIP_PG=1` (RocksDB only).
//!
//! Both sides do the same: one durable insert per command (RocksDB: WAL fsync'd before
//! `enqueue` returns, group-committed; PostgreSQL: one INSERT per command in its own
//! transaction, `synchronous_commit = on`, through a connection pool of
//! min(producers, pool max) connections), with a unique idempotency key and the indexes an
//! outbox needs (by status/due time, by partition).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use gxd_storage::outbox::{NewCommand, Outbox, OutboxOptions};
use gxd_storage::pg::cluster::{ClusterOptions, LocalCluster};
use gxd_storage::{Db, DbOptions};

struct Settings {
    quick: bool,
    seconds: f64,
    warmup: f64,
    producers: Vec<usize>,
    pg_pool_max: usize,
    skip_pg: bool,
}

fn settings() -> Settings {
    let quick = std::env::var("GXD_BENCH_QUICK").is_ok_and(|v| v != "0" && !v.is_empty());
    let seconds = std::env::var("GXD_BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 1.0 } else { 6.0 });
    let producers = std::env::var("GXD_BENCH_PRODUCERS")
        .ok()
        .map(|v| v.split(',').filter_map(|p| p.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 16, 256]);
    Settings {
        quick,
        seconds,
        warmup: if quick { 0.2 } else { 1.0 },
        producers,
        pg_pool_max: std::env::var("GXD_BENCH_PG_POOL")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(256),
        skip_pg: std::env::var("GXD_BENCH_SKIP_PG").is_ok_and(|v| v == "1"),
    }
}

#[derive(Debug, Clone, Copy)]
struct Figures {
    ops: u64,
    per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// splitmix64.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// A command as the API would enqueue it: ~200 bytes of JSON, one of 10,000 wallets.
fn command(producer: usize, k: u64, rng: &mut Rng) -> NewCommand {
    let from = rng.next() % 10_000;
    let to = rng.next() % 10_000;
    let request_id = format!("p{producer}-{k}");
    let payload = format!(
        "{{\"transferId\":\"{request_id}\",\"fromWalletId\":\"wallet-{from:05}\",\"toWalletId\":\"wallet-{to:05}\",\"amount\":\"{}\",\"memo\":\"benchmark transfer between two wallets\"}}",
        rng.next() % 1_000_000
    );
    NewCommand {
        tenant: "org1".into(),
        command_type: "TRANSFER_TOKENS".into(),
        request_id,
        partition_key: format!("wallet-{from:05}"),
        extra_partition_keys: Vec::new(),
        payload: payload.into_bytes(),
    }
}

/// Runs `producers` tasks calling `op` in a loop; latency and throughput over the measured
/// window (after a warm-up).
async fn drive<F, Fut>(producers: usize, s: &Settings, op: F) -> Figures
where
    F: Fn(NewCommand) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for p in 0..producers {
        let op = Arc::clone(&op);
        let measuring = Arc::clone(&measuring);
        let stop = Arc::clone(&stop);
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng(p as u64 + 1);
            let mut lat_us: Vec<u32> = Vec::with_capacity(1 << 14);
            let mut k = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let c = command(p, k, &mut rng);
                k += 1;
                let t = Instant::now();
                op(c).await;
                if measuring.load(Ordering::Relaxed) && !stop.load(Ordering::Relaxed) {
                    lat_us.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
                }
            }
            lat_us
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(s.warmup)).await;
    measuring.store(true, Ordering::Relaxed);
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(s.seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = start.elapsed().as_secs_f64();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_unstable();
    let pct = |q: f64| {
        if all.is_empty() {
            return 0.0;
        }
        let i = ((all.len() as f64 * q) as usize).min(all.len() - 1);
        f64::from(all[i]) / 1000.0
    };
    Figures {
        ops: all.len() as u64,
        per_sec: all.len() as f64 / elapsed,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
    }
}

async fn bench_rocksdb(producers: usize, s: &Settings) -> Figures {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(Db::path_in(dir.path()), &DbOptions::default()).unwrap();
    let outbox = Outbox::new(db, OutboxOptions::default()).unwrap();
    let o = outbox.clone();
    let figures = drive(producers, s, move |c| {
        let o = o.clone();
        async move {
            let r = o.enqueue(c).await.unwrap();
            assert!(r.created);
        }
    })
    .await;
    let counts = outbox.counts().unwrap();
    assert!(counts.pending >= figures.ops);
    figures
}

const PG_SCHEMA: &str = "
DROP TABLE IF EXISTS bench_outbox;
CREATE TABLE bench_outbox (
    id              uuid PRIMARY KEY,
    tenant          text NOT NULL,
    request_id      text NOT NULL,
    command_type    text NOT NULL,
    partition_key   text NOT NULL,
    payload         jsonb NOT NULL,
    payload_digest  bytea NOT NULL,
    status          smallint NOT NULL DEFAULT 1,
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant, request_id)
);
CREATE INDEX bench_outbox_due ON bench_outbox (status, next_attempt_at);
CREATE INDEX bench_outbox_partition ON bench_outbox (partition_key, created_at);
";

const PG_INSERT: &str = "INSERT INTO bench_outbox \
    (id, tenant, request_id, command_type, partition_key, payload, payload_digest) \
    VALUES ($1, $2, $3, $4, $5, $6::text::jsonb, $7)";

async fn bench_postgres(
    producers: usize,
    s: &Settings,
    config: &tokio_postgres::Config,
) -> Result<(Figures, usize), String> {
    let pool_size = producers.clamp(1, s.pg_pool_max.max(1));
    let manager = deadpool_postgres::Manager::from_config(
        config.clone(),
        tokio_postgres::NoTls,
        deadpool_postgres::ManagerConfig {
            recycling_method: deadpool_postgres::RecyclingMethod::Fast,
        },
    );
    let pool = deadpool_postgres::Pool::builder(manager)
        .max_size(pool_size)
        .build()
        .map_err(|e| e.to_string())?;
    {
        let client = pool.get().await.map_err(|e| e.to_string())?;
        client
            .batch_execute(PG_SCHEMA)
            .await
            .map_err(|e| e.to_string())?;
        let row = client
            .query_one("SHOW synchronous_commit", &[])
            .await
            .map_err(|e| e.to_string())?;
        let sc: String = row.get(0);
        let row = client
            .query_one("SHOW fsync", &[])
            .await
            .map_err(|e| e.to_string())?;
        let fsync: String = row.get(0);
        if sc != "on" || fsync != "on" {
            return Err(format!(
                "PostgreSQL must be durable for a fair baseline (synchronous_commit={sc}, fsync={fsync})"
            ));
        }
    }
    // Open the pool's connections before measuring.
    let mut warm = Vec::new();
    for _ in 0..pool_size {
        warm.push(pool.get().await.map_err(|e| e.to_string())?);
    }
    drop(warm);
    let p = pool.clone();
    let figures = drive(producers, s, move |c| {
        let p = p.clone();
        async move {
            let client = p.get().await.unwrap();
            let stmt = client.prepare_cached(PG_INSERT).await.unwrap();
            let digest: Vec<u8> = gxd_storage::outbox::payload_digest(&c).to_vec();
            let payload = String::from_utf8(c.payload).unwrap();
            client
                .execute(
                    &stmt,
                    &[
                        &uuid::Uuid::now_v7(),
                        &c.tenant,
                        &c.request_id,
                        &c.command_type,
                        &c.partition_key,
                        &payload,
                        &digest,
                    ],
                )
                .await
                .unwrap();
        }
    })
    .await;
    Ok((figures, pool_size))
}

/// The PostgreSQL to compare with: `GXD_BENCH_DATABASE_URL`, or a throwaway durable
/// cluster started from the installed binaries.
fn postgres() -> Result<
    (
        tokio_postgres::Config,
        Option<(LocalCluster, tempfile::TempDir)>,
    ),
    String,
> {
    if let Ok(url) = std::env::var("GXD_BENCH_DATABASE_URL") {
        let config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| format!("GXD_BENCH_DATABASE_URL: {e}"))?;
        return Ok((config, None));
    }
    let temp = tempfile::Builder::new()
        .prefix("gxd-bench-pg-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    // The server may run as the `postgres` user: let it reach its data directory.
    std::fs::set_permissions(
        temp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o711),
    )
    .map_err(|e| e.to_string())?;
    let opts = ClusterOptions {
        durable: true,
        settings: vec![
            ("max_connections".into(), "300".into()),
            ("synchronous_commit".into(), "on".into()),
            ("shared_buffers".into(), "256MB".into()),
        ],
        ..ClusterOptions::default()
    };
    let cluster =
        LocalCluster::start_with(&temp.path().join("data"), opts).map_err(|e| e.to_string())?;
    let config = cluster.pg_config("postgres");
    Ok((config, Some((cluster, temp))))
}

fn main() {
    let s = settings();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "gxd outbox benchmark: durable enqueues, {}s per case{}",
        s.seconds,
        if s.quick { " (quick)" } else { "" }
    );
    let pg = if s.skip_pg {
        None
    } else {
        match postgres() {
            Ok(pg) => Some(pg),
            Err(e) => {
                eprintln!("PostgreSQL baseline unavailable: {e}");
                std::process::exit(1);
            }
        }
    };
    let mut rows = Vec::new();
    for &producers in &s.producers {
        let rocks = rt.block_on(bench_rocksdb(producers, &s));
        let postgres = match &pg {
            Some((config, _)) => match rt.block_on(bench_postgres(producers, &s, config)) {
                Ok(f) => Some(f),
                Err(e) => {
                    eprintln!("PostgreSQL baseline failed: {e}");
                    std::process::exit(1);
                }
            },
            None => None,
        };
        rows.push((producers, rocks, postgres));
    }

    println!();
    println!(
        "{:>9} | {:<22} | {:>11} | {:>8} | {:>8} | {:>9}",
        "producers", "outbox", "enqueues/s", "p50 ms", "p99 ms", "ops"
    );
    println!("{}", "-".repeat(84));
    for (producers, rocks, postgres) in &rows {
        println!(
            "{:>9} | {:<22} | {:>11.0} | {:>8.3} | {:>8.3} | {:>9}",
            producers, "gxd RocksDB", rocks.per_sec, rocks.p50_ms, rocks.p99_ms, rocks.ops
        );
        if let Some((pgf, pool)) = postgres {
            println!(
                "{:>9} | {:<22} | {:>11.0} | {:>8.3} | {:>8.3} | {:>9}",
                producers,
                format!("PostgreSQL (pool {pool})"),
                pgf.per_sec,
                pgf.p50_ms,
                pgf.p99_ms,
                pgf.ops
            );
            println!(
                "{:>9} | {:<22} | {:>10.1}x |",
                producers,
                "ratio RocksDB/PG",
                rocks.per_sec / pgf.per_sec.max(1e-9)
            );
        }
    }
    println!();
    // The goals, as figures (a benchmark reports; it does not fail on a noisy machine).
    if let Some((_, r, p)) = rows.iter().find(|(n, _, _)| *n == 256) {
        println!(
            "goal >= 50,000 durable enqueues/s at 256 producers: {:.0}/s {}",
            r.per_sec,
            if r.per_sec >= 50_000.0 {
                "MET"
            } else {
                "NOT MET"
            }
        );
        if let Some((pf, _)) = p {
            let ratio = r.per_sec / pf.per_sec.max(1e-9);
            println!(
                "goal >= 4x the PostgreSQL outbox at 256 producers: {ratio:.1}x {}",
                if ratio >= 4.0 { "MET" } else { "NOT MET" }
            );
        }
    }
    if let Some((_, r, _)) = rows.iter().find(|(n, _, _)| *n == 1) {
        println!(
            "goal one producer's p99 <= 0.5 ms: {:.3} ms {}",
            r.p99_ms,
            if r.p99_ms <= 0.5 { "MET" } else { "NOT MET" }
        );
    }
    drop(pg);
}

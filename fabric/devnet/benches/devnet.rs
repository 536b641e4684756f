//! Devnet throughput: the devnet in process (TLS, temp dir), GX bootstrapped, and gxd's
//! own Fabric client (`gxd_fabric::client::Gateway`, User1@org1) running closed-loop
//! submitters — each endorses a `CreateUser` with a unique id (no MVCC conflicts), submits
//! it and waits for its commit status, then starts the next — at 64, 256 and 1,024
//! transactions in flight, each level for a fixed duration.
//!
//! Per level it prints committed tx/s, the commit latency (Submit sent → CommitStatus
//! VALID) p50/p99, the endorse→commit latency p50, and the block cutting settings.
//!
//! Run (release; client and devnet share the process and the machine's cores):
//!
//! ```text
//! cargo bench --workspace --bench devnet
//! GXD_BENCH_QUICK=1 cargo bench --workspace --bench devnet      # 2 s, 64 in flight only
//! GXD_BENCH_SECONDS=30 GXD_BENCH_INFLIGHT=64,512 \
//!   GXD_BENCH_BATCH=100 GXD_BENCH_TIMEOUT_MS=100 cargo bench --workspace --bench devnet
//! ```
//!
//! `GXD_BENCH_BATCH` / `GXD_BENCH_TIMEOUT_MS` set the block cutting (default 500 tx / 20 ms;
//! the devnet's own default is 100 tx / 100 ms). `GXD_BENCH_CHAINCODE=service` runs GX as a
//! chaincode service over the shim protocol (the `gxd chaincode serve` server, in this
//! process, plaintext loopback) instead of in-process; `both` runs the two one after the
//! other, for a side-by-side ratio.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use gxd_devnet::{self as devnet, DevnetConfig};
use gxd_fabric::client::Gateway;
use gxd_fabric::identity::SigningIdentity;
use gxd_fabric::tls::{ConnectionConfig, PeerConnector, PeerEndpoint, TlsOptions};

const ORG1: &str = "org1.example.com";
/// Submitters per gRPC connection (HTTP/2 stream limits and fairness).
const PER_CONNECTION: usize = 128;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Level {
    in_flight: usize,
    committed: u64,
    failed: u64,
    elapsed: Duration,
    commit_latencies: Vec<Duration>,
    e2e_latencies: Vec<Duration>,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn run_level(gateways: &[Gateway], in_flight: usize, secs: u64, tag: &str) -> Level {
    let stop_at = Instant::now() + Duration::from_secs(secs);
    let failed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(in_flight);
    for w in 0..in_flight {
        let gw = gateways[w / PER_CONNECTION % gateways.len()].clone();
        let failed = Arc::clone(&failed);
        let tag = format!("{tag}-{w}");
        tasks.push(tokio::spawn(async move {
            let mut commit = Vec::new();
            let mut e2e = Vec::new();
            let mut seq = 0u64;
            while Instant::now() < stop_at {
                seq += 1;
                let id = format!("{tag}-{seq}");
                let spec = gw
                    .proposal("gx", "CreateUser")
                    .with_args([id.as_str(), "{}"]);
                let t0 = Instant::now();
                let result = async {
                    let proposal = gw.new_proposal(&spec)?;
                    let prepared = gw.endorse(&proposal).await?;
                    let t1 = Instant::now();
                    gw.submit(&prepared).await?;
                    gw.wait_for_commit(prepared.tx_id()).await?;
                    Ok::<_, gxd_fabric::client::GatewayError>(t1)
                }
                .await;
                let done = Instant::now();
                match result {
                    // Only commits inside the measured window count.
                    Ok(t1) if done <= stop_at => {
                        commit.push(done - t1);
                        e2e.push(done - t0);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        if failed.fetch_add(1, Ordering::Relaxed) < 3 {
                            eprintln!("transaction failed: {e}");
                        }
                    }
                }
            }
            (commit, e2e)
        }));
    }
    let mut commit_latencies = Vec::new();
    let mut e2e_latencies = Vec::new();
    for t in tasks {
        let (c, e) = t.await.unwrap();
        commit_latencies.extend(c);
        e2e_latencies.extend(e);
    }
    let elapsed = started.elapsed().min(Duration::from_secs(secs));
    commit_latencies.sort();
    e2e_latencies.sort();
    Level {
        in_flight,
        committed: commit_latencies.len() as u64,
        failed: failed.load(Ordering::Relaxed),
        elapsed,
        commit_latencies,
        e2e_latencies,
    }
}

fn main() {
    let quick = std::env::var("GXD_BENCH_QUICK").is_ok_and(|v| v == "1");
    let secs = env_u64("GXD_BENCH_SECONDS", if quick { 2 } else { 10 });
    let levels: Vec<usize> = match std::env::var("GXD_BENCH_INFLIGHT") {
        Ok(v) => v.split(',').filter_map(|s| s.trim().parse().ok()).collect(),
        Err(_) if quick => vec![64],
        Err(_) => vec![64, 256, 1024],
    };
    let batch = env_u64("GXD_BENCH_BATCH", 500) as usize;
    let timeout = Duration::from_millis(env_u64("GXD_BENCH_TIMEOUT_MS", 20));

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let modes: Vec<&str> = match std::env::var("GXD_BENCH_CHAINCODE").as_deref() {
        Ok("service") => vec!["service"],
        Ok("both") => vec!["in-process", "service"],
        _ => vec!["in-process"],
    };
    for mode in modes {
        rt.block_on(bench(mode, &levels, secs, batch, timeout));
    }
}

async fn bench(mode: &str, levels: &[usize], secs: u64, batch: usize, timeout: Duration) {
    {
        let dir = tempfile::tempdir().unwrap();
        let mut config = DevnetConfig::new(dir.path())
            .with_listen("127.0.0.1:0".parse().unwrap())
            .with_batch(batch, timeout);
        let mut server = None;
        if mode == "service" {
            let s = devnet::shim::server::start(devnet::shim::server::ServerConfig {
                listen: "127.0.0.1:0".parse().unwrap(),
                chaincode_id: "gx_bench:0".into(),
                tls: None,
            })
            .await
            .unwrap();
            config = config.with_external_chaincode(devnet::shim::client::ExternalConfig::new(
                s.local_addr().to_string(),
                "gx_bench:0",
            ));
            server = Some(s);
        }
        let handle = devnet::start(config).await.unwrap();
        let paths = handle.paths().clone();
        let addr = handle.local_addr();
        let ca_pem = std::fs::read(paths.tls_ca_cert(ORG1)).unwrap();
        let user = SigningIdentity::from_msp_dir("Org1MSP", &paths.user(ORG1, "User1")).unwrap();
        let admin = SigningIdentity::from_msp_dir("Org1MSP", &paths.user(ORG1, "Admin")).unwrap();
        let connector = || {
            let endpoint = PeerEndpoint::new(addr.to_string()).with_server_name(devnet::PEER_HOST);
            let tls = TlsOptions {
                ca_pem: ca_pem.clone(),
                ..TlsOptions::default()
            };
            Arc::new(PeerConnector::new(ConnectionConfig::new(vec![endpoint], Some(tls))).unwrap())
        };
        let max = levels.iter().copied().max().unwrap_or(64);
        let gateways: Vec<Gateway> = (0..max.div_ceil(PER_CONNECTION))
            .map(|_| Gateway::new(connector(), user.clone(), devnet::DEFAULT_CHANNEL))
            .collect();
        let admin = Gateway::new(connector(), admin, devnet::DEFAULT_CHANNEL);
        admin
            .submit_transaction(
                &admin
                    .proposal("gx", "Bootstrap")
                    .with_args(["treasury", "1000000000"]),
            )
            .await
            .unwrap();

        println!(
            "devnet bench: chaincode {mode}, batch {batch} tx / {} ms, {secs} s per level, {} cores, TLS on",
            timeout.as_millis(),
            std::thread::available_parallelism().map_or(0, |n| n.get()),
        );
        println!(
            "{:>9} {:>10} {:>10} {:>10} {:>10} {:>12} {:>7}",
            "in flight", "tx/s", "p50 ms", "p99 ms", "e2e p50", "blocks", "failed"
        );
        for (i, &n) in levels.iter().enumerate() {
            let h0 = handle.height();
            let l = run_level(&gateways, n, secs, &format!("b{i}")).await;
            let blocks = handle.height() - h0;
            println!(
                "{:>9} {:>10.0} {:>10.1} {:>10.1} {:>10.1} {:>12} {:>7}",
                l.in_flight,
                l.committed as f64 / l.elapsed.as_secs_f64(),
                ms(percentile(&l.commit_latencies, 0.50)),
                ms(percentile(&l.commit_latencies, 0.99)),
                ms(percentile(&l.e2e_latencies, 0.50)),
                blocks,
                l.failed,
            );
        }
        handle.shutdown().await.unwrap();
        if let Some(s) = server {
            s.shutdown().await.unwrap();
        }
    }
}

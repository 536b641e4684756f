//! End to end through gxd's engine: commands accepted into the RocksDB outbox, submitted to
//! the devnet by the submitter, projected into PostgreSQL by the projector — the components
//! `gxd run` builds (`gxd::engine::build`, GX's catalog and handlers), in this process, with
//! the devnet as its own process (`gxd devnet`) on the same machine.
//!
//! Two phases in one run:
//!
//! 1. **steady** — an open-loop generator accepts `GXD_BENCH_RATE` commands/s (default
//!    1,000) for `GXD_BENCH_SECONDS` (default 30), each a one-unit transfer from one of
//!    `GXD_BENCH_PAYERS` wallets (default 512, round robin) into that payer's own sink, so
//!    nothing conflicts on the ledger. Per command: accept (the durable enqueue returned) →
//!    COMMITTED and → PROJECTED (the outbox's change notifications), as p50/p99/max; the
//!    projection lag (COMMITTED → PROJECTED) p99; the generator's achieved rate and the
//!    sustained rate (commands projected per second over the phase).
//! 2. **max** — a backlog of `GXD_BENCH_BACKLOG` commands (default 20,000) accepted as fast
//!    as the outbox takes them, then drained: the submitter's maximum rate against the
//!    devnet (commands committed per second, first accept → last commit).
//!
//! Memory: `VmHWM` of this process (engine and generator) and of the devnet's, printed at
//! the end.
//!
//! Run (PostgreSQL as for the tests: `GXD_TEST_DATABASE_URL`, or `GXD_BENCH_LOCAL_PG=1` for a
//! private throwaway cluster):
//!
//! ```text
//! GXD_TEST_DATABASE_URL=postgres://gxd_test@127.0.0.1:5432/postgres \
//!   cargo bench --workspace --bench engine
//! GXD_BENCH_QUICK=1 cargo bench --workspace --bench engine --profile dev   # 5 s, 200/s
//! ```
//!
//! Knobs: `GXD_BENCH_RATE`, `GXD_BENCH_SECONDS`, `GXD_BENCH_PAYERS`, `GXD_BENCH_BACKLOG`,
//! `GXD_BENCH_IN_FLIGHT` (the submitter's `max_in_flight`, default 1,024),
//! `GXD_BENCH_CONNECTIONS` (`fabric.connections`, default the config's),
//! `GXD_BENCH_BATCH` / `GXD_BENCH_TIMEOUT_MS` (the devnet's block cutting, default 500 tx /
//! 50 ms).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gxd_fabric::client::Gateway;
use gxd_storage::checkpoint::CheckpointLog;
use gxd_storage::outbox::{CommandId, NewCommand, Outbox, OutboxOptions, Status};
use gxd_storage::pg::testing::{TEST_DATABASE_URL_ENV, TestDb};
use gxd_storage::pg::{self};
use gxd_storage::{Db, DbOptions};
use tokio_util::sync::CancellationToken;

#[path = "support/devnet_process.rs"]
mod devnet_process;
use devnet_process::{DevnetProcess, ORG1};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `VmHWM` of a process (`self` or a pid).
fn peak_rss_mb(pid: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn toml_string(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

fn sink(payer: &str) -> String {
    format!("sink-{payer}")
}

fn transfer(request_id: String, from: &str) -> NewCommand {
    NewCommand {
        tenant: "Org1MSP".into(),
        command_type: gxd_gx::commands::command_type::TRANSFER_TOKENS.into(),
        request_id,
        // As the API keys a transfer: the payer and the payee.
        partition_key: from.into(),
        extra_partition_keys: vec![sink(from)],
        payload: serde_json::to_vec(&serde_json::json!({
            "fromWalletId": from, "toWalletId": sink(from), "amount": "1",
        }))
        .unwrap(),
    }
}

/// When each command was accepted, committed and projected.
#[derive(Default)]
struct Times {
    accepted: HashMap<CommandId, Instant>,
    committed: HashMap<CommandId, Instant>,
    projected: HashMap<CommandId, Instant>,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn latencies(
    from: &HashMap<CommandId, Instant>,
    to: &HashMap<CommandId, Instant>,
) -> Vec<Duration> {
    let mut v: Vec<Duration> = from
        .iter()
        .filter_map(|(id, a)| to.get(id).map(|b| b.saturating_duration_since(*a)))
        .collect();
    v.sort_unstable();
    v
}

fn line(name: &str, v: &[Duration]) -> String {
    format!(
        "{name:<24} n={:>7}  p50 {:>8.1} ms  p99 {:>8.1} ms  max {:>8.1} ms",
        v.len(),
        ms(percentile(v, 0.50)),
        ms(percentile(v, 0.99)),
        ms(v.last().copied().unwrap_or_default())
    )
}

/// Records COMMITTED / PROJECTED times from the outbox's change notifications.
fn watch(outbox: &Outbox, times: Arc<Mutex<Times>>, stop: CancellationToken) {
    let mut rx = outbox.subscribe();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                m = rx.recv() => match m {
                    Ok(change) => {
                        let now = Instant::now();
                        let mut t = times.lock().unwrap();
                        match change.status {
                            Status::Committed => { t.committed.entry(change.id).or_insert(now); }
                            Status::Projected => {
                                t.committed.entry(change.id).or_insert(now);
                                t.projected.entry(change.id).or_insert(now);
                            }
                            _ => {}
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        eprintln!("engine bench: the watcher lagged by {n} notifications (figures undercount)");
                    }
                    Err(_) => return,
                }
            }
        }
    });
}

/// Waits until `want` commands in all were committed (or projected) — every command of the
/// bench ends so, and ids are unique, so a count suffices (cheap beside the watcher).
async fn wait_all(times: &Arc<Mutex<Times>>, want: usize, projected: bool, deadline: Duration) {
    let end = Instant::now() + deadline;
    loop {
        let done = {
            let t = times.lock().unwrap();
            if projected {
                t.projected.len()
            } else {
                t.committed.len()
            }
        };
        if done >= want {
            return;
        }
        assert!(
            Instant::now() < end,
            "engine bench: {done} of {want} commands {} after {deadline:?}",
            if projected { "projected" } else { "committed" }
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn setup_world(admin: &Gateway, payers: &[String]) {
    let submit = |function: &'static str, args: Vec<String>| {
        let admin = admin.clone();
        async move {
            let spec = admin
                .proposal("gx", function)
                .with_args(args.iter().map(String::as_str));
            let mut last = String::new();
            for _ in 0..10 {
                match admin.submit_transaction(&spec).await {
                    Ok(_) => return,
                    Err(e) if e.to_string().contains("already") => return,
                    Err(e) => last = e.to_string(),
                }
            }
            panic!("{function} {args:?}: {last}");
        }
    };
    submit("Bootstrap", vec!["treasury".into(), "1000000000000".into()]).await;
    for chunk in payers.chunks(128) {
        futures::future::join_all(chunk.iter().flat_map(|p| {
            [
                submit("CreateUser", vec![p.clone(), "{}".into()]),
                submit("CreateUser", vec![sink(p), "{}".into()]),
            ]
        }))
        .await;
    }
    // Funding moves money out of the treasury: one at a time (one wallet, one partition).
    for (i, p) in payers.iter().enumerate() {
        submit(
            "TransferTokens",
            vec![
                format!("fund-{i}"),
                "treasury".into(),
                p.clone(),
                "1000000".into(),
                String::new(),
            ],
        )
        .await;
    }
}

fn main() {
    let local_pg = std::env::var("GXD_BENCH_LOCAL_PG").is_ok_and(|v| v == "1");
    if !local_pg && std::env::var(TEST_DATABASE_URL_ENV).map_or(true, |v| v.trim().is_empty()) {
        eprintln!(
            "engine bench: needs PostgreSQL. Set {TEST_DATABASE_URL_ENV} to a server whose user \
             may CREATE DATABASE, or GXD_BENCH_LOCAL_PG=1 for a private throwaway cluster"
        );
        std::process::exit(2);
    }
    let quick = std::env::var("GXD_BENCH_QUICK").is_ok_and(|v| v == "1");
    let rate = env_u64("GXD_BENCH_RATE", if quick { 200 } else { 1_000 }).max(1);
    let seconds = env_u64("GXD_BENCH_SECONDS", if quick { 5 } else { 30 }).max(1);
    let n_payers = env_u64("GXD_BENCH_PAYERS", if quick { 64 } else { 512 }).max(1) as usize;
    let backlog = env_u64("GXD_BENCH_BACKLOG", if quick { 1_000 } else { 20_000 }) as usize;
    let in_flight = env_u64("GXD_BENCH_IN_FLIGHT", 1_024);
    let connections = std::env::var("GXD_BENCH_CONNECTIONS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok());
    let batch = env_u64("GXD_BENCH_BATCH", 500) as usize;
    let timeout = Duration::from_millis(env_u64("GXD_BENCH_TIMEOUT_MS", 50));

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let db = TestDb::new().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let devnet = DevnetProcess::start(&dir.path().join("devnet"), batch, timeout);
        let paths = devnet.paths.clone();
        let payers: Vec<String> = (0..n_payers).map(|i| format!("payer-{i}")).collect();
        let setup_started = Instant::now();
        setup_world(&devnet.gateway("Admin"), &payers).await;
        eprintln!(
            "engine bench: world of {} payers set up in {:.1} s",
            n_payers,
            setup_started.elapsed().as_secs_f64()
        );

        // The daemon's configuration, as `gxd run` reads it.
        let mut toml = format!(
            "[storage]\ndata_dir = {}\n[database]\nhost = {}\nport = {}\nuser = {}\ndbname = {}\npool_max_size = 8\n",
            toml_string(dir.path().join("data").to_str().unwrap()),
            toml_string(db.host()),
            db.port(),
            toml_string(db.user()),
            toml_string(db.dbname()),
        );
        toml += &format!(
            "[fabric]\npeer_endpoints = [{}]\npeer_tls_server_name = {}\ntls_ca_file = {}\nmsp_id = \"Org1MSP\"\nmsp_dir = {}\n",
            toml_string(&devnet.addr.to_string()),
            toml_string(gxd_devnet::PEER_HOST),
            toml_string(paths.peer_tls_ca(ORG1).to_str().unwrap()),
            toml_string(paths.user_msp(ORG1, "User1").to_str().unwrap()),
        );
        if let Some(n) = connections {
            toml += &format!("connections = {n}\n");
        }
        toml += &format!("[submitter]\nmax_in_flight = {in_flight}\n");
        let mut env = BTreeMap::new();
        if let Some(pw) = db.password() {
            let path = dir.path().join("db-password");
            std::fs::write(&path, pw).unwrap();
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
            env.insert("GXD_DATABASE__PASSWORD_FILE".to_owned(), path.to_str().unwrap().to_owned());
        }
        let config = gxd::config::parse(&toml, &env).unwrap().validate().unwrap();
        let fabric = config.fabric.clone().unwrap();
        let pool = pg::connect_pool(&config.database).await.unwrap();
        pg::migrate::migrate_pool(&pool).await.unwrap();
        let rdb = Db::open(Db::path_in(&config.data_dir), &DbOptions::default()).unwrap();
        let outbox = Outbox::new(rdb.clone(), OutboxOptions::default()).unwrap();
        let registry = prometheus::Registry::new();
        let engine = gxd::engine::build(
            &config,
            &fabric,
            outbox.clone(),
            CheckpointLog::new(rdb.clone()),
            pool.clone(),
            &registry,
        )
        .unwrap();
        let stop = CancellationToken::new();
        let waker = engine.waker.clone();
        let mut projector_status = engine.projector.status();
        let submitter = tokio::spawn(engine.submitter.run(stop.clone()));
        let projector = tokio::spawn(engine.projector.run(stop.clone()));
        // The world's blocks projected first: the steady phase measures following the
        // ledger, not catching up with the set-up.
        let world_tip = devnet.height().await - 1;
        let caught_up = Instant::now();
        projector_status.wait_for(|s| s.height >= Some(world_tip)).await.unwrap();
        eprintln!(
            "engine bench: projector caught up with the world's {} blocks in {:.1} s",
            world_tip + 1,
            caught_up.elapsed().as_secs_f64()
        );
        let times = Arc::new(Mutex::new(Times::default()));
        watch(&outbox, times.clone(), stop.clone());

        // Phase 1: steady rate, open loop (one tick per 10 ms, rate/100 commands each).
        let total = (rate * seconds) as usize;
        let per_tick = rate.div_ceil(100) as usize;
        let mut ids = Vec::with_capacity(total);
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let started = Instant::now();
        let mut k = 0usize;
        while k < total {
            tick.tick().await;
            let n = per_tick.min(total - k);
            let batch: Vec<_> = (k..k + n)
                .map(|i| {
                    let outbox = outbox.clone();
                    let payer = payers[i % payers.len()].clone();
                    async move {
                        let c = outbox.enqueue(transfer(format!("steady-{i}"), &payer)).await.unwrap();
                        (c.command.id, Instant::now())
                    }
                })
                .collect();
            let accepted = futures::future::join_all(batch).await;
            waker.wake();
            {
                let mut t = times.lock().unwrap();
                for (id, at) in &accepted {
                    t.accepted.insert(*id, *at);
                }
            }
            ids.extend(accepted.into_iter().map(|(id, _)| id));
            k += n;
        }
        let generated = started.elapsed();
        wait_all(&times, ids.len(), true, Duration::from_secs(120 + seconds)).await;
        let steady_elapsed = started.elapsed();
        let (to_committed, to_projected, lag) = {
            let t = times.lock().unwrap();
            (
                latencies(&t.accepted, &t.committed),
                latencies(&t.accepted, &t.projected),
                latencies(&t.committed, &t.projected),
            )
        };

        // Phase 2: a backlog, drained as fast as the submitter goes.
        let max_started = Instant::now();
        let accepted: Vec<_> = {
            let mut out = Vec::with_capacity(backlog);
            for chunk in (0..backlog).collect::<Vec<_>>().chunks(512) {
                let batch: Vec<_> = chunk
                    .iter()
                    .map(|&i| {
                        let outbox = outbox.clone();
                        let payer = payers[i % payers.len()].clone();
                        async move {
                            outbox.enqueue(transfer(format!("max-{i}"), &payer)).await.unwrap().command.id
                        }
                    })
                    .collect();
                out.extend(futures::future::join_all(batch).await);
                waker.wake();
            }
            out
        };
        let enqueued_in = max_started.elapsed();
        wait_all(&times, ids.len() + accepted.len(), false, Duration::from_secs(600)).await;
        let max_elapsed = max_started.elapsed();
        wait_all(&times, ids.len() + accepted.len(), true, Duration::from_secs(120)).await;
        let max_projected = max_started.elapsed();

        stop.cancel();
        submitter.await.unwrap().unwrap();
        projector.await.unwrap().unwrap();

        println!(
            "engine bench: {} cores; devnet batch {batch} tx / {} ms; submitter max_in_flight {in_flight}; {} peer connections; {n_payers} partitions (payers); {} profile",
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            timeout.as_millis(),
            connections.unwrap_or(gxd::config::DEFAULT_PEER_CONNECTIONS),
            if cfg!(debug_assertions) { "dev" } else { "release" },
        );
        println!(
            "steady: {total} commands offered at {rate}/s over {:.1} s (achieved {:.0}/s); all projected after {:.1} s: sustained {:.0} commands/s",
            generated.as_secs_f64(),
            total as f64 / generated.as_secs_f64(),
            steady_elapsed.as_secs_f64(),
            total as f64 / steady_elapsed.as_secs_f64(),
        );
        println!("{}", line("  accept → committed", &to_committed));
        println!("{}", line("  accept → projected", &to_projected));
        println!("{}", line("  projection lag", &lag));
        println!(
            "max: {backlog} commands accepted in {:.2} s ({:.0}/s); all committed after {:.2} s: submitter {:.0} tx/s; all projected after {:.2} s",
            enqueued_in.as_secs_f64(),
            backlog as f64 / enqueued_in.as_secs_f64(),
            max_elapsed.as_secs_f64(),
            backlog as f64 / max_elapsed.as_secs_f64(),
            max_projected.as_secs_f64(),
        );
        println!(
            "peak RSS (VmHWM): engine + generator {:.1} MB (this process); devnet {:.1} MB (its own process)",
            peak_rss_mb("self"),
            peak_rss_mb(&devnet.child.id().to_string()),
        );
        drop(devnet);
        drop(rdb);
    });
}

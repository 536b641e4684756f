#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `gxd run` through outages of what it depends on, under load, each recovered without an
//! operator; the verdict from the ledger and the read models (see `common::verdict`):
//! nothing lost, nothing doubled, per-partition order kept, every ledger transaction
//! projected once, balances and supply right, digest equal to a rebuild's.
//!
//! - [`devnet_down_for_30_seconds`]: the peer (the devnet) is shut down with commands in
//!   flight and started again 30 s later on the same port and ledger; meanwhile gxd stays
//!   up (liveness), readiness names the projector, the outbox stays writable, and gxd is
//!   restarted once during the outage with more accepted commands (it must start without
//!   its peer).
//! - [`postgres_restarted_and_connections_killed`]: gxd's own PostgreSQL cluster is
//!   stopped (fast shutdown) and started again while blocks are being projected — readiness
//!   goes off, then on again — and gxd's connections are killed with
//!   `pg_terminate_backend` several times mid-stream.
//! - [`disk_full_under_the_outbox`]: the data directory is a small tmpfs (needs root, as
//!   CI is) filled up with a ballast file during load; readiness goes off naming the
//!   outbox; after the ballast is removed, gxd reopens its database by itself (no restart)
//!   and readiness returns.
//!
//! Enqueues go straight into the outbox while gxd is down (as in `tests/engine.rs`): there
//! is no REST enqueue route yet, and the outbox is locked by the running daemon.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::verdict;
use common::*;
use gxd_devnet::{DevnetConfig, DevnetHandle};
use gxd_storage::outbox::{CommandId, Outbox, OutboxOptions};
use gxd_storage::pg::{self, Pool, projection};
use gxd_storage::{Db, DbOptions};

const BATCH: (usize, Duration) = (20, Duration::from_millis(20));

fn devnet_config(dir: &Path, listen: std::net::SocketAddr) -> DevnetConfig {
    DevnetConfig::new(dir)
        .with_listen(listen)
        .with_batch(BATCH.0, BATCH.1)
}

/// `n` payers: the treasury and `n - 1` users.
fn payers(n: usize) -> Vec<String> {
    std::iter::once("treasury".to_owned())
        .chain((1..n).map(|i| format!("u{i}")))
        .collect()
}

/// Accepts `per_payer` transfers from every payer (interleaved), straight into the outbox.
async fn enqueue(
    data: &Path,
    payers: &[String],
    per_payer: usize,
    tag: &str,
    accepted: &mut Vec<(CommandId, String)>,
) {
    let db = Db::open(Db::path_in(data), &DbOptions::default()).unwrap();
    let outbox = Outbox::new(db, OutboxOptions::default()).unwrap();
    for k in 0..per_payer {
        for p in payers {
            let c = outbox
                .enqueue(verdict::transfer(format!("{tag}-{p}-{k}"), p))
                .await
                .unwrap();
            assert!(c.created);
            accepted.push((c.command.id, p.clone()));
        }
    }
}

/// The `[fabric]` settings of these tests, with the submitter's default retry budget
/// (5 attempts, 200 ms base): an endorsement that finds no peer is postponed without
/// counting an attempt, so a 30 s outage dead-letters nothing.
fn engine_toml(devnet: &DevnetHandle) -> String {
    devnet_fabric_toml(devnet)
        + "endorse_timeout_seconds = 5
submit_timeout_seconds = 2
commit_status_timeout_seconds = 5
"
}

fn readyz(api: std::net::SocketAddr) -> Option<(u16, serde_json::Value)> {
    let (code, body) = http_get(api, "/readyz").ok()?;
    Some((code, serde_json::from_str(&body).ok()?))
}

/// The failing readiness checks' names (empty when ready or unreachable).
fn failing_checks(api: std::net::SocketAddr) -> Vec<String> {
    readyz(api)
        .map(|(_, v)| {
            v["checks"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|c| c["ok"] != true)
                .filter_map(|c| c["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Polls `cond` every 50 ms until it holds or `deadline` passes.
fn wait_until(deadline: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Waits until every accepted transfer (and the setup's funding) is projected, the
/// submitter is idle and the projector is at the ledger's height; then stops gxd.
async fn drain_and_stop(
    gxd: &mut Gxd,
    pool: &Pool,
    devnet: &DevnetHandle,
    funding: usize,
    accepted: usize,
) {
    let want = i64::try_from(accepted + funding).unwrap();
    let api = gxd.api.unwrap();
    let end = Instant::now() + Duration::from_secs(240);
    loop {
        // A dead-lettered command never reaches the ledger: fail at once, saying so.
        let dead = dead_lettered(api);
        assert_eq!(dead, 0, "{dead} commands dead-lettered:\n{}", gxd.logs());
        let drained = verdict::wait_projected_transfers(pool, want, Duration::from_secs(1)).await;
        if drained.is_ok() {
            break;
        }
        assert!(
            Instant::now() < end,
            "not drained ({drained:?}):\n{}",
            gxd.logs()
        );
    }
    let idle = wait_until(Duration::from_secs(60), || {
        http_get(api, "/metrics")
            .map(|(_, m)| m.lines().any(|l| l == "gxd_submitter_in_flight 0"))
            .unwrap_or(false)
    });
    assert!(idle, "submitter still busy:\n{}", gxd.logs());
    let caught_up = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            if let Ok(Some(p)) = projection::position(pool, devnet.channel()).await
                && p.block_number + 1 >= devnet.height()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        caught_up.is_ok(),
        "projector behind the ledger:\n{}",
        gxd.logs()
    );
    assert!(
        gxd.wait_ready(Duration::from_secs(30)).is_ok(),
        "not ready after recovery:\n{}",
        gxd.logs()
    );
    gxd.stop();
}

/// An integer metric without labels (`None` when absent or unreachable).
fn metric(api: std::net::SocketAddr, name: &str) -> Option<u64> {
    let (_, m) = http_get(api, "/metrics").ok()?;
    m.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
}

/// `gxd_submitter_attempts_total{outcome="dead_lettered"}` (0 when absent or unreachable).
fn dead_lettered(api: std::net::SocketAddr) -> u64 {
    http_get(api, "/metrics")
        .ok()
        .and_then(|(_, m)| {
            m.lines()
                .find_map(|l| {
                    l.strip_prefix(r#"gxd_submitter_attempts_total{outcome="dead_lettered"} "#)
                })
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// The whole verdict: every command COMMITTED in the outbox, exactly once and in order on
/// the ledger, the read models right; returns the ledger's verdict for the figures.
async fn verdict_all(
    data: &Path,
    work: &Path,
    pool: &Pool,
    devnet: &DevnetHandle,
    payers: &[String],
    accepted: &[(CommandId, String)],
) -> verdict::LedgerVerdict {
    {
        let db = Db::open(Db::path_in(data), &DbOptions::default()).unwrap();
        let outbox = Outbox::new(db, OutboxOptions::default()).unwrap();
        for (id, _) in accepted {
            let c = outbox.get(*id).unwrap();
            assert!(c.status.is_committed(), "{c:#?}");
        }
        assert!(outbox.verify_integrity().unwrap().is_ok());
    }
    let client = devnet.gateway("User1").unwrap();
    let height = devnet.height();
    let blocks = verdict::ledger_blocks(&client, height).await;
    let v = verdict::exactly_once(&blocks, accepted);
    assert!(v.is_exactly_once(), "{v:#?}");
    verdict::check_read_models(pool, &client, &blocks, &verdict::all_wallets(payers)).await;
    let config = work.join("gxd.toml");
    let report = tokio::task::spawn_blocking(move || verdict::rebuild_verifies(&config))
        .await
        .unwrap();
    assert_eq!(report["position"].as_u64(), Some(height - 1), "{report}");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devnet_down_for_30_seconds() {
    const OUTAGE: Duration = Duration::from_secs(30);
    let started = Instant::now();
    let db = TestDb::new().await.unwrap();
    let dir = traversable_tempdir();
    let devnet_dir = dir.path().join("devnet");
    let devnet = gxd_devnet::start(devnet_config(&devnet_dir, "127.0.0.1:0".parse().unwrap()))
        .await
        .unwrap();
    let addr = devnet.local_addr();
    let payers = payers(16);
    verdict::setup(&devnet, &payers).await;

    let mut settings = Settings::new(&db, free_port());
    settings.extra_toml = engine_toml(&devnet);
    let config = write_config(dir.path(), &settings);
    let data = dir.path().join("data");
    let args = ["run", "--config", config.to_str().unwrap()];
    let mut accepted = Vec::new();
    enqueue(&data, &payers, 25, "before", &mut accepted).await;

    let pool = pg::connect_pool(&db.settings("gxd-outage-test"))
        .await
        .unwrap();
    let mut gxd = Gxd::spawn_with_api(&args, &[], settings.api_port);
    gxd.wait_ready(Duration::from_secs(90)).unwrap();
    let api = gxd.api.unwrap();
    // Work in flight: some transfers projected, most not.
    let some = verdict::wait_projected_transfers(&pool, 60, Duration::from_secs(120)).await;
    assert!(some.is_ok(), "{some:?}:\n{}", gxd.logs());

    // The peer goes away.
    devnet.shutdown().await.unwrap();
    let down_at = Instant::now();
    let projected_at_outage = verdict::wait_projected_transfers(&pool, 0, Duration::ZERO)
        .await
        .unwrap();
    // gxd stays alive and its outbox writable. (Readiness has no peer or lag check in this
    // version: the figures below say what it showed.)
    let mut readiness_during_outage: Vec<String> = Vec::new();
    let mut observe = |api| {
        let failing = failing_checks(api);
        assert!(!failing.contains(&"outbox".to_owned()), "{failing:?}");
        let seen = if failing.is_empty() {
            "ready".to_owned()
        } else {
            failing.join("+")
        };
        if !readiness_during_outage.contains(&seen) {
            readiness_during_outage.push(seen);
        }
    };
    assert!(!wait_until(Duration::from_secs(3), || {
        observe(api);
        false
    }));
    assert_eq!(http_get(api, "/healthz").unwrap().0, 200);

    // Halfway through, gxd is restarted (orderly) with more accepted commands: it must start
    // and serve without its peer.
    assert!(
        wait_until(OUTAGE / 2, || down_at.elapsed() >= OUTAGE / 2),
        "clock"
    );
    gxd.stop();
    enqueue(&data, &payers, 5, "during", &mut accepted).await;
    let mut gxd = Gxd::spawn_with_api(&args, &[], settings.api_port);
    assert!(
        wait_until(Duration::from_secs(30), || http_get(api, "/healthz")
            .is_ok_and(|(c, _)| c == 200)),
        "gxd did not come up without its peer:\n{}",
        gxd.logs()
    );
    assert!(!wait_until(Duration::from_secs(3), || {
        observe(api);
        false
    }));

    // The peer comes back on the same port with the same ledger, 30 s after it went.
    assert!(wait_until(OUTAGE, || down_at.elapsed() >= OUTAGE), "clock");
    let devnet = gxd_devnet::start(devnet_config(&devnet_dir, addr))
        .await
        .unwrap();
    let back_at = Instant::now();
    drain_and_stop(&mut gxd, &pool, &devnet, payers.len() - 1, accepted.len()).await;
    let recovered_in = back_at.elapsed();
    let v = verdict_all(&data, dir.path(), &pool, &devnet, &payers, &accepted).await;
    eprintln!(
        "devnet outage test: outage={:.1}s commands={} projected when the peer went={} \
         readiness during the outage={readiness_during_outage:?} drained {:.1}s after it returned, invalid copies={} lost={} duplicated={} ({:.1}s)",
        back_at.duration_since(down_at).as_secs_f64(),
        v.commands,
        projected_at_outage,
        recovered_in.as_secs_f64(),
        v.invalid_copies,
        v.lost.len(),
        v.duplicated.len(),
        started.elapsed().as_secs_f64()
    );
    devnet.shutdown().await.unwrap();
}

/// A private PostgreSQL cluster this test may restart: data in `dir`, a fixed port.
struct OwnCluster {
    dir: PathBuf,
    port: u16,
    cluster: Option<pg::cluster::LocalCluster>,
}

impl OwnCluster {
    fn options(port: u16) -> pg::cluster::ClusterOptions {
        pg::cluster::ClusterOptions {
            port: Some(port),
            ..pg::cluster::ClusterOptions::throwaway()
        }
    }

    fn start(dir: PathBuf) -> Self {
        let cluster = pg::cluster::LocalCluster::start_with(
            &dir,
            Self::options(pg::cluster::free_port().unwrap()),
        )
        .unwrap();
        OwnCluster {
            dir,
            port: cluster.port(),
            cluster: Some(cluster),
        }
    }

    fn get(&self) -> &pg::cluster::LocalCluster {
        self.cluster.as_ref().unwrap()
    }

    /// Fast shutdown (what `pg_ctl stop -m fast` does).
    fn stop(&mut self) {
        if let Some(mut c) = self.cluster.take() {
            c.stop();
        }
    }

    /// Starts again on the same data directory and port.
    fn start_again(&mut self) {
        self.cluster = Some(
            pg::cluster::LocalCluster::start_with(&self.dir, Self::options(self.port)).unwrap(),
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_and_connections_killed() {
    const DBNAME: &str = "gxd_outage";
    let started = Instant::now();
    let dir = traversable_tempdir();
    let mut cluster = {
        let pg_dir = dir.path().join("pg");
        tokio::task::spawn_blocking(move || OwnCluster::start(pg_dir))
            .await
            .unwrap()
    };
    cluster.get().create_database(DBNAME).await.unwrap();
    let devnet = gxd_devnet::start(devnet_config(
        &dir.path().join("devnet"),
        "127.0.0.1:0".parse().unwrap(),
    ))
    .await
    .unwrap();
    let payers = payers(16);
    verdict::setup(&devnet, &payers).await;

    // The read-model database for the verdict's rebuild is the shared test server's.
    let settings = Settings {
        api_port: free_port(),
        db_host: cluster.get().host().to_owned(),
        db_port: cluster.port,
        db_user: cluster.get().superuser().to_owned(),
        db_password: Some(cluster.get().superuser_password().to_owned()),
        dbname: DBNAME.to_owned(),
        migrate_on_startup: true,
        http_drain_timeout_seconds: 5,
        storage_close_timeout_seconds: 5,
        extra_toml: engine_toml(&devnet),
    };
    let config = write_config(dir.path(), &settings);
    let data = dir.path().join("data");
    let args = ["run", "--config", config.to_str().unwrap()];
    let mut accepted = Vec::new();
    enqueue(&data, &payers, 30, "load", &mut accepted).await;
    let pg_settings = pg::PgSettings {
        host: settings.db_host.clone(),
        port: settings.db_port,
        user: settings.db_user.clone(),
        password: settings.db_password.clone(),
        dbname: DBNAME.to_owned(),
        pool_max_size: 4,
        connect_timeout: Duration::from_secs(5),
        application_name: "gxd-outage-test".into(),
    };
    let pool = pg::connect_pool(&pg_settings).await.unwrap();

    let mut gxd = Gxd::spawn_with_api(&args, &[], settings.api_port);
    gxd.wait_ready(Duration::from_secs(90)).unwrap();
    let api = gxd.api.unwrap();
    let some = verdict::wait_projected_transfers(&pool, 40, Duration::from_secs(120)).await;
    assert!(some.is_ok(), "{some:?}:\n{}", gxd.logs());

    // Restart: stop (fast), readiness goes off, start again on the same port.
    let stop_at = Instant::now();
    cluster = tokio::task::spawn_blocking(move || {
        cluster.stop();
        cluster
    })
    .await
    .unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || failing_checks(api)
            .contains(&"postgres".to_owned())),
        "readiness did not reflect the PostgreSQL outage: {:?}",
        readyz(api)
    );
    cluster = tokio::task::spawn_blocking(move || {
        cluster.start_again();
        cluster
    })
    .await
    .unwrap();
    let restarted_in = stop_at.elapsed();
    assert!(
        gxd.wait_ready(Duration::from_secs(60)).is_ok(),
        "not ready again after the restart:\n{}",
        gxd.logs()
    );

    // gxd's connections killed mid-stream, several times.
    let admin = cluster.get().connect("postgres").await.unwrap();
    let mut killed = 0i64;
    for _ in 0..5 {
        let before = verdict::wait_projected_transfers(&pool, 0, Duration::ZERO)
            .await
            .unwrap();
        let n = admin
            .query_one(
                "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE application_name = 'gxd' AND datname = $1) t",
                &[&DBNAME],
            )
            .await
            .unwrap()
            .get::<_, i64>(0);
        killed += n;
        // Projection goes on between the kills.
        let more =
            verdict::wait_projected_transfers(&pool, before + 10, Duration::from_secs(60)).await;
        assert!(
            more.is_ok(),
            "projection stalled after killing connections:\n{}",
            gxd.logs()
        );
    }
    assert!(killed > 0, "no gxd connection to kill");

    drain_and_stop(&mut gxd, &pool, &devnet, payers.len() - 1, accepted.len()).await;
    let v = verdict_all(&data, dir.path(), &pool, &devnet, &payers, &accepted).await;
    eprintln!(
        "postgres outage test: commands={} restart (stop to ready to start) {:.1}s, \
         connections killed={killed} in 5 rounds, invalid copies={} lost={} duplicated={} ({:.1}s)",
        v.commands,
        restarted_in.as_secs_f64(),
        v.invalid_copies,
        v.lost.len(),
        v.duplicated.len(),
        started.elapsed().as_secs_f64()
    );
    drop(admin);
    drop(pool);
    devnet.shutdown().await.unwrap();
    tokio::task::spawn_blocking(move || cluster.stop())
        .await
        .unwrap();
}

/// A tmpfs of `size_mb` mounted on `path` (root only), unmounted on drop.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path, size_mb: u32) -> Tmpfs {
        std::fs::create_dir_all(path).unwrap();
        let out = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size_mb}m,mode=0700"),
                "tmpfs",
            ])
            .arg(path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "this test mounts a small tmpfs as the data directory and needs root \
             (CAP_SYS_ADMIN), as in CI: mount: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs {
            path: path.to_path_buf(),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}

/// Appends to `ballast` until the file system is full; returns the bytes written.
fn fill(ballast: &mut std::fs::File) -> u64 {
    use std::io::Write;
    let mut written = 0u64;
    for chunk in [1 << 20, 64 << 10, 4 << 10, 512] {
        let buf = vec![0xa5u8; chunk];
        while let Ok(n) = ballast.write(&buf) {
            if n == 0 {
                break;
            }
            written += n as u64;
        }
    }
    written
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_under_the_outbox() {
    let started = Instant::now();
    let db = TestDb::new().await.unwrap();
    let dir = traversable_tempdir();
    let devnet = gxd_devnet::start(devnet_config(
        &dir.path().join("devnet"),
        "127.0.0.1:0".parse().unwrap(),
    ))
    .await
    .unwrap();
    let payers = payers(16);
    verdict::setup(&devnet, &payers).await;

    let data = dir.path().join("data");
    let tmpfs = Tmpfs::mount(&data, 48);
    let mut settings = Settings::new(&db, free_port());
    settings.extra_toml = engine_toml(&devnet);
    let config = write_config(dir.path(), &settings);
    let args = ["run", "--config", config.to_str().unwrap()];
    let mut accepted = Vec::new();
    enqueue(&data, &payers, 40, "load", &mut accepted).await;
    let pool = pg::connect_pool(&db.settings("gxd-disk-full-test"))
        .await
        .unwrap();

    let mut gxd = Gxd::spawn_with_api(&args, &[], settings.api_port);
    gxd.wait_ready(Duration::from_secs(90)).unwrap();
    let api = gxd.api.unwrap();
    let some = verdict::wait_projected_transfers(&pool, 40, Duration::from_secs(120)).await;
    assert!(some.is_ok(), "{some:?}:\n{}", gxd.logs());

    // The disk fills up under the running daemon (topped up while we wait, in case RocksDB
    // frees a file).
    let ballast_path = data.join("ballast");
    let mut ballast = std::fs::File::create(&ballast_path).unwrap();
    let mut ballast_bytes = fill(&mut ballast);
    let full_at = Instant::now();
    let off = wait_until(Duration::from_secs(60), || {
        ballast_bytes += fill(&mut ballast);
        failing_checks(api).contains(&"outbox".to_owned())
    });
    assert!(
        off,
        "readiness did not reflect the full disk: {:?}\n{}",
        readyz(api),
        gxd.logs()
    );
    let detected_in = full_at.elapsed();
    let (code, body) = readyz(api).unwrap();
    assert_eq!(code, 503, "{body}");
    assert_eq!(http_get(api, "/healthz").unwrap().0, 200, "gxd stays alive");
    // While the disk is full nothing moves in the outbox: hold it a moment, then look at
    // what gxd said.
    let held = wait_until(Duration::from_secs(5), || {
        ballast_bytes += fill(&mut ballast);
        false
    });
    assert!(!held);
    assert!(
        failing_checks(api).contains(&"outbox".to_owned()),
        "{:?}",
        readyz(api)
    );
    let enospc = gxd
        .stderr()
        .lines()
        .filter(|l| l.contains("No space left on device"))
        .count();
    assert!(enospc > 0, "no ENOSPC reported:\n{}", gxd.logs());
    // Every such failure is storage's `Unavailable` (retryable; the API's 503).
    let not_unavailable: Vec<String> = gxd
        .stderr()
        .lines()
        .filter(|l| l.contains("No space left on device"))
        .filter(|l| !l.contains("\"storage unavailable: "))
        .map(str::to_owned)
        .collect();
    assert!(not_unavailable.is_empty(), "{not_unavailable:#?}");

    assert_eq!(
        metric(api, "gxd_storage_write_blocked"),
        Some(1),
        "{:?}",
        readyz(api)
    );

    // Space is back: gxd reopens its database by itself (no restart, no operator) and
    // readiness returns.
    drop(ballast);
    std::fs::remove_file(&ballast_path).unwrap();
    let freed_at = Instant::now();
    let pid = gxd.pid();
    let recovered = wait_until(Duration::from_secs(90), || {
        !failing_checks(api).contains(&"outbox".to_owned())
    });
    assert!(
        recovered,
        "readiness did not come back by itself after the space was freed: {:?}\n{}",
        readyz(api),
        gxd.logs()
    );
    let recovered_in = freed_at.elapsed();
    assert_eq!(gxd.pid(), pid, "gxd was restarted");
    assert!(
        gxd.wait_exit(Duration::ZERO).is_none(),
        "gxd exited:\n{}",
        gxd.logs()
    );
    let recoveries = gxd
        .stderr()
        .lines()
        .filter(|l| l.contains("storage recovered: the database was reopened"))
        .count();
    assert!(recoveries >= 1, "no recovery logged:\n{}", gxd.logs());
    // The metrics follow within one maintenance round (5 s).
    let metrics_ok = wait_until(Duration::from_secs(15), || {
        metric(api, "gxd_storage_write_blocked") == Some(0)
            && metric(api, "gxd_storage_recoveries_total").is_some_and(|n| n >= 1)
    });
    assert!(metrics_ok, "{:?}", http_get(api, "/metrics"));
    let attempts = metric(api, "gxd_storage_recovery_attempts_total").unwrap_or(0);
    let recovery = format!(
        "readiness back by itself {:.1}s after the space was freed ({attempts} reopen \
         attempt(s), {recoveries} recovery), no restart",
        recovered_in.as_secs_f64()
    );
    drain_and_stop(&mut gxd, &pool, &devnet, payers.len() - 1, accepted.len()).await;
    let v = verdict_all(&data, dir.path(), &pool, &devnet, &payers, &accepted).await;
    eprintln!(
        "disk full test: commands={} ballast={} KiB, readiness off {:.1}s after the disk filled, \
         ENOSPC log lines={enospc}, {recovery}; invalid copies={} lost={} duplicated={} ({:.1}s)",
        v.commands,
        ballast_bytes / 1024,
        detected_in.as_secs_f64(),
        v.invalid_copies,
        v.lost.len(),
        v.duplicated.len(),
        started.elapsed().as_secs_f64()
    );
    drop(gxd);
    drop(tmpfs);
    devnet.shutdown().await.unwrap();
}

#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `gxd run` killed again and again while its engine works through the outbox
//! (`GXD_ENGINE_CRASH_ROUNDS` rounds, default 35; `GXD_CRASH_SEED` repeats a run). The
//! rounds cycle through the ways to die:
//! - a SIGKILL from outside at a random moment;
//! - a SIGKILL at each durability step, from the engine's kill points (feature
//!   `gxd/failpoints`, `FAILPOINTS=<point>=<n>*off->return`: the process raises SIGKILL
//!   on itself at the point's n-th hit, n random): after endorse, after prepare, after
//!   submit, between a VALID commit status and recording it, between the projector's
//!   PostgreSQL commit and its checkpoint append;
//! - the devnet's commit-then-lose-the-reply fault (the transaction is ordered and
//!   commits, the Submit reply is UNAVAILABLE), then a random SIGKILL.
//!
//! Between kills more commands are accepted into the outbox. A last run drains everything,
//! and the verdict is read from the ledger itself:
//! - exactly one VALID transaction per accepted command (lost = 0, duplicated = 0);
//! - per partition (the paying wallet), the VALID transactions in acceptance order;
//! - every command COMMITTED in the outbox, the outbox consistent;
//! - the read models: every ledger transaction recorded once in `applied_transactions`,
//!   every balance the ledger's, the balances summing to the supply, and the digest equal
//!   to a rebuild's from block 0.

mod common;

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use common::verdict;
use common::*;
use gxd_devnet::{Fault, FaultRule, Rpc};
use gxd_engine::failpoints;
use gxd_storage::outbox::{CommandId, Outbox, OutboxOptions};
use gxd_storage::pg::{self, projection};
use gxd_storage::{Db, DbOptions};
use rand::{Rng, SeedableRng};

/// The paying wallets (one partition each); the first is the treasury.
const PAYERS: [&str; 5] = ["treasury", "u0", "u1", "u2", "u3"];
/// Commands accepted before each round.
const PER_ROUND: usize = 20;

/// How a round ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kill {
    /// SIGKILL from outside after a random time.
    Random,
    /// The engine kills itself at this kill point, at its n-th hit.
    Point(&'static str),
    /// Two Submit replies lost after the commit, then a random SIGKILL.
    LostReply,
}

/// Polls `cond` every 20 ms until it holds or `deadline` passes.
fn wait_until(deadline: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

fn cycle() -> Vec<Kill> {
    let mut kinds = vec![Kill::Random];
    kinds.extend(failpoints::POINTS.iter().map(|p| Kill::Point(p)));
    kinds.push(Kill::LostReply);
    kinds
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_killed_at_random_and_at_each_durability_step_keeps_exactly_once_and_order() {
    let rounds: usize = std::env::var("GXD_ENGINE_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(35);
    let seed: u64 = std::env::var("GXD_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().r#gen());
    eprintln!("engine crash test: rounds={rounds} seed={seed} (GXD_CRASH_SEED to repeat)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let started = Instant::now();

    let db = TestDb::new().await.unwrap();
    let dir = traversable_tempdir();
    let devnet =
        gxd_devnet::start(local_devnet(dir.path()).with_batch(20, Duration::from_millis(20)))
            .await
            .unwrap();
    let payers: Vec<String> = PAYERS.iter().map(|p| p.to_string()).collect();
    verdict::setup(&devnet, &payers).await;
    let client = devnet.gateway("User1").unwrap();

    let mut settings = Settings::new(&db, free_port());
    settings.extra_toml = devnet_fabric_toml(&devnet)
        + "submit_timeout_seconds = 2
commit_status_timeout_seconds = 10

\
           [submitter]
backoff_base_milliseconds = 20
backoff_max_seconds = 1
";
    let config = write_config(dir.path(), &settings);
    let data = dir.path().join("data");
    let args = ["run", "--config", config.to_str().unwrap()];

    // (command id, partition) in acceptance order.
    let mut accepted: Vec<(CommandId, String)> = Vec::new();
    let kinds = cycle();
    let mut kills: BTreeMap<Kill, u32> = BTreeMap::new();
    let mut lost_reply_faults = 0u32;
    let mut lost_replies_hit = 0u32;
    for round in 0..rounds {
        {
            let db = Db::open(Db::path_in(&data), &DbOptions::default()).unwrap();
            let outbox = Outbox::new(db, OutboxOptions::default()).unwrap();
            for k in 0..PER_ROUND {
                let from = PAYERS[rng.gen_range(0..PAYERS.len())];
                let c = outbox
                    .enqueue(verdict::transfer(format!("r{round}-{k}"), from))
                    .await
                    .unwrap();
                accepted.push((c.command.id, from.to_owned()));
            }
        }
        let kind = kinds[round % kinds.len()];
        let status = match kind {
            Kill::Random | Kill::LostReply => {
                if kind == Kill::LostReply {
                    // The transaction is ordered and commits, but the reply is lost.
                    devnet.faults().add(FaultRule {
                        rpc: Rpc::Submit,
                        fault: Fault::ProcessThenUnavailable,
                        times: Some(2),
                    });
                    lost_reply_faults += 2;
                }
                let mut gxd = Gxd::spawn(&args, &[]);
                if kind == Kill::LostReply {
                    // Both replies really lost before the kill (so each such round exercises
                    // the resolution of an ambiguous submission).
                    let lost = wait_until(Duration::from_secs(30), || {
                        !devnet
                            .faults()
                            .rules()
                            .iter()
                            .any(|r| r.times.is_some_and(|n| n > 0))
                    });
                    assert!(
                        lost,
                        "round {round}: the lost-reply faults were not hit:\n{}",
                        gxd.logs()
                    );
                    lost_replies_hit += 2;
                }
                // The random moment of the kill: sleeping is the point here.
                std::thread::sleep(Duration::from_millis(rng.gen_range(150..1500)));
                gxd.signal(nix::sys::signal::Signal::SIGKILL);
                gxd.wait_exit(Duration::from_secs(30))
                    .expect("killed gxd exits")
            }
            Kill::Point(point) => {
                // The n-th hit: the projector's point is hit once per block, the
                // submitter's once per command.
                let skip = if point == failpoints::PROJECTOR_AFTER_PG_COMMIT {
                    rng.gen_range(0..3)
                } else {
                    rng.gen_range(0..8)
                };
                let spec = format!("{point}={skip}*off->return");
                let mut gxd = Gxd::spawn(&args, &[("FAILPOINTS", spec.as_str())]);
                let Some(status) = gxd.wait_exit(Duration::from_secs(60)) else {
                    panic!(
                        "round {round}: {point} (hit {}) did not kill gxd within 60 s:\n{}",
                        skip + 1,
                        gxd.logs()
                    );
                };
                let line = format!("failpoint {point}: killing the process");
                assert!(
                    gxd.stderr().contains(&line),
                    "round {round}: gxd died ({status}) without reaching {point}:\n{}",
                    gxd.logs()
                );
                status
            }
        };
        assert_eq!(
            status.signal(),
            Some(nix::sys::signal::Signal::SIGKILL as i32),
            "round {round} ({kind:?}): expected death by SIGKILL, got {status}"
        );
        *kills.entry(kind).or_default() += 1;
    }

    // The last run drains the outbox: wait until the read models hold every transfer.
    let mut gxd = Gxd::spawn_with_api(&args, &[], settings.api_port);
    gxd.wait_ready(Duration::from_secs(120)).unwrap();
    let pool = pg::connect_pool(&db.settings("gxd-crash-test"))
        .await
        .unwrap();
    let want = i64::try_from(accepted.len() + PAYERS.len() - 1).unwrap();
    let drained = verdict::wait_projected_transfers(&pool, want, Duration::from_secs(300)).await;
    assert!(
        drained.is_ok(),
        "not drained ({drained:?}):\n{}",
        gxd.logs()
    );
    // The projector has seen every transfer; let the submitter record the last commits,
    // and the projector reach the ledger's height.
    let api = gxd.api.unwrap();
    let idle = (0..600).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        http_get(api, "/metrics")
            .map(|(_, m)| m.lines().any(|l| l == "gxd_submitter_in_flight 0"))
            .unwrap_or(false)
    });
    assert!(idle, "submitter still busy:\n{}", gxd.logs());
    let caught_up = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let p = projection::position(&pool, devnet.channel()).await.unwrap();
            if p.is_some_and(|p| p.block_number + 1 >= devnet.height()) {
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
    gxd.stop();

    // The outbox: every command committed.
    {
        let db = Db::open(Db::path_in(&data), &DbOptions::default()).unwrap();
        let outbox = Outbox::new(db, OutboxOptions::default()).unwrap();
        for (id, _) in &accepted {
            let c = outbox.get(*id).unwrap();
            assert!(c.status.is_committed(), "{c:#?}");
        }
        assert!(outbox.verify_integrity().unwrap().is_ok());
    }

    // The ledger's verdict.
    let height = devnet.height();
    let blocks = verdict::ledger_blocks(&client, height).await;
    let v = verdict::exactly_once(&blocks, &accepted);
    eprintln!(
        "engine crash test: rounds={rounds} kills={} by kind={kills:?} commands={} \
         lost-reply faults armed={lost_reply_faults} hit before the kill={lost_replies_hit} blocks={height} invalid copies on the ledger={} \
         lost={} duplicated={} partitions out of order={} ({:.1}s)",
        kills.values().sum::<u32>(),
        v.commands,
        v.invalid_copies,
        v.lost.len(),
        v.duplicated.len(),
        v.out_of_order.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(v.is_exactly_once(), "{v:#?}");

    // The read models: the ledger's transactions once each, its balances, the supply, and a
    // rebuild from block 0 gives the same digest.
    verdict::check_read_models(&pool, &client, &blocks, &verdict::all_wallets(&payers)).await;
    let digest = pg::read_models::read_model_digest(&pool).await.unwrap();
    let report = tokio::task::spawn_blocking({
        let config = config.clone();
        move || verdict::rebuild_verifies(&config)
    })
    .await
    .unwrap();
    assert_eq!(report["position"].as_u64(), Some(height - 1), "{report}");
    assert_eq!(
        pg::read_models::read_model_digest(&pool).await.unwrap(),
        digest,
        "--verify changed nothing"
    );
    devnet.shutdown().await.unwrap();
}
